"""Pure decisions of the head's durable state (gdfut/head_state.py), the
detached lease hand-over (LeaseManager.detach) and the dead-process log read
back after a restart."""
from __future__ import annotations

import sqlite3

import pytest

from gdfut.head import SCHEMA, DeadProcessLog
from gdfut.head_state import (ActorRow, NodeRecovery, actors_after_deaths, anonymous_namespace,
                              check_lifetime, check_namespace, dead_seq_to_serve,
                              reconnect_delay)
from gdfut.sched.lease_queue import GrantLease, KillWorker, LeaseLost, LeaseManager
from gdfut.sched.resources import ResourceSet, actor_resources


def row(name, creator, owner=None, detached=False, actor_id=None):
    return ActorRow("ns", name, actor_id or name.encode(), creator, owner or creator, detached)


# ------------------------------------------------------------------ actors
def test_a_plain_named_actor_goes_with_its_creator():
    rows = [row("a", b"c1"), row("b", b"c2")]
    assert actors_after_deaths(rows, [b"c1"]) == ([b"a"], [])
    assert actors_after_deaths(rows, [b"w9"]) == ([], [])


def test_a_detached_actor_outlives_its_creator_after_the_hand_over():
    handed = row("d", b"creator", owner=b"worker", detached=True)
    assert handed.handed_over
    # the creator dies: the name stays, the creator is forgotten
    assert actors_after_deaths([handed], [b"creator"]) == ([], [b"d"])
    orphan = ActorRow("ns", "d", b"d", None, b"worker", True)
    assert actors_after_deaths([orphan], [b"someone"]) == ([], [])
    # then its worker dies: nobody can answer for it, the name goes
    assert actors_after_deaths([orphan], [b"worker"]) == ([b"d"], [])


def test_a_detached_actor_not_yet_handed_over_dies_with_its_creator():
    pending = row("d", b"creator", detached=True)
    assert not pending.handed_over
    assert actors_after_deaths([pending], [b"creator"]) == ([b"d"], [])


def test_while_its_creator_lives_a_detached_actors_worker_death_changes_nothing():
    """The creator decides: restart (and hand over again) or free the name."""
    handed = row("d", b"creator", owner=b"worker", detached=True)
    assert actors_after_deaths([handed], [b"worker"]) == ([], [])
    assert actors_after_deaths([handed], [b"worker", b"creator"]) == ([b"d"], [])


def test_options():
    assert check_lifetime("detached") is True
    assert check_lifetime(None) is False and check_lifetime("non_detached") is False
    with pytest.raises(ValueError, match="lifetime"):
        check_lifetime("forever")
    assert check_namespace(None) is None and check_namespace("app") == "app"
    for bad in ("", 3, "a\nb", "x" * 257):
        with pytest.raises(ValueError, match="namespace"):
            check_namespace(bad)
    assert anonymous_namespace(b"\x01\x02") != anonymous_namespace(b"\x01\x03")


# ------------------------------------------------------------- head restart
def test_nodes_alive_before_a_restart_are_awaited_then_dead():
    rec = NodeRecovery.after_restart({b"n1": "ALIVE", b"n2": "ALIVE", b"n3": "DEAD"},
                                     now=100.0, grace_s=5.0)
    assert set(rec.awaited) == {b"n1", b"n2"}
    assert rec.node_back(b"n1") and not rec.node_back(b"n1")
    assert rec.registered(b"n1", recorded={b"w1", b"w2"}, live={b"w2", b"w3"}) == {b"w1"}
    assert rec.expired(104.9) == []
    assert rec.expired(105.0) == [b"n2"]
    assert rec.awaited == {} and rec.expired(1e9) == []


def test_a_registration_reports_the_processes_that_died_unseen():
    rec = NodeRecovery()                       # a head that never restarted
    assert rec.registered(b"n1", recorded=set(), live={b"w1"}) == set()
    assert rec.registered(b"n1", recorded={b"w1", b"w2"}, live={b"w1", b"w2"}) == set()


def test_reconnect_backoff_is_capped():
    delays = [reconnect_delay(i, 0.25, 2.0) for i in range(8)]
    assert delays[:4] == [0.25, 0.5, 1.0, 2.0]
    assert max(delays) == 2.0 and reconnect_delay(10_000, 0.25, 2.0) == 2.0


def test_dead_process_log_is_read_back_and_continues():
    db = sqlite3.connect(":memory:")
    db.executescript(SCHEMA)
    log = DeadProcessLog()
    db.executemany("INSERT INTO dead VALUES (?,?)", log.add([b"w1", b"w2"]))
    assert log.add([b"w1"]) == []              # known already: nothing to persist
    again = DeadProcessLog(entries=db.execute("SELECT seq, wid FROM dead ORDER BY seq"))
    assert again.since(0) == (2, [b"w1", b"w2"])
    assert again.add([b"w3"]) == [(3, b"w3")]  # sequence numbers go on, never reused
    assert again.since(2) == (3, [b"w3"])


def test_a_node_ahead_of_the_log_gets_all_of_it():
    """Its previous head's log was lost: repeats are harmless, gaps are not."""
    assert dead_seq_to_serve(7, 10) == 7
    assert dead_seq_to_serve(12, 10) == 0
    log = DeadProcessLog()
    log.add([b"a", b"b"])
    assert log.since(50) == (2, [b"a", b"b"])


# ------------------------------------------------------ detached lease
def test_a_detached_lease_survives_its_creator_and_ends_with_its_worker():
    m = LeaseManager("n1", ResourceSet({"CPU": 2}))
    m.worker_started("w1")
    m.worker_started("w2")
    placement, held = actor_resources()
    out = m.request_lease("r1", held, "creator", is_actor=True, placement=placement)
    lease = next(i for i in out if isinstance(i, GrantLease))
    assert not m.detach(lease.lease_id, "someone-else")     # only its holder may
    assert m.detach(lease.lease_id, "creator")
    assert m.client_of(lease.lease_id) == lease.worker_id
    assert not any(isinstance(i, KillWorker) for i in m.client_died("creator"))
    assert m.num_leases == 1
    out = m.worker_died(lease.worker_id)
    assert LeaseLost(lease.lease_id, lease.worker_id, "r1", "worker died") in out
    assert m.num_leases == 0
    m.validate()


def test_only_actor_leases_are_detached():
    m = LeaseManager("n1", ResourceSet({"CPU": 1}))
    m.worker_started("w1")
    lease = m.request_lease("r1", ResourceSet({"CPU": 1}), "c")[0]
    assert not m.detach(lease.lease_id, "c")
    assert not m.detach(999, "c")


# ------------------------------------------------- detached actor restarts
def _detached(max_restarts=1):
    from gdfut.actor_restarts import ActorRestarts
    from gdfut.head_state import DetachedActor
    rec = DetachedActor(b"a" * 16, {}, ActorRestarts(max_restarts, 0))
    rec.placed(b"w1", ("h", 1), b"n1")
    return rec


def test_the_head_restarts_a_detached_actor_until_out_of_restarts():
    from gdfut.actor_restarts import Restart, StayDead
    rec = _detached(max_restarts=1)
    assert rec.worker_died(b"other", "x") is None            # not its worker: nothing
    assert rec.location(None) == "answer"
    assert rec.location(b"w1") == "wait"                     # the caller saw it die first
    assert rec.worker_died(b"w1", "its worker process died") == Restart(1)
    assert rec.state == "RESTARTING" and rec.location(None) == "wait"
    rec.validate()
    assert rec.worker_died(b"w1", "again") is None           # one decision per death
    rec.placed(b"w2", ("h", 2), b"n1")
    assert rec.location(b"w1") == "answer"                   # the new worker is not the dead one
    decision = rec.worker_died(b"w2", "its worker process died")
    assert isinstance(decision, StayDead) and "restarted 1 time" in decision.reason
    assert rec.state == "DEAD" and rec.location(None) == "dead" and rec.reason == decision.reason
    rec.validate()


def test_a_detached_actor_whose_restart_fails_is_dead_with_the_reason():
    rec = _detached(max_restarts=-1)
    rec.worker_died(b"w1", "died")
    rec.restart_failed("it cannot be scheduled: no node has GPU=8")
    assert rec.state == "DEAD" and "GPU=8" in rec.reason
    rec.validate()
