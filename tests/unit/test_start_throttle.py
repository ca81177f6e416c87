"""Lease manager start throttle: at most max_starting workers start at once."""

from __future__ import annotations

import random

import pytest

from gdfut.sched.lease_queue import GrantLease, LeaseManager, StartWorker
from gdfut.sched.resources import ResourceSet, actor_resources

R = ResourceSet


def actor_request(m, request_id):
    placement, held = actor_resources(None, None, {})
    return m.request_lease(request_id, held, "driver", is_actor=True, placement=placement)


def test_a_burst_of_actors_starts_workers_max_starting_at_a_time():
    m = LeaseManager("n", R({"CPU": 2}), max_starting=2)
    assert actor_request(m, "a1") == [StartWorker(1)]
    assert actor_request(m, "a2") == [StartWorker(1)]
    for i in range(3, 11):                        # beyond the throttle: they wait
        assert actor_request(m, f"a{i}") == []
    assert m.stats()["starting_workers"] == 2
    # Each registration grants the oldest waiting request and starts the next.
    assert m.worker_started("w1") == [GrantLease("a1", "w1", 1), StartWorker(1)]
    assert m.worker_started("w2") == [GrantLease("a2", "w2", 2), StartWorker(1)]
    m.validate()
    assert m.stats()["queued_requests"] == 8


def test_failed_start_frees_its_slot_for_the_next_dispatch():
    m = LeaseManager("n", R({"CPU": 1}), max_starting=1)
    assert actor_request(m, "a1") == [StartWorker(1)]
    assert actor_request(m, "a2") == []
    assert m.worker_start_failed(1) == []          # the shell backs off, then dispatches
    assert m.dispatch() == [StartWorker(1)]
    m.validate()


def test_prestart_goes_through_the_throttle_and_yields_to_requests():
    m = LeaseManager("n", R({"CPU": 8}), max_starting=3)
    assert m.prestart(8) == [StartWorker(3)]
    assert m.worker_started("w1") == [StartWorker(1)]  # warm starts continue
    # w1 is idle, so a request takes it at once; the warm starts go on after.
    out = m.request_lease("t1", R({"CPU": 1}), "c")
    assert out == [GrantLease("t1", "w1", 1)]
    m.validate()
    started = 4
    for i in range(2, 20):
        out = m.worker_started(f"w{i}")
        started += sum(ins.count for ins in out if isinstance(ins, StartWorker))
        m.validate()
    assert started == 8                             # exactly the warm workers asked for


def test_no_throttle_by_default():
    m = LeaseManager("n", R({"CPU": 2}))
    placement, held = actor_resources(None, None, {})
    starts = [m.request_lease(f"a{i}", held, "d", is_actor=True, placement=placement)
              for i in range(5)]
    assert starts == [[StartWorker(1)]] * 5


def test_invalid_max_starting_is_refused():
    with pytest.raises(ValueError, match="max_starting"):
        LeaseManager("n", R({"CPU": 1}), max_starting=0)


def test_seeded_walk_never_exceeds_the_throttle():
    rng = random.Random(7)
    m = LeaseManager("n", R({"CPU": 2}), max_starting=2)
    m.prestart(2)
    starting, next_worker = 2, 0
    for step in range(2000):
        roll = rng.random()
        if roll < 0.4:
            out = actor_request(m, f"r{step}")
        elif roll < 0.8 and starting:
            next_worker += 1
            starting -= 1
            out = m.worker_started(f"w{next_worker}")
        elif starting:
            starting -= 1
            out = m.worker_start_failed(1) + m.dispatch()
        else:
            out = m.dispatch()
        starting += sum(ins.count for ins in out if isinstance(ins, StartWorker))
        assert starting <= 2
        m.validate()
