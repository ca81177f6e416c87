"""Actors under stress and at their edges: start storms, kill of named
actors, exit_actor(), class attributes, argument checks at the call."""
import os
import time

import psutil
import pytest

import gdfut
from gdfut.actor import ActorClassInheritanceException
from gdfut.exceptions import ActorDiedError
from helpers import node_status
from helpers import wait_until


SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


def _gone(pid) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------- start storm
STORM_ACTORS = 200
WORKER_MEMORY = 60 * 1024 * 1024     # a worker's resident size is about 40-50 MB


@gdfut.remote
class Pinger:
    def ping(self):
        return os.getpid()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_actor_start_storm_all_come_up(cluster):
    """Many actors created at once on 2 CPUs all start (worker starts are
    throttled by the node) instead of timing out together."""
    fits = int(psutil.virtual_memory().available * 0.6 // WORKER_MEMORY)
    n = min(STORM_ACTORS, fits)
    if n < 50:
        pytest.skip(f"only {n} workers fit in free memory")
    actors = [Pinger.remote() for _ in range(n)]
    pids = gdfut.get([a.ping.remote() for a in actors], timeout=240)
    assert len(set(pids)) == n            # every actor answered, each in its own process
    leases = node_status()["leases"]
    assert leases["max_starting"] >= 1
    assert leases["num_actor_leases"] == n


# --------------------------------------------------------------------- kill
@gdfut.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n


@pytest.mark.own_cluster     # its named actor lives until the job ends
def test_kill_named_actor_frees_name_and_fails_calls_at_once(cluster):
    c = Counter.options(name="counter").remote()
    assert gdfut.get(c.incr.remote()) == 1
    gdfut.kill(c)
    # Right after kill returns: no stale handle, calls fail, the name is free.
    with pytest.raises(ValueError, match="counter"):
        gdfut.get_actor("counter")
    with pytest.raises(ActorDiedError, match="kill"):
        gdfut.get(c.incr.remote(), timeout=10)
    again = Counter.options(name="counter").remote(10)
    assert gdfut.get(again.incr.remote()) == 11
    assert gdfut.get(gdfut.get_actor("counter").incr.remote()) == 12


@gdfut.remote
def kill_by_name(name):
    gdfut.kill(gdfut.get_actor(name))
    try:
        gdfut.get_actor(name)
    except ValueError:
        return "name free"
    return "name still taken"


def test_kill_from_another_process_frees_the_name(cluster):
    p = Pinger.options(name="remote-kill").remote()
    pid = gdfut.get(p.ping.remote())
    assert gdfut.get(kill_by_name.remote("remote-kill")) == "name free"
    with pytest.raises(ValueError):
        gdfut.get_actor("remote-kill")
    wait_until(lambda: _gone(pid), what="the killed actor's process to exit")
    with pytest.raises(ActorDiedError):
        gdfut.get(p.ping.remote(), timeout=10)


def test_kill_before_the_actor_is_up_releases_its_worker(cluster):
    c = Counter.remote()
    gdfut.kill(c)                      # its lease may still be queued at the node
    with pytest.raises(ActorDiedError, match="kill"):
        gdfut.get(c.incr.remote(), timeout=10)
    wait_until(lambda: node_status()["leases"]["num_actor_leases"] == 0,
               what="the killed actor's lease to be returned")


def test_name_is_freed_when_a_named_actor_dies(cluster):
    @gdfut.remote
    class Fragile:
        def die(self):
            os._exit(1)

    f = Fragile.options(name="fragile").remote()
    with pytest.raises(ActorDiedError):
        gdfut.get(f.die.remote(), timeout=10)

    def name_free():
        try:
            gdfut.get_actor("fragile")
        except ValueError:
            return True
        return False
    wait_until(name_free, what="the dead actor's name to be freed")


# --------------------------------------------------------------- exit_actor
@gdfut.remote
class Leaver:
    def __init__(self, path):
        import atexit
        atexit.register(lambda: open(path, "w").write("atexit ran"))

    def pid(self):
        return os.getpid()

    def leave(self):
        gdfut.actor.exit_actor()
        return "not reached"


def test_exit_actor_ends_the_actor_cleanly(cluster, tmp_path):
    marker = tmp_path / "atexit"
    a = Leaver.remote(str(marker))
    pid = gdfut.get(a.pid.remote())
    leave, queued = a.leave.remote(), a.pid.remote()
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        gdfut.get(leave, timeout=10)
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        gdfut.get(queued, timeout=10)
    with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
        gdfut.get(a.pid.remote(), timeout=10)
    wait_until(lambda: _gone(pid), what="the actor's process to exit")
    assert marker.read_text() == "atexit ran"
    wait_until(lambda: node_status()["leases"]["num_actor_leases"] == 0,
               what="the exited actor's lease to be released")


def test_exit_actor_in_async_and_threaded_actors(cluster):
    @gdfut.remote
    class AsyncLeaver:
        async def leave(self):
            gdfut.actor.exit_actor()

    @gdfut.remote
    class ThreadedLeaver:
        def leave(self):
            gdfut.actor.exit_actor()

    for a in (AsyncLeaver.remote(), ThreadedLeaver.options(max_concurrency=4).remote()):
        with pytest.raises(ActorDiedError, match=r"exit_actor\(\)"):
            gdfut.get(a.leave.remote(), timeout=10)
        with pytest.raises(ActorDiedError):
            gdfut.get(a.leave.remote(), timeout=10)


@gdfut.remote
def exit_in_task():
    try:
        gdfut.actor.exit_actor()
    except TypeError as exc:
        return str(exc)


def test_exit_actor_outside_an_actor_is_a_type_error(cluster):
    with pytest.raises(TypeError, match="not in an actor"):
        gdfut.actor.exit_actor()
    assert "not in an actor" in gdfut.get(exit_in_task.remote())


# ------------------------------------------------- the class behind the actor
@gdfut.remote
class WithClassMembers:
    GREETING = "hello"

    def __init__(self, n):
        self.n = n

    @staticmethod
    def double(x):
        return 2 * x

    @classmethod
    def greeting(cls):
        return cls.GREETING

    def use_static(self):
        return self.double(self.n), WithClassMembers.GREETING


def test_class_attributes_and_static_methods_are_reachable(cluster):
    assert WithClassMembers.GREETING == "hello"
    assert WithClassMembers.double(4) == 8          # runs here, locally
    assert WithClassMembers.greeting() == "hello"
    with pytest.raises(AttributeError):
        WithClassMembers.no_such_attribute
    # The class still ships by value to workers that cannot import this module.
    a = WithClassMembers.remote(3)
    assert gdfut.get(a.use_static.remote()) == (6, "hello")
    assert gdfut.get(a.double.remote(5)) == 10      # a static method called remotely


def test_subclassing_a_remote_class_says_why():
    with pytest.raises(ActorClassInheritanceException,
                       match="Inheriting from actor classes is not currently supported"):
        class Derived(WithClassMembers):
            pass
    assert issubclass(ActorClassInheritanceException, TypeError)


# ---------------------------------------------------- arguments at the call
@gdfut.remote
class Signatures:
    def __init__(self, a, b=1, *, c=2):
        pass

    def plain(self, x):
        return x

    def varargs(self, x, *rest, key, **extra):
        return x, rest, key, extra


def test_constructor_arguments_are_checked_at_the_call(cluster):
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        Signatures.remote()
    with pytest.raises(TypeError, match="too many positional arguments"):
        Signatures.remote(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'd'"):
        Signatures.remote(1, d=4)
    with pytest.raises(TypeError, match="multiple values for argument 'a'"):
        Signatures.remote(1, a=1)
    # A refused call takes no name.
    with pytest.raises(TypeError):
        Signatures.options(name="sig").remote()
    with pytest.raises(ValueError):
        gdfut.get_actor("sig")


@gdfut.remote
def call_plain_badly(handle):
    try:
        handle.plain.remote()
    except TypeError as exc:
        return str(exc)


@pytest.mark.own_cluster     # its named actor lives until the job ends
def test_method_arguments_are_checked_at_the_call(cluster):
    s = Signatures.options(name="sig2").remote(0, c=3)
    assert gdfut.get(s.varargs.remote(1, 2, 3, key=4, z=5)) == (1, (2, 3), 4, {"z": 5})
    with pytest.raises(TypeError, match="missing a required argument: 'key'"):
        s.varargs.remote(1)
    with pytest.raises(TypeError, match="missing a required argument: 'x'"):
        s.varargs.remote(key=1)
    with pytest.raises(TypeError, match="too many positional arguments"):
        s.plain.remote(1, 2)
    with pytest.raises(TypeError, match="unexpected keyword argument 'y'"):
        s.plain.remote(1, y=1)
    # Handles from get_actor and handles passed to tasks check too.
    with pytest.raises(TypeError, match="too many positional arguments"):
        gdfut.get_actor("sig2").plain.remote(1, 2)
    assert "missing a required argument: 'x'" in gdfut.get(call_plain_badly.remote(s))
    assert gdfut.get(s.plain.remote(x=7)) == 7
