"""Actor restarts: max_restarts, max_task_retries, kill(no_restart=False), as in Ray."""
import os
import signal

import pytest

import gdfut
from gdfut.exceptions import ActorDiedError


SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


@gdfut.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self):
        self.n += 1
        return self.n

    def pid(self):
        return os.getpid()

    def die(self):
        os._exit(1)

    def die_once(self, path):
        """Dies the first time it is called (counted in a file), then returns."""
        with open(path, "a") as f:
            f.write("x")
        if os.path.getsize(path) == 1:
            os._exit(1)
        return self.n

    def leave(self):
        gdfut.actor.exit_actor()


def test_restarted_actor_runs_init_again_and_serves_calls(cluster):
    c = Counter.options(max_restarts=1).remote(10)
    assert gdfut.get(c.incr.remote()) == 11
    first = gdfut.get(c.pid.remote())
    with pytest.raises(ActorDiedError):      # in flight when it died, not retried
        gdfut.get(c.die.remote())
    assert gdfut.get(c.incr.remote()) == 11  # __init__(10) ran again
    assert gdfut.get(c.pid.remote()) != first


def test_actor_out_of_restarts_says_how_often_it_restarted(cluster):
    c = Counter.options(max_restarts=1).remote()
    for _ in range(2):
        with pytest.raises(ActorDiedError):
            gdfut.get(c.die.remote())
    with pytest.raises(ActorDiedError, match="restarted 1 time"):
        gdfut.get(c.incr.remote())
    with pytest.raises(ActorDiedError, match="restarted 1 time"):
        gdfut.get(c.incr.remote())


def test_no_restart_by_default(cluster):
    c = Counter.remote()
    with pytest.raises(ActorDiedError):
        gdfut.get(c.die.remote())
    with pytest.raises(ActorDiedError, match="died unexpectedly"):
        gdfut.get(c.incr.remote())


def test_call_in_flight_is_retried_under_max_task_retries(cluster, tmp_path):
    c = Counter.options(max_restarts=1, max_task_retries=1).remote(5)
    assert gdfut.get(c.die_once.remote(str(tmp_path / "n"))) == 5


def test_calls_made_while_restarting_queue(cluster):
    c = Counter.options(max_restarts=-1).remote()
    gdfut.get(c.incr.remote())
    with pytest.raises(ActorDiedError):
        gdfut.get(c.die.remote())
    # The owner saw the death before it failed that call: the actor is being
    # restarted now, and these calls wait for it instead of failing.
    assert gdfut.get([c.incr.remote() for _ in range(20)]) == list(range(1, 21))


def test_sigkill_restarts_forever_with_minus_one(cluster):
    c = Counter.options(max_restarts=-1).remote()
    for _ in range(3):
        os.kill(gdfut.get(c.pid.remote()), signal.SIGKILL)
        try:
            gdfut.get(c.incr.remote())      # may be in flight as it dies
        except ActorDiedError:
            pass
    assert gdfut.get(c.incr.remote()) >= 1


def test_kill_no_restart_false_restarts_it(cluster):
    c = Counter.options(max_restarts=1).remote()
    assert gdfut.get(c.incr.remote()) == 1
    gdfut.kill(c, no_restart=False)
    assert gdfut.get(c.incr.remote()) == 1
    gdfut.kill(c)                               # no_restart=True: gone for good
    with pytest.raises(ActorDiedError, match="killed"):
        gdfut.get(c.incr.remote())


def test_exit_actor_is_not_restarted(cluster):
    c = Counter.options(max_restarts=3).remote()
    with pytest.raises(ActorDiedError):
        gdfut.get(c.leave.remote())
    with pytest.raises(ActorDiedError, match="exit_actor"):
        gdfut.get(c.incr.remote())


def test_named_actor_keeps_its_name_across_restarts(cluster):
    c = Counter.options(name="keeper", max_restarts=1).remote()
    with pytest.raises(ActorDiedError):
        gdfut.get(c.die.remote())
    again = gdfut.get_actor("keeper")
    assert gdfut.get(again.incr.remote()) == 1
    gdfut.kill(c)


def test_another_caller_finds_the_restarted_actor(cluster):
    @gdfut.remote
    def use(handle):
        try:
            gdfut.get(handle.die.remote())
        except ActorDiedError:
            pass
        return gdfut.get(handle.incr.remote())

    c = Counter.options(max_restarts=1).remote(7)
    assert gdfut.get(use.remote(c)) == 8
    assert gdfut.get(c.incr.remote()) == 9


def test_kill_from_another_process_is_not_restarted(cluster):
    @gdfut.remote
    def kill_it(handle):
        gdfut.get(handle.incr.remote())
        gdfut.kill(handle)
        return True

    c = Counter.options(max_restarts=2).remote()
    assert gdfut.get(kill_it.remote(c))
    with pytest.raises(ActorDiedError, match="killed"):
        gdfut.get(c.incr.remote())


def test_bad_restart_options_are_refused(cluster):
    with pytest.raises(ValueError, match="max_restarts must be"):
        Counter.options(max_restarts=-2).remote()
    with pytest.raises(ValueError, match="max_task_retries must be"):
        Counter.options(max_task_retries="3").remote()
