"""The task manager's retry decision for application errors (retry_exceptions)."""
import pytest

from gdfut.api import retry_exceptions_wire
from gdfut.task_manager import ANY_EXCEPTION, Fail, Retry, TaskManager, class_names


class MyError(ValueError):
    pass


MY_ERROR = class_names(MyError.__mro__)   # what a worker sends for a raised MyError


def manager(max_retries=3, retry_exceptions=False):
    m = TaskManager()
    m.submitted(b"t", max_retries, retry_exceptions)
    return m


def test_not_retried_by_default():
    decision = manager().task_raised(b"t", MY_ERROR)
    assert isinstance(decision, Fail) and "retry_exceptions" in decision.reason


def test_true_retries_any_exception_up_to_max_retries():
    m = manager(max_retries=2, retry_exceptions=True)
    assert m.task_raised(b"t", MY_ERROR) == Retry(2)
    assert m.task_raised(b"t", MY_ERROR) == Retry(3)
    decision = m.task_raised(b"t", MY_ERROR)
    assert isinstance(decision, Fail) and "3 attempts" in decision.reason
    m.validate()


def test_true_does_not_retry_a_base_exception():
    names = class_names(KeyboardInterrupt.__mro__)
    assert ANY_EXCEPTION not in names
    assert isinstance(manager(retry_exceptions=True).task_raised(b"t", names), Fail)


def test_listed_class_matches_subclasses_only():
    listed = manager(retry_exceptions=class_names([ValueError]))
    assert listed.task_raised(b"t", MY_ERROR) == Retry(2)          # MyError is a ValueError
    other = manager(retry_exceptions=class_names([MyError]))
    assert isinstance(other.task_raised(b"t", class_names(ValueError.__mro__)), Fail)


def test_unnamed_error_is_not_retried():
    assert isinstance(manager(retry_exceptions=True).task_raised(b"t", ()), Fail)


def test_minus_one_retries_forever():
    m = manager(max_retries=-1, retry_exceptions=True)
    for attempt in range(2, 200):
        assert m.task_raised(b"t", MY_ERROR) == Retry(attempt)
    m.validate()


def test_worker_deaths_and_exceptions_share_the_budget():
    m = manager(max_retries=2, retry_exceptions=True)
    assert m.worker_failed(b"t") == Retry(2)
    assert m.task_raised(b"t", MY_ERROR) == Retry(3)
    assert isinstance(m.worker_failed(b"t"), Fail)


def test_generator_that_streamed_is_not_retried_on_exception():
    decision = manager(retry_exceptions=True).task_raised(b"t", MY_ERROR, streamed=1)
    assert isinstance(decision, Fail) and "1 item" in decision.reason


def test_option_wire_form():
    assert retry_exceptions_wire(True) is True
    assert retry_exceptions_wire([MyError]) == (f"{__name__}.MyError",)
    for bad in (["ValueError"], [], 3, [int]):
        with pytest.raises(TypeError, match="retry_exceptions must be"):
            retry_exceptions_wire(bad)
