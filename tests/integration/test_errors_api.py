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
from gdfut import protocol as P, runtime_context


SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


def store_stats():
    return runtime_context.require().node_request(P.NODE_STATUS)["store"]


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
def small_store_cluster(monkeypatch):
    # 64 MiB host + 32 MiB disk: a 100 MiB object is larger than all tiers
    monkeypatch.setenv("GDFUT_SPILL_CAPACITY", str(32 * 1024 * 1024))
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


# ------------------------------------------------------- point 12: clear errors
import re
import signal
import subprocess

from gdfut import api
from gdfut.exceptions import (AuthenticationError, ClusterConnectionError, GdfutError,
                              InvalidAddressError, SessionNotFoundError)
from gdfut.testing import Cluster


@pytest.fixture
def running_cluster():
    """A head and one node, no driver: for gdfut.init(address=...) tests."""
    with Cluster() as c:
        c.add_node(num_cpus=1, object_store_memory=64 * 1024 * 1024)
        yield c
        assert not gdfut.is_initialized()


def test_join_errors_say_what_is_wrong(running_cluster, tmp_path):
    c = running_cluster
    other = tmp_path / "other"
    other.mkdir()
    (other / "token").write_bytes(os.urandom(32))
    with pytest.raises(AuthenticationError, match="authentication failed"):
        gdfut.init(address=c.address, session_dir=str(other))
    with pytest.raises(SessionNotFoundError, match="token"):
        gdfut.init(address=c.address, session_dir=str(tmp_path / "no-such-session"))
    for garbage in ("garbage", "127.0.0.1", "host:port", ":80"):
        with pytest.raises(InvalidAddressError, match="HOST:PORT"):
            gdfut.init(address=garbage, session_dir=c.session_dir)
    with pytest.raises(InvalidAddressError):      # named first, even without a session
        gdfut.init(address="garbage", session_dir=str(tmp_path / "no-such-session"))
    node_addr = f"127.0.0.1:{c.nodes[0].info['port']}"
    with pytest.raises(ClusterConnectionError, match="node daemon.*not the head"):
        gdfut.init(address=node_addr, session_dir=c.session_dir)
    with pytest.raises(ClusterConnectionError, match="cannot reach"):
        gdfut.init(address="127.0.0.1:1", session_dir=c.session_dir)
    assert not gdfut.is_initialized()


def test_job_id_is_set_when_init_returns(running_cluster):
    running_cluster.connect()
    try:
        job = gdfut.get_runtime_context().get_job_id()
        assert job is not None and int(job) >= 1
    finally:
        running_cluster.shutdown()


@pytest.mark.own_cluster     # it kills the head
def test_api_calls_after_the_head_died_say_so(cluster):
    head = api._state["daemons"][0]
    head.popen.send_signal(signal.SIGKILL)
    head.popen.wait(10)
    for call in (gdfut.nodes, gdfut.cluster_resources, lambda: gdfut.get_actor("someone")):
        with pytest.raises(ClusterConnectionError, match="head .* cannot be reached"):
            call()


def test_wait_needs_a_list_and_wait_of_nothing_is_nothing(cluster):
    ref = gdfut.put(1)
    with pytest.raises(TypeError, match="list of ObjectRefs, got a single ObjectRef"):
        gdfut.wait(ref)
    assert gdfut.wait([]) == ([], [])
    assert gdfut.wait([], timeout=0) == ([], [])


def gdfut_cli(*args, wrapper=(), timeout=90):
    return subprocess.run([*wrapper, sys.executable, "-m", "gdfut.cli", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_start_head_uses_the_session_dir_it_is_given(tmp_path):
    wanted = tmp_path / "my-session"
    proc = gdfut_cli("start", "--head", "--num-cpus", "1", "--object-store-memory",
                     str(64 * 1024 * 1024), "--session-dir", str(wanted))
    try:
        assert proc.returncode == 0, proc.stderr
        used = re.search(r"session dir:\s+(\S+)", proc.stdout).group(1)
        assert used == os.path.realpath(wanted)
        assert (wanted / "token").is_file()
        assert "GPU 0 (found by NVML)" not in proc.stdout
        # a second head in the same directory is refused, not started elsewhere
        again = gdfut_cli("start", "--head", "--session-dir", str(wanted))
        assert again.returncode == 1 and "already" in again.stderr, again.stderr
        assert "Traceback" not in again.stderr
    finally:
        # under a wrapper whose command line names the session: stop spares it
        stop = gdfut_cli("stop", "--session-dir", str(wanted), wrapper=("timeout", "60"))
        started = re.search(r"session dir:\s+(\S+)", proc.stdout)
        if started and started.group(1) != os.path.realpath(wanted):   # DIR was ignored
            gdfut_cli("stop", "--session-dir", started.group(1))
    assert stop.returncode == 0, (stop.returncode, stop.stdout, stop.stderr)
    assert_no_leaks(str(wanted))


def test_start_does_not_claim_nvml_when_it_is_absent(tmp_path):
    from gdfut.cli import _gpus, _nvml_available
    if _nvml_available():
        pytest.skip("NVML loads on this machine")
    assert "NVML" in _gpus({"resources": {"CPU": 1}}, None)
    assert "found by NVML" not in _gpus({"resources": {"CPU": 1}}, None)
    assert _gpus({"resources": {"GPU": 2}}, None) == "2 (found by NVML)"


# ------------------------------------------- Ray semantics at the API surface
@gdfut.remote
def two(a, b, *, scale=1):
    return (a + b) * scale


@gdfut.remote
def star(*args, **kwargs):
    return len(args), sorted(kwargs)


def test_remote_checks_arguments_at_the_call(cluster):
    with pytest.raises(TypeError, match=r"two\.remote\(\).*missing a required argument: 'b'"):
        two.remote(1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        two.remote(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'c'"):
        two.remote(1, 2, c=3)
    with pytest.raises(TypeError, match="multiple values for argument 'a'"):
        two.remote(1, 2, a=3)
    assert gdfut.get(two.remote(1, b=2, scale=3)) == 9
    assert gdfut.get(two.options(name="renamed").remote(1, 2)) == 3
    assert gdfut.get(star.remote(1, 2, x=1)) == (2, ["x"])
    assert gdfut.get(two.remote(gdfut.put(1), 2)) == 3          # refs bind like any value


def test_remote_refuses_empty_parentheses_and_async_functions():
    with pytest.raises(TypeError, match="no arguments and no parentheses"):
        @gdfut.remote()
        def f():
            pass

    with pytest.raises(ValueError, match="'async def' should not be used for remote tasks"):
        @gdfut.remote
        async def g():
            pass


def test_huge_definitions_are_refused_with_the_fix(cluster, monkeypatch):
    from gdfut import serialization
    assert serialization.FUNCTION_SIZE_ERROR_THRESHOLD == 10**8        # Ray's default
    monkeypatch.setattr(serialization, "FUNCTION_SIZE_ERROR_THRESHOLD", 1_000_000)
    big = np.ones(2_000_000, dtype=np.uint8)

    @gdfut.remote
    def uses_big():
        return int(big.sum())

    with pytest.raises(ValueError, match=r"too large.*gdfut\.put\(\)"):
        uses_big.remote()

    @gdfut.remote
    class HoldsBig:
        def total(self):
            return int(big.sum())

    with pytest.raises(ValueError, match=r"actor class HoldsBig is too large"):
        HoldsBig.remote()


def test_as_future_and_object_id(cluster):
    import asyncio
    import concurrent.futures
    ref = two.remote(1, 2)
    assert isinstance(ref.future(), concurrent.futures.Future)
    assert ref.future().result(timeout=60) == 3

    async def main():
        fut = ref.as_future()
        assert isinstance(fut, asyncio.Future)
        return await fut
    assert asyncio.run(main()) == 3
    assert gdfut.ObjectID is gdfut.ObjectRef and isinstance(ref, gdfut.ObjectID)


@gdfut.remote
def noop():
    return "ran"


def test_memory_is_a_listed_and_scheduled_resource(cluster):
    import warnings

    import psutil
    total = gdfut.cluster_resources()["memory"]
    assert total == psutil.virtual_memory().total
    api._warned.discard("memory")
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        fits = noop.options(memory=1024**2)
    assert not [w for w in got if "memory" in str(w.message)]      # no "not supported yet"
    # fits: runs; more than any node has: unschedulable, named
    assert gdfut.get(fits.remote(), timeout=60) == "ran"
    with pytest.raises(gdfut.exceptions.UnschedulableError, match="memory"):
        gdfut.get(noop.options(memory=total * 2).remote(), timeout=60)
