"""Head restart (issue 9, point 6): the head is killed with SIGKILL and
started again on the same session directory with the CLI; nodes register
again, a running driver continues, named actors are not lost.

The cluster is started with the CLI (head and node are separate detached
processes); every test stops it in ``finally`` and checks that no process,
shared-memory or spill file of the session is left.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import gdfut
from gdfut.cluster import pid_alive
from helpers import REPO, actor_name_gone, CliCluster, gdfut_cli, running_cli_cluster, wait_until

REREGISTER_S = 4      # a node not back this long after the restart is dead (env for the head)


@gdfut.remote
class Counter:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n


@gdfut.remote
def slow_square(x, seconds):
    time.sleep(seconds)
    return x * x


@pytest.fixture
def cli_cluster(tmp_path):
    with running_cli_cluster(tmp_path, env={"GDFUT_NODE_REREGISTER_S": str(REREGISTER_S)}) as cluster:
        yield cluster


def kill_head(cluster) -> int:
    pid = cluster.head_pid()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), timeout=10, what="the head to die")
    return pid


def restart_head(cluster):
    out = gdfut_cli("start", "--head", "--session-dir", cluster.session_dir, env=cluster.env)
    assert "restarted" in out.stdout, out.stdout
    with open(os.path.join(cluster.session_dir, "address")) as f:
        assert f.read().strip() == cluster.address          # same port: nodes find it


def alive_nodes(cluster) -> list:
    st = cluster.status()
    return [n for n in st["nodes"] if n["state"] == "ALIVE" and n.get("stats")] \
        if st.get("awaited_nodes") == 0 else []


def test_head_restart_keeps_nodes_and_named_actors(cli_cluster):
    c = cli_cluster
    gdfut.init(address=c.address, session_dir=c.session_dir, namespace="svc")
    counter = Counter.options(name="counter").remote()
    detached = Counter.options(name="kept", lifetime="detached").remote()
    assert gdfut.get([counter.inc.remote(), detached.inc.remote()]) == [1, 1]
    node_ids = sorted(n["node_id"] for n in gdfut.nodes())
    running = slow_square.remote(7, 2.0)                 # runs through the outage
    time.sleep(0.5)

    refused = gdfut_cli("start", "--head", "--session-dir", c.session_dir, check=False)
    assert refused.returncode == 1 and "already runs" in refused.stderr, refused.stderr

    old = kill_head(c)
    # during the outage: what does not need the head goes on
    assert gdfut.get(running, timeout=30) == 49
    assert gdfut.get(slow_square.remote(3, 0), timeout=30) == 9
    assert gdfut.get(counter.inc.remote(), timeout=30) == 2
    with pytest.raises(gdfut.exceptions.ClusterConnectionError):
        gdfut.get_actor("counter")

    restart_head(c)
    assert c.head_pid() != old
    wait_until(lambda: len(alive_nodes(c)) == 1, timeout=20, what="the node to register again")
    assert sorted(n["node_id"] for n in gdfut.nodes()) == node_ids
    again = gdfut.get_actor("counter")                   # not lost, and the same actor
    assert gdfut.get(again.inc.remote()) == 3
    assert gdfut.get(gdfut.get_actor("kept").inc.remote()) == 2
    assert gdfut.get([slow_square.remote(i, 0) for i in range(10)]) == [i * i for i in range(10)]
    assert c.status()["named_actors"] == 2
    gdfut.kill(gdfut.get_actor("kept"))


OWNER = r"""
import sys
import gdfut
gdfut.init(address=sys.argv[1], session_dir=sys.argv[2], namespace="svc")

@gdfut.remote
class A:
    def ping(self):
        return "pong"

a = A.options(name="ephemeral").remote()
assert gdfut.get(a.ping.remote()) == "pong"
from gdfut.util import placement_group
assert placement_group([{"CPU": 0.5}], name="theirs").wait(30)
print("READY", flush=True)
sys.stdin.readline()
"""


def test_what_died_during_the_outage_is_noticed(cli_cluster):
    """A driver that dies while the head is down loses its named actor once
    the node reports its live processes; a node that does not come back is
    declared dead after the grace period."""
    c = cli_cluster
    gdfut_cli("start", "--address", c.address, "--session-dir", c.session_dir,
              "--num-cpus", "1", "--object-store-memory", str(32 * 1024 * 1024), env=c.env)
    owner = subprocess.Popen([sys.executable, "-c", OWNER, c.address, c.session_dir], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "READY"
        gdfut.init(address=c.address, session_dir=c.session_dir, namespace="svc")
        assert gdfut.get(gdfut.get_actor("ephemeral").ping.remote()) == "pong"
        wait_until(lambda: len([n for n in gdfut.nodes() if n["state"] == "ALIVE"]) == 2,
                   what="two nodes")
        second = [n for n in c.status()["nodes"] if n["pid"] != _first_node_pid(c)][0]

        assert _group_state("theirs") == "CREATED"
        kill_head(c)
        owner.kill()                                      # dies unseen by the head
        owner.wait()
        os.kill(second["pid"], signal.SIGKILL)            # a node that will not come back
        wait_until(lambda: not pid_alive(second["pid"]), what="the second node to die")
        restart_head(c)

        def states():
            return {n["node_id"]: n["state"] for n in gdfut.nodes()}
        second_id = bytes.fromhex(second["node_id"])      # the CLI's JSON has hex ids
        wait_until(lambda: states().get(second_id) == "DEAD", timeout=REREGISTER_S + 15,
                   what="the node that did not come back to be declared dead")
        assert list(states().values()).count("ALIVE") == 1
        wait_until(lambda: actor_name_gone("ephemeral"), timeout=15,
                   what="the dead driver's actor name to go")
        wait_until(lambda: _group_state("theirs") is None, timeout=15,
                   what="the dead driver's placement group to go")
        assert gdfut.get(slow_square.remote(5, 0)) == 25
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def _first_node_pid(cluster) -> int:
    with open(os.path.join(cluster.session_dir, "pids")) as f:
        return next(int(p) for kind, p in (line.split() for line in f) if kind == "node")


def test_a_node_whose_head_stays_away_stops(tmp_path):
    """Nodes retry the head for a bounded time (GDFUT_HEAD_RECONNECT_TIMEOUT_S),
    then stop cleanly: their workers and shared memory go with them."""
    from helpers import session_processes, shm_files
    cluster = CliCluster(tmp_path / "session", env={"GDFUT_HEAD_RECONNECT_TIMEOUT_S": "3"})
    try:
        node_pid = _first_node_pid(cluster)
        gdfut.init(address=cluster.address, session_dir=cluster.session_dir)
        assert gdfut.get(slow_square.remote(4, 0)) == 16
        gdfut.shutdown()
        assert shm_files(cluster.session_dir)              # the node's arena
        kill_head(cluster)
        time.sleep(1.5)
        assert pid_alive(node_pid)                         # still retrying
        wait_until(lambda: not pid_alive(node_pid), timeout=20, what="the node to give up")
        wait_until(lambda: not session_processes(cluster.session_dir), timeout=10,
                   what="its workers to exit")
        assert not shm_files(cluster.session_dir)
        log = open(os.path.join(cluster.session_dir, "logs", f"node-{node_pid}.log")).read()
        assert "unreachable for 3 s" in log
    finally:
        gdfut.shutdown()
        cluster.stop()


def _group_state(name):
    from gdfut.util import get_placement_group, placement_group_table
    try:
        return placement_group_table(get_placement_group(name))["state"]
    except Exception:       # no such group (any more)
        return None


def test_placement_groups_survive_a_head_restart(cli_cluster):
    from gdfut.util import get_placement_group, placement_group, remove_placement_group
    from gdfut.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    c = cli_cluster
    gdfut.init(address=c.address, session_dir=c.session_dir)
    pg = placement_group([{"CPU": 1}], name="pg1")
    assert pg.wait(30)
    in_group = slow_square.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(pg), num_cpus=1)
    assert gdfut.get(in_group.remote(6, 0)) == 36
    kill_head(c)
    restart_head(c)
    wait_until(lambda: len(alive_nodes(c)) == 1, timeout=20, what="the node to register again")
    assert get_placement_group("pg1") == pg
    assert _group_state("pg1") == "CREATED"
    assert gdfut.get(in_group.remote(8, 0), timeout=30) == 64
    remove_placement_group(pg)
    wait_until(lambda: _group_state("pg1") is None, timeout=10, what="the group to go")
    # its bundle was returned to the node: a 2-CPU task fits again
    assert gdfut.get(slow_square.options(num_cpus=2).remote(9, 0), timeout=30) == 81
