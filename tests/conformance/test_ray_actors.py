"""Ray-user conformance: actors, the way Ray's documentation writes them.

Each test is a small program from (or in the style of) Ray's "Actors",
"Named actors", "Terminating actors", "AsyncIO / concurrency for actors" and
"Passing around actor handles" pages, with ``import gdfut as ray``, asserting
what those pages promise.
"""
import asyncio
import time

import pytest

import gdfut as ray


@ray.remote
class Counter:
    def __init__(self):
        self.value = 0

    def increment(self):
        self.value += 1
        return self.value

    def get_counter(self):
        return self.value


def test_counter_actor(ray_cluster):
    counter = Counter.remote()
    obj_ref = counter.increment.remote()
    assert ray.get(obj_ref) == 1
    # Calls from one caller run in the order they were made.
    refs = [counter.increment.remote() for _ in range(10)]
    assert ray.get(refs) == list(range(2, 12))
    assert ray.get(counter.get_counter.remote()) == 11


def test_actors_keep_separate_state(ray_cluster):
    counters = [Counter.remote() for _ in range(4)]
    ray.get([c.increment.remote() for c in counters])
    ray.get(counters[0].increment.remote())
    assert ray.get([c.get_counter.remote() for c in counters]) == [2, 1, 1, 1]


def test_passing_actor_handles_to_tasks(ray_cluster):
    @ray.remote
    def f(counter):
        for _ in range(10):
            counter.increment.remote()
        return ray.get(counter.get_counter.remote())

    counter = Counter.remote()
    ray.get([f.remote(counter) for _ in range(3)])
    assert ray.get(counter.get_counter.remote()) == 30


def test_named_actor_and_get_actor(ray_cluster):
    counter = Counter.options(name="some_name").remote()
    ray.get(counter.increment.remote())
    same = ray.get_actor("some_name")
    assert ray.get(same.increment.remote()) == 2
    with pytest.raises(ValueError):
        ray.get_actor("nonexistent_name")
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="some_name").remote()
    ray.kill(counter)


def test_get_if_exists(ray_cluster):
    a = Counter.options(name="unique_name", get_if_exists=True).remote()
    ray.get(a.increment.remote())
    b = Counter.options(name="unique_name", get_if_exists=True).remote()
    assert ray.get(b.get_counter.remote()) == 1
    ray.kill(a)


def test_kill_named_actor_allows_the_name_to_be_reused(ray_cluster):
    @ray.remote
    class Actor:
        def ping(self):
            return "pong"

    actor_handle = Actor.options(name="reusable").remote()
    assert ray.get(actor_handle.ping.remote()) == "pong"
    ray.kill(actor_handle)
    # Current, pending and future tasks fail with the actor error.
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(actor_handle.ping.remote())
    new_handle = Actor.options(name="reusable").remote()
    assert ray.get(ray.get_actor("reusable").ping.remote()) == "pong"
    ray.kill(new_handle)


def test_exit_actor_from_within(ray_cluster):
    @ray.remote
    class Actor:
        def exit(self):
            ray.actor.exit_actor()

    actor = Actor.remote()
    ref = actor.exit.remote()
    # Waiting on the task's ref waits for the actor to exit; get raises.
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(ref)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(actor.exit.remote())


def test_async_actor_runs_calls_concurrently(ray_cluster):
    @ray.remote
    class AsyncActor:
        async def run_concurrent(self, i):
            await asyncio.sleep(1.0)
            return i

    actor = AsyncActor.remote()
    ray.get(actor.run_concurrent.remote(-1))          # the actor is up
    start = time.monotonic()
    assert ray.get([actor.run_concurrent.remote(i) for i in range(4)]) == [0, 1, 2, 3]
    assert time.monotonic() - start < 3.0             # overlapped, not 4 x 1 s


def test_threaded_actor_max_concurrency(ray_cluster):
    @ray.remote
    class ThreadedActor:
        def task_thread(self):
            time.sleep(1.0)
            return "done"

    a = ThreadedActor.options(max_concurrency=2).remote()
    assert ray.get(a.task_thread.remote()) == "done"  # the actor is up
    start = time.monotonic()
    assert ray.get([a.task_thread.remote() for _ in range(2)]) == ["done", "done"]
    assert time.monotonic() - start < 1.9             # two at once, not one after another


def test_method_num_returns(ray_cluster):
    @ray.remote
    class Foo:
        @ray.method(num_returns=2)
        def bar(self):
            return 1, 2

    f = Foo.remote()
    obj_ref1, obj_ref2 = f.bar.remote()
    assert ray.get(obj_ref1) == 1
    assert ray.get(obj_ref2) == 2


def test_actor_arguments_are_checked_at_the_call(ray_cluster):
    @ray.remote
    class Actor:
        def __init__(self, x):
            self.x = x

        def add(self, y):
            return self.x + y

    with pytest.raises(TypeError):
        Actor.remote()
    a = Actor.remote(1)
    with pytest.raises(TypeError):
        a.add.remote(1, 2)
    assert ray.get(a.add.remote(y=2)) == 3


def test_actor_class_members_and_inheritance(ray_cluster):
    class NonActorBase:
        def base_method(self):
            return "base"

    @ray.remote
    class ActorBase(NonActorBase):
        LIMIT = 3

        @staticmethod
        def helper(x):
            return x + 1

    assert ActorBase.LIMIT == 3
    assert ActorBase.helper(1) == 2
    assert ray.get(ActorBase.remote().base_method.remote()) == "base"
    with pytest.raises(TypeError, match="cannot be instantiated directly"):
        ActorBase()
    with pytest.raises(TypeError, match="Inheriting from actor classes is not currently "
                                        "supported"):
        class Derived(ActorBase):
            pass
