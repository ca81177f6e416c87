"""Generator tasks end to end (issue 7 point 10): Ray's streaming generators
(a task or actor method that yields returns an ObjectRefGenerator whose refs
arrive as the values are made), num_returns="dynamic" and num_returns=N."""
import asyncio
import gc
import os
import time

import numpy as np
import pytest

import gdfut
from gdfut import protocol as P, runtime_context
from gdfut.exceptions import TaskCancelledError, WorkerCrashedError
from helpers import assert_no_leaks, wait_until

SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


MB = 1024 * 1024


def stored_objects():
    return runtime_context.require().node_request(P.NODE_STATUS)["store"]["num_objects"]


def driver_rows():
    return [r for r in gdfut.memory_summary() if r["owner_mode"] == "driver"]


def all_freed():
    gc.collect()
    wait_until(lambda: not driver_rows() and stored_objects() == 0, timeout=10,
               what="every object freed")


def lines(path):
    return open(path).read().split() if os.path.exists(path) else []


def test_refs_stream_before_the_task_ends(cluster, tmp_path):
    go = str(tmp_path / "go")

    @gdfut.remote
    def numbers(go):
        yield 0
        while not os.path.exists(go):
            time.sleep(0.01)
        yield 1

    gen = numbers.remote(go)
    assert isinstance(gen, gdfut.ObjectRefGenerator)
    first = next(gen)                        # arrives while the task is still running
    assert gdfut.get(first) == 0
    assert gdfut.wait([gen.completed()], timeout=0.3)[0] == []
    assert not gen.next_ready()
    open(go, "w").close()
    assert gdfut.get(next(gen)) == 1
    with pytest.raises(StopIteration):
        next(gen)
    assert gdfut.get(gen.completed()) is None
    assert gen.is_finished()
    del gen, first
    all_freed()


def test_error_after_k_yields_is_in_the_next_ref(cluster):
    @gdfut.remote
    def two_then_fail():
        yield "a"
        yield "b"
        raise KeyError("boom")

    gen = two_then_fail.remote()
    refs = list(gen)                          # the error ref, then the end
    assert len(refs) == 3
    assert gdfut.get(refs[:2]) == ["a", "b"]
    with pytest.raises(KeyError, match="boom"):
        gdfut.get(refs[2])
    with pytest.raises(KeyError):
        gdfut.get(gen.completed())
    del gen, refs
    all_freed()


def test_big_items_go_to_the_store_and_dropping_the_generator_frees_them(cluster):
    @gdfut.remote
    def blocks(n):
        for i in range(n):
            yield np.full(MB, i, dtype=np.uint8)

    gen = blocks.remote(4)
    first = next(gen)
    assert gdfut.get(first)[0] == 0
    wait_until(lambda: stored_objects() == 4, what="all four blocks stored")
    del gen                                   # three were never taken
    gc.collect()
    wait_until(lambda: stored_objects() == 1, what="untaken blocks freed")
    assert gdfut.get(first)[0] == 0           # a taken ref lives on its own
    del first
    all_freed()


def test_small_items_are_inline_and_many_stream_in_order(cluster):
    @gdfut.remote
    def count(n):
        yield from range(n)

    n = 20_000
    out = [gdfut.get(r) for r in count.remote(n)]
    assert out == list(range(n))
    assert stored_objects() == 0
    all_freed()


def test_fast_big_inline_items_do_not_overflow_a_frame(cluster):
    # 90 KiB items are inline. The producer keeps the GIL for up to 1 s at a
    # time, so without a bound on what is queued and unsent the I/O thread
    # would batch far more than the 64 MiB frame limit into one frame.
    @gdfut.remote
    def chunks(n):
        import sys
        before = sys.getswitchinterval()
        sys.setswitchinterval(1.0)
        try:
            payload = b"x" * (90 * 1024)
            for _ in range(n):
                yield payload
        finally:
            sys.setswitchinterval(before)

    gen = chunks.remote(2000)
    assert gdfut.get(gen.completed(), timeout=120) is None
    assert sum(len(gdfut.get(r)) for r in gen) == 2000 * 90 * 1024
    del gen
    all_freed()


def test_backpressure_bounds_items_made_and_not_consumed(cluster, tmp_path):
    made = str(tmp_path / "made")

    @gdfut.remote(_generator_backpressure_num_objects=2)
    def producer(path, n):
        for i in range(n):
            with open(path, "a") as f:
                f.write(f"{i}\n")
            yield i

    gen = producer.remote(made, 10)
    wait_until(lambda: len(lines(made)) >= 2, what="two items made")
    time.sleep(1.0)
    assert len(lines(made)) == 2              # waits for the caller
    refs = [next(gen), next(gen)]
    wait_until(lambda: len(lines(made)) == 4, what="two more made after two taken")
    time.sleep(0.5)
    assert len(lines(made)) == 4
    refs += list(gen)
    assert gdfut.get(refs) == list(range(10))
    del gen, refs
    all_freed()


def test_dropped_generator_does_not_stall_a_backpressured_task(cluster, tmp_path):
    done = str(tmp_path / "done")

    @gdfut.remote(_generator_backpressure_num_objects=1)
    def producer(path):
        for i in range(50):
            yield i
        open(path, "w").close()

    gen = producer.remote(done)
    assert gdfut.get(next(gen)) == 0
    del gen
    gc.collect()
    wait_until(lambda: os.path.exists(done), timeout=30, what="the task to finish")
    all_freed()


def test_dynamic_returns_one_ref_to_a_generator_of_refs(cluster):
    @gdfut.remote(num_returns="dynamic")
    def split(n):
        for i in range(n):
            yield np.full(MB // 2, i, dtype=np.uint8) if i % 2 else i

    ref = split.remote(4)
    assert isinstance(ref, gdfut.ObjectRef)
    dyn = gdfut.get(ref)
    assert isinstance(dyn, gdfut.DynamicObjectRefGenerator) and len(dyn) == 4
    values = [gdfut.get(r) for r in dyn]
    assert values[0] == 0 and values[2] == 2
    assert values[1][0] == 1 and values[3][0] == 3
    assert stored_objects() == 2
    del values, dyn
    gc.collect()
    time.sleep(0.3)
    assert stored_objects() == 2              # the outer ref keeps its items
    del ref
    all_freed()


def test_dynamic_generator_error_is_its_final_ref(cluster):
    @gdfut.remote(num_returns="dynamic")
    def half():
        yield np.zeros(MB, dtype=np.uint8)
        raise ValueError("half way")

    ref = half.remote()
    first, last = gdfut.get(ref)             # as Ray: the error is an extra, final ref
    assert gdfut.get(first).nbytes == MB
    with pytest.raises(ValueError, match="half way"):
        gdfut.get(last)
    del ref, first, last
    all_freed()


def test_num_returns_n_with_a_generator(cluster):
    @gdfut.remote(num_returns=3)
    def three():
        for i in range(3):
            yield np.full(MB, i, dtype=np.uint8)

    assert [int(a[0]) for a in gdfut.get(three.remote())] == [0, 1, 2]
    *values, missing = three.options(num_returns=4).remote()
    assert [int(a[0]) for a in gdfut.get(values)] == [0, 1, 2]
    with pytest.raises(ValueError, match="yielded only 3"):
        gdfut.get(missing)
    too_many = three.options(num_returns=2).remote()
    for ref in too_many:
        with pytest.raises(ValueError, match="more than 2"):
            gdfut.get(ref)
    del values, missing, too_many, ref
    all_freed()                               # the values it stored before failing too


def test_num_returns_n_generator_error_fills_the_remaining_refs(cluster):
    @gdfut.remote
    def generator():
        for i in range(2):
            yield i
        raise Exception("error")

    ref1, ref2, ref3, ref4 = generator.options(num_returns=4).remote()
    assert gdfut.get([ref1, ref2]) == [0, 1]
    for ref in (ref3, ref4):
        with pytest.raises(Exception, match="error"):
            gdfut.get(ref)
    del ref1, ref2, ref3, ref4, ref
    all_freed()


def test_actor_generator_methods_sync_threaded_and_async(cluster):
    @gdfut.remote
    class Source:
        def __init__(self, base):
            self.base = base

        def numbers(self, n):
            for i in range(n):
                yield self.base + i

        @gdfut.method(num_returns="dynamic")
        def dynamic(self, n):
            yield from range(n)

    @gdfut.remote
    class AsyncSource:
        async def numbers(self, n):
            for i in range(n):
                await asyncio.sleep(0)
                yield i

        @gdfut.method(num_returns=2)
        async def pair(self):
            yield "x"
            yield "y"

        @gdfut.method(num_returns="dynamic")
        async def dynamic(self):
            yield 1
            raise RuntimeError("async boom")

    a = Source.remote(100)
    assert [gdfut.get(r) for r in a.numbers.remote(3)] == [100, 101, 102]
    assert [gdfut.get(r) for r in gdfut.get(a.dynamic.remote(3))] == [0, 1, 2]
    t = Source.options(max_concurrency=4).remote(7)
    assert [gdfut.get(r) for r in t.numbers.remote(2)] == [7, 8]
    b = AsyncSource.remote()
    assert [gdfut.get(r) for r in b.numbers.remote(4)] == [0, 1, 2, 3]
    assert gdfut.get(b.pair.remote()) == ["x", "y"]
    one, err = gdfut.get(b.dynamic.remote())
    assert gdfut.get(one) == 1
    with pytest.raises(RuntimeError, match="async boom"):
        gdfut.get(err)
    del a, b, t, one, err
    all_freed()


def test_async_iteration(cluster):
    @gdfut.remote
    def letters():
        yield from "abc"

    async def consume():
        return [await ref async for ref in letters.remote()]

    assert asyncio.run(consume()) == ["a", "b", "c"]
    all_freed()


def test_yielded_value_holding_a_ref(cluster):
    @gdfut.remote
    def wrapped():
        inner = gdfut.put(np.arange(MB // 8))   # owned by the worker
        yield [inner]

    [inner] = gdfut.get(next(wrapped.remote()))
    assert gdfut.get(inner)[-1] == MB // 8 - 1
    del inner
    all_freed()


def test_worker_death_mid_stream_fails_the_next_ref(cluster, tmp_path):
    got = str(tmp_path / "got")

    @gdfut.remote(max_retries=3)
    def dies(got):
        yield 1
        while not os.path.exists(got):      # the first item reached the caller
            time.sleep(0.01)
        os._exit(1)

    gen = dies.remote(got)
    first = next(gen)
    open(got, "w").close()
    rest = list(gen)                          # not retried: it had yielded an item
    assert gdfut.get(first) == 1
    assert len(rest) == 1
    with pytest.raises(WorkerCrashedError, match="already yielded 1 item"):
        gdfut.get(rest[0])
    del gen, first, rest
    all_freed()


def test_worker_death_before_any_item_is_retried(cluster, tmp_path):
    marker = str(tmp_path / "tried")

    @gdfut.remote(max_retries=1)
    def flaky(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        yield "second try"

    assert [gdfut.get(r) for r in flaky.remote(marker)] == ["second try"]
    all_freed()


def test_cancel_a_streaming_generator(cluster):
    @gdfut.remote
    def endless():
        yield "first"
        while True:
            time.sleep(0.05)

    gen = endless.remote()
    assert gdfut.get(next(gen)) == "first"
    gdfut.cancel(gen)
    err = next(gen)
    with pytest.raises(TaskCancelledError):
        gdfut.get(err, timeout=30)
    with pytest.raises(StopIteration):
        next(gen)
    del gen, err
    all_freed()


def test_generator_cannot_be_passed_to_a_task(cluster):
    @gdfut.remote
    def numbers():
        yield 1

    @gdfut.remote
    def consume(g):
        return list(g)

    gen = numbers.remote()
    with pytest.raises(Exception, match="ObjectRefGenerator cannot be passed"):
        consume.remote(gen)
    assert [gdfut.get(r) for r in gen] == [1]


def test_bad_generator_options_are_refused(cluster):
    def numbers():
        yield 1

    with pytest.raises(ValueError, match="num_returns"):
        gdfut.remote(num_returns="lots")(numbers)
    with pytest.raises(ValueError, match="_generator_backpressure_num_objects"):
        gdfut.remote(_generator_backpressure_num_objects=0)(numbers)

    @gdfut.remote(num_returns="streaming")
    def not_a_generator():
        return 1

    [ref] = list(not_a_generator.remote())
    with pytest.raises(TypeError, match="needs a generator function"):
        gdfut.get(ref)
    del ref
    all_freed()


def test_wait_on_generators_and_refs(cluster, tmp_path):
    go = str(tmp_path / "go")

    @gdfut.remote
    def gated(go):
        while not os.path.exists(go):
            time.sleep(0.01)
        yield "item"

    @gdfut.remote
    def plain():
        return 1

    gen = gated.remote(go)
    ref = plain.remote()
    for _ in range(20):                       # timed-out waits leave no watcher behind
        assert gdfut.wait([gen], timeout=0.01) == ([], [gen])
    wait_until(lambda: not runtime_context.require().stream_watchers, what="watchers gone")
    ready, rest = gdfut.wait([gen, ref], num_returns=1)
    assert ready == [ref] and rest == [gen]
    open(go, "w").close()
    ready, rest = gdfut.wait([gen, ref], num_returns=2, timeout=30)
    assert ready == [gen, ref] and rest == []
    assert gdfut.get(next(gen)) == "item"     # at once: it was ready
    assert gdfut.wait([gen], timeout=30)[0] == [gen]   # the end is "ready" too
    with pytest.raises(StopIteration):
        next(gen)
    del gen, ref, ready, rest
    all_freed()


def test_a_task_consumes_a_generator_on_a_one_cpu_node():
    @gdfut.remote
    def numbers(n):
        yield from range(n)

    @gdfut.remote
    def total(n):
        return sum(gdfut.get(ref) for ref in numbers.remote(n))

    info = gdfut.init(num_cpus=1)
    try:                                       # waiting in next() frees the only CPU
        assert gdfut.get(total.remote(10), timeout=60) == 45
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def test_generator_on_another_node_streams_stored_items():
    from gdfut.testing import Cluster
    from helpers import shm_files

    @gdfut.remote
    def blocks(n):
        for i in range(n):
            yield np.full(MB, i, dtype=np.uint8), gdfut.get_runtime_context().get_node_id()

    c = Cluster()
    try:
        c.add_node(num_cpus=1, wait=False)
        b = c.add_node(num_cpus=1)
        c.connect()
        pin_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
        gen = blocks.options(scheduling_strategy=pin_b).remote(3)
        for i, ref in enumerate(gen):
            arr, node = gdfut.get(ref)            # pulled from node b's store
            assert int(arr[0]) == i and node == b.node_id
        del gen, ref, arr
        all_freed()                               # incl. the copies pulled here
        rt = runtime_context.require()

        async def objects_on_b():
            conn = await rt.node_connection(bytes.fromhex(b.node_id))
            return (await conn.request(P.NODE_STATUS))["store"]["num_objects"]
        wait_until(lambda: rt.io.run(objects_on_b(), 10) == 0, what="node b's copies freed")
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)
