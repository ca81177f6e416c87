"""Node-local lease manager: exact event -> instruction sequences, plus a seeded walk."""

from __future__ import annotations

import random

import pytest

from gdfut.sched.lease_queue import (
    GrantLease,
    KillWorker,
    LeaseLost,
    LeaseManager,
    QueueFull,
    Reject,
    RequestCancelled,
    StartWorker,
)
from gdfut.sched.resources import ResourceSet, actor_resources

R = ResourceSet
ONE_CPU = R({"CPU": 1})


def manager(total, max_queue=100, max_workers=None, workers=()):
    m = LeaseManager("n1", R(total), max_queue=max_queue, max_workers=max_workers)
    for w in workers:
        assert m.worker_started(w) == []
    m.validate()
    return m


def test_grant_needs_a_worker_then_reuses_it():
    m = manager({"CPU": 2})
    assert m.request_lease("r1", ONE_CPU, "c1") == [StartWorker(1)]
    assert m.worker_started("w1") == [GrantLease("r1", "w1", 1)]
    assert m.return_lease(1) == []
    assert m.request_lease("r2", ONE_CPU, "c1") == [GrantLease("r2", "w1", 2)]
    m.validate()
    assert m.stats()["available"] == {"CPU": 1}


def test_start_only_the_workers_that_fit():
    m = manager({"CPU": 2})
    assert m.request_lease("r1", ONE_CPU, "c1") == [StartWorker(1)]
    assert m.request_lease("r2", ONE_CPU, "c1") == [StartWorker(1)]
    assert m.request_lease("r3", ONE_CPU, "c1") == []  # no CPU left for a third
    assert m.worker_started("w1") == [GrantLease("r1", "w1", 1)]
    assert m.worker_started("w2") == [GrantLease("r2", "w2", 2)]
    assert m.return_lease(2) == [GrantLease("r3", "w2", 3)]
    m.validate()


def test_queue_then_return_grants_next_in_fifo_order():
    m = manager({"CPU": 1}, workers=["w1"])
    assert m.request_lease("r1", ONE_CPU, "c1") == [GrantLease("r1", "w1", 1)]
    assert m.request_lease("r2", ONE_CPU, "c2") == []
    assert m.request_lease("r3", ONE_CPU, "c3") == []
    assert m.stats()["queued_requests"] == 2
    assert m.return_lease(1) == [GrantLease("r2", "w1", 2)]
    assert m.return_lease(2) == [GrantLease("r3", "w1", 3)]
    assert m.return_lease(99) == []  # unknown / repeated: ignored
    m.validate()


def test_duplicate_request_is_idempotent():
    m = manager({"CPU": 1}, workers=["w1"])
    grant = m.request_lease("r1", ONE_CPU, "c1")
    assert m.request_lease("r1", ONE_CPU, "c1") == grant
    assert m.request_lease("r2", ONE_CPU, "c1") == []
    assert m.request_lease("r2", ONE_CPU, "c1") == []
    assert m.queue_length == 1 and m.num_leases == 1


def test_infeasible_here_is_rejected_with_missing():
    m = manager({"CPU": 4})
    [reject] = m.request_lease("r1", R({"CPU": 1, "GPU": 1}), "c1")
    assert isinstance(reject, Reject)
    assert reject.reason == "infeasible_here" and reject.missing == {"GPU": 1}
    assert "GPU" in reject.message
    [bad] = m.request_lease("r2", R({"GPU": 1.5}), "c1")
    assert bad.reason == "invalid_request"
    m.validate()


def test_bounded_queue():
    m = manager({"CPU": 1}, max_queue=2, workers=["w1", "w2"])
    assert m.request_lease("r1", ONE_CPU, "c") == [GrantLease("r1", "w2", 1)]
    assert m.request_lease("r2", ONE_CPU, "c") == []
    assert m.request_lease("r3", ONE_CPU, "c") == []
    assert m.request_lease("r4", ONE_CPU, "c") == [QueueFull("r4", 2)]
    # A full queue still grants what can run right now.
    assert m.request_lease("r5", R(), "c") == [GrantLease("r5", "w1", 2)]
    m.validate()


def test_big_request_does_not_block_small_ones_and_shapes_stay_fifo():
    m = manager({"CPU": 4}, workers=["w1", "w2", "w3", "w4"])
    two = R({"CPU": 2})
    assert m.request_lease("small0", R({"CPU": 3}), "c") == [GrantLease("small0", "w4", 1)]
    assert m.request_lease("big1", two, "c") == []
    assert m.request_lease("big2", two, "c") == []
    assert m.request_lease("small1", ONE_CPU, "c") == [GrantLease("small1", "w3", 2)]
    # 3 CPUs come back: big1 first (FIFO within its shape); big2 still does not fit.
    assert m.return_lease(1) == [GrantLease("big1", "w4", 3)]
    assert m.return_lease(2) == [GrantLease("big2", "w3", 4)]
    m.validate()


def test_skip_then_fit_grants_in_arrival_order():
    m = manager({"CPU": 2}, workers=["w1", "w2", "w3"])
    two = R({"CPU": 2})
    assert m.request_lease("a", ONE_CPU, "c") == [GrantLease("a", "w3", 1)]
    assert m.request_lease("big", two, "c") == []
    assert m.request_lease("b", ONE_CPU, "c") == [GrantLease("b", "w2", 2)]
    assert m.request_lease("c", ONE_CPU, "c") == []
    # One CPU back: big still does not fit, c does.
    assert m.return_lease(1) == [GrantLease("c", "w3", 3)]
    assert m.return_lease(2) == []
    assert m.return_lease(3) == [GrantLease("big", "w3", 4)]
    m.validate()


def test_worker_death_loses_lease_and_refills_pool():
    m = manager({"CPU": 1}, workers=["w1"])
    assert m.request_lease("r1", ONE_CPU, "c1") == [GrantLease("r1", "w1", 1)]
    assert m.request_lease("r2", ONE_CPU, "c2") == []
    assert m.worker_died("w1") == [LeaseLost(1, "c1", "r1", "worker died"), StartWorker(1)]
    assert m.worker_died("w1") == []
    assert m.worker_started("w2") == [GrantLease("r2", "w2", 2)]
    m.validate()
    assert m.stats()["workers"] == 1


def test_idle_worker_death_and_failed_start():
    m = manager({"CPU": 1}, workers=["w1"])
    assert m.worker_died("w1") == []
    assert m.request_lease("r1", ONE_CPU, "c") == [StartWorker(1)]
    assert m.worker_start_failed() == []
    assert m.dispatch() == [StartWorker(1)]
    assert m.worker_started("w2") == [GrantLease("r1", "w2", 1)]
    m.validate()


def test_queued_requests_rejected_when_workers_cannot_start():
    m = manager({"CPU": 1})
    assert m.request_lease("r1", ONE_CPU, "c") == [StartWorker(1)]
    assert m.request_lease("r2", ONE_CPU, "c") == []
    assert m.worker_start_failed() == []
    out = m.reject_queued("workers fail to start")
    assert [(r.request_id, r.reason) for r in out] == [("r1", "workers_fail"),
                                                      ("r2", "workers_fail")]
    assert m.stats()["queued_requests"] == 0 and m.dispatch() == []
    m.validate()


def test_blocked_worker_lends_its_cpu_and_unblock_overcommits():
    m = manager({"CPU": 1}, max_workers=1, workers=["w1"])
    assert m.request_lease("parent", ONE_CPU, "c") == [GrantLease("parent", "w1", 1)]
    assert m.request_lease("child", ONE_CPU, "w1") == []
    # Parent blocks in get: its CPU goes to the child, on a new worker beyond the cap.
    assert m.worker_blocked("w1") == [StartWorker(1)]
    assert m.worker_blocked("w1") == []
    assert m.worker_started("w2") == [GrantLease("child", "w2", 2)]
    m.validate()
    # Parent wakes while the child still runs: the node is over capacity.
    assert m.worker_unblocked("w1") == []
    assert m.stats()["overcommitted"] == {"CPU": 1}
    assert m.stats()["available"] == {}
    m.validate()
    assert m.request_lease("other", ONE_CPU, "c") == []
    # The child's CPU pays off the overcommit; nothing new becomes available.
    assert m.return_lease(2) == []
    assert m.stats()["overcommitted"] == {} and m.stats()["available"] == {}
    assert m.return_lease(1) == [GrantLease("other", "w1", 3)]
    m.validate()


def test_blocked_lease_returned_while_blocked():
    m = manager({"CPU": 2, "GPU": 1}, workers=["w1"])
    [grant] = m.request_lease("r", R({"CPU": 1, "GPU": 1}), "c")
    assert grant.gpu_ids == (0,)
    m.worker_blocked("w1")
    assert m.stats()["available"] == {"CPU": 2}
    assert m.return_lease(1) == []
    assert m.stats()["available"] == {"CPU": 2, "GPU": 1}
    m.validate()


def test_client_death_drops_its_requests_and_kills_its_workers():
    m = manager({"CPU": 2}, workers=["w1", "w2"])
    m.request_lease("a1", ONE_CPU, "alice")
    m.request_lease("b1", ONE_CPU, "bob")
    assert m.request_lease("a2", ONE_CPU, "alice") == []
    assert m.request_lease("b2", ONE_CPU, "bob") == []
    out = m.client_died("alice")
    assert out == [KillWorker("w2", "owner alice died"), StartWorker(1)]
    assert m.stats()["queued_requests"] == 1
    assert m.worker_died("w2") == []  # the kill we asked for: already forgotten
    assert m.worker_started("w3") == [GrantLease("b2", "w3", 3)]
    m.validate()


def test_cancel_request():
    m = manager({"CPU": 1}, workers=["w1"])
    m.request_lease("r1", ONE_CPU, "c")
    m.request_lease("r2", ONE_CPU, "c")
    assert m.cancel_request("r2") == [RequestCancelled("r2")]
    assert m.cancel_request("r2") == []
    assert m.cancel_request("r1") == []  # granted: must be returned instead
    assert m.return_lease(1) == []
    m.validate()


def test_actor_places_with_one_cpu_holds_none_and_keeps_its_worker():
    m = manager({"CPU": 1}, workers=["w1", "w2"])
    placement, held = actor_resources()
    grant = m.request_lease("actor", held, "c", is_actor=True, placement=placement)
    assert grant == [GrantLease("actor", "w2", 1)]
    assert m.stats()["available"] == {"CPU": 1}
    # The actor holds no CPU, so a task can still use the core.
    assert m.request_lease("task", ONE_CPU, "c") == [GrantLease("task", "w1", 2)]
    # A second actor cannot be *placed* while the CPU is in use.
    assert m.request_lease("actor2", held, "c", is_actor=True, placement=placement) == []
    assert m.return_lease(2) == [GrantLease("actor2", "w1", 3)]
    m.validate()
    # An actor's worker is dedicated: ending the actor kills it.
    assert m.return_lease(1) == [KillWorker("w2", "actor ended")]
    m.validate()


def test_actor_worker_not_reused_after_worker_returned():
    m = manager({"CPU": 4}, workers=["w1"])
    placement, held = actor_resources(num_cpus=1)
    assert m.request_lease("a", held, "c", True, placement) == [GrantLease("a", "w1", 1)]
    assert m.request_lease("t", ONE_CPU, "c") == [StartWorker(1)]
    assert m.stats()["idle_workers"] == 0


def test_gpu_ids_pack_fractions_and_keep_whole_devices_free():
    m = manager({"CPU": 8, "GPU": 2}, workers=[f"w{i}" for i in range(6)])
    half = R({"GPU": 0.5})
    quarter = R({"GPU": 0.25})
    assert m.request_lease("h1", half, "c")[0].gpu_ids == (0,)
    assert m.request_lease("q1", quarter, "c")[0].gpu_ids == (0,)
    # Device 1 is still whole, so a whole-GPU request gets it.
    assert m.request_lease("g1", R({"GPU": 1}), "c")[0].gpu_ids == (1,)
    assert m.request_lease("q2", quarter, "c")[0].gpu_ids == (0,)
    assert m.request_lease("q3", quarter, "c") == []
    m.validate()
    assert m.stats()["gpu_free"] == [0.0, 0.0]
    assert m.return_lease(3)[0] == GrantLease("q3", "w3", 5, (1,))
    # Two whole GPUs: never satisfied by two half-free devices.
    assert m.request_lease("g2", R({"GPU": 2}), "c") == []
    m.validate()


def test_worker_cap_applies_to_active_task_workers():
    m = manager({"CPU": 4}, max_workers=2)
    zero = R()
    assert m.request_lease("r1", zero, "c") == [StartWorker(1)]
    assert m.request_lease("r2", zero, "c") == [StartWorker(1)]
    assert m.request_lease("r3", zero, "c") == []  # cap reached
    assert m.worker_started("w1") == [GrantLease("r1", "w1", 1)]
    assert m.worker_started("w2") == [GrantLease("r2", "w2", 2)]
    # Actors are not capped.
    assert m.request_lease("a", zero, "c", is_actor=True) == [StartWorker(1)]
    assert m.trim_idle_workers(0) == []
    assert m.return_lease(1) == [GrantLease("r3", "w1", 3)]
    m.validate()


def test_trim_idle_workers_kills_coldest_first():
    m = manager({"CPU": 4}, workers=["w1", "w2", "w3"])
    assert m.trim_idle_workers(1) == [
        KillWorker("w1", "idle pool trimmed"),
        KillWorker("w2", "idle pool trimmed"),
    ]
    assert m.stats()["idle_workers"] == 1
    m.validate()


def test_bad_arguments():
    with pytest.raises(ValueError):
        LeaseManager("n", R({"GPU": 0.5}))
    m = manager({"CPU": 1})
    with pytest.raises(ValueError):
        m.request_lease("r", R({"CPU": 2}), "c", placement=ONE_CPU)


# -- seeded random walk -----------------------------------------------------------


def _random_walk(seed: int, steps: int = 400) -> None:
    """Random events; a small model of what the shell knows is checked against stats."""
    rng = random.Random(seed)
    m = LeaseManager("n", R({"CPU": 4, "GPU": 2, "memory": 1000}), max_queue=6, max_workers=5)
    shapes = [
        ONE_CPU,
        R({"CPU": 0.5}),
        R({"CPU": 2, "memory": 300}),
        R({"GPU": 0.5}),
        R({"CPU": 1, "GPU": 1}),
        R({"GPU": 2}),
        R(),
        R({"CPU": 8}),  # infeasible here
    ]
    worker_of_lease: dict[int, str] = {}
    starting = 0
    next_worker = next_request = 0
    events = ["request"] * 4 + ["start"] * 3 + ["block"] * 2 + ["unblock"] * 2
    events += ["return", "return", "die", "client", "cancel", "fail"]
    for _ in range(steps):
        event = rng.choice(events)
        some_lease = rng.choice(sorted(worker_of_lease)) if worker_of_lease else None
        if event == "request":
            next_request += 1
            shape, client = rng.choice(shapes), f"c{rng.randrange(3)}"
            out = m.request_lease(f"r{next_request}", shape, client, rng.random() < 0.15)
        elif event == "start" and starting:
            next_worker += 1
            starting -= 1
            out = m.worker_started(f"w{next_worker}")
        elif event == "fail" and starting:
            starting -= 1
            out = m.worker_start_failed() + m.dispatch()
        elif event == "return" and some_lease is not None:
            out = m.return_lease(some_lease, worker_reusable=rng.random() < 0.9)
            del worker_of_lease[some_lease]
        elif event == "die" and some_lease is not None:
            out = m.worker_died(worker_of_lease[some_lease])
        elif event == "block" and some_lease is not None:
            out = m.worker_blocked(worker_of_lease[some_lease])
        elif event == "unblock" and some_lease is not None:
            out = m.worker_unblocked(worker_of_lease[some_lease])
        elif event == "client":
            out = m.client_died(f"c{rng.randrange(3)}")
        elif event == "cancel" and next_request:
            out = m.cancel_request(f"r{rng.randrange(1, next_request + 1)}")
        else:
            continue
        for instruction in out:
            if isinstance(instruction, StartWorker):
                assert instruction.count > 0
                starting += instruction.count
            elif isinstance(instruction, GrantLease):
                worker_of_lease[instruction.lease_id] = instruction.worker_id
            elif isinstance(instruction, LeaseLost):
                del worker_of_lease[instruction.lease_id]
            elif isinstance(instruction, KillWorker):
                killed = instruction.worker_id
                worker_of_lease = {l: w for l, w in worker_of_lease.items() if w != killed}
        m.validate()
        assert m.num_leases == len(worker_of_lease)
        assert m.stats()["starting_workers"] == starting
    # Drain: once every lease is back, every resource is back (no leak, no overcommit).
    while worker_of_lease:
        lease_id = min(worker_of_lease)
        del worker_of_lease[lease_id]
        for instruction in m.return_lease(lease_id):
            if isinstance(instruction, GrantLease):
                worker_of_lease[instruction.lease_id] = instruction.worker_id
        m.validate()
    assert m.available == m.total and m.stats()["overcommitted"] == {}


@pytest.mark.parametrize("seed", range(20))
def test_seeded_random_walk_keeps_invariants(seed):
    _random_walk(seed)
