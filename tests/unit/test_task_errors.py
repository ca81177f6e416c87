"""A task's exception as its caller sees it: an instance of the original
class where Python allows one, else a TaskError naming the class and carrying
the remote traceback, and never a failure of the error path itself."""
import errno
import pickle
import sys
import threading

import cloudpickle
import pytest

from gdfut.exceptions import GdfutError, ObjectStoreFullError, TaskError, load_error


class TwoArgs(Exception):
    """__init__ takes other arguments than the message it passes on."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")
        self.a, self.b = a, b


class HoldsLock(Exception):
    def __init__(self):
        super().__init__("has a lock")
        self.lock = threading.Lock()
        self.note = "kept"


class OwnNew(Exception):
    def __new__(cls, a, b):
        return super().__new__(cls, a)

    def __init__(self, a, b):
        super().__init__(a)


def across_the_wire(exc: BaseException) -> BaseException:
    """What the worker sends and the caller raises."""
    err = TaskError("f", "Traceback: line 1\n", exc, type(exc).__name__).as_instanceof_cause()
    return load_error(cloudpickle.dumps(err))


CASES = [
    MemoryError("out of memory"),
    ExceptionGroup("group", [ValueError("v"), KeyError("k")]),
    ObjectStoreFullError("the store is full"),
    TwoArgs("m", 2),
    HoldsLock(),
    OwnNew(1, 2),
    OSError(errno.ENOENT, "not found", "/x"),
    KeyError("k"),
    StopIteration(5),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad byte"),
    ValueError("plain"),
]


@pytest.mark.parametrize("exc", CASES, ids=lambda e: type(e).__name__)
def test_the_caller_gets_an_instance_of_the_original_class(exc):
    err = across_the_wire(exc)
    assert isinstance(err, type(exc)) and isinstance(err, TaskError)
    assert type(exc).__name__ in str(err)
    assert "Traceback: line 1" in str(err)
    with pytest.raises(type(exc)):
        raise err


def test_state_of_the_cause_reads_through_the_error():
    assert (across_the_wire(TwoArgs("m", 2)).a, across_the_wire(TwoArgs("m", 2)).b) == ("m", 2)
    assert across_the_wire(OSError(errno.ENOENT, "nf", "/x")).errno == errno.ENOENT
    group = across_the_wire(ExceptionGroup("g", [ValueError("v")]))
    assert [type(e) for e in group.exceptions] == [ValueError]
    assert across_the_wire(StopIteration(5)).value == 5
    held = across_the_wire(HoldsLock())
    assert held.note == "kept" and not hasattr(held.cause, "lock")   # the lock did not travel


def test_a_class_that_cannot_be_combined_gives_a_task_error_naming_it():
    # a BaseExceptionGroup of BaseExceptions cannot also be an Exception
    err = across_the_wire(BaseExceptionGroup("bg", [KeyboardInterrupt()]))
    assert type(err) is TaskError
    assert "BaseExceptionGroup" in str(err) and "Traceback: line 1" in str(err)


def test_a_class_missing_at_the_caller_gives_a_task_error_naming_it(monkeypatch):
    err = TaskError("f", "remote tb\n", TwoArgs("m", 2), "TwoArgs")
    wire = cloudpickle.dumps(err)         # the class pickles by reference, by module
    monkeypatch.delattr(sys.modules[__name__], "TwoArgs")   # the caller lacks it
    got = load_error(wire)
    assert type(got) is TaskError and got.cause is None
    assert "TwoArgs" in str(got) and "m-2" in str(got) and "remote tb" in str(got)


def test_error_survives_a_second_trip():
    # a failed dependency: the caller's error is pickled again for the next task
    err = across_the_wire(TwoArgs("m", 2))
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, TwoArgs) and again.a == "m"


def test_load_error_never_raises_a_pickling_failure():
    assert isinstance(load_error(b"not a pickle"), GdfutError)
    assert isinstance(load_error(pickle.dumps(42)), GdfutError)


def test_memoryerror_subclass_rebuilds_when_its_whole_pickle_fails(monkeypatch):
    """tblib's pickling_support (installed by dask.distributed, imported by
    ucxx) pickles exceptions so that unpickling calls ``cls.__new__``, which
    MemoryError subclasses refuse; the cause is then rebuilt from its parts."""
    import gdfut.exceptions as E
    monkeypatch.setattr(E, "_loads_or_none",
                        lambda data, real=E._loads_or_none: None if data is first[0] else real(data))
    first = [None]
    cause = ObjectStoreFullError("the store is full")
    packed = E._pack_cause(cause)
    first[0] = packed[0]                     # the whole pickle "fails" on the caller's side
    rebuilt = E._unpack_cause(packed)
    assert type(rebuilt) is ObjectStoreFullError and rebuilt.args == ("the store is full",)
