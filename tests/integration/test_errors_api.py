"""Errors a user sees, and the public API's edges (issue 7: points 1, 12, 13
and the Ray semantics that differed)."""
import os
import sys

import cloudpickle
import numpy as np
import pytest

import gdfut
from gdfut.exceptions import ObjectStoreFullError, TaskError, WorkerCrashedError
from helpers import assert_no_leaks, wait_until
from conftest import store_stats

# Workers cannot import this test module: ship its functions and classes by
# value, as they would be from a user's script (``__main__``).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class MyErr(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")
        self.a, self.b = a, b


def _count_run(path):
    with open(path, "a") as f:
        f.write("run\n")


@gdfut.remote(max_retries=3)
def raises(kind, path):
    _count_run(path)
    if kind == "memory":
        raise MemoryError("task ran out of memory")
    if kind == "group":
        raise ExceptionGroup("two failures", [ValueError("v"), KeyError("k")])
    if kind == "store_full":
        raise ObjectStoreFullError("the task said the store is full")
    if kind == "my":
        raise MyErr("m", 2)
    if kind == "lock":
        import threading
        err = RuntimeError("holds a lock")
        err.lock = threading.Lock()
        raise err
    raise AssertionError(kind)


EXPECTED = {"memory": MemoryError, "group": ExceptionGroup, "store_full": ObjectStoreFullError,
            "my": MyErr, "lock": RuntimeError}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_task_exception_reaches_the_caller_as_its_class(cluster, tmp_path, kind):
    path = str(tmp_path / "runs")
    with pytest.raises(EXPECTED[kind]) as info:
        gdfut.get(raises.remote(kind, path), timeout=60)
    err = info.value
    assert isinstance(err, TaskError) and not isinstance(err, WorkerCrashedError)
    assert EXPECTED[kind].__name__ in str(err)
    assert "in raises" in err.remote_traceback          # the task's own frame
    # an application error is not a worker failure: no retry was used
    assert open(path).read().count("run") == 1


def test_except_my_err_at_the_driver(cluster, tmp_path):
    try:
        gdfut.get(raises.remote("my", str(tmp_path / "runs")), timeout=60)
    except MyErr as err:
        assert (err.a, err.b) == ("m", 2)
        assert "m and 2" in str(err)
    else:
        pytest.fail("MyErr was not raised")


@gdfut.remote
def pid():
    return os.getpid()


@gdfut.remote(num_cpus=2)
def raise_memory_and_pid():
    raise MemoryError(os.getpid())


def test_raising_memory_error_does_not_kill_the_worker(cluster):
    # num_cpus=2 on a 2-CPU node: both tasks run in turn; a crashed worker
    # would be replaced by a new process
    with pytest.raises(MemoryError) as info:
        gdfut.get(raise_memory_and_pid.remote(), timeout=60)
    first = info.value.cause.args[0]
    with pytest.raises(MemoryError) as info:
        gdfut.get(raise_memory_and_pid.remote(), timeout=60)
    assert info.value.cause.args[0] == first


@pytest.fixture
def small_store_cluster():
    info = gdfut.init(num_cpus=1, object_store_memory=64 * 1024 * 1024)
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


@gdfut.remote(max_retries=3)
def too_big(path):
    _count_run(path)
    return np.zeros(100 * 1024 * 1024, dtype=np.uint8)


@gdfut.remote(num_returns=2, max_retries=0)
def one_fits_one_does_not():
    return np.ones(8 * 1024 * 1024, dtype=np.uint8), np.zeros(100 * 1024 * 1024, np.uint8)


def test_result_larger_than_the_store_fails_cleanly(small_store_cluster, tmp_path, capfd):
    path = str(tmp_path / "runs")
    with pytest.raises(ObjectStoreFullError) as info:
        gdfut.get(too_big.remote(path), timeout=60)
    assert "does not fit in the object store" in str(info.value)
    assert open(path).read().count("run") == 1            # no retries, no crash
    with pytest.raises(ObjectStoreFullError):
        gdfut.get(one_fits_one_does_not.remote()[0], timeout=60)
    # the return that did fit was freed with the failed task
    wait_until(lambda: store_stats()["used_bytes"] == 0, timeout=10, what="store to be empty")
    assert gdfut.get(pid.remote(), timeout=60) > 0
    err = capfd.readouterr().err
    assert err.count("Traceback") <= 2, err[-3000:]        # no flood of worker tracebacks


def test_function_the_worker_cannot_load_fails_the_task_not_the_worker(cluster, tmp_path,
                                                                       monkeypatch):
    # a function pickled by reference to a module only the driver can import
    (tmp_path / "driver_only_mod.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import driver_only_mod
    f = gdfut.remote(max_retries=2)(driver_only_mod.f)
    with pytest.raises(ModuleNotFoundError) as info:
        gdfut.get(f.remote(), timeout=60)
    assert "driver_only_mod" in str(info.value)
    assert not isinstance(info.value, WorkerCrashedError)
