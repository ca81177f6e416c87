"""Detached actors and namespaces (issue 9, point 5), on a cluster started
with the CLI so that drivers can come and go while it runs.

Each test stops its cluster in ``finally`` and checks that no process,
shared-memory or spill file of the session is left.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

import gdfut
from gdfut.cluster import pid_alive
from helpers import REPO, running_cli_cluster, wait_until

CREATOR = r"""
import os, sys
import gdfut
gdfut.init(address=sys.argv[1], session_dir=sys.argv[2], namespace="app")

@gdfut.remote
class Counter:
    def __init__(self, start):
        self.n = start
    def inc(self):
        self.n += 1
        return self.n
    def pid(self):
        return os.getpid()

kept = Counter.options(name="keeper", lifetime="detached").remote(10)
plain = Counter.options(name="plain").remote(0)
assert gdfut.get(kept.inc.remote()) == 11
assert gdfut.get(plain.inc.remote()) == 1
print(gdfut.get(kept.pid.remote()), gdfut.get(plain.pid.remote()), flush=True)
"""


@gdfut.remote
class Counter:
    def __init__(self, start):
        self.n = start

    def inc(self):
        self.n += 1
        return self.n


def run_creator(cluster) -> tuple[int, int]:
    """Run the creating driver to its end; the pids of its two actors."""
    out = subprocess.run([sys.executable, "-c", CREATOR, cluster.address, cluster.session_dir],
                         cwd=REPO, capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    kept_pid, plain_pid = map(int, out.stdout.split())
    return kept_pid, plain_pid


def lookup_fails(name, namespace=None) -> bool:
    try:
        gdfut.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


@pytest.fixture
def cli_cluster(tmp_path):
    with running_cli_cluster(tmp_path) as cluster:
        yield cluster


def test_detached_actor_survives_its_driver(cli_cluster):
    kept_pid, plain_pid = run_creator(cli_cluster)
    # the creating driver has exited: its plain named actor went with it...
    wait_until(lambda: not pid_alive(plain_pid), timeout=15, what="the plain actor to die")
    assert pid_alive(kept_pid)
    assert cli_cluster.status()["named_actors"] == 1     # ...the detached one is registered
    gdfut.init(address=cli_cluster.address, session_dir=cli_cluster.session_dir,
               namespace="app")
    handle = gdfut.get_actor("keeper")                  # the current namespace: "app"
    assert gdfut.get(handle.inc.remote()) == 12         # same actor, its state kept
    assert gdfut.get(gdfut.get_actor("keeper", namespace="app").inc.remote()) == 13
    wait_until(lambda: lookup_fails("plain"), timeout=10, what="the plain actor's name to go")


QUICK_CREATOR = r"""
import sys
import gdfut
gdfut.init(address=sys.argv[1], session_dir=sys.argv[2], namespace="app")

@gdfut.remote
class Box:
    def __init__(self, v):
        self.v = v
    def get(self):
        return self.v

Box.options(name="box", lifetime="detached").remote("kept")    # no call: exits at once
"""


def test_a_detached_actor_created_just_before_its_driver_exits_is_kept(cli_cluster):
    out = subprocess.run([sys.executable, "-c", QUICK_CREATOR, cli_cluster.address,
                          cli_cluster.session_dir], cwd=REPO, capture_output=True, text=True,
                         timeout=90)
    assert out.returncode == 0, out.stderr
    gdfut.init(address=cli_cluster.address, session_dir=cli_cluster.session_dir,
               namespace="app")
    box = gdfut.get_actor("box")
    assert gdfut.get(box.get.remote(), timeout=30) == "kept"
    gdfut.kill(box)


def test_namespaces_isolate_names(cli_cluster):
    run_creator(cli_cluster)
    gdfut.init(address=cli_cluster.address, session_dir=cli_cluster.session_dir)
    # this job's own (anonymous) namespace does not see "app"'s names
    assert gdfut.get_runtime_context().namespace != "app"
    assert lookup_fails("keeper")
    assert lookup_fails("keeper", namespace="other")
    assert gdfut.get(gdfut.get_actor("keeper", namespace="app").inc.remote()) == 12
    # the same name in another namespace is another actor; in "app" it is taken
    mine = Counter.options(name="keeper").remote(100)
    assert gdfut.get(mine.inc.remote()) == 101
    assert gdfut.get(gdfut.get_actor("keeper").inc.remote()) == 102
    with pytest.raises(ValueError, match="already exists in namespace 'app'"):
        Counter.options(name="keeper", namespace="app").remote(0)
    assert gdfut.get(gdfut.get_actor("keeper", namespace="app").inc.remote()) == 13
    with pytest.raises(ValueError, match="namespace"):
        gdfut.get_actor("keeper", namespace="")
    with pytest.raises(ValueError, match="lifetime"):
        Counter.options(lifetime="forever")


def test_kill_removes_a_detached_actor(cli_cluster):
    kept_pid, _ = run_creator(cli_cluster)
    gdfut.init(address=cli_cluster.address, session_dir=cli_cluster.session_dir,
               namespace="app")
    handle = gdfut.get_actor("keeper")
    assert gdfut.get(handle.inc.remote()) == 12
    gdfut.kill(handle)
    assert lookup_fails("keeper")                       # the name is free when kill returns
    wait_until(lambda: not pid_alive(kept_pid), timeout=15, what="its worker to exit")
    with pytest.raises(gdfut.exceptions.ActorDiedError):
        gdfut.get(handle.inc.remote(), timeout=30)
    assert cli_cluster.status()["named_actors"] == 0
    again = Counter.options(name="keeper", lifetime="detached").remote(0)   # name reusable
    assert gdfut.get(again.inc.remote()) == 1
    gdfut.kill(again)


def test_detached_actor_in_an_embedded_cluster_ends_with_the_cluster():
    """A detached actor lives until kill or until its cluster stops: an
    embedded cluster stops with its driver."""
    from helpers import assert_no_leaks
    info = gdfut.init(num_cpus=2, object_store_memory=64 * 1024 * 1024)
    try:
        a = Counter.options(name="d", lifetime="detached").remote(0)
        assert gdfut.get(a.inc.remote()) == 1
        del a        # no handle left: a detached actor stays anyway
        assert gdfut.get(gdfut.get_actor("d").inc.remote()) == 2
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


@gdfut.remote
def inc_by_name(name):
    """Runs in a worker: looks the name up in the submitting job's namespace."""
    try:
        actor = gdfut.get_actor(name)
    except ValueError:
        return None
    return gdfut.get(actor.inc.remote())


@gdfut.remote
class Finder:
    def find(self, name):
        return gdfut.get(inc_by_name.remote(name))      # a task the actor submits

    def namespace(self):
        return gdfut.get_runtime_context().namespace


def test_tasks_and_actors_use_their_jobs_namespace():
    from helpers import assert_no_leaks
    info = gdfut.init(num_cpus=2, object_store_memory=64 * 1024 * 1024, namespace="jobns")
    try:
        Counter.options(name="c").remote(0)
        assert gdfut.get(inc_by_name.remote("c")) == 1
        finder = Finder.remote()
        assert gdfut.get(finder.namespace.remote()) == "jobns"
        assert gdfut.get(finder.find.remote("c")) == 2
        elsewhere = Finder.options(namespace="other").remote()
        assert gdfut.get(elsewhere.namespace.remote()) == "other"
        assert gdfut.get(elsewhere.find.remote("c")) is None     # not in "other"
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])
