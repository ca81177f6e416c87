"""gdfut.shuffle on a real cluster: every strategy sorts correctly (uniform and
skewed keys, empty partitions, one reducer), other partitioners, output files,
spilling, a killed worker, and the sort command line."""
import functools
import json
import os
import signal
import subprocess
import sys

import cloudpickle
import numpy as np
import pytest

import gdfut
from gdfut.shuffle import Hash, records as R, shuffle
from gdfut.shuffle.sort import run_sort
from helpers import assert_no_leaks, child_processes

SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20
# Workers cannot import this test module: its functions travel by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def sort_reduce(blocks, reducer):
    return R.sort_records(R.concat(blocks))


def inputs_of(maps, n, skew=0.0):
    return [functools.partial(R.generate, m, n, 5, skew) for m in range(maps)]


def expected_sorted(maps, n, skew=0.0):
    return R.sort_records(R.concat([R.generate(m, n, 5, skew) for m in range(maps)]))


@pytest.mark.parametrize("strategy", ["simple", "push", "riffle"])
@pytest.mark.parametrize("skew", [0.0, 3.0])
def test_each_strategy_sorts(cluster, strategy, skew):
    # push: max_reducer_blocks=0 merges every round even on this one node
    rep = run_sort(0, 6, 5, strategy, skew=skew, merge_factor=2, records=6 * 2500,
                   progress=False, max_reducer_blocks=0)
    assert rep["ok"], rep["errors"]
    assert rep["records"] == 15000
    if strategy != "simple":
        assert rep["merges"] > 0
    # the output itself, not only the summaries: equal to a sort of all input
    out = shuffle(inputs_of(6, 2500, skew), None, sort_reduce, 5, strategy=strategy,
                  merge_factor=2, progress=False, max_reducer_blocks=0)
    parts = gdfut.get(list(out))
    assert np.array_equal(R.concat(parts), expected_sorted(6, 2500, skew))
    if skew:
        assert any(len(p) == 0 for p in parts)          # empty partitions were handled


def test_push_on_one_node_merges_only_past_the_block_limit(cluster):
    """On one node a merge copies blocks the reducer reads in place: by
    default push does no merges there (as simple); with a limit of 3 blocks
    per reducer it merges just enough rounds of 2 maps (6 -> 3 blocks)."""
    rep = run_sort(0, 6, 4, "push", merge_factor=2, records=6000, progress=False)
    assert rep["ok"], rep["errors"]
    assert rep["merges"] == 0
    out = shuffle(inputs_of(6, 1000), None, sort_reduce, 4, strategy="push", merge_factor=2,
                  max_reducer_blocks=3, progress=False)
    assert out.stats.merges == 3 * 4             # 3 rounds, one merge per reducer each
    assert np.array_equal(R.concat(gdfut.get(list(out))), expected_sorted(6, 1000))


@pytest.mark.parametrize("strategy", ["simple", "push", "riffle"])
def test_single_reducer(cluster, strategy):
    out = shuffle(inputs_of(3, 1000), None, sort_reduce, 1, strategy=strategy, merge_factor=2,
                  progress=False)
    assert len(out) == 1
    assert np.array_equal(gdfut.get(out[0]), expected_sorted(3, 1000))


def test_hash_and_user_partitioners_and_refs_as_inputs(cluster):
    refs = [gdfut.put(R.generate(m, 800, 1)) for m in range(4)]
    everything = R.concat([gdfut.get(r) for r in refs])
    by_hash = shuffle(refs, None, lambda blocks, r: R.concat(blocks), 3, partitioner=Hash(),
                      progress=False)
    parts = gdfut.get(list(by_hash))
    assert sum(len(p) for p in parts) == 3200
    assert R.checksum(R.concat(parts)) == R.checksum(everything)
    pids = Hash()(everything, 3)
    for r, p in enumerate(parts):
        assert np.array_equal(Hash()(p, 3), np.full(len(p), r))
        assert len(p) == int((pids == r).sum())
    # a user function on a key column, with a map_fn
    keys = [np.arange(m, 1000, 4, dtype=np.int64) for m in range(4)]
    out = shuffle(keys, lambda k: k * 2, lambda blocks, r: np.sort(np.concatenate(blocks)), 2,
                  partitioner=lambda k, n: (k >= 1000).astype(np.int64), strategy="push",
                  merge_factor=2, progress=False)
    low, high = gdfut.get(list(out))
    assert np.array_equal(low, np.arange(0, 1000, 2)) and np.array_equal(high, np.arange(1000, 2000, 2))


def test_output_files(cluster, tmp_path):
    rep = run_sort(0, 4, 3, "push", output_dir=str(tmp_path), records=4000, merge_factor=2,
                   progress=False)
    assert rep["ok"], rep["errors"]
    files = sorted(os.listdir(tmp_path))
    assert files == ["part-00000", "part-00001", "part-00002"]
    assert sum(os.path.getsize(tmp_path / f) for f in files) == 4000 * 100


def test_validation_of_output_files_catches_damage(cluster, tmp_path):
    from gdfut.shuffle.sort import file_summary, input_summary
    rep = run_sort(0, 3, 3, "simple", output_dir=str(tmp_path), records=3000, progress=False)
    assert rep["ok"], rep["errors"]
    paths = [str(tmp_path / f"part-{r:05d}") for r in range(3)]
    inp = [input_summary(m, 1000, 0, 0.0) for m in range(3)]
    expected = (sum(n for n, _ in inp), sum(c for _, c in inp))

    def verdict():
        summarize = gdfut.remote(file_summary)
        return R.validate(gdfut.get([summarize.remote(p, r) for r, p in enumerate(paths)]),
                          *expected)
    assert verdict()["ok"]
    part = R.read_partition(paths[1]).copy()
    part[[3, 4]] = part[[4, 3]]                          # reordered
    part.tofile(paths[1])
    assert any("not sorted" in e for e in verdict()["errors"])
    part[[3, 4]] = part[[4, 3]]
    part[10, 60] ^= 0x40                                 # corrupted payload
    part.tofile(paths[1])
    assert any("checksum" in e for e in verdict()["errors"])
    part[10, 60] ^= 0x40
    part[:-1].tofile(paths[1])                           # truncated by one record
    errors = verdict()["errors"]
    assert any("2999 records" in e for e in errors) and any("checksum" in e for e in errors)


def test_shuffle_with_spilling(tmp_path):
    spill_dir = str(tmp_path / "spill")
    info = gdfut.init(num_cpus=2, object_store_memory=64 * MIB, spill_dir=spill_dir)
    try:
        # 160 MiB of records through a 64 MiB store
        rep = run_sort(0, 8, 8, "simple", records=8 * 210_000, progress=False)
        assert rep["ok"], rep["errors"]
        assert rep["spilled_bytes"] > 0
        assert rep["peak_spill_dir_bytes"] > 0
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"], spill_dir)


def kill_own_worker_once(marker, data):
    """The first attempt of this map is killed (SIGKILL of its worker), as a crash."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return data


@pytest.mark.parametrize("strategy", ["simple", "push"])
def test_shuffle_survives_a_killed_worker(cluster, tmp_path, strategy):
    marker = str(tmp_path / "killed")
    inputs = inputs_of(5, 1000)
    inputs[2] = functools.partial(kill_own_worker_once, marker, R.generate(2, 1000, 5))
    out = shuffle(inputs, None, sort_reduce, 4, strategy=strategy, merge_factor=2,
                  progress=False)
    assert os.path.exists(marker)                     # the worker was killed once
    assert np.array_equal(R.concat(gdfut.get(list(out))), expected_sorted(5, 1000))


def test_progress_on_a_stream_only_when_asked():
    import io

    from gdfut.shuffle.driver import ShuffleStats
    from gdfut.shuffle.progress import ShuffleProgress
    buf = io.StringIO()                    # not a terminal: off by default
    with ShuffleProgress(4, 2, stream=buf) as bar:
        bar.update(ShuffleStats(maps=4, reduces=2, bytes_shuffled=10 ** 9))
    assert buf.getvalue() == ""
    buf = io.StringIO()
    with ShuffleProgress(4, 2, enabled=True, stream=buf) as bar:
        bar.update(ShuffleStats(maps=4, reduces=2, bytes_shuffled=10 ** 9, spilled_bytes=0))
    text = buf.getvalue()
    assert "maps" in text and "reduces" in text and "shuffled 1.00 GB" in text


def test_sort_command_line_json():
    before = {p.pid for p in child_processes()}
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-m", "gdfut.cli", "bench", "sort", "--records",
                           "30000", "--maps", "4", "--reducers", "4", "--strategy", "riffle",
                           "--merge-factor", "2", "--num-cpus", "2", "--json"],
                          capture_output=True, text=True, timeout=100, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rep["ok"] is True and rep["records"] == 30000
    for field in ("elapsed_s", "GBps", "spilled_bytes", "peak_spill_dir_bytes"):
        assert isinstance(rep[field], (int, float))
    assert "phases" in proc.stdout
    assert {p.pid for p in child_processes()} <= before


# ---- the runtime's pipelined store writes of many-return tasks ----

def many_returns(sizes):
    return tuple(np.full(n, i, dtype=np.uint8) for i, n in enumerate(sizes))


def test_many_returns_are_stored_and_a_failed_one_leaves_nothing(monkeypatch):
    # a disk quota, so that one return can fit no tier (larger than the host
    # tier alone, it would go to its own spill file)
    monkeypatch.setenv("GDFUT_SPILL_CAPACITY", str(64 * MIB))
    from helpers import STORE, assert_no_leaks
    info = gdfut.init(num_cpus=2, object_store_memory=STORE)
    try:
        _many_returns_then_one_that_fits_nowhere()
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def _many_returns_then_one_that_fits_nowhere():
    from gdfut.exceptions import ObjectStoreFullError
    from helpers import STORE, store_stats
    sizes = [3 * MIB, 10, 2 * MIB, 200_000, 5 * MIB]       # stored and inline values mixed
    refs = gdfut.remote(many_returns).options(num_returns=5).remote(sizes)
    for i, (ref, n) in enumerate(zip(refs, sizes)):
        value = gdfut.get(ref)
        assert value.shape == (n,) and (value == i).all()
    del value, ref, refs
    used = store_stats()["used_bytes"]
    # the fourth return can never fit: the task fails, the first three are freed
    bad = gdfut.remote(many_returns).options(num_returns=4).remote(
        [4 * MIB, 4 * MIB, 4 * MIB, STORE + MIB])
    with pytest.raises(ObjectStoreFullError):
        gdfut.get(bad[0])
    from helpers import wait_until
    wait_until(lambda: store_stats()["used_bytes"] <= used, timeout=10,
               what="the stored returns of the failed task freed")


# ---- two nodes: push merges go to their reducer's node ----

def tagged_merge(blocks):
    node = gdfut.get_runtime_context().get_node_id()
    return {"node": node, "data": np.concatenate(blocks)}


def tagged_reduce(blocks, r):
    node = gdfut.get_runtime_context().get_node_id()
    return np.sort(np.concatenate([b["data"] for b in blocks])), [b["node"] for b in blocks], node


def test_push_across_two_nodes_places_merges_with_reducers():
    from gdfut.testing import Cluster
    from helpers import shm_files
    c = Cluster()
    try:
        a = c.add_node(num_cpus=2, wait=False)
        b = c.add_node(num_cpus=2)
        c.connect()
        keys = [np.arange(m, 4000, 8, dtype=np.int64) for m in range(8)]
        planned = sorted([a.node_id, b.node_id])
        for placement in ("soft", "hard"):
            out = shuffle(keys, None, tagged_reduce, 4, partitioner=lambda k, n: k % n,
                          strategy="push", merge_fn=tagged_merge, merge_factor=2,
                          placement=placement, progress=False)
            results = gdfut.get(list(out))
            for r, (data, merge_nodes, reduce_node) in enumerate(results):
                assert np.array_equal(data, np.arange(r, 4000, 4))
                assert len(merge_nodes) == 4                    # 8 maps in rounds of 2
        # hard: the planner's round-robin nodes exactly (soft may run elsewhere)
        for r, (_, merge_nodes, reduce_node) in enumerate(results):
            assert set(merge_nodes) == {planned[r % 2]} and reduce_node == planned[r % 2]
        with pytest.raises(ValueError, match="placement"):
            shuffle(keys, None, tagged_reduce, 4, placement="nearby")
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)


def slow_block(marker_dir, m, n):
    import time as _time
    _time.sleep(0.3)
    block = R.generate(m, n, 5)
    node = gdfut.get_runtime_context().get_node_id()
    open(os.path.join(marker_dir, f"map-{m}-{node}-{os.getpid()}"), "w").close()
    return block


def test_shuffle_survives_a_killed_node(tmp_path):
    """Node b dies mid-shuffle: its maps' blocks are lost; the runtime re-runs
    those maps through lineage (on node a), and merges and reduces that were
    meant for b run elsewhere (soft placement)."""
    import threading

    from gdfut.testing import Cluster
    from helpers import shm_files, wait_until
    c = Cluster()
    try:
        c.add_node(num_cpus=2, wait=False)
        b = c.add_node(num_cpus=2)
        c.connect()
        inputs = [functools.partial(slow_block, str(tmp_path), m, 1500) for m in range(12)]

        def kill_b_after_some_maps():
            # b's workers start while a's run the first maps: kill b once it made a block
            wait_until(lambda: len(os.listdir(tmp_path)) >= 4
                       and any(b.node_id in name for name in os.listdir(tmp_path)),
                       timeout=60, what="4 maps done, one of them on node b")
            c.remove_node(b)
        killer = threading.Thread(target=kill_b_after_some_maps)
        killer.start()
        out = shuffle(inputs, None, sort_reduce, 4, strategy="push", merge_factor=3,
                      progress=False)
        parts = gdfut.get(list(out), timeout=120)
        killer.join(60)
        assert not killer.is_alive()
        assert np.array_equal(R.concat(parts), expected_sorted(12, 1500))
        ran = os.listdir(tmp_path)
        assert any(b.node_id in name for name in ran)        # b had made blocks
        maps_run = [int(name.split("-")[1]) for name in ran]
        assert len(maps_run) > 12 and len(set(maps_run)) == 12   # lost maps ran again
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)
