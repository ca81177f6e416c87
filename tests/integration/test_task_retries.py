"""Retries of application errors: retry_exceptions and max_retries, as in Ray."""
import os

import pytest

import gdfut


# Builtin classes, so that workers can unpickle them (this module is not
# importable there); test_subclass_of_listed_class_is_retried defines its own.
Flaky, Other = ValueError, KeyError


SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


@gdfut.remote
def fail_first(path, times, exc_cls):
    """Counts its attempts in a file; raises exc_cls on the first ``times``."""
    with open(path, "a") as f:
        f.write("x")
    attempts = os.path.getsize(path)
    if attempts <= times:
        raise exc_cls(f"attempt {attempts}")
    return attempts


def attempts(path):
    return os.path.getsize(path)


def test_listed_exception_is_retried_until_success(cluster, tmp_path):
    f = fail_first.options(max_retries=3, retry_exceptions=[Flaky])
    path = str(tmp_path / "n")
    assert gdfut.get(f.remote(path, 2, Flaky)) == 3
    assert attempts(path) == 3


def test_unlisted_exception_is_not_retried(cluster, tmp_path):
    f = fail_first.options(max_retries=3, retry_exceptions=[Flaky])
    path = str(tmp_path / "n")
    with pytest.raises(Other, match="attempt 1"):
        gdfut.get(f.remote(path, 2, Other))
    assert attempts(path) == 1


def test_no_retry_by_default(cluster, tmp_path):
    f = fail_first
    path = str(tmp_path / "n")
    with pytest.raises(Flaky):
        gdfut.get(f.remote(path, 1, Flaky))
    assert attempts(path) == 1


def test_true_retries_any_exception(cluster, tmp_path):
    f = fail_first.options(retry_exceptions=True, max_retries=2)
    path = str(tmp_path / "n")
    assert gdfut.get(f.remote(path, 2, Other)) == 3


def test_max_retries_bounds_the_attempts(cluster, tmp_path):
    f = fail_first.options(max_retries=1, retry_exceptions=True)
    path = str(tmp_path / "n")
    with pytest.raises(Flaky, match="attempt 2"):      # the last attempt's error
        gdfut.get(f.remote(path, 5, Flaky))
    assert attempts(path) == 2


def test_minus_one_retries_until_success(cluster, tmp_path):
    f = fail_first.options(max_retries=-1, retry_exceptions=[Flaky])
    path = str(tmp_path / "n")
    assert gdfut.get(f.remote(path, 6, Flaky)) == 7


def test_bad_retry_exceptions_is_refused(cluster):
    with pytest.raises(TypeError, match="retry_exceptions must be"):
        gdfut.remote(retry_exceptions=["Flaky"])(fail_first)
    with pytest.raises(TypeError, match="retry_exceptions must be"):
        fail_first.options(retry_exceptions=1)


def test_subclass_of_listed_class_is_retried(cluster, tmp_path):
    class Base(Exception):
        pass

    class Flakier(Base):
        pass

    @gdfut.remote(max_retries=2, retry_exceptions=[Base])
    def f(path):
        with open(path, "a") as out:
            out.write("x")
        if os.path.getsize(path) == 1:
            raise Flakier("first")
        return "ok"

    path = str(tmp_path / "n")
    assert gdfut.get(f.remote(path)) == "ok"
    assert attempts(path) == 2
