"""Ray-user programs for ``cancel``, written as Ray's docs write them
(docs.ray.io: "Cancelling tasks", "Cancelling actor tasks", ``ray.cancel``),
each checking what those docs promise."""
import asyncio
import time

import pytest

import gdfut as ray

CANCEL_S = 15        # generous: the tasks here would run for minutes otherwise


def wait_for_cpus(n, timeout=CANCEL_S):
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) != n:
        assert time.monotonic() < deadline, f"CPUs did not come back: {ray.available_resources()}"
        time.sleep(0.1)


def test_cancel_a_blocking_task(ray_cluster):
    @ray.remote
    def blocking_operation():
        time.sleep(10e6)

    obj_ref = blocking_operation.remote()
    time.sleep(0.5)
    ray.cancel(obj_ref)

    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(obj_ref, timeout=CANCEL_S)
    wait_for_cpus(4)


def test_a_cancelled_task_sees_keyboard_interrupt(ray_cluster):
    @ray.remote
    def cleanup_on_cancel():
        try:
            time.sleep(10e6)
        except KeyboardInterrupt:
            return "cleaned up"       # too late: the caller asked it cancelled

    ref = cleanup_on_cancel.remote()
    time.sleep(0.5)
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=CANCEL_S)


def test_force_cancel_kills_the_worker(ray_cluster):
    @ray.remote
    def blocking_operation():
        time.sleep(10e6)

    obj_ref = blocking_operation.remote()
    time.sleep(0.5)
    ray.cancel(obj_ref, force=True)
    # Ray raises WorkerCrashedError here; gdfut says it was a cancel
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(obj_ref, timeout=CANCEL_S)
    wait_for_cpus(4)


def test_cancelled_tasks_are_not_retried(ray_cluster):
    @ray.remote(max_retries=3)
    def blocking_operation():
        time.sleep(10e6)

    for force in (False, True):
        obj_ref = blocking_operation.remote()
        time.sleep(0.5)
        ray.cancel(obj_ref, force=force)
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(obj_ref, timeout=CANCEL_S)
    wait_for_cpus(4)


def test_recursive_cancellation(ray_cluster):
    @ray.remote
    def child():
        for _ in range(1000):
            time.sleep(1)

    @ray.remote
    def parent():
        child_ref = child.remote()
        ray.get(child_ref)

    parent_ref = parent.remote()
    time.sleep(1)
    ray.cancel(parent_ref)            # recursive=True by default: child goes too
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(parent_ref, timeout=CANCEL_S)
    wait_for_cpus(4)                  # the child's CPU came back


def test_cancel_a_finished_task_does_nothing(ray_cluster):
    @ray.remote
    def f():
        return 1

    ref = f.remote()
    assert ray.get(ref) == 1
    ray.cancel(ref)
    assert ray.get(ref) == 1


def test_cancel_an_async_actor_task(ray_cluster):
    @ray.remote
    class Actor:
        async def f(self):
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                print("Actor task canceled.")

    actor = Actor.remote()
    ref = actor.f.remote()

    # Wait until task is scheduled.
    time.sleep(1)
    ray.cancel(ref)

    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=CANCEL_S)


def test_sync_actor_task_checks_is_canceled(ray_cluster):
    @ray.remote
    class Actor:
        def long_running_method(self):
            for _ in range(1000):
                if ray.get_runtime_context().is_canceled():
                    return "canceled"     # graceful cleanup
                time.sleep(0.1)
            return "completed"

        def ping(self):
            return "alive"

    actor = Actor.remote()
    ref = actor.long_running_method.remote()
    time.sleep(1)
    ray.cancel(ref)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(ref, timeout=CANCEL_S)
    assert ray.get(actor.ping.remote()) == "alive"


def test_pending_actor_task_is_not_executed(ray_cluster):
    @ray.remote
    class Counter:
        def __init__(self):
            self.value = 0

        def slow_increment(self):
            time.sleep(1)
            self.value += 1

        def increment(self):
            self.value += 1

        def get(self):
            return self.value

    counter = Counter.remote()
    first = counter.slow_increment.remote()
    pending = counter.increment.remote()
    ray.cancel(pending)
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(pending, timeout=CANCEL_S)
    ray.get(first)
    assert ray.get(counter.get.remote()) == 1


def test_force_is_not_supported_for_actor_tasks(ray_cluster):
    @ray.remote
    class Actor:
        def f(self):
            time.sleep(0.5)
            return "done"

    ref = Actor.remote().f.remote()
    with pytest.raises(ValueError):
        ray.cancel(ref, force=True)
    assert ray.get(ref) == "done"


def test_wait_returns_a_cancelled_ref_as_ready(ray_cluster):
    @ray.remote
    def blocking_operation():
        time.sleep(10e6)

    ref = blocking_operation.remote()
    time.sleep(0.5)
    ray.cancel(ref)
    ready, not_ready = ray.wait([ref], timeout=CANCEL_S)
    assert ready == [ref] and not_ready == []
