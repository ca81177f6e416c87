"""Device tier in CPU mode (issue 8): a task holding an emulated GPU keeps the
arrays it returns in its own memory, under the GPU's device_store_memory
budget; they move down to host and on to disk when the budget or the host
store is exceeded, and come back intact for tasks and for get. Pinned device
objects never move; a killed reader's pins go; a producer that exits moves
its objects to host first; nothing is left behind."""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

import gdfut
from gdfut import protocol as P, runtime_context
from helpers import assert_no_leaks, wait_until

MIB = 1 << 20
HOST = 128 * MIB
DEVICE = 48 * MIB
OBJ = 16 * MIB


@pytest.fixture
def gpu_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    spill_dir = str(tmp_path / "spill")
    info = gdfut.init(num_cpus=2, num_gpus=1, object_store_memory=HOST,
                      device_store_memory=DEVICE, spill_dir=spill_dir)
    try:
        yield {**info, "spill_dir": spill_dir}
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"], spill_dir)


def tiers():
    return runtime_context.require().node_request(P.NODE_STATUS)["tiers"]


def store_rows():
    return runtime_context.require().node_request(P.NODE_MEMORY)["store"]


def rows_of(ref):
    return [r for r in store_rows() if bytes(r["object_id"]) == ref.id]


@gdfut.remote(num_gpus=1)
def make(i, n=OBJ):
    return np.full(n, i % 251, dtype=np.uint8)


@gdfut.remote(num_gpus=1)
def check(a, i):
    # a device object read in the process that holds it is the array itself
    # (writable); one read through the host tier is a read-only view
    return bool(a.shape == (OBJ,) and (a == i % 251).all()), bool(a.flags.writeable)


@gdfut.remote
def check_on_cpu(a, i):
    return bool((a == i % 251).all())


def test_device_objects_spill_to_host_and_disk_and_come_back(gpu_cluster):
    n = 14                                     # 224 MiB: more than device + host together
    refs = [make.remote(i) for i in range(n)]
    gdfut.wait(refs, num_returns=n, timeout=120)
    t = tiers()
    assert 0 < t["device_bytes"] <= DEVICE and t["device_capacity"] == DEVICE
    assert t["moved_down_objects"] >= n - DEVICE // OBJ
    assert t["spilled_objects"] > 0            # host full too: on to disk
    summary = {bytes(r["oid"]): r["tier"] for r in gdfut.memory_summary() if r.get("owned")}
    seen = {summary[r.id] for r in refs}
    assert seen == {"device", "host", "disk"} or seen >= {"device", "disk"}, seen
    # read back by tasks (the newest still on the device, in their process)
    results = gdfut.get([check.remote(r, i) for i, r in enumerate(refs)], timeout=120)
    assert all(ok for ok, _ in results), results
    assert any(writable for _, writable in results)          # served as the object itself
    assert gdfut.get([check_on_cpu.remote(r, i) for i, r in enumerate(refs)], timeout=120) \
        == [True] * n
    # and by get, in the driver (numpy in CPU mode)
    for i, r in enumerate(refs):
        value = gdfut.get(r)
        assert isinstance(value, np.ndarray) and (value == i % 251).all()
        assert (gdfut.get(r, device="cpu") == i % 251).all()
        del value
    assert tiers()["restored_objects"] > 0
    del refs, r
    wait_until(lambda: tiers()["device_bytes"] == 0 and tiers()["host_bytes"] == 0
               and tiers()["disk_bytes"] == 0, timeout=20, what="every tier empty")
    wait_until(lambda: not [f for _, _, files in os.walk(gpu_cluster["spill_dir"])
                            for f in files if f.startswith("spill-")],
               timeout=20, what="the spill files to go")


def test_small_and_cpu_results_are_not_device_objects(gpu_cluster):
    small = make.remote(1, 1000)
    on_cpu = gdfut.remote(lambda: np.ones(OBJ, np.uint8)).remote()
    assert (gdfut.get(small) == 1).all() and gdfut.get(on_cpu).sum() == OBJ
    assert tiers()["device_bytes"] == 0


@gdfut.remote(num_gpus=0.5)
class Holder:
    def make(self, i):
        return {"x": np.full(OBJ, i, dtype=np.uint8), "i": i}

    def hold(self, value, seconds, marker):
        open(marker, "w").close()
        time.sleep(seconds)
        return bool((value["x"] == value["i"]).all()), bool(value["x"].flags.writeable)

    def pid(self):
        return os.getpid()


def test_pinned_device_objects_never_move(gpu_cluster, tmp_path):
    holder, other = Holder.remote(), Holder.remote()
    pinned = holder.make.remote(7)
    gdfut.wait([pinned])
    assert [r["tier"] for r in rows_of(pinned)] == ["device"]
    marker = str(tmp_path / "holding")
    held = holder.hold.remote(pinned, 4, marker)
    wait_until(lambda: os.path.exists(marker), timeout=30, what="the task to hold its argument")
    assert rows_of(pinned)[0]["pins"] >= 1
    # the other actor (same GPU) fills the device tier several times over
    fill = [other.make.remote(i) for i in range(8)]
    gdfut.wait(fill, num_returns=len(fill), timeout=60)
    assert tiers()["moved_down_objects"] >= 5
    assert [r["tier"] for r in rows_of(pinned)] == ["device"]       # never moved
    assert gdfut.get(held, timeout=60) == (True, True)
    wait_until(lambda: rows_of(pinned)[0]["pins"] == 0, timeout=10, what="the unpin")
    del fill


@gdfut.remote
def read_and_wait(value, marker):
    open(marker, "w").write(str(os.getpid()))
    time.sleep(60)
    return int(value["x"][0])


def test_a_killed_reader_unpins(gpu_cluster, tmp_path):
    holder = Holder.remote()
    ref = holder.make.remote(3)
    gdfut.wait([ref])
    marker = str(tmp_path / "reader")
    reading = read_and_wait.options(max_retries=0).remote(ref, marker)
    wait_until(lambda: os.path.exists(marker) and open(marker).read(), timeout=30,
               what="the reader to start")
    # a reader in another process pinned the host copy its holder wrote
    host = [r for r in rows_of(ref) if r["tier"] == "host"]
    assert host and host[0]["pins"] == 1
    os.kill(int(open(marker).read()), signal.SIGKILL)
    with pytest.raises(gdfut.exceptions.GdfutError):
        gdfut.get(reading, timeout=30)
    wait_until(lambda: all(r["pins"] == 0 for r in rows_of(ref) if r["tier"] == "host"),
               timeout=10, what="the killed reader's pin to go")
    assert (gdfut.get(ref)["x"] == 3).all()


def test_a_producer_that_exits_moves_its_objects_to_host(gpu_cluster):
    holder = Holder.remote()
    refs = [holder.make.remote(i) for i in range(2)]
    gdfut.wait(refs, num_returns=2)
    pid = gdfut.get(holder.pid.remote())
    assert {r["tier"] for ref in refs for r in rows_of(ref)} == {"device"}
    gdfut.kill(holder)
    wait_until(lambda: not _alive(pid), timeout=30, what="the actor's process to exit")
    assert {r["tier"] for ref in refs for r in rows_of(ref)} <= {"host", "disk"}
    for i, ref in enumerate(refs):
        assert (gdfut.get(ref)["x"] == i).all()
    assert tiers()["device_bytes"] == 0


@gdfut.remote(num_gpus=0.5)
class LateMaker:
    """Holds a device object; ``make_late`` returns another one only once
    the node has begun to evacuate it (its host copy writes slowed down, so
    the evacuation lasts a while)."""
    def make(self, i):
        return np.full(OBJ, i, dtype=np.uint8)

    def pid(self):
        return os.getpid()

    def make_late(self, marker):
        import threading
        dev = runtime_context.require().device
        asked, write = threading.Event(), dev._write_host_copy

        def slow_write(*args):
            asked.set()
            time.sleep(2.0)
            write(*args)
        dev._write_host_copy = slow_write
        open(marker, "w").close()
        assert asked.wait(30), "no evacuation began"
        return np.full(OBJ, 9, dtype=np.uint8)


def test_a_device_value_made_while_its_actor_is_killed_does_not_stay(gpu_cluster, tmp_path):
    """gdfut.kill of a GPU actor whose call is running: the node evacuates
    the actor's device objects, and the call returns a device value during
    that. Before the fix the value was granted a device copy nobody moved
    or freed (the owner drops a dead actor's reply): it sat in the device
    tier and the evacuation waited its 30 s timeout before the kill. Now the
    value takes the host tier, the owner frees what the dropped reply
    stored, and the actor goes once its first object is moved."""
    maker = LateMaker.remote()
    kept = maker.make.remote(1)
    pid = gdfut.get(maker.pid.remote())
    gdfut.wait([kept])
    marker = str(tmp_path / "making")
    late = maker.make_late.remote(marker)
    wait_until(lambda: os.path.exists(marker), timeout=30, what="the late call to start")
    gdfut.kill(maker)
    wait_until(lambda: not _alive(pid), timeout=15, what="the killed actor's process to exit")
    with pytest.raises(gdfut.exceptions.GdfutError):
        gdfut.get(late, timeout=10)
    wait_until(lambda: tiers()["device_bytes"] == 0, timeout=10, what="the device tier to empty")
    assert (gdfut.get(kept) == 1).all()              # moved to host before the kill
    del kept, late
    wait_until(lambda: tiers()["host_bytes"] == 0, timeout=10,
               what="the host copies to go (the dropped reply's value too)")


@gdfut.remote(num_gpus=1)
class Quitter:
    def make(self):
        return np.arange(OBJ // 8, dtype=np.int64)

    def quit(self):
        from gdfut.actor import exit_actor
        exit_actor()


def test_an_actor_that_exits_itself_moves_its_objects_to_host(gpu_cluster):
    q = Quitter.remote()
    ref = q.make.remote()
    gdfut.wait([ref])
    with pytest.raises(gdfut.exceptions.GdfutError):
        gdfut.get(q.quit.remote(), timeout=30)
    wait_until(lambda: tiers()["device_bytes"] == 0, timeout=30, what="the move to host")
    assert (gdfut.get(ref) == np.arange(OBJ // 8)).all()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_status_and_memory_show_the_device_tier(gpu_cluster):
    import subprocess
    import sys
    refs = [make.remote(i) for i in range(4)]            # 64 MiB: one moves down
    gdfut.wait(refs, num_returns=4, timeout=60)
    session = gpu_cluster["session_dir"]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(gdfut.__file__))}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "gdfut.cli", *args, "--session-dir", session],
                              capture_output=True, text=True, timeout=60, env=env,
                              stdin=subprocess.DEVNULL, check=True).stdout
    # status reads the heartbeat's stats (once a second)
    wait_until(lambda: "48.0 MiB/48.0 MiB (16.0 MiB)" in cli("status"), timeout=15,
               what="the device tier in gdfut status")
    assert "DEVICE (moved to host)" in cli("status")
    memory = cli("memory")
    assert "DEVICE OBJECTS" in memory and "48.0 MiB/48.0 MiB" in memory, memory
    assert memory.count("device") >= 3, memory


def test_a_device_object_whose_host_copy_can_never_fit_goes_to_disk(tmp_path, monkeypatch):
    """Fits the device budget but not the host tier (where a reader in another
    process would need its host copy): not kept on the device; the worker
    stores it like any value larger than the host tier, in a spill file."""
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    spill_dir = str(tmp_path / "spill")
    info = gdfut.init(num_cpus=2, num_gpus=1, object_store_memory=32 * MIB,
                      device_store_memory=64 * MIB, spill_dir=spill_dir)
    try:
        ref = make.remote(1, 40 * MIB)
        assert gdfut.get(check_on_cpu.remote(ref, 1), timeout=60)
        assert [r["tier"] for r in rows_of(ref)] == ["disk"]
        assert tiers()["device_bytes"] == 0
        del ref
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"], spill_dir)


def test_a_device_object_is_served_to_another_node(monkeypatch):
    """Another node pulls a device object through the data plane: the
    holder writes its host copy first, the pull reads that."""
    from gdfut.testing import Cluster
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")

    @gdfut.remote
    def first_and_node(a):
        return int(a[0]), bool((a == a[0]).all()), gdfut.get_runtime_context().get_node_id()

    c = Cluster()
    try:
        c.add_node(num_cpus=1, num_gpus=1, object_store_memory=HOST, wait=False)
        b = c.add_node(num_cpus=1, object_store_memory=HOST)
        c.connect()
        refs = [make.remote(i) for i in range(3)]
        gdfut.wait(refs, num_returns=3, timeout=60)
        tiers_now = {bytes(r["oid"]): r["tier"] for r in gdfut.memory_summary() if r.get("owned")}
        assert [tiers_now[r.id] for r in refs] == ["device"] * 3
        on_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
        results = gdfut.get([first_and_node.options(scheduling_strategy=on_b).remote(r)
                             for r in refs], timeout=60)
        assert results == [(i, True, b.node_id) for i in range(3)]
        assert [int(gdfut.get(r)[0]) for r in refs] == [0, 1, 2]
        del refs
    finally:
        c.shutdown()
        assert_no_leaks(c.session_dir)


@gdfut.remote(num_gpus=1)
def make_and_tell(i, marker):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\n")
    return np.full(OBJ, i, dtype=np.uint8)


def test_a_killed_producer_loses_its_device_objects_and_lineage_rebuilds_them(gpu_cluster,
                                                                              tmp_path):
    marker = str(tmp_path / "runs")
    ref = make_and_tell.remote(4, marker)
    gdfut.wait([ref])
    assert [r["tier"] for r in rows_of(ref)] == ["device"]
    pid = int(open(marker).read().split()[0])
    os.kill(pid, signal.SIGKILL)                 # no time to move anything to host
    wait_until(lambda: not rows_of(ref), timeout=10, what="the node to forget the lost copy")
    value = gdfut.get(ref, timeout=60)           # the task runs again
    assert (value == 4).all() and len(open(marker).read().split()) == 2
    del value


# --- readers on the same GPU, restores onto a device, other nodes ---------------

def segments_of(ref, session_dir):
    """The shared-memory segment an emulated GPU exported ref's device copy in."""
    import glob
    session = os.path.basename(os.path.normpath(session_dir))
    return glob.glob(f"/dev/shm/gdfut-{session}-*-dev-{ref.id.hex()}")


@gdfut.remote(num_gpus=0.25)
class Reader:
    def read(self, value):
        x = value["x"]
        return (bool((x == value["i"]).all()), bool(x.flags.writeable), os.getpid(),
                gdfut.get_gpu_ids())

    def keep(self, value):
        self.kept = value["x"]            # still mapped after the task ends
        return True

    def drop(self):
        del self.kept
        return True


@gdfut.remote(num_gpus=0.25)
def read_on_the_gpu(value, i):
    return bool((value["x"] == i).all()), bool(value["x"].flags.writeable)


def test_a_reader_on_the_same_gpu_maps_the_device_copy_without_a_host_copy(gpu_cluster):
    """Producer and consumer are different processes on one emulated GPU:
    the consumer maps the producer's device copy (a shared-memory segment of
    that GPU), zero-copy; no host-tier byte is used and no host copy written."""
    holder, reader = Holder.remote(), Reader.remote()
    ref = holder.make.remote(5)
    gdfut.wait([ref])
    holder_pid = gdfut.get(holder.pid.remote())
    ok, writable, reader_pid, gpus = gdfut.get(reader.read.remote(ref), timeout=60)
    assert ok and not writable and reader_pid != holder_pid and gpus == [0]
    assert gdfut.get(read_on_the_gpu.remote(ref, 5), timeout=60) == (True, False)
    t = tiers()
    assert t["host_bytes"] == 0 and t["moved_down_objects"] == 0, t
    assert t["device_imports"] == 2 and t["device_segments"] == 1, t
    assert [r["tier"] for r in rows_of(ref)] == ["device"]      # no host copy
    summary = {bytes(r["oid"]): r["tier"] for r in gdfut.memory_summary() if r.get("owned")}
    assert summary[ref.id] == "device"
    assert len(segments_of(ref, gpu_cluster["session_dir"])) == 1
    # the holder still reads its own copy (now in the segment, writable)
    assert gdfut.get(holder.hold.remote(ref, 0, os.devnull), timeout=60) == (True, True)
    # a mapping pins the device copy; dropping it unpins
    assert gdfut.get(reader.keep.remote(ref), timeout=60)
    wait_until(lambda: rows_of(ref)[0]["pins"] == 1, timeout=10, what="the mapping's pin")
    assert gdfut.get(reader.drop.remote(), timeout=60)
    wait_until(lambda: rows_of(ref)[0]["pins"] == 0, timeout=10, what="the unpin")
    assert tiers()["device_bytes"] == OBJ            # counted once, against the GPU's budget
    del ref
    wait_until(lambda: not segments_of_any(gpu_cluster["session_dir"]), timeout=10,
               what="the exported segment to go with its object")
    assert tiers()["device_bytes"] == 0 and tiers()["device_segments"] == 0


def segments_of_any(session_dir):
    import glob
    session = os.path.basename(os.path.normpath(session_dir))
    return glob.glob(f"/dev/shm/gdfut-{session}-*-dev-*")


def test_a_free_waits_for_the_last_mapping_and_a_dead_reader_unpins(gpu_cluster, tmp_path):
    holder = Holder.remote()
    ref = holder.make.remote(9)
    gdfut.wait([ref])
    marker = str(tmp_path / "reader")
    reading = read_on_gpu_and_wait.options(max_retries=0).remote(ref, marker)
    wait_until(lambda: os.path.exists(marker) and open(marker).read(), timeout=30,
               what="the reader to map it")
    assert rows_of(ref)[0]["pins"] == 1 and rows_of(ref)[0]["tier"] == "device"
    os.kill(int(open(marker).read()), signal.SIGKILL)
    with pytest.raises(gdfut.exceptions.GdfutError):
        gdfut.get(reading, timeout=30)
    wait_until(lambda: rows_of(ref)[0]["pins"] == 0, timeout=10, what="the dead reader's pin")
    assert tiers()["host_bytes"] == 0
    del ref, reading
    wait_until(lambda: tiers()["device_bytes"] == 0 and not segments_of_any(
        gpu_cluster["session_dir"]), timeout=10, what="the device copy and its segment to go")


@gdfut.remote(num_gpus=0.5, max_retries=0)
def read_on_gpu_and_wait(value, marker):
    assert not value["x"].flags.writeable        # mapped, not a host copy
    open(marker, "w").write(str(os.getpid()))
    time.sleep(60)


@pytest.fixture
def two_gpu_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    info = gdfut.init(num_cpus=2, num_gpus=2, object_store_memory=HOST,
                      device_store_memory=DEVICE, spill_dir=str(tmp_path / "spill"))
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"], str(tmp_path / "spill"))


@gdfut.remote(num_gpus=1)
class WholeGpu:
    def make(self, i):
        return {"x": np.full(OBJ, i, dtype=np.uint8), "i": i}

    def read(self, value):
        return bool((value["x"] == value["i"]).all()), gdfut.get_gpu_ids()


def test_a_reader_on_another_gpu_or_without_one_goes_through_host(two_gpu_cluster):
    a, b = WholeGpu.remote(), WholeGpu.remote()
    ref = a.make.remote(3)
    gdfut.wait([ref])
    ok, gpus = gdfut.get(b.read.remote(ref), timeout=60)
    assert ok and gpus != gdfut.get(a.read.remote(ref), timeout=60)[1]
    assert gdfut.get(check_dict_on_cpu.remote(ref, 3), timeout=60)
    t = tiers()
    # the device copy stays on GPU 0 (one device copy per node): no import, no restore
    assert t["device_imports"] == 0 and t["device_restores"] == 0, t
    assert sorted(r["tier"] for r in rows_of(ref)) == ["device", "host"]   # the host copy
    assert t["host_bytes"] > 0 and t["device_bytes"] == OBJ
    del ref


@gdfut.remote
def check_dict_on_cpu(value, i):
    return bool((value["x"] == i).all())


def test_a_gpu_reader_restores_a_moved_down_object_onto_its_device(gpu_cluster):
    refs = [make.remote(i) for i in range(4)]      # 64 MiB through 48: the first moves down
    gdfut.wait(refs, num_returns=4, timeout=60)
    wait_until(lambda: [r["tier"] for r in rows_of(refs[0])] == ["host"], timeout=20,
               what="the first object to move down")
    # a CPU reader just reads the host copy
    assert gdfut.get(check_on_cpu.remote(refs[0], 0), timeout=60)
    assert tiers()["device_restores"] == 0
    # a GPU reader restores it onto its device: device tier again, writable, counted
    ok, writable = gdfut.get(check.remote(refs[0], 0), timeout=60)
    assert ok and writable
    t = tiers()
    assert t["device_restores"] == 1 and t["device_bytes"] <= DEVICE, t
    assert sorted(r["tier"] for r in rows_of(refs[0])) == ["device", "host"]
    moved = t["moved_down_objects"]
    # evictable again: it leaves the device without another write
    more = [make.remote(i) for i in range(4, 7)]
    gdfut.wait(more, num_returns=3, timeout=60)
    wait_until(lambda: [r["tier"] for r in rows_of(refs[0])] in (["host"], ["disk"]),
               timeout=20, what="the restored object to leave the device again")
    # room for 3 more: the two older objects are written down, the restored one
    # just leaves (its host copy exists): 2 host copies written, not 3
    assert tiers()["moved_down_objects"] - moved == 2
    assert gdfut.get(check.remote(refs[0], 0), timeout=60)[0]
    assert [bool((gdfut.get(r) == i % 251).all()) for i, r in enumerate(refs + more)] \
        == [True] * 7
    del refs, more


@pytest.mark.parametrize("transport", ["tcp", "ucx"])
def test_a_gpu_task_on_another_node_gets_a_device_object_there(monkeypatch, transport):
    """Across nodes a device object goes through host memory (the data plane)
    and becomes a device-tier object of the reading GPU task's node; another
    GPU reader there maps that copy; a CPU reader there reads the host copy.
    On ucx too: without a real GPU the device-to-device path is not taken
    (device_transfer), and the read restores from host as on tcp."""
    from gdfut.testing import Cluster
    if transport == "ucx":
        pytest.importorskip("ucxx", reason="ucxx (ucxx-cu12) is not installed")
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    monkeypatch.setenv("GDFUT_TRANSPORT", transport)
    monkeypatch.delenv("GDFUT_DEVICE_TRANSFER", raising=False)

    @gdfut.remote(num_gpus=0.5)
    class ReadThere:
        def read(self, v):
            t = runtime_context.require().node_request(P.NODE_STATUS)["tiers"]
            return (bool((v["x"] == v["i"]).all()), bool(v["x"].flags.writeable),
                    t["device_bytes"], t["device_restores"], t["device_imports"],
                    gdfut.get_runtime_context().get_node_id())

    c = Cluster()
    try:
        c.add_node(num_cpus=1, num_gpus=1, object_store_memory=HOST, wait=False)
        b = c.add_node(num_cpus=2, num_gpus=1, object_store_memory=HOST)
        c.connect()
        assert runtime_context.require().node_info["transport"] == transport
        on_a = gdfut.NodeAffinitySchedulingStrategy(c.nodes[0].node_id)
        on_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
        holder = Holder.options(scheduling_strategy=on_a).remote()
        ref = holder.make.remote(6)
        gdfut.wait([ref], timeout=60)
        r1, r2 = (ReadThere.options(scheduling_strategy=on_b).remote() for _ in range(2))
        # through host memory, then onto r1's device (a writable device copy)
        assert gdfut.get(r1.read.remote(ref), timeout=60) == (True, True, OBJ, 1, 0, b.node_id)
        # r2, same GPU of node b: maps r1's device copy
        assert gdfut.get(r2.read.remote(ref), timeout=60) == (True, False, OBJ, 1, 1, b.node_id)
        assert gdfut.get(check_dict_on_cpu.options(scheduling_strategy=on_b).remote(ref, 6),
                         timeout=60)
        assert (gdfut.get(ref)["x"] == 6).all()
        del ref
    finally:
        c.shutdown()
        assert_no_leaks(c.session_dir)


@gdfut.remote(num_gpus=1)
class Serving:
    def make(self, i):
        return np.full(OBJ, i % 251, dtype=np.uint8)

    def announce(self, addr):
        """Stand in for a real-GPU holder's device listener (DEVICE_SERVE)."""
        runtime_context.require().node_conn.send([P.DEVICE_SERVE, addr])
        return True


def test_a_forced_device_path_without_a_gpu_fails_clearly(monkeypatch):
    """GDFUT_DEVICE_TRANSFER=device where the device-to-device path cannot
    be taken (CPU mode: no real GPU, no CUDA in UCX): a GPU task reading a
    device object of another node fails and says why, instead of silently
    going through host memory."""
    pytest.importorskip("ucxx", reason="ucxx (ucxx-cu12) is not installed")
    from gdfut.testing import Cluster
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    monkeypatch.setenv("GDFUT_TRANSPORT", "ucx")
    monkeypatch.setenv("GDFUT_DEVICE_TRANSFER", "device")
    c = Cluster()
    try:
        c.add_node(num_cpus=1, num_gpus=1, object_store_memory=HOST, wait=False)
        b = c.add_node(num_cpus=1, num_gpus=1, object_store_memory=HOST)
        c.connect()
        a_id = c.nodes[0].node_id
        holder = Serving.options(scheduling_strategy=gdfut.NodeAffinitySchedulingStrategy(
            a_id)).remote()
        ref = holder.make.remote(3)
        gdfut.wait([ref], timeout=60)
        # where the holder serves device pulls, asked of its node and of another
        # (which asks the holder's node over the data plane)
        assert gdfut.get(holder.announce.remote(["127.0.0.1", 4242]), timeout=60)
        rt = runtime_context.require()
        a_raw = bytes.fromhex(a_id)
        for via in (a_id, b.node_id):
            assert rt.node_request(P.NODE_DEVICE_SOURCE, ref.id, a_raw,
                                   node_id=bytes.fromhex(via)) == ["127.0.0.1", 4242]
            assert rt.node_request(P.NODE_DEVICE_SOURCE, b"x" * len(ref.id), a_raw,
                                   node_id=bytes.fromhex(via)) is None
        on_b = gdfut.NodeAffinitySchedulingStrategy(b.node_id)
        with pytest.raises(Exception, match="GDFUT_DEVICE_TRANSFER=device.*no usable GPU"):
            gdfut.get(check.options(scheduling_strategy=on_b).remote(ref, 3), timeout=60)
        del ref
    finally:
        c.shutdown()
        assert_no_leaks(c.session_dir)
