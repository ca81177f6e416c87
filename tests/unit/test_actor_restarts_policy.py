"""The owner's pure restart decision for one actor (ActorRestarts)."""
import pytest

from gdfut.actor_restarts import ActorRestarts, Restart, StayDead, check_restart_option


def test_no_restart_by_default():
    decision = ActorRestarts().worker_died("its worker process died unexpectedly")
    assert decision == StayDead("its worker process died unexpectedly")


def test_restarts_up_to_max_then_says_how_often():
    r = ActorRestarts(max_restarts=2)
    assert r.worker_died("died") == Restart(1)
    assert r.worker_died("died") == Restart(2)
    decision = r.worker_died("died")
    assert isinstance(decision, StayDead)
    assert "restarted 2 times (max_restarts=2)" in decision.reason
    r.validate()


def test_one_restart_is_singular():
    r = ActorRestarts(max_restarts=1)
    r.worker_died("died")
    assert "restarted 1 time " in r.worker_died("died").reason


def test_minus_one_restarts_forever():
    r = ActorRestarts(max_restarts=-1)
    assert [r.worker_died("x") for _ in range(100)][-1] == Restart(100)
    r.validate()


def test_lost_calls_retry_within_max_task_retries():
    r = ActorRestarts(max_restarts=-1, max_task_retries=2)
    assert r.call_lost(b"a") and r.call_lost(b"a")
    assert not r.call_lost(b"a")           # a third loss: it fails
    assert r.call_lost(b"b")               # counted per call
    r.validate()
    r.call_done(b"b")
    assert r.call_retries == {}


def test_lost_calls_not_retried_by_default_or_after_streaming():
    assert not ActorRestarts(max_restarts=1).call_lost(b"a")
    assert not ActorRestarts(max_restarts=1, max_task_retries=-1).call_lost(b"a", streamed=3)
    forever = ActorRestarts(max_restarts=1, max_task_retries=-1)
    assert all(forever.call_lost(b"a") for _ in range(50))


def test_option_checks():
    for good in (-1, 0, 5):
        check_restart_option("max_restarts", good)
    for bad in (-2, 1.5, "3", True, None):
        with pytest.raises(ValueError, match="max_restarts must be an int >= -1"):
            check_restart_option("max_restarts", bad)
