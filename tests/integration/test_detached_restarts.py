"""Detached actors restarted by the head after their creator exited (issue 9,
point 5): the head holds the creation spec (arguments captured by value),
decides restarts with ``ActorRestarts``, and answers callers where the actor
is once it is back; handles the creator passed out keep working.

Each test runs the creating driver as a subprocess on a cluster started with
the CLI, stops the cluster in ``finally`` and checks that no process,
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
from gdfut.exceptions import ActorDiedError
from helpers import REPO, actor_name_gone, gdfut_cli, running_cli_cluster, wait_until

CREATOR = r"""
import os, sys
import numpy as np
import gdfut
gdfut.init(address=sys.argv[1], session_dir=sys.argv[2], namespace="app")

@gdfut.remote
class Counter:
    def __init__(self, start, big):
        self.n = start + int(big.sum())      # big: 1 MiB of ones, passed by reference
        self.inits = 1
    def inc(self):
        self.n += 1
        return self.n
    def pid(self):
        return os.getpid()

@gdfut.remote
class Holder:
    def keep(self, counter):
        self.counter = counter[0]            # a handle the creator passed out
        return True
    def call(self):
        return gdfut.get(self.counter.inc.remote(), timeout=60)

big = gdfut.put(np.ones(1 << 17, dtype=np.int64))          # the actor's init reads it
start = gdfut.put(-(1 << 17) + 10)                          # so n starts at 10
restarts = int(sys.argv[3])
c = Counter.options(name="counter", lifetime="detached", max_restarts=restarts).remote(start, big)
h = Holder.options(name="holder", lifetime="detached").remote()
assert gdfut.get(c.inc.remote()) == 11
assert gdfut.get(h.keep.remote([c]))
print(gdfut.get(c.pid.remote()), flush=True)
"""


def run_creator(cluster, max_restarts=1) -> int:
    """Run the creating driver to its end; the pid of the counter's worker."""
    out = subprocess.run([sys.executable, "-c", CREATOR, cluster.address, cluster.session_dir,
                          str(max_restarts)], cwd=REPO, capture_output=True, text=True,
                         timeout=90)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


def kill_worker(pid: int) -> None:
    """SIGKILL, then wait until the process is reaped: not only a zombie
    (``pid_alive`` is False for a zombie leader whose other threads still
    exit, with its sockets still open); from then on its connections are
    closed and a call made is a new one, not one in flight."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10,
               what="the actor's worker to die")


def connect(cluster):
    gdfut.init(address=cluster.address, session_dir=cluster.session_dir, namespace="app")


@pytest.fixture
def cli_cluster(tmp_path):
    with running_cli_cluster(tmp_path, env={"GDFUT_NODE_REREGISTER_S": "4"}) as cluster:
        yield cluster


def test_detached_actor_is_restarted_after_its_creator_exited(cli_cluster):
    first = run_creator(cli_cluster)
    kill_worker(first)                     # the creator is gone: only the head can restart it
    connect(cli_cluster)
    counter = gdfut.get_actor("counter")
    # __init__(start, big) ran again with the captured arguments (the objects
    # were freed with their owner): n is 10 again
    assert gdfut.get(counter.inc.remote(), timeout=60) == 11
    second = gdfut.get(counter.pid.remote())
    assert second != first and pid_alive(second)
    assert gdfut.get(counter.inc.remote()) == 12
    gdfut.kill(counter)
    wait_until(lambda: not pid_alive(second), timeout=15, what="the killed actor to exit")
    with pytest.raises(ValueError):
        gdfut.get_actor("counter")
    gdfut.kill(gdfut.get_actor("holder"))


def test_detached_actor_out_of_restarts_raises_actor_died(cli_cluster):
    first = run_creator(cli_cluster, max_restarts=1)
    connect(cli_cluster)
    counter = gdfut.get_actor("counter")
    kill_worker(first)
    assert gdfut.get(counter.inc.remote(), timeout=60) == 11      # restarted once
    kill_worker(gdfut.get(counter.pid.remote()))
    with pytest.raises(ActorDiedError, match="restarted 1 time"):
        gdfut.get(counter.inc.remote(), timeout=60)
    with pytest.raises(ActorDiedError, match="restarted 1 time"):     # and stays dead
        gdfut.get(counter.inc.remote(), timeout=60)
    wait_until(lambda: actor_name_gone("counter"), timeout=10, what="the dead actor's name to go")
    gdfut.kill(gdfut.get_actor("holder"))


def test_handle_passed_out_by_the_creator_works_after_it_exited(cli_cluster):
    """The holder got its handle from the creator (owned by it); the creator
    exits, the counter's worker is killed: the holder's calls wait for the
    restart (asking the head) and then reach the restarted actor."""
    first = run_creator(cli_cluster)
    connect(cli_cluster)
    holder = gdfut.get_actor("holder")
    assert gdfut.get(holder.call.remote(), timeout=60) == 12      # creator gone, handle works
    kill_worker(first)
    assert gdfut.get(holder.call.remote(), timeout=60) == 11      # restarted: __init__ again
    assert gdfut.get(holder.call.remote(), timeout=60) == 12
    gdfut.kill(holder)
    gdfut.kill(gdfut.get_actor("counter"))


def test_head_restart_keeps_the_detached_actors_spec(cli_cluster):
    c = cli_cluster
    first = run_creator(c)
    head = c.head_pid()
    os.kill(head, signal.SIGKILL)
    wait_until(lambda: not pid_alive(head), timeout=10, what="the head to die")
    out = gdfut_cli("start", "--head", "--session-dir", c.session_dir, env=c.env)
    assert "restarted" in out.stdout, out.stdout
    wait_until(lambda: c.status().get("awaited_nodes") == 0, timeout=20,
               what="the node to register again")
    kill_worker(first)                      # the new head restarts it from its SQLite state
    connect(c)
    counter = gdfut.get_actor("counter")
    assert gdfut.get(counter.inc.remote(), timeout=60) == 11
    assert gdfut.get(counter.pid.remote()) != first
    gdfut.kill(counter)
    gdfut.kill(gdfut.get_actor("holder"))


@gdfut.remote
class Counter:
    def __init__(self, start):
        self.n = start

    def inc(self):
        self.n += 1
        return self.n

    def slow(self, seconds, started=None):
        if started:
            open(started, "w").close()     # the test kills the worker only then
        time.sleep(seconds)
        return self.inc(), os.getpid()

    def pid(self):
        return os.getpid()


def running_call(actor, tmp_path, seconds):
    """A call the actor's worker is running (not only sent) when this returns."""
    started = tmp_path / f"started-{time.monotonic_ns()}"
    ref = actor.slow.remote(seconds, str(started))
    wait_until(started.exists, timeout=30, what="the call to start")
    return ref


def test_the_head_restarts_a_detached_actor_while_its_creator_lives(tmp_path):
    """From the hand-over on the head decides restarts also while the
    creator lives; the creator's own handle waits for the restart.

    Ray's semantics with max_task_retries=0: a call in flight when the
    worker dies fails with ActorDiedError (even if the actor restarts); calls
    made after it died queue for the restart; out of restarts they fail with
    ActorDiedError."""
    from helpers import assert_no_leaks
    info = gdfut.init(num_cpus=2, object_store_memory=64 * 1024 * 1024)
    try:
        c = Counter.options(lifetime="detached", max_restarts=3).remote(5)
        assert gdfut.get(c.inc.remote()) == 6
        kill_worker(gdfut.get(c.pid.remote()))
        assert gdfut.get(c.inc.remote(), timeout=60) == 6          # __init__(5) again
        gdfut.kill(c, no_restart=False)                            # the second restart
        assert gdfut.get(c.inc.remote(), timeout=60) == 6
        third = gdfut.get(c.pid.remote())
        running = running_call(c, tmp_path, 60)
        kill_worker(third)                                         # the third
        with pytest.raises(ActorDiedError, match="not retried: max_task_retries=0"):
            gdfut.get(running, timeout=60)       # answered once the head restarted it
        assert gdfut.get(c.inc.remote(), timeout=60) == 6
        kill_worker(gdfut.get(c.pid.remote()))
        with pytest.raises(ActorDiedError, match="restarted 3 times"):
            gdfut.get(c.inc.remote(), timeout=60)
        with pytest.raises(ActorDiedError, match="restarted 3 times"):
            gdfut.get(c.inc.remote(), timeout=60)
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def test_a_detached_actors_call_in_flight_is_retried_per_max_task_retries(tmp_path):
    """max_task_retries=-1: the call running when the worker dies runs again
    on the actor the head restarted; out of restarts, the call in flight
    gets the head's verdict."""
    from helpers import assert_no_leaks
    info = gdfut.init(num_cpus=2, object_store_memory=64 * 1024 * 1024)
    try:
        c = Counter.options(lifetime="detached", max_restarts=1, max_task_retries=-1).remote(5)
        first = gdfut.get(c.pid.remote())
        running = running_call(c, tmp_path, 5)
        kill_worker(first)
        n, ran_on = gdfut.get(running, timeout=60)
        second = gdfut.get(c.pid.remote())
        assert (n, ran_on) == (6, second) and second != first   # again, after __init__(5)
        running = running_call(c, tmp_path, 60)
        kill_worker(second)
        with pytest.raises(ActorDiedError, match="restarted 1 time"):
            gdfut.get(running, timeout=60)
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])
