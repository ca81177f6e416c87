"""Host and disk tiers: objects that do not fit in the host store are spilled
to disk and restored on access, pinned objects never move, and spill files
never outlive their objects (issue 8)."""
from __future__ import annotations

import os
import random
import signal
import time

import numpy as np
import pytest

import gdfut
from gdfut.exceptions import ObjectStoreFullError
from helpers import assert_no_leaks, node_status, wait_until

MIB = 1 << 20
HOST = 256 * MIB
OBJ = 64 * MIB
FUSED_FILE = 256 * MIB


@pytest.fixture
def small_store(tmp_path):
    spill_dir = str(tmp_path / "spill")
    info = gdfut.init(num_cpus=2, object_store_memory=HOST, spill_dir=spill_dir)
    info = {**info, "spill_dir": spill_dir}
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"], spill_dir)
        assert not os.path.exists(spill_dir) or not os.listdir(spill_dir)


def spill_bytes(spill_dir: str) -> int:
    """Bytes the spill files take on disk (allocated blocks, holes excluded)."""
    total = 0
    for root, _, files in os.walk(spill_dir):
        for name in files:
            if name.startswith("spill-"):
                try:
                    total += os.stat(os.path.join(root, name)).st_blocks * 512
                except FileNotFoundError:
                    pass
    return total


def tier_of(ref) -> str | None:
    rows = [r for r in gdfut.memory_summary() if r["oid"] == ref.id and r.get("owned", True)]
    return rows[0]["tier"] if rows else None


def test_forty_objects_through_a_quarter_gib_store(small_store):
    """40 x 64 MiB through a 256 MiB host store, 8 alive at a time (dropped in
    random order, so fused files hold dead objects next to live ones)."""
    rng = random.Random(8)
    alive: dict[int, gdfut.ObjectRef] = {}
    most_on_disk = 0
    for i in range(40):
        alive[i] = gdfut.put(np.full(OBJ, i % 251, dtype=np.uint8))
        if len(alive) > 8:
            victim = rng.choice(sorted(alive))
            value = gdfut.get(alive[victim])
            assert value.shape == (OBJ,) and value[0] == value[-1] == victim % 251
            assert (value == victim % 251).all()
            del value
            del alive[victim]
        on_disk = spill_bytes(small_store["spill_dir"])
        live_on_disk = node_status()["tiers"]["disk_bytes"]
        most_on_disk = max(most_on_disk, on_disk)
        # live data plus one fused file: freed objects give their blocks back
        assert on_disk <= min(live_on_disk, len(alive) * OBJ) + FUSED_FILE, (i, on_disk)
    for i, ref in alive.items():
        assert (gdfut.get(ref) == i % 251).all()
    tiers = node_status()["tiers"]
    assert tiers["spilled_objects"] >= 15 and tiers["restored_objects"] >= 10
    assert most_on_disk > 0
    del ref
    alive.clear()
    wait_until(lambda: spill_bytes(small_store["spill_dir"]) == 0, timeout=10,
               what="the spill files to go with the last refs")
    wait_until(lambda: node_status()["tiers"]["disk_bytes"] == 0, timeout=10,
               what="the disk tier to be empty")


@gdfut.remote
def make(i):
    return np.full(OBJ, i, dtype=np.uint8)


@gdfut.remote
def pair_sum(a, b):
    return int(a.sum(dtype=np.int64) + b.sum(dtype=np.int64))


def test_pipeline_with_intermediate_data_four_times_the_host_store(small_store):
    parts = [make.remote(i) for i in range(16)]             # 1 GiB of intermediate data
    sums = [pair_sum.remote(parts[i], parts[i + 1]) for i in range(0, 16, 2)]
    assert gdfut.get(sums) == [OBJ * (i + i + 1) for i in range(0, 16, 2)]
    assert node_status()["tiers"]["spilled_bytes"] >= 512 * MIB


def test_pinned_object_is_never_spilled_and_killed_reader_unpins(small_store):
    held = gdfut.put(np.full(OBJ, 7, dtype=np.uint8))
    view = gdfut.get(held)                                   # a get view pins it

    @gdfut.remote
    class Reader:
        def hold(self, refs):
            self.value = gdfut.get(refs[0])                  # keeps a pin while alive
            return os.getpid()

    watched = gdfut.put(np.full(OBJ, 9, dtype=np.uint8))
    reader = Reader.remote()
    pid = gdfut.get(reader.hold.remote([watched]))
    others = [gdfut.put(np.full(OBJ, i, dtype=np.uint8)) for i in range(6)]
    assert tier_of(held) == "host" and tier_of(watched) == "host"
    assert node_status()["tiers"]["spilled_objects"] >= 4
    assert (view == 7).all()
    os.kill(pid, signal.SIGKILL)                             # the reader dies: its pin goes
    wait_until(lambda: node_status()["store"]["pinned_objects"] <= 1, timeout=10,
               what="the killed reader's pin to be released")
    more = [gdfut.put(np.full(OBJ, 100 + i, dtype=np.uint8)) for i in range(4)]
    assert tier_of(watched) == "disk" and tier_of(held) == "host"
    assert (gdfut.get(watched) == 9).all()                   # restored on access
    assert all((gdfut.get(r) == 100 + i).all() for i, r in enumerate(more))
    del others


def test_create_fails_only_when_it_can_never_fit(small_store):
    # larger than the host tier: written straight into a spill file, read in place
    big = gdfut.put(np.arange((HOST + MIB) // 8, dtype=np.int64))
    assert tier_of(big) == "disk" and node_status()["store"]["num_objects"] == 0
    value = gdfut.get(big)
    assert not value.flags.writeable and (value == np.arange((HOST + MIB) // 8)).all()
    del value, big
    wait_until(lambda: node_status()["tiers"]["disk_bytes"] == 0, timeout=10,
               what="the large object's spill file to go")
    views = [gdfut.get(gdfut.put(np.full(OBJ, i, dtype=np.uint8))) for i in range(3)]
    started = time.monotonic()
    with pytest.raises(ObjectStoreFullError, match="pinned"):
        gdfut.put(np.zeros(100 * MIB, dtype=np.uint8))       # everything else is pinned
    assert time.monotonic() - started >= 4                   # it waited for pins to go first
    del views
    assert gdfut.get(gdfut.put(np.ones(100 * MIB, dtype=np.uint8))).sum() == 100 * MIB


def test_spilled_object_is_served_to_another_node():
    """A node asked for an object it spilled restores it before serving it,
    and a pulled (secondary) copy makes room by eviction, not spilling."""
    from gdfut.testing import Cluster

    @gdfut.remote
    def first_and_sum(a):
        return int(a[0]), int(a.sum(dtype=np.int64)), gdfut.get_runtime_context().get_node_id()

    c = Cluster()
    try:
        c.add_node(num_cpus=1, object_store_memory=HOST, wait=False)
        b = c.add_node(num_cpus=1, object_store_memory=HOST)
        c.connect()
        refs = [gdfut.put(np.full(OBJ, i + 1, dtype=np.uint8)) for i in range(8)]
        assert tier_of(refs[0]) == "disk"
        on_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
        results = gdfut.get([first_and_sum.options(scheduling_strategy=on_b).remote(r)
                             for r in refs[:6]], timeout=60)
        assert results == [(i + 1, OBJ * (i + 1), b.node_id) for i in range(6)]
        del refs
    finally:
        c.shutdown()
        assert_no_leaks(c.session_dir)


def test_dead_nodes_spill_directory_is_removed_by_the_next_node():
    from gdfut.testing import Cluster

    c = Cluster()
    try:
        a = c.add_node(num_cpus=1, object_store_memory=HOST)
        c.connect()
        refs = [gdfut.put(np.full(OBJ, i, dtype=np.uint8)) for i in range(6)]
        spill_root = os.path.join(c.session_dir, "spill")
        (dead_dir,) = os.listdir(spill_root)
        assert spill_bytes(spill_root) > 0
        gdfut.shutdown()
        c.connected = False
        del refs
        c.remove_node(a)                           # SIGKILL: its spill files stay behind
        assert os.listdir(os.path.join(spill_root, dead_dir))
        c.add_node(num_cpus=1, object_store_memory=HOST)
        assert not os.path.exists(os.path.join(spill_root, dead_dir))
    finally:
        c.shutdown()
        assert_no_leaks(c.session_dir)


def test_spill_dir_is_refused_when_joining_a_running_cluster():
    with pytest.raises(ValueError, match="gdfut start --spill-dir"):
        gdfut.init(address="127.0.0.1:1", spill_dir="/tmp/never-made")
    assert not os.path.exists("/tmp/never-made")


@gdfut.remote
def big_result(n, fill):
    return np.full(n, fill, dtype=np.uint8)


@gdfut.remote
def hold_big(a, marker):
    open(marker, "w").write(str(os.getpid()))
    time.sleep(60)
    return int(a[0])


@gdfut.remote
def check_big(a, fill):
    """fill None: an arange of int64."""
    if fill is None:
        return bool((a == np.arange(a.size)).all()), a.nbytes
    return bool((a == fill).all()), a.nbytes


def test_a_result_larger_than_the_host_tier_lives_on_disk(small_store, tmp_path):
    """Larger than the host tier, smaller than host + disk: the task writes it
    straight into a spill file of its own; readers map it there (read-only),
    pins of a killed reader go, and the file goes with the last ref."""
    n = HOST + 32 * MIB
    ref = big_result.remote(n, 5)
    assert gdfut.get(check_big.remote(ref, 5), timeout=120) == (True, n)
    assert tier_of(ref) == "disk"
    value = gdfut.get(ref)
    assert not value.flags.writeable and value.nbytes == n and value[0] == value[-1] == 5
    oid = ref.id

    def rows():
        return [r for r in node_status_rows() if bytes(r["object_id"]) == oid]
    assert rows()[0]["pins"] == 1                       # the driver's view holds a pin
    del value
    wait_until(lambda: rows()[0]["pins"] == 0, timeout=10, what="the driver's unpin")
    marker = str(tmp_path / "reader")
    reading = hold_big.options(max_retries=0).remote(ref, marker)
    wait_until(lambda: os.path.exists(marker) and open(marker).read(), timeout=60,
               what="the reader to map the object")
    assert rows()[0]["pins"] == 1
    os.kill(int(open(marker).read()), signal.SIGKILL)
    with pytest.raises(gdfut.exceptions.GdfutError):
        gdfut.get(reading, timeout=30)
    wait_until(lambda: rows()[0]["pins"] == 0, timeout=10, what="the killed reader's unpin")
    del ref
    wait_until(lambda: node_status()["tiers"]["disk_bytes"] == 0 and
               spill_bytes(small_store["spill_dir"]) == 0, timeout=10,
               what="its spill file to go")


def node_status_rows():
    from gdfut import protocol as P, runtime_context
    return runtime_context.require().node_request(P.NODE_MEMORY)["store"]


def test_an_object_on_disk_only_is_served_to_a_node_with_a_bigger_host_tier():
    """The source reads an object larger than its host tier from its spill
    file; a node whose host tier is large enough pulls it into memory."""
    from gdfut.testing import Cluster

    c = Cluster()
    try:
        a = c.add_node(num_cpus=1, object_store_memory=64 * MIB, wait=False)
        b = c.add_node(num_cpus=1, object_store_memory=HOST)
        c.connect()
        assert gdfut.get_runtime_context().get_node_id() == a.node_id
        big = gdfut.put(np.arange(100 * MIB // 8, dtype=np.int64))
        assert tier_of(big) == "disk"
        on_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
        got = gdfut.get(check_big.options(scheduling_strategy=on_b).remote(big, None), timeout=60)
        assert got == (True, 100 * MIB)
        del big
    finally:
        c.shutdown()
        assert_no_leaks(c.session_dir)


@gdfut.remote(num_returns=3)
def small_and_big_results(n, fill):
    return (np.full(MIB, fill, dtype=np.uint8), np.full(n, fill, dtype=np.uint8),
            np.full(2 * MIB, fill + 1, dtype=np.uint8))


def test_one_of_many_returns_larger_than_the_host_tier_lives_on_disk(small_store):
    """Many returns are written with pipelined creates: one of them larger
    than the host tier goes into a spill file of its own like a single one."""
    n = HOST + 16 * MIB
    small, big, after = small_and_big_results.remote(n, 3)
    assert gdfut.get(check_big.remote(big, 3), timeout=120) == (True, n)
    assert tier_of(big) == "disk"
    assert (gdfut.get(small) == 3).all() and (gdfut.get(after) == 4).all()
    del small, big, after
    wait_until(lambda: node_status()["tiers"]["disk_bytes"] == 0 and
               spill_bytes(small_store["spill_dir"]) == 0, timeout=10,
               what="its spill file to go")
