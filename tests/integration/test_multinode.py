"""Several node daemons on one machine behaving as one cluster (issue 4)."""
import collections
import os
import time

import numpy as np
import pytest

import gdfut
from gdfut import protocol as P
from gdfut.exceptions import UnschedulableError
from gdfut.testing import Cluster
from helpers import assert_no_leaks, shm_files, wait_until

MB = 1024 * 1024


@pytest.fixture
def two_nodes():
    c = Cluster()
    try:
        a = c.add_node(num_cpus=1, wait=False)
        b = c.add_node(num_cpus=2, num_gpus=1, resources={"accel": 2})
        c.connect()
        yield c, a, b
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)


@gdfut.remote
def where():
    return gdfut.get_runtime_context().get_node_id()


@gdfut.remote
def busy_where(t):
    time.sleep(t)
    return gdfut.get_runtime_context().get_node_id()


@gdfut.remote
def make_array(n, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**31, size=n, dtype=np.int64), gdfut.get_runtime_context().get_node_id()


@gdfut.remote
def checksum(arr):
    return int(arr.sum()), gdfut.get_runtime_context().get_node_id()


def test_tasks_run_on_every_node(two_nodes):
    c, a, b = two_nodes
    nodes = set(gdfut.get([busy_where.remote(0.3) for _ in range(12)], timeout=60))
    assert nodes == {a.node_id, b.node_id}


def test_object_made_on_one_node_read_on_another(two_nodes):
    c, a, b = two_nodes
    pin_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
    pin_a = gdfut.NodeAffinitySchedulingStrategy(a.node_id)
    made = make_array.options(scheduling_strategy=pin_b, num_returns=1).remote(3 * MB, 7)
    arr_ref = gdfut.get(made)
    arr, node = arr_ref
    assert node == b.node_id
    expect = int(np.random.default_rng(7).integers(0, 2**31, size=3 * MB, dtype=np.int64).sum())
    assert int(arr.sum()) == expect                       # driver (node a) pulled it
    big = gdfut.put(arr)                                  # primary on node a
    total, ran_on = gdfut.get(checksum.options(scheduling_strategy=pin_b).remote(big))
    assert (total, ran_on) == (expect, b.node_id)         # node b pulled it


def test_hard_affinity_waits_for_its_busy_node(two_nodes):
    c, a, b = two_nodes
    pin_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
    # more pinned tasks than b has CPUs, while a sits idle: all must run on b
    nodes = gdfut.get([busy_where.options(scheduling_strategy=pin_b).remote(0.2)
                       for _ in range(6)], timeout=60)
    assert set(nodes) == {b.node_id}


def test_locality_runs_task_where_its_data_is(two_nodes):
    c, a, b = two_nodes
    pin_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)

    @gdfut.remote
    def make_big():
        return np.ones(100 * MB // 8)

    ref = make_big.options(scheduling_strategy=pin_b).remote()
    gdfut.wait([ref])
    for _ in range(3):
        total, node = gdfut.get(checksum.remote(ref))
        assert node == b.node_id and total == 100 * MB // 8


def test_gpu_tasks_only_on_gpu_nodes(two_nodes):
    c, a, b = two_nodes
    nodes = gdfut.get([where.options(num_gpus=1).remote() for _ in range(4)], timeout=60)
    assert set(nodes) == {b.node_id}
    nodes = gdfut.get([where.options(resources={"accel": 1}).remote() for _ in range(4)])
    assert set(nodes) == {b.node_id}


def test_unschedulable_fails_fast(two_nodes):
    t0 = time.monotonic()
    with pytest.raises(UnschedulableError, match="GPU"):
        gdfut.get(where.options(num_gpus=4).remote(), timeout=30)
    with pytest.raises(UnschedulableError, match="tpu"):
        gdfut.get(where.options(resources={"tpu": 1}).remote(), timeout=30)
    assert time.monotonic() - t0 < 10


def test_spillback_when_local_node_is_busy(two_nodes):
    c, a, b = two_nodes
    # node a (the driver's) has 1 CPU: a long task there, then more work spills to b
    pin_a = gdfut.NodeAffinitySchedulingStrategy(a.node_id)
    blocker = busy_where.options(scheduling_strategy=pin_a).remote(3)
    time.sleep(0.5)
    nodes = gdfut.get([busy_where.remote(0.5) for _ in range(4)], timeout=60)
    assert set(nodes) == {b.node_id}
    assert gdfut.get(blocker) == a.node_id


def test_spread_and_soft_affinity(two_nodes):
    c, a, b = two_nodes
    nodes = gdfut.get([busy_where.options(scheduling_strategy="SPREAD").remote(0.2)
                       for _ in range(6)], timeout=60)
    counts = collections.Counter(nodes)
    assert set(counts) == {a.node_id, b.node_id}
    soft = gdfut.NodeAffinitySchedulingStrategy("ab" * 16, soft=True)
    assert gdfut.get(where.options(scheduling_strategy=soft).remote()) in {a.node_id, b.node_id}


def test_node_added_mid_run_receives_work(two_nodes):
    c, a, b = two_nodes
    first = gdfut.get([busy_where.remote(0.1) for _ in range(6)])
    assert set(first) <= {a.node_id, b.node_id}
    d = c.add_node(num_cpus=2, resources={"new": 1})
    assert gdfut.get(where.options(resources={"new": 1}).remote(), timeout=30) == d.node_id
    nodes = set(gdfut.get([busy_where.remote(0.5) for _ in range(20)], timeout=60))
    assert d.node_id in nodes


def test_actor_placed_on_gpu_node(two_nodes):
    c, a, b = two_nodes

    @gdfut.remote(num_gpus=1)
    class GpuActor:
        def node(self):
            return gdfut.get_runtime_context().get_node_id()

    act = GpuActor.remote()
    assert gdfut.get(act.node.remote(), timeout=30) == b.node_id
    gdfut.kill(act)


def test_node_death_retries_tasks_elsewhere(two_nodes):
    c, a, b = two_nodes
    pin_soft_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id, soft=True)
    refs = [busy_where.options(scheduling_strategy=pin_soft_b, max_retries=3).remote(2)
            for _ in range(2)]
    time.sleep(1.0)
    c.remove_node(b)
    nodes = gdfut.get(refs, timeout=60)
    assert set(nodes) == {a.node_id}


@pytest.mark.parametrize("transport", ["tcp", "ucx"])
def test_object_pulled_over_each_data_transport(transport):
    if transport == "ucx":
        pytest.importorskip("ucxx", reason="ucxx (ucxx-cu12) is not installed")
    c = Cluster(transport=transport)
    try:
        a = c.add_node(num_cpus=1, wait=False)
        b = c.add_node(num_cpus=1)
        c.connect()
        assert {n["transport"] for n in c.alive_nodes()} == {transport}
        pin_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
        arr = np.arange(150 * MB // 8, dtype=np.int64)      # > 2 chunks of 64 MiB
        ref = gdfut.put(arr)                                 # primary on node a
        total, ran_on = gdfut.get(checksum.options(scheduling_strategy=pin_b).remote(ref))
        assert ran_on == b.node_id and total == int(arr.sum())

        def pulled_by_b():
            row = next(n for n in c.alive_nodes() if n["node_id"].hex() == b.node_id)
            return ((row.get("stats") or {}).get("transfer") or {}).get("pulled_bytes", 0)
        wait_until(lambda: pulled_by_b() >= arr.nbytes, timeout=10,
                   what="node b's heartbeat to report the pull")
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)


@gdfut.remote
class Maker:
    def make(self, n):
        return np.ones(n)                          # stored in the store of the actor's node


def objects_on(c, node) -> int:
    from gdfut.cli import head_request           # any daemon answers NODE_STATUS
    status = head_request(("127.0.0.1", node.info["port"]), c.token, P.NODE_STATUS)
    return status["store"]["num_objects"]


@gdfut.remote(max_retries=0)
def hold_and_die(maker, go_path):
    ref = maker.make.remote(MB)                    # owned by this worker
    gdfut.wait([ref])
    while not os.path.exists(go_path):             # the test has seen the object
        time.sleep(0.01)
    os._exit(1)                                    # dies holding it


@gdfut.remote(max_retries=0)
def hold(maker):
    ref = maker.make.remote(MB)                    # owned by this worker
    gdfut.wait([ref])
    time.sleep(60)


def test_dead_owner_objects_freed_on_a_node_it_never_connected_to(two_nodes, tmp_path):
    c, a, b = two_nodes
    pin_a = gdfut.NodeAffinitySchedulingStrategy(a.node_id)
    pin_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
    maker = Maker.options(scheduling_strategy=pin_b).remote()
    assert objects_on(c, b) == 0
    go = tmp_path / "go"
    dying = hold_and_die.options(scheduling_strategy=pin_a).remote(maker, str(go))
    wait_until(lambda: objects_on(c, b) == 1, timeout=20, what="the object on node b")
    go.touch()                                     # now the owner dies
    with pytest.raises(gdfut.exceptions.WorkerCrashedError):
        gdfut.get(dying, timeout=60)
    # node b hears of the death from the head and frees what that owner had there
    wait_until(lambda: objects_on(c, b) == 0, timeout=10,
               what="node b to free the dead owner's object")


def test_objects_of_owners_on_a_dead_node_are_freed_elsewhere(two_nodes):
    c, a, b = two_nodes
    pin_a = gdfut.NodeAffinitySchedulingStrategy(a.node_id)
    pin_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
    maker = Maker.options(scheduling_strategy=pin_a).remote()
    holding = hold.options(scheduling_strategy=pin_b).remote(maker)
    wait_until(lambda: objects_on(c, a) == 1, timeout=20, what="the object on node a")
    c.remove_node(b)                               # the owner's whole node dies
    wait_until(lambda: objects_on(c, a) == 0, timeout=10, what="node a to free the object")
    with pytest.raises(gdfut.exceptions.GdfutError):
        gdfut.get(holding, timeout=30)


def test_leases_from_two_nodes_are_all_returned():
    # Each node numbers its leases from 1: the owner must keep them apart.
    c = Cluster()
    try:
        a = c.add_node(num_cpus=1, wait=False)
        b = c.add_node(num_cpus=1)
        c.connect()
        nodes = gdfut.get([busy_where.remote(0.5) for _ in range(2)], timeout=60)
        assert set(nodes) == {a.node_id, b.node_id}
        wait_until(lambda: gdfut.available_resources().get("CPU") == 2, timeout=10,
                   what="both leases to be returned once idle")
    finally:
        c.shutdown()
        assert_no_leaks(c.session_dir)
