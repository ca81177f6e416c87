"""Actors: ordering, names, handles passed around, init errors, kill."""
import asyncio
import time

import pytest

import gdfut
from gdfut.exceptions import ActorDiedError, TaskError


SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


@gdfut.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n

    def value(self):
        return self.n


def test_calls_run_in_submission_order(cluster):
    c = Counter.remote()
    assert gdfut.get([c.incr.remote() for _ in range(200)]) == list(range(1, 201))


def test_order_kept_with_pending_dependencies(cluster):
    @gdfut.remote
    def slow(v):
        time.sleep(0.5)
        return v

    c = Counter.remote()
    first = c.incr.remote(slow.remote(10))     # waits for its argument
    second = c.incr.remote(1)                  # must still run after the first
    assert gdfut.get([first, second]) == [10, 11]


@pytest.mark.own_cluster     # its named actor lives until the job ends
def test_named_actor_and_get_actor(cluster):
    c = Counter.options(name="counter").remote(5)
    assert gdfut.get(c.incr.remote()) == 6
    same = gdfut.get_actor("counter")
    assert gdfut.get(same.incr.remote()) == 7
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="counter").remote()
    with pytest.raises(ValueError, match="no actor named"):
        gdfut.get_actor("nope")


def test_handle_passed_to_tasks(cluster):
    @gdfut.remote
    def bump(counter, times):
        return gdfut.get([counter.incr.remote() for _ in range(times)])[-1]

    c = Counter.remote()
    results = gdfut.get([bump.remote(c, 10) for _ in range(3)])
    assert sorted(results)[-1] == 30
    assert gdfut.get(c.value.remote()) == 30


def test_init_exception_surfaces_on_every_call(cluster):
    @gdfut.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("bad init")

        def f(self):
            return 1

    b = Broken.remote()
    for _ in range(3):
        with pytest.raises(RuntimeError, match="bad init") as info:
            gdfut.get(b.f.remote())
        assert isinstance(info.value, TaskError)


def test_method_exception_keeps_actor_alive(cluster):
    @gdfut.remote
    class Fragile:
        def fail(self):
            raise ValueError("oops")

        def ok(self):
            return "fine"

    a = Fragile.remote()
    with pytest.raises(ValueError, match="oops"):
        gdfut.get(a.fail.remote())
    assert gdfut.get(a.ok.remote()) == "fine"


def test_kill_actor(cluster):
    c = Counter.remote()
    assert gdfut.get(c.incr.remote()) == 1
    gdfut.kill(c)
    with pytest.raises(ActorDiedError, match="kill"):
        for _ in range(50):
            gdfut.get(c.incr.remote(), timeout=10)
            time.sleep(0.1)


def test_actor_process_death(cluster):
    @gdfut.remote
    class Suicidal:
        def die(self):
            import os
            os._exit(1)

        def ping(self):
            return "pong"

    s = Suicidal.remote()
    assert gdfut.get(s.ping.remote()) == "pong"
    with pytest.raises(ActorDiedError, match="died"):
        gdfut.get(s.die.remote(), timeout=10)
    with pytest.raises(ActorDiedError):
        gdfut.get(s.ping.remote(), timeout=10)


def test_async_actor_runs_concurrently(cluster):
    @gdfut.remote
    class AsyncActor:
        async def wait_then(self, t, v):
            await asyncio.sleep(t)
            return v

    a = AsyncActor.remote()
    gdfut.get(a.wait_then.remote(0, None))   # the actor is up: time the calls alone
    t0 = time.monotonic()
    assert gdfut.get([a.wait_then.remote(2.0, i) for i in range(5)]) == list(range(5))
    assert time.monotonic() - t0 < 6.0    # overlapping: in a row would take 10 s


def test_threaded_actor_max_concurrency(cluster):
    @gdfut.remote
    class Sleeper:
        def nap(self, t):
            time.sleep(t)
            return t

    a = Sleeper.options(max_concurrency=4).remote()
    gdfut.get(a.nap.remote(0))            # the actor is up: time the calls alone
    t0 = time.monotonic()
    gdfut.get([a.nap.remote(2.0) for _ in range(4)])
    assert time.monotonic() - t0 < 6.0    # 4 at once: in a row would take 8 s


def test_actor_methods_need_remote(cluster):
    c = Counter.remote()
    with pytest.raises(TypeError, match="remote"):
        c.incr()
    with pytest.raises(AttributeError, match="no method"):
        c.missing.remote()


# --- lifetime: handles are reference counted --------------------------------

@gdfut.remote
class Pid:
    def pid(self):
        import os
        return os.getpid()


@gdfut.remote
class Holder:
    def __init__(self):
        self.kept = None

    def keep(self, handles):
        self.kept = handles[0]          # a handle nested in an argument: a borrow
        return True

    def call_kept(self):
        return gdfut.get(self.kept.pid.remote())

    def drop(self):
        self.kept = None
        return True


def _wait_gone(pid, timeout=10.0):
    import psutil
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_actor_stops_when_last_handle_is_dropped(cluster):
    a = Pid.remote()
    pid = gdfut.get(a.pid.remote())
    del a
    assert _wait_gone(pid), "actor process still running after its last handle was dropped"


def test_calls_made_before_the_handle_drops_still_run(cluster):
    assert gdfut.get(Counter.remote(5).incr.remote(2)) == 7
    c = Counter.remote()
    refs = [c.incr.remote() for _ in range(20)]
    del c
    assert gdfut.get(refs) == list(range(1, 21))


def test_borrowed_handle_keeps_actor_alive(cluster):
    a = Pid.remote()
    pid = gdfut.get(a.pid.remote())
    holder = Holder.remote()
    assert gdfut.get(holder.keep.remote([a]))
    del a
    time.sleep(0.5)
    assert gdfut.get(holder.call_kept.remote()) == pid      # still alive, via the borrow
    assert gdfut.get(holder.drop.remote())
    assert _wait_gone(pid), "actor kept running after the borrower dropped the last handle"


def test_named_actor_outlives_its_handles(cluster):
    a = Pid.options(name="keeper").remote()
    pid = gdfut.get(a.pid.remote())
    del a
    time.sleep(0.5)
    again = gdfut.get_actor("keeper")
    assert gdfut.get(again.pid.remote()) == pid
    gdfut.kill(again)
    assert _wait_gone(pid)


@gdfut.remote
class Splitter:
    @gdfut.method(num_returns=2)
    def halves(self, items):
        mid = len(items) // 2
        return items[:mid], items[mid:]

    def ids(self):
        ctx = gdfut.get_runtime_context()
        return ctx.get_actor_id(), ctx.get_task_id()


def test_method_decorator_sets_num_returns(cluster):
    s = Splitter.remote()
    left, right = s.halves.remote([1, 2, 3, 4])
    assert gdfut.get([left, right]) == [[1, 2], [3, 4]]
    whole = s.halves.options(num_returns=1).remote([1, 2])
    assert gdfut.get(whole) == ([1], [2])
    with pytest.raises(ValueError, match="bogus"):
        s.halves.options(bogus=True)


def test_runtime_context_inside_actor(cluster):
    s = Splitter.remote()
    (actor_id, task1), (same_actor, task2) = gdfut.get([s.ids.remote(), s.ids.remote()])
    assert actor_id == same_actor == s._actor_id.hex()
    assert task1 and task2 and task1 != task2
    assert gdfut.get_runtime_context().get_actor_id() is None


@pytest.mark.own_cluster     # its detached actor lives on
def test_detached_lifetime_is_supported_without_a_warning(cluster):
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # lifetime="detached" used to warn "not yet"
        a = Counter.options(lifetime="detached").remote()
    assert gdfut.get(a.incr.remote()) == 1
