"""The core API end to end on an embedded cluster (issue 2)."""
import asyncio
import os
import pickle
import signal
import threading
import time

import numpy as np
import pytest

import gdfut
from gdfut.exceptions import (ActorDiedError, GetTimeoutError, NotInitializedError,
                              ObjectStoreFullError, SerializationError, TaskCancelledError,
                              TaskError, WorkerCrashedError)
from helpers import STORE, node_status, store_stats
from helpers import assert_no_leaks, wait_until

SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


@gdfut.remote
def add(a, b):
    return a + b


@gdfut.remote
def total(arr):
    return float(arr.sum())


def test_put_get_zero_copy_readonly(cluster):
    arr = np.arange(10**6, dtype=np.float64)
    ref = gdfut.put(arr)
    out = gdfut.get(ref)
    assert np.array_equal(out, arr)
    assert not out.flags.writeable
    again = gdfut.get(ref)
    assert np.shares_memory(out, again)      # both views of the one stored copy
    with pytest.raises(ValueError):
        out[0] = 1.0


def _in_shared_arena(address: int) -> bool:
    """Whether ``address`` lies in a mapping of a gdfut arena in /dev/shm."""
    with open("/proc/self/maps") as f:
        for line in f:
            if "/dev/shm/gdfut-" in line:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if lo <= address < hi:
                    return True
    return False


def test_arrow_table_zero_copy(cluster):
    pa = pytest.importorskip("pyarrow")
    n = 2 * 1024 * 1024
    table = pa.table({"x": pa.array(np.arange(n, dtype=np.int64)),
                      "y": pa.array(np.ones(n, dtype=np.float64))})
    ref = gdfut.put(table)
    used = store_stats()["used_bytes"]
    assert table.nbytes <= used < table.nbytes + 1024 * 1024    # written once
    out = gdfut.get(ref)
    assert out.equals(table)
    values = out.column("x").chunk(0).buffers()[1]
    assert _in_shared_arena(values.address)                    # a view of the store
    assert not _in_shared_arena(table.column("x").chunk(0).buffers()[1].address)
    assert gdfut.get(total.remote(gdfut.put(np.asarray(out.column("y"))))) == float(n)


def test_small_values_inline_never_touch_store(cluster):
    refs = [gdfut.put(i) for i in range(50)] + [add.remote(i, 1) for i in range(50)]
    assert gdfut.get(refs) == list(range(50)) + list(range(1, 51))
    assert store_stats()["num_objects"] == 0


def test_pass_by_reference_one_copy_for_8_tasks(cluster):
    arr = np.ones(4 * 1024 * 1024)   # 32 MiB
    ref = gdfut.put(arr)
    before = store_stats()
    assert before["num_objects"] == 1
    sums = gdfut.get([total.remote(ref) for _ in range(8)])
    assert sums == [float(arr.size)] * 8
    after = store_stats()
    assert after["num_objects"] == 1
    assert after["used_bytes"] == before["used_bytes"] < 2 * arr.nbytes


def test_large_argument_by_value_goes_through_store(cluster):
    arr = np.ones(2 * 1024 * 1024)
    assert gdfut.get(total.remote(arr)) == arr.size


def test_large_return_value(cluster):
    @gdfut.remote
    def make(n):
        return np.full(n, 7, dtype=np.int32)

    out = gdfut.get(make.remote(10**6))
    assert out.shape == (10**6,) and int(out[123]) == 7 and not out.flags.writeable


def test_nested_refs_arrive_as_refs(cluster):
    @gdfut.remote
    def inspect_arg(lst):
        assert isinstance(lst[0], gdfut.ObjectRef)
        return gdfut.get(lst[0]) * 2

    inner = gdfut.put(21)
    assert gdfut.get(inspect_arg.remote([inner])) == 42
    # top-level refs are resolved to values
    assert gdfut.get(add.remote(inner, 1)) == 22


def test_num_returns(cluster):
    @gdfut.remote(num_returns=3)
    def three():
        return 1, "two", [3]

    a, b, c = three.remote()
    assert gdfut.get([a, b, c]) == [1, "two", [3]]
    r1, r2 = three.options(num_returns=2).remote()
    with pytest.raises(ValueError, match="num_returns=2"):
        gdfut.get(r1)


def test_wait_semantics(cluster):
    @gdfut.remote
    def sleepy(t):
        time.sleep(t)
        return t

    fast = sleepy.remote(0)
    slow = sleepy.remote(6)     # long enough that fast is done first even on a loaded machine
    ready, not_ready = gdfut.wait([slow, fast], num_returns=1, timeout=5)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = gdfut.wait([slow, fast], num_returns=2, timeout=0.1)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = gdfut.wait([fast, slow], num_returns=2)
    assert ready == [fast, slow] and not_ready == []
    with pytest.raises(ValueError):
        gdfut.wait([fast], num_returns=2)


def test_get_timeout(cluster):
    @gdfut.remote
    def forever():
        time.sleep(30)

    ref = forever.remote()
    t0 = time.monotonic()
    with pytest.raises(GetTimeoutError):
        gdfut.get(ref, timeout=0.3)
    assert time.monotonic() - t0 < 3
    gdfut.cancel(ref, force=True)


def test_exception_is_original_class_with_traceback(cluster):
    @gdfut.remote
    def boom(x):
        raise KeyError(f"missing {x}")

    with pytest.raises(KeyError) as info:
        gdfut.get(boom.remote("k"))
    err = info.value
    assert isinstance(err, TaskError)
    assert "missing k" in str(err)
    assert "boom" in err.remote_traceback and "raise KeyError" in err.remote_traceback


def test_failed_dependency_propagates(cluster):
    @gdfut.remote
    def boom():
        raise ZeroDivisionError("first")

    with pytest.raises(ZeroDivisionError, match="first"):
        gdfut.get(add.remote(boom.remote(), 1))


def test_nested_tasks_do_not_deadlock(cluster):
    @gdfut.remote
    def parent(n):
        return sum(gdfut.get([add.remote(i, 0) for i in range(n)]))

    # more blocking parents than CPUs: blocked workers lend their CPU out
    assert gdfut.get([parent.remote(5) for _ in range(4)], timeout=60) == [10] * 4


def test_many_tasks_ordered_results(cluster):
    refs = [add.remote(i, i) for i in range(3000)]
    assert gdfut.get(refs) == [2 * i for i in range(3000)]


def test_await_ref_in_asyncio(cluster):
    async def main():
        return await add.remote(2, 3)
    assert asyncio.run(main()) == 5


def test_unpicklable_argument_named_at_call_site(cluster):
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="argument 1 of add"):
        add.remote(1, lock)
    with pytest.raises(SerializationError, match="argument 'b' of add"):
        add.remote(1, b=lock)


def test_object_store_full_names_sizes(monkeypatch):
    # a disk quota: an object larger than the host tier and the disk together
    monkeypatch.setenv("GDFUT_SPILL_CAPACITY", str(STORE // 4))
    info = gdfut.init(num_cpus=2, object_store_memory=STORE // 4)
    try:
        with pytest.raises(ObjectStoreFullError, match="does not fit") as err:
            gdfut.put(np.zeros(STORE // 8 + 1024))
        assert str(STORE // 4) in str(err.value) and "all tiers together" in str(err.value)
        assert store_stats()["num_objects"] == 0
        # the store still works afterwards
        assert gdfut.get(total.remote(np.ones(300_000))) == 300_000
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def test_worker_crash_raises_worker_crashed(cluster):
    @gdfut.remote(max_retries=0)
    def die():
        os._exit(3)

    with pytest.raises(WorkerCrashedError, match="died"):
        gdfut.get(die.remote(), timeout=30)
    assert gdfut.get(add.remote(1, 1), timeout=30) == 2   # the pool recovers


def test_worker_crash_is_retried(cluster, tmp_path):
    marker = tmp_path / "crashed-once"

    @gdfut.remote(max_retries=2)
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "ok"

    assert gdfut.get(crash_once.remote(str(marker)), timeout=30) == "ok"


def test_cancel_queued_and_running(cluster):
    @gdfut.remote
    def sleepy(t):
        # short sleeps: a non-forced cancel lands between bytecodes
        for _ in range(int(t * 10)):
            time.sleep(0.1)
        return t

    running = [sleepy.remote(20) for _ in range(2)]
    queued = sleepy.remote(20)
    time.sleep(0.5)
    gdfut.cancel(queued)
    with pytest.raises(TaskCancelledError):
        gdfut.get(queued, timeout=10)
    gdfut.cancel(running[0])
    with pytest.raises(TaskCancelledError):
        gdfut.get(running[0], timeout=10)
    gdfut.cancel(running[1], force=True)
    with pytest.raises(TaskCancelledError):
        gdfut.get(running[1], timeout=10)


def test_bad_get_input(cluster):
    with pytest.raises(TypeError, match="ObjectRef"):
        gdfut.get(42)


def test_get_after_shutdown_is_clear():
    info = gdfut.init(num_cpus=1, object_store_memory=64 * 1024 * 1024)
    ref = gdfut.put(1)
    gdfut.shutdown()
    with pytest.raises(NotInitializedError, match="not initialized"):
        gdfut.get(ref)
    assert_no_leaks(info["session_dir"])


def test_init_twice_is_an_error(cluster):
    with pytest.raises(RuntimeError, match="already"):
        gdfut.init()
    assert gdfut.is_initialized()


def test_cluster_and_available_resources(cluster):
    from helpers import wait_until
    assert gdfut.cluster_resources()["CPU"] == 2
    wait_until(lambda: gdfut.available_resources().get("CPU") == 2, timeout=10,
               what="an idle node's heartbeat")

    @gdfut.remote
    def task_ids():
        ctx = gdfut.get_runtime_context()
        return ctx.get_task_id(), ctx.get_actor_id()

    (t1, a1), (t2, _) = gdfut.get([task_ids.remote(), task_ids.remote()])
    assert t1 and t2 and t1 != t2 and a1 is None
    assert gdfut.get_runtime_context().get_task_id() is None
    assert gdfut.get_runtime_context().get_job_id()


def test_malformed_task_message_fails_the_task_not_hangs(cluster):
    # what a worker of another gdfut version would see: a task message of the
    # wrong shape must come back as an error, never leave the caller waiting
    from gdfut import runtime_context
    from gdfut.submitter import TaskSpec
    rt = runtime_context.require()
    original = TaskSpec.wire
    TaskSpec.wire = lambda self, rt, include_fn, gpu_ids=(): original(self, rt, include_fn)[:12]
    try:
        with pytest.raises(gdfut.exceptions.GdfutError, match="could not read the task"):
            gdfut.get(add.remote(1, 2), timeout=30)
    finally:
        TaskSpec.wire = original
    assert gdfut.get(add.remote(1, 2), timeout=30) == 3
    assert rt is runtime_context.require()


def test_workers_that_cannot_start_fail_tasks_clearly(tmp_path, monkeypatch):
    # A gdfut package whose worker entry point dies at start; every other
    # module is the real one (the package path lists the real directory second).
    import os
    real = os.path.dirname(gdfut.__file__)
    fake = tmp_path / "gdfut"
    fake.mkdir()
    (fake / "__init__.py").write_text(
        f"__path__.append({real!r})\n"
        f"exec(compile(open({os.path.join(real, '__init__.py')!r}).read(), __file__, 'exec'))\n")
    (fake / "worker_main.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("PYTHONSAFEPATH", "1")      # no cwd first on the path of -m
    info = gdfut.init(num_cpus=1, object_store_memory=64 * 1024 * 1024)
    try:
        t0 = time.monotonic()
        with pytest.raises(gdfut.exceptions.WorkerCrashedError, match="fail to start"):
            gdfut.get(add.remote(1, 2), timeout=60)
        assert time.monotonic() - t0 < 30
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])
