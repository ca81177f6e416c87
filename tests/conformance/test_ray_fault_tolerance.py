"""Ray-user programs from the "Task Fault Tolerance" and "Actor Fault
Tolerance" pages of Ray's documentation, written as those pages write them
(with a file where the docs draw random numbers, so each run is the same)
and asserting what the docs promise."""
import os
import sys

import cloudpickle
import pytest

import gdfut as ray

# Workers cannot import this module; ship its definitions by value, as they
# are from a user's script.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class RandomError(Exception):
    pass


def times_called(path):
    with open(path, "a") as f:
        f.write("x")
    return os.path.getsize(path)


def test_task_retried_after_its_worker_dies(ray_cluster, tmp_path):
    # "Ray will automatically retry the task if the worker executing it dies."
    @ray.remote(max_retries=1)
    def potentially_fail(path):
        if times_called(path) == 1:
            os._exit(0)
        return 0

    assert ray.get(potentially_fail.remote(str(tmp_path / "a"))) == 0

    with pytest.raises(ray.exceptions.WorkerCrashedError):
        ray.get(potentially_fail.options(max_retries=0).remote(str(tmp_path / "b")))


def test_retry_exceptions_true_retries_application_errors(ray_cluster, tmp_path):
    # "retry_exceptions=True ... retries on any application-level error."
    @ray.remote(max_retries=1, retry_exceptions=True)
    def potentially_fail(path):
        if times_called(path) == 1:
            raise RandomError("Failed!")
        return 0

    assert ray.get(potentially_fail.remote(str(tmp_path / "a"))) == 0


def test_retry_exceptions_allowlist(ray_cluster, tmp_path):
    @ray.remote(max_retries=1, retry_exceptions=True)
    def potentially_fail(failure_probability, path):
        if failure_probability < 0:
            times_called(path)
            raise ValueError("Invalid failure_probability value")
        if times_called(path) <= failure_probability:
            raise RandomError("Failed!")
        return 0

    # Provide the exceptions that we want to retry as an allowlist.
    retry_on_exception = potentially_fail.options(retry_exceptions=[RandomError])
    # A ValueError does not match the allowlist: it fails at once.
    with pytest.raises(ValueError):
        ray.get(retry_on_exception.remote(-1, str(tmp_path / "a")))
    assert os.path.getsize(tmp_path / "a") == 1
    # RandomError is retried (once: max_retries=1).
    assert ray.get(retry_on_exception.remote(1, str(tmp_path / "b"))) == 0
    with pytest.raises(RandomError):
        ray.get(retry_on_exception.remote(2, str(tmp_path / "c")))


def test_actor_restarts_and_retries_its_calls(ray_cluster):
    # The "Actor process failure" program: the actor exits after every 10
    # calls; it is restarted by re-running its constructor and the call in
    # flight is retried, so 50 calls print 1-10 five times; after 4
    # restarts every call raises.
    @ray.remote(max_restarts=4, max_task_retries=-1)
    class Actor:
        def __init__(self):
            self.counter = 0

        def increment_and_possibly_fail(self):
            # Exit after every 10 tasks.
            if self.counter == 10:
                os._exit(0)
            self.counter += 1
            return self.counter

    actor = Actor.remote()
    counts = [ray.get(actor.increment_and_possibly_fail.remote()) for _ in range(50)]
    assert counts == list(range(1, 11)) * 5
    failures = 0
    for _ in range(10):
        try:
            ray.get(actor.increment_and_possibly_fail.remote())
        except ray.exceptions.ActorDiedError:
            failures += 1
    assert failures == 10


def test_kill_without_no_restart_restarts_the_actor(ray_cluster):
    # "ray.kill(actor, no_restart=False)": the actor is restarted if it has
    # restarts left.
    @ray.remote(max_restarts=1)
    class Counter:
        def __init__(self):
            self.value = 0

        def increment(self):
            self.value += 1
            return self.value

    counter = Counter.remote()
    assert ray.get(counter.increment.remote()) == 1
    ray.kill(counter, no_restart=False)
    assert ray.get(counter.increment.remote()) == 1     # a fresh __init__
    ray.kill(counter)
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(counter.increment.remote())


def test_actor_without_restarts_dies_for_good(ray_cluster):
    @ray.remote
    class Actor:
        def crash(self):
            os._exit(1)

        def ping(self):
            return "pong"

    actor = Actor.remote()
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(actor.crash.remote())
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(actor.ping.remote())
