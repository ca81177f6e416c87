"""Tasks submitted by a dead owner are cancelled (issue 9, point 4): when a
driver or a worker that owns running or queued tasks dies, the workers it
leased (on every node) are released and its queued work is dropped."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import gdfut
from gdfut.testing import Cluster
from helpers import assert_no_leaks, shm_files, wait_until


@pytest.fixture
def two_nodes():
    c = Cluster()
    try:
        c.add_node(num_cpus=2, wait=False)
        c.add_node(num_cpus=2)
        yield c
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)


def markers(d):
    return sorted(n for n in os.listdir(d) if n.startswith("start-"))


def pids_in(d):
    return [int(open(os.path.join(d, n)).read()) for n in markers(d)]


def dead(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cluster_idle(c):
    """Every node lists all its CPUs free and no lease."""
    rows = c.alive_nodes()
    leases = [(r.get("stats") or {}).get("leases") or {} for r in rows]
    return len(rows) == 2 and all(
        l.get("num_leases") == 0 and l.get("available", {}).get("CPU") == l.get("total", {}).get("CPU")
        for l in leases)


DRIVER = textwrap.dedent("""
    import os, sys, time
    import gdfut
    out = sys.argv[3]

    @gdfut.remote
    def sleeper(i):
        path = os.path.join(out, f"start-{i}")
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(120)

    gdfut.init(address=sys.argv[1], session_dir=sys.argv[2])
    refs = [sleeper.remote(i) for i in range(10)]     # 4 CPUs: 4 run, 6 queue
    print("submitted", flush=True)
    time.sleep(300)
""")


def test_dead_driver_tasks_are_cancelled_on_every_node(two_nodes, tmp_path):
    c = two_nodes
    out = str(tmp_path)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, c.address, c.session_dir, out],
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert driver.stdout.readline().strip() == b"submitted"
        wait_until(lambda: len(markers(out)) == 4, timeout=60, what="4 tasks running")
        running = pids_in(out)
        # the 4 CPUs are on both nodes: the driver leased workers on each
        wait_until(lambda: len([r for r in c.alive_nodes()
                                if ((r.get("stats") or {}).get("leases") or {}).get("num_leases")]) == 2,
                   timeout=20, what="leases on both nodes")
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        wait_until(lambda: all(dead(p) for p in running), timeout=20,
                   what="the dead driver's running tasks to be killed")
        wait_until(lambda: cluster_idle(c), timeout=20, what="every lease released")
        time.sleep(2.0)                   # a queued task would have started by now
        assert len(markers(out)) == 4, markers(out)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stdout.close()


@gdfut.remote
def child_sleeper(out, i):
    path = os.path.join(out, f"start-{i}")
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(120)


@gdfut.remote(max_retries=0)
def owner_that_dies(out, n):
    refs = [child_sleeper.remote(out, i) for i in range(n)]
    deadline = time.monotonic() + 60
    while len([x for x in os.listdir(out) if x.startswith("start-")]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
    return refs


def test_dead_worker_owner_tasks_are_cancelled(two_nodes, tmp_path):
    c = two_nodes
    c.connect()
    out = str(tmp_path)
    # 4 CPUs: the owner takes one, 2 children run, the other 6 queue
    with pytest.raises(gdfut.exceptions.WorkerCrashedError):
        gdfut.get(owner_that_dies.remote(out, 8), timeout=60)
    running = pids_in(out)
    assert len(running) >= 2
    wait_until(lambda: all(dead(p) for p in running), timeout=20,
               what="the dead owner's running children to be killed")
    wait_until(lambda: cluster_idle(c), timeout=20, what="every lease released")
    time.sleep(2.0)
    assert len(markers(out)) == len(running), markers(out)


FROZEN_DRIVER = textwrap.dedent("""
    import os, sys, time
    import gdfut
    out = sys.argv[3]

    @gdfut.remote(resources={"far": 0.1})
    def sleeper(i):
        path = os.path.join(out, f"start-{i}")
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(120)

    gdfut.init(address=sys.argv[1], session_dir=sys.argv[2])
    refs = [sleeper.remote(i) for i in range(6)]      # 2 run on the far node, 4 queue
    print(gdfut.get_runtime_context().get_node_id(), flush=True)
    time.sleep(300)
""")


def test_owner_declared_dead_by_the_head_loses_its_remote_leases(monkeypatch, tmp_path):
    """The owner's host freezes (driver and node stopped, sockets still open):
    once the head declares that node dead, the other node kills the workers
    the owner leased there, though their connections never closed."""
    monkeypatch.setenv("GDFUT_NODE_DEAD_AFTER_S", "2")
    c = Cluster()
    stopped = []
    driver = None
    try:
        a = c.add_node(num_cpus=1, wait=False)
        c.add_node(num_cpus=2, resources={"far": 1})
        out = str(tmp_path)
        driver = subprocess.Popen([sys.executable, "-c", FROZEN_DRIVER, c.address, c.session_dir,
                                   out], stdout=subprocess.PIPE,
                                  env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert driver.stdout.readline().strip().decode() == a.node_id   # the driver is on a
        wait_until(lambda: len(markers(out)) == 2, timeout=60, what="2 tasks running on b")
        running = pids_in(out)
        stopped = [driver.pid, a.pid] + [p.pid for p in psutil.Process(a.pid).children()]
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: all(dead(p) for p in running), timeout=30,
                   what="the frozen owner's tasks on the other node to be killed")
        time.sleep(2.0)
        assert len(markers(out)) == 2, markers(out)    # its queued tasks never started
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if driver is not None:
            driver.kill()
            driver.wait()
            driver.stdout.close()
        c.shutdown()
        assert_no_leaks(c.session_dir)
