"""TierPolicy: exact event -> instruction sequences, and a seeded model check
of its invariants (never over capacity, pinned never spilled, every wait ends)."""

from __future__ import annotations

import random

import pytest

from gdfut.devstore.tier_policy import (DISK, HOST, Delete, Evict, Fail, Grant, GrantDisk,
                                        Restore, Spill, Stuck, TierPolicy, Wait)

MB = 1 << 20


def policy(host=4 * MB, disk=64 * MB, **kw) -> TierPolicy:
    kw.setdefault("spill_threshold", 1.0)
    return TierPolicy(host, disk, host_alignment=64, disk_alignment=4096, **kw)


def put(p: TierPolicy, oid, size=MB, now=0, primary=True):
    out = p.create(("c", oid), oid, size, primary=primary, now=now)
    assert out == [Grant(("c", oid), oid, size)], out
    assert p.sealed(oid, now) == []
    return out


def test_create_that_fits_is_granted_and_seal_frees_nothing():
    p = policy()
    put(p, "a")
    assert p.tier_of("a") == HOST
    assert p.stats()["host_bytes"] == MB
    p.validate()


def test_create_that_does_not_fit_spills_lru_and_waits():
    p = policy()
    for i, oid in enumerate("abcd"):
        put(p, oid, now=i)
    p.pinned("a", now=10)          # a is most recently used and pinned: never a victim
    out = p.create("r", "e", 2 * MB, now=11)
    assert out == [Wait("r", "e", 2 * MB), Spill("b", MB), Spill("c", MB)]
    p.validate()
    assert p.spill_done("b") == [Delete("b", HOST)]
    assert p.spill_done("c") == [Delete("c", HOST), Grant("r", "e", 2 * MB)]
    assert p.tier_of("b") == DISK and p.tier_of("a") == HOST
    assert p.stats()["disk_bytes"] == 2 * MB
    p.validate()


def test_pinned_object_is_never_spilled_and_create_reports_stuck():
    p = policy(host=2 * MB)
    put(p, "a")
    put(p, "b")
    p.pinned("a")
    p.pinned("b")
    assert p.create("r", "c", MB) == [Wait("r", "c", MB), Stuck("r")]
    # an unpin makes a candidate: spilled, then granted
    assert p.unpinned("b") == [Spill("b", MB)]
    assert p.give_up("r") == [Stuck("r")]          # a spill is in flight: ask later
    assert p.spill_done("b") == [Delete("b", HOST), Grant("r", "c", MB)]
    p.validate()


def test_give_up_fails_with_sizes():
    p = policy(host=MB)
    put(p, "a")
    p.pinned("a")
    p.create("r", "b", MB)
    (fail,) = p.give_up("r")
    assert isinstance(fail, Fail) and fail.req == "r"
    assert str(MB) in fail.message and "pinned" in fail.message
    assert p.give_up("r") == []
    p.validate()


def test_larger_than_host_tier_goes_straight_to_disk():
    p = policy(host=4 * MB, disk=16 * MB)
    assert p.create("r", "big", 5 * MB, now=1) == [GrantDisk("r", "big", 5 * MB)]
    assert p.is_direct("big") and p.tier_of("big") == DISK
    assert p.used == {HOST: 0, DISK: 5 * MB}
    p.validate()
    assert p.sealed("big", 2) == []
    assert p.access("big", now=3) == []          # never restored: readers map it
    p.pinned("big", now=3)
    put(p, "a", 3 * MB, now=4)
    out = p.create("rb", "b", 2 * MB, now=5)     # spills a, never the direct object
    assert out == [Wait("rb", "b", 2 * MB), Spill("a", 3 * MB)]
    assert p.freed("big") == []                  # pinned: deleted once unpinned
    assert p.unpinned("big") == [Delete("big", DISK)]
    p.validate()
    # no room left on disk for another: fails naming the sizes
    (fail,) = p.create("r2", "big2", 15 * MB)
    assert isinstance(fail, Fail) and str(15 * MB) in fail.message and "free" in fail.message
    # a pulled copy is never written to disk
    (fail,) = p.create("r3", "copy", 5 * MB, primary=False)
    assert isinstance(fail, Fail) and "pulled" in fail.message
    p.validate()


def test_larger_than_all_tiers_fails_at_once_naming_sizes():
    p = policy(host=4 * MB, disk=8 * MB)
    (fail,) = p.create("r", "big", 13 * MB)
    assert isinstance(fail, Fail) and "all tiers together" in fail.message
    assert str(13 * MB) in fail.message and str(4 * MB) in fail.message and str(8 * MB) in fail.message
    (fail,) = p.create("r", "big", 9 * MB)        # fits host + disk, but never split
    assert isinstance(fail, Fail) and "never split" in fail.message
    p.validate()


def test_pin_of_spilled_object_restores_it_first():
    p = policy(host=2 * MB)
    put(p, "a", now=1)
    put(p, "b", now=2)
    assert p.create("r", "c", MB, now=3)[1:] == [Spill("a", MB)]
    p.spill_done("a")
    p.sealed("c", 4)
    assert p.tier_of("a") == DISK
    # access a: room is made (b is LRU now), then the restore
    assert p.access("a", now=5) == [Spill("b", MB)]
    assert p.tier_of("a") == DISK
    assert p.spill_done("b") == [Delete("b", HOST), Restore("a", MB)]
    assert p.tier_of("a") == DISK               # being read back: not readable yet
    assert p.restore_done("a", pins=2) == []        # the disk copy is kept
    assert p.tier_of("a") == HOST and p.stats()["disk_bytes"] == 2 * MB
    p.validate()
    # its two readers hold it: it is not picked for the next spill
    assert p.create("r2", "d", MB, now=6) == [Wait("r2", "d", MB), Spill("c", MB)]
    p.spill_done("c")
    p.sealed("d", 7)
    # unpinned, it moves down again without a write: its disk copy is there
    p.unpinned("a", 2)
    assert p.create("r3", "e", MB, now=8) == [Delete("a", HOST), Grant("r3", "e", MB)]
    assert p.tier_of("a") == DISK
    p.validate()


def test_clean_copies_are_dropped_before_dirty_ones_are_written():
    """A sequential read of spilled data: the restored objects (disk copy
    still valid) make room for the next restores, not the unread objects
    that would have to be written out first (even though those are LRU)."""
    p = policy(host=3 * MB)
    put(p, "a", now=1)
    put(p, "b", now=2)
    put(p, "c", now=3)
    assert p.create("r", "d", MB, now=4)[1:] == [Spill("a", MB)]
    assert p.spill_done("a") == [Delete("a", HOST), Grant("r", "d", MB)]
    p.sealed("d", 5)
    assert p.create("r2", "e", MB, now=6)[1:] == [Spill("b", MB)]
    assert p.spill_done("b") == [Delete("b", HOST), Grant("r2", "e", MB)]
    p.sealed("e", 7)
    # read a back: c is the LRU object and dirty, so it is written
    assert p.access("a", now=8) == [Spill("c", MB)]
    assert p.spill_done("c") == [Delete("c", HOST), Restore("a", MB)]
    assert p.restore_done("a", pins=1) == []
    p.unpinned("a")
    # read b back: a is the most recently used, but clean: dropped, no write,
    # and d and e (dirty, older) stay in memory
    assert p.access("b", now=9) == [Delete("a", HOST), Restore("b", MB)]
    assert p.tier_of("d") == HOST and p.tier_of("e") == HOST
    assert p.stats()["spills_in_flight"] == 0
    p.validate()
    # a pinned clean copy is never dropped: the dirty LRU object is written
    assert p.restore_done("b", pins=1) == []
    assert p.access("a", now=10) == [Spill("d", MB)]
    p.validate()


def test_secondary_copy_is_evicted_before_a_primary_is_spilled():
    p = policy(host=2 * MB)
    put(p, "a", now=1)
    put(p, "copy", now=2, primary=False)
    assert p.create("r", "b", MB, now=3) == [Evict("copy"), Grant("r", "b", MB)]
    assert p.tier_of("a") == HOST
    p.validate()
    # a copy that became the primary (a task's output written again) is
    # dirty: the LRU primary is spilled, the copy is not evicted
    p2 = policy(host=2 * MB)
    put(p2, "a", now=1)
    put(p2, "copy", now=2, primary=False)
    p2.make_primary("copy")
    assert p2.create("r", "b", MB, now=3) == [Wait("r", "b", MB), Spill("a", MB)]
    p2.validate()


def test_free_deletes_from_every_tier_and_waits_for_io():
    p = policy(host=MB)
    put(p, "a")
    p.create("r", "b", MB)                        # spills a
    assert p.freed("a") == []                     # spill in flight: later
    assert p.spill_done("a") == [Delete("a", HOST), Delete("a", DISK), Grant("r", "b", MB)]
    assert p.tier_of("a") is None
    p.sealed("b")
    p.pinned("b")
    assert p.freed("b") == []                     # pinned: when the last pin goes
    assert p.unpinned("b") == [Delete("b", HOST)]
    assert p.stats()["host_bytes"] == p.stats()["disk_bytes"] == 0
    p.validate()


def test_secondary_copies_are_evicted_not_spilled():
    p = policy(host=2 * MB)
    put(p, "copy", primary=False, now=1)
    put(p, "own", now=2)
    assert p.create("r", "c", MB, now=3) == [Evict("copy"), Grant("r", "c", MB)]
    assert p.tier_of("copy") is None
    p.validate()


def test_pinned_during_spill_stays_in_memory():
    p = policy(host=MB)
    put(p, "a")
    p.create("r", "b", MB)
    p.pinned("a")                                  # a reader came while it was written out
    assert p.spill_done("a") == [Stuck("r")]
    assert p.tier_of("a") == HOST
    # once unpinned it leaves memory without another write
    assert p.unpinned("a") == [Delete("a", HOST), Grant("r", "b", MB)]
    p.validate()


def test_spill_failure_is_not_retried():
    p = policy(host=MB)
    put(p, "a")
    p.create("r", "b", MB)
    assert p.spill_failed("a") == [Delete("a", DISK), Stuck("r")]
    assert p.tier_of("a") == HOST
    p.validate()


def test_fragmented_arena_asks_for_more_room():
    p = policy(host=3 * MB)
    put(p, "a", now=1)
    put(p, "b", now=2)
    [grant] = p.create("r", "c", MB, now=3)
    assert grant == Grant("r", "c", MB)
    # the arena had no contiguous MB: more room is made before the next grant
    assert p.alloc_failed("r", "c", grant.extra) == [Spill("a", MB)]
    assert p.spill_done("a") == [Delete("a", HOST), Grant("r", "c", MB, MB)]
    p.validate()


def test_wait_queue_is_first_come_first_served_and_cancel():
    p = policy(host=2 * MB)
    put(p, "a", now=1)
    put(p, "b", now=2)
    assert p.create("r1", "x", 2 * MB)[0] == Wait("r1", "x", 2 * MB)
    assert p.create("r2", "y", MB) == [Wait("r2", "y", MB)]   # deficit covered by spills in flight
    assert p.cancel("r1") == []
    assert p.spill_done("a") == [Delete("a", HOST), Grant("r2", "y", MB)]
    p.validate()


def test_spilling_starts_above_the_threshold():
    p = policy(host=4 * MB, spill_threshold=0.5)
    put(p, "a", now=1)
    put(p, "b", now=2)
    # room now: granted at once, and 3 MB > 2 MB: the LRU object goes ahead
    assert p.create("r", "c", MB, now=3) == [Grant("r", "c", MB), Spill("a", MB)]
    assert p.sealed("c", 3) == []                      # 2 MB once a is out: enough
    p.validate()


def test_reading_back_spills_no_dirty_object_ahead_of_need():
    """Above the threshold, writers make the policy spill ahead; a restore
    only makes the room it needs (clean copies still go ahead of need)."""
    p = policy(host=4 * MB, spill_threshold=0.5)
    put(p, "a", now=1)
    assert p.create("r", "b", MB, now=2) == [Grant("r", "b", MB)]
    p.sealed("b", 2)
    # a third object goes over the threshold (2 MB): a is spilled ahead
    assert p.create("r2", "c", MB, now=3) == [Grant("r2", "c", MB), Spill("a", MB)]
    assert p.spill_done("a") == [Delete("a", HOST)]
    p.sealed("c", 3)
    # reading a back: it fits (3 MB of 4), nothing dirty is written ahead
    assert p.access("a", now=4) == [Restore("a", MB)]
    assert p.restore_done("a", pins=1) == []
    assert p.stats()["spills_in_flight"] == 0
    # unpinned, clean a goes ahead of need (3 MB > 2 MB); dirty b and c stay
    assert p.unpinned("a") == [Delete("a", HOST)]
    assert p.tier_of("b") == HOST and p.tier_of("c") == HOST
    # a create: dirty objects are spilled ahead again
    assert p.create("r3", "x", MB, now=5) == [Grant("r3", "x", MB), Spill("b", MB)]
    p.validate()


def test_bad_arguments():
    with pytest.raises(ValueError, match="capacities"):
        TierPolicy(-1, 0)
    with pytest.raises(ValueError, match="size"):
        policy().create("r", "a", -5)


def test_random_events_keep_invariants():
    """Seeded model check: random creates, pins, frees and I/O completions;
    the invariants hold after each event; pinned objects are never spilled;
    at the end every wait was granted or failed."""
    for seed in range(30):
        rng = random.Random(seed)
        p = TierPolicy(rng.choice([4, 8, 16]) * MB, rng.choice([8, 32, 128]) * MB,
                       max_spills_in_flight=rng.choice([1, 2, 8]),
                       spill_threshold=rng.choice([0.5, 0.8, 1.0]))
        live, pins, spilling, restoring, waiting = set(), {}, set(), set(), {}
        creating, stuck = set(), set()
        clock = 0

        def apply(out):
            for ins in out:
                if isinstance(ins, (Grant, GrantDisk)):
                    waiting.pop(ins.req, None)
                    creating.add(ins.oid)
                elif isinstance(ins, Fail):
                    waiting.pop(ins.req, None)
                elif isinstance(ins, Spill):
                    assert not pins.get(ins.oid), "a pinned object was spilled"
                    spilling.add(ins.oid)
                elif isinstance(ins, Restore):
                    restoring.add(ins.oid)
                elif isinstance(ins, Stuck):
                    stuck.add(ins.req)
                elif isinstance(ins, Evict):
                    live.discard(ins.oid)
            p.validate()

        for step in range(400):
            clock += 1
            action = rng.random()
            if action < 0.3:
                oid = ("o", seed, step)
                req = ("c", oid)
                waiting[req] = oid
                size = rng.randint(0, 3 * MB) if rng.random() < 0.9 else rng.randint(0, 20 * MB)
                apply(p.create(req, oid, size, primary=rng.random() < 0.8, now=clock))
            elif action < 0.4 and creating:
                oid = rng.choice(sorted(creating))
                creating.discard(oid)
                live.add(oid)
                apply(p.sealed(oid, clock))
            elif action < 0.5 and spilling:
                oid = rng.choice(sorted(spilling))
                spilling.discard(oid)
                apply(p.spill_done(oid) if rng.random() < 0.9 else p.spill_failed(oid))
            elif action < 0.6 and restoring:
                oid = rng.choice(sorted(restoring))
                restoring.discard(oid)
                apply(p.restore_done(oid, pins=0))
            elif action < 0.75 and live:
                oid = rng.choice(sorted(live))
                if p.tier_of(oid) == HOST:
                    p.pinned(oid, now=clock)
                    pins[oid] = pins.get(oid, 0) + 1
                    p.validate()
                elif p.tier_of(oid) == DISK:
                    apply(p.access(oid, now=clock))
            elif action < 0.88 and pins:
                oid = rng.choice(sorted(pins))
                pins[oid] -= 1
                if not pins[oid]:
                    del pins[oid]
                apply(p.unpinned(oid))
            elif action < 0.95 and live:
                oid = rng.choice(sorted(live))
                live.discard(oid)
                apply(p.freed(oid))
            elif stuck:
                apply(p.give_up(stuck.pop()))
            for tier in (HOST, DISK):
                assert p.used[tier] <= p.capacity[tier]
        # drain: finish I/O, seal writes, drop pins, give up on what stays stuck
        for _ in range(10_000):
            if spilling:
                apply(p.spill_done(spilling.pop()))
            elif restoring:
                apply(p.restore_done(restoring.pop()))
            elif creating:
                oid = creating.pop()
                live.add(oid)
                apply(p.sealed(oid))
            elif pins:
                oid = next(iter(pins))
                apply(p.unpinned(oid, pins.pop(oid)))
            elif stuck:
                apply(p.give_up(stuck.pop()))
            else:
                break
        assert not waiting, f"seed {seed}: waits never granted or failed: {waiting}"


def test_an_object_freed_while_it_is_written_is_deleted_and_its_seal_is_a_no_op():
    """The owner can free an object while its writer still writes it (a
    device copy moving down to host when the owner drops the last ref): the
    free deletes it at once (the store defers the delete to the write pin)
    and the late seal must not trip over the missing entry."""
    p = policy()
    assert p.create(("c", "a"), "a", MB, now=0) == [Grant(("c", "a"), "a", MB)]
    assert Delete("a", HOST) in p.freed("a")
    assert p.sealed("a", 1) == []
    assert p.tier_of("a") is None
    p.validate()
