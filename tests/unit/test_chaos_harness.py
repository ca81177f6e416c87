"""gdfut.testing.chaos: seeded choice of victims, never the head, the driver
or a spared node, and a record of what it killed."""
import random
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest

from gdfut.testing.chaos import Chaos, Target, choose_victim
from helpers import wait_until

SPAWN_TWO = ("import subprocess, sys, time\n"
             "ps = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) "
             "for _ in range(2)]\n"
             "time.sleep(60)\n")


def test_choice_depends_only_on_seed_and_set():
    ts = [Target("worker", p, "n%d" % (p % 2)) for p in range(10, 20)] + \
         [Target("node", 1, "n0"), Target("node", 2, "n1")]
    a = [choose_victim(random.Random(5), ts, ("worker", "node")) for _ in range(3)]
    b = [choose_victim(random.Random(5), list(reversed(ts)), ("worker", "node")) for _ in range(3)]
    assert a == b
    seen = {choose_victim(random.Random(s), ts, ("worker", "node")).kind for s in range(40)}
    assert seen == {"worker", "node"}             # kinds picked first: nodes are not drowned
    assert choose_victim(random.Random(0), ts, ("node",)).kind == "node"
    assert choose_victim(random.Random(0), [], ("worker",)) is None


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="kinds must be"):
        Chaos(None, kinds=("head",))
    with pytest.raises(ValueError, match="interval_s"):
        Chaos(None, interval_s=0)


@pytest.fixture
def fake_cluster():
    """A "head" and two "node daemons", each with two "worker" children."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
    procs += [subprocess.Popen([sys.executable, "-c", SPAWN_TWO]) for _ in range(2)]
    nodes = [SimpleNamespace(node_id=f"node{i}", pid=p.pid, daemon=SimpleNamespace(popen=p))
             for i, p in enumerate(procs[1:])]
    c = SimpleNamespace(head=SimpleNamespace(popen=procs[0]), nodes=nodes)
    c.remove_node = lambda n: (n.daemon.popen.kill(), n.daemon.popen.wait(), c.nodes.remove(n))
    try:
        wait_until(lambda: all(len(psutil.Process(p.pid).children()) == 2 for p in procs[1:]),
                   timeout=20, what="fake workers")
        yield c
    finally:
        for p in procs:
            for child in psutil.Process(p.pid).children() if p.poll() is None else []:
                child.kill()
            p.kill()
            p.wait()
        wait_until(lambda: not [x for x in psutil.Process().children(recursive=True)
                                if x.status() != psutil.STATUS_ZOMBIE], timeout=10)


def test_candidates_spare_the_head_and_spared_nodes(fake_cluster):
    c = fake_cluster
    chaos = Chaos(c, kinds=("worker", "node"), spare=("node1",))
    cands = chaos.candidates()
    pids = {t.pid for t in cands}
    assert c.head.popen.pid not in pids
    assert {t.node_id for t in cands} == {"node0"}
    assert sorted(t.kind for t in cands) == ["node", "worker", "worker"]


def test_min_nodes_keeps_the_last_node(fake_cluster):
    chaos = Chaos(fake_cluster, kinds=("node",), min_nodes=2)
    assert chaos.candidates() == []
    assert chaos.kill_one() is None and not chaos.kills


def test_background_thread_kills_every_interval_and_records_it(fake_cluster):
    c = fake_cluster
    workers = {ch.pid for n in c.nodes for ch in psutil.Process(n.pid).children()}
    with Chaos(c, seed=1, interval_s=0.05, kinds=("worker",), max_kills=3) as chaos:
        wait_until(lambda: len(chaos.kills) == 3, timeout=10, what="three kills")
    time.sleep(0.2)
    assert len(chaos.kills) == 3                     # max_kills bounds it
    killed = {k.target.pid for k in chaos.kills}
    assert killed <= workers and len(killed) == 3
    for pid in killed:
        wait_until(lambda: not psutil.pid_exists(pid) or
                   psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, timeout=5)
    assert all(n.daemon.popen.poll() is None for n in c.nodes)   # daemons untouched
    assert "seed=1" in chaos.summary()


def test_node_kill_goes_through_the_cluster(fake_cluster):
    c = fake_cluster
    chaos = Chaos(c, seed=0, kinds=("node",))
    kill = chaos.kill_one()
    assert kill.target.kind == "node" and len(c.nodes) == 1
    assert chaos.kill_one() is None              # min_nodes=1: the last one stays
