"""Chaos (issue 9, point 7 and "Done when"): workloads finish with correct
results while gdfut.testing.chaos kills workers and node daemons."""
import time

import numpy as np
import pytest

import gdfut
from gdfut.testing import Cluster
from gdfut.testing.chaos import Chaos
from helpers import assert_no_leaks, shm_files, wait_until

PARTS = 64
REDUCERS = 4
BLOCK = 20_000       # int64s per block: 160 KB, stored in the node's store (not inline)


@pytest.fixture
def three_nodes():
    c = Cluster()
    try:
        for i in range(3):
            c.add_node(num_cpus=2, wait=i == 2)
        c.connect()
        yield c
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)


@gdfut.remote(num_returns=REDUCERS)
def map_part(i):
    rng = np.random.default_rng(i)
    data = rng.integers(0, 1000, size=BLOCK * REDUCERS, dtype=np.int64)
    time.sleep(0.02)
    return tuple(data[r::REDUCERS].copy() for r in range(REDUCERS))


@gdfut.remote
def reduce_parts(*blocks):
    return int(sum(int(b.sum()) for b in blocks)), len(blocks)


def expected_sums():
    sums = [0] * REDUCERS
    for i in range(PARTS):
        data = np.random.default_rng(i).integers(0, 1000, size=BLOCK * REDUCERS, dtype=np.int64)
        for r in range(REDUCERS):
            sums[r] += int(data[r::REDUCERS].sum())
    return sums


@pytest.mark.parametrize("seed", range(5))
def test_map_reduce_survives_a_node_killed_mid_run(three_nodes, seed):
    c = three_nodes
    chaos = Chaos(c, seed=seed, kinds=("node",))
    maps = [map_part.remote(i) for i in range(PARTS)]
    reduces = [reduce_parts.remote(*[m[r] for m in maps]) for r in range(REDUCERS)]
    # mid-run: some map outputs exist (on every node), most do not yet
    gdfut.wait([m[0] for m in maps], num_returns=PARTS // 8, timeout=60)
    kill = chaos.kill_one()
    assert kill is not None and kill.target.kind == "node", chaos.errors
    assert kill.target.node_id != gdfut.get_runtime_context().get_node_id()   # spared
    out = gdfut.get(reduces, timeout=90)
    assert [s for s, _ in out] == expected_sums()
    assert all(n == PARTS for _, n in out)
    del maps, reduces, out


@gdfut.remote(num_returns=REDUCERS)
def slow_map_part(i):
    rng = np.random.default_rng(i)
    data = rng.integers(0, 1000, size=BLOCK * REDUCERS, dtype=np.int64)
    time.sleep(0.1)
    return tuple(data[r::REDUCERS].copy() for r in range(REDUCERS))


@pytest.mark.parametrize("seed", range(2))
def test_map_reduce_survives_workers_and_nodes_dying_every_half_second(seed):
    """Workers and node daemons die every 0.5 s (at most 5, two nodes always
    left): retries, rebuilds, and returns written again where copies are."""
    c = Cluster()
    try:
        for i in range(4):
            c.add_node(num_cpus=2, wait=i == 3)
        c.connect()
        with Chaos(c, seed=seed, interval_s=0.5, first_after_s=0.3, kinds=("worker", "node"),
                   max_kills=5, min_nodes=2) as chaos:
            maps = [slow_map_part.remote(i) for i in range(PARTS)]
            reduces = [reduce_parts.remote(*[m[r] for m in maps]) for r in range(REDUCERS)]
            out = gdfut.get(reduces, timeout=110)
        assert [s for s, _ in out] == expected_sums(), chaos.summary()
        assert chaos.kills, chaos.summary()
        del maps, reduces
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)


@gdfut.remote(max_retries=-1)
def stage(x, k):
    time.sleep(0.05)
    return x * 3 + k


def test_pipeline_of_100_tasks_while_workers_are_killed_repeatedly(three_nodes):
    c = three_nodes
    # 10 chains of 10 dependent tasks; workers die every 0.3 s meanwhile
    with Chaos(c, seed=11, interval_s=0.25, kinds=("worker",), first_after_s=0.1,
               allow_driver_node=True) as chaos:
        heads = []
        for chain in range(10):
            ref = chain
            for k in range(10):
                ref = stage.remote(ref, k)
            heads.append(ref)
        out = gdfut.get(heads, timeout=120)
        during = len(chaos.kills)
    expect = []
    for chain in range(10):
        x = chain
        for k in range(10):
            x = x * 3 + k
        expect.append(x)
    assert out == expect
    assert during >= 2, chaos.summary()       # killed while the pipeline ran
    assert all(k.target.kind == "worker" for k in chaos.kills)
    assert not chaos.errors or all("No such process" in e or "ProcessLookup" in e
                                   for e in chaos.errors), chaos.errors


@gdfut.remote
def answer():
    return 42


SLOW_WORKER_START = """
import sys, time
if "gdfut.worker_main" in sys.orig_argv:
    time.sleep(float({delay!r}))
"""


def test_workers_killed_while_starting_do_not_fail_queued_tasks(tmp_path, monkeypatch):
    """A worker killed by a signal before it registers says nothing about
    whether workers can start on that node: the queued task waits for the
    next one instead of failing with "workers fail to start" (5 in a row).
    Every worker start is slowed (a sitecustomize on PYTHONPATH), so the
    kills land before registration even on a loaded machine, where a worker
    could otherwise register and run the task before the first kill."""
    import os
    import signal

    import psutil
    (tmp_path / "sitecustomize.py").write_text(SLOW_WORKER_START.format(delay=3.0))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p))
    c = Cluster()
    try:
        node = c.add_node(num_cpus=1)
        c.connect()
        ref = answer.remote()
        killed = set()
        deadline = time.monotonic() + 60
        while len(killed) < 7 and time.monotonic() < deadline:
            for child in psutil.Process(node.pid).children():
                if child.pid not in killed:
                    os.kill(child.pid, signal.SIGKILL)
                    killed.add(child.pid)
            time.sleep(0.01)
        assert len(killed) >= 7
        assert gdfut.get(ref, timeout=60) == 42
    finally:
        c.shutdown()
        assert_no_leaks(c.session_dir)
