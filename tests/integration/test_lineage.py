"""Lineage reconstruction (issue 9, point 3): lost objects are re-made by
re-running the tasks that made them; what cannot be re-made fails saying why."""
import numpy as np
import pytest

import gdfut
from gdfut import protocol as P
from gdfut import runtime_context
from gdfut.exceptions import ObjectLostError
from gdfut.testing import Cluster
from helpers import assert_no_leaks, shm_files, wait_until

N = 200_000          # int64s: 1.6 MB, stored (not inline)


@pytest.fixture
def lossy():
    """Node a (the driver's, 1 CPU) and node b, the only one with resource
    "b": tasks asking for it run there, so their results live only there."""
    c = Cluster()
    try:
        a = c.add_node(num_cpus=1, wait=False)
        b = c.add_node(num_cpus=1, resources={"b": 1})
        yield c, a, b
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)


# A fraction of "b": a task blocked reading a lost argument lends its CPU
# (not its other resources), and the re-run of that argument's task needs one.
@gdfut.remote(resources={"b": 0.01})
def first(n):
    return np.arange(n, dtype=np.int64)


@gdfut.remote(resources={"b": 0.01})
def step(arr, k):
    return arr + k


def lineage_stats():
    rt = runtime_context.require()
    return rt.io.run(_stats(rt), timeout=10)


async def _stats(rt):
    return dict(rt.submitter.lineage_stats(), table_lineages=rt.table.stats()["lineages"])


def test_chain_lost_with_its_node_is_rebuilt_on_a_new_node(lossy):
    c, a, b = lossy
    c.connect()
    ref = step.remote(step.remote(first.remote(N), 1), 2)    # only the last ref is kept
    wait_until(lambda: gdfut.wait([ref], timeout=0)[0], timeout=60, what="the chain")
    assert lineage_stats()["lineages"] == 3      # the two freed steps are still needed
    c.remove_node(b)
    c.add_node(num_cpus=1, resources={"b": 1})  # a new node that can run them
    out = gdfut.get(ref, timeout=90)
    assert out[0] == 3 and out[-1] == N - 1 + 3 and len(out) == N
    del out, ref
    wait_until(lambda: lineage_stats() == dict(lineage_stats(), lineages=0, specs=0,
                                               table_lineages=0, lineage_bytes=0),
               timeout=10, what="the lineage to be released")


def drop_from_store(oid):
    """What a store that lost the copy looks like to its owner."""
    rt = runtime_context.require()
    rt.io.run(_drop(rt, oid), timeout=10)


async def _drop(rt, oid):
    rt.node_conn.send([P.STORE_FREE, [oid]])
    await rt.node_conn.request(P.NODE_STATUS)      # processed before we go on


def test_put_object_whose_only_copy_is_lost_cannot_be_rebuilt(lossy):
    c, a, b = lossy
    c.connect()
    ref = gdfut.put(np.ones(N))
    drop_from_store(ref.id)
    with pytest.raises(ObjectLostError, match=r"was made by put\(\) and its only copy was "
                                              r"lost .*; it cannot be rebuilt"):
        gdfut.get(ref, timeout=30)


def test_task_result_dropped_by_its_store_is_rebuilt(lossy):
    c, a, b = lossy
    c.connect()
    ref = first.remote(N)
    gdfut.wait([ref], timeout=60)
    rt = runtime_context.require()
    rt.io.run(_drop_remote(rt, ref.id, b), timeout=10)
    assert int(gdfut.get(ref, timeout=60).sum()) == N * (N - 1) // 2
    assert lineage_stats()["rebuilds"] == 1


async def _drop_remote(rt, oid, node):
    conn = await rt.node_connection(bytes.fromhex(node.node_id))
    conn.send([P.STORE_FREE, [oid]])
    await conn.request(P.NODE_STATUS)


def test_lineage_released_when_refs_are_dropped(lossy):
    c, a, b = lossy
    c.connect()
    refs = [step.remote(first.remote(1000), i) for i in range(5)]
    gdfut.get(refs, timeout=60)
    assert lineage_stats()["lineages"] == 10
    del refs
    wait_until(lambda: lineage_stats()["lineages"] == 0 and lineage_stats()["specs"] == 0,
               timeout=10, what="the lineage to be released")


def test_evicted_lineage_gives_a_clear_error(lossy):
    c, a, b = lossy
    c.connect(max_lineage_bytes=1000)
    keep = first.remote(N)
    gdfut.wait([keep], timeout=60)
    later = [first.remote(i) for i in range(20)]     # push keep's spec out
    gdfut.get(later, timeout=60)
    assert lineage_stats()["evicted"] >= 1
    c.remove_node(b)
    with pytest.raises(ObjectLostError, match=r"lineage was evicted \(max_lineage_bytes=1000\)"):
        gdfut.get(keep, timeout=60)


def test_chain_with_every_ref_held_is_rebuilt_through_its_readers(lossy):
    # The intermediate results are alive but lost: the re-run of each step
    # finds its argument lost when it reads it and asks the driver for it.
    c, a, b = lossy
    c.connect()
    r1 = first.remote(N)
    r2 = step.remote(r1, 1)
    r3 = step.remote(r2, 2)
    gdfut.wait([r1, r2, r3], num_returns=3, timeout=60)
    c.remove_node(b)
    c.add_node(num_cpus=1, resources={"b": 1})
    out = gdfut.get(r3, timeout=90)
    assert out[0] == 3 and out[-1] == N - 1 + 3
    assert lineage_stats()["rebuilds"] == 3
    assert int(gdfut.get(r1, timeout=30)[-1]) == N - 1     # rebuilt on the way


def test_task_submitted_after_the_loss_has_its_argument_rebuilt(lossy):
    c, a, b = lossy
    c.connect()
    r1 = first.remote(N)
    gdfut.wait([r1], timeout=60)
    c.remove_node(b)
    c.add_node(num_cpus=1, resources={"b": 1})

    @gdfut.remote          # runs on node a; its argument's only copy was on b
    def total(arr):
        return int(arr.sum())
    assert gdfut.get(total.remote(r1), timeout=90) == N * (N - 1) // 2
    assert lineage_stats()["rebuilds"] == 1


def test_rebuilds_are_bounded_by_max_retries(lossy):
    c, a, b = lossy
    c.connect()
    ref = first.options(max_retries=0).remote(N)
    gdfut.wait([ref], timeout=60)
    c.remove_node(b)
    with pytest.raises(ObjectLostError, match="already re-run max_retries=0 times"):
        gdfut.get(ref, timeout=60)
