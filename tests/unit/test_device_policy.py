"""The device tier's pure policy: budgets per GPU, LRU move-down, pins, host
copies, evacuation and holders that die (issue 8)."""
import random

import pytest

from gdfut.devstore import device_policy as dp

W1, W2 = "w1", "w2"


def kinds(out, kind):
    return [i for i in out if isinstance(i, kind)]


def test_grant_when_it_fits_and_fail_when_larger_than_the_device():
    p = dp.DeviceTierPolicy({0: 100})
    assert p.create("r1", "a", 60, 0, W1) == [dp.DevGrant("r1", "a")]
    out = p.create("r2", "big", 101, 0, W1)
    assert len(out) == 1 and isinstance(out[0], dp.DevFail) and "101 bytes" in out[0].message \
        and "100 bytes" in out[0].message
    assert isinstance(p.create("r3", "x", 1, 7, W1)[0], dp.DevFail)    # no GPU 7 here
    p.validate()


def test_least_recently_used_unpinned_moves_down_first():
    p = dp.DeviceTierPolicy({0: 100})
    for i, oid in enumerate("abc"):
        p.create(f"r{i}", oid, 30, 0, W1)
    assert p.pinned("a")                     # a is used (and touched): b is the oldest unpinned
    out = p.create("r4", "d", 30, 0, W2)
    assert kinds(out, dp.MoveDown) == [dp.MoveDown("b", W1)] and not kinds(out, dp.DevGrant)
    p.validate()
    out = p.move_done("b")
    assert dp.Delete("b", W1) in out and dp.DevGrant("r4", "d") in out
    assert p.used[0] == 90 and not p.holds("b") and p.holds("a")
    p.validate()


def test_pinned_objects_never_leave_and_a_create_falls_back():
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 60, 0, W1)
    p.pinned("a")
    out = p.create("r2", "b", 60, 0, W1)
    assert [type(i) for i in out] == [dp.DevFail]     # nothing can move: host tier instead
    assert "pinned" in out[0].message and p.holds("a")
    p.unpinned("a")
    out = p.create("r3", "b", 60, 0, W1)
    assert kinds(out, dp.MoveDown) == [dp.MoveDown("a", W1)]
    p.validate()


def test_a_pin_during_a_move_keeps_the_device_copy():
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 60, 0, W1)
    p.create("r2", "b", 60, 0, W1)          # a moves down for b
    assert p.pinned("a")                    # the task reads it while its host copy is written
    out = p.move_done("a")
    assert not kinds(out, dp.Delete) and p.holds("a") and p.host_ready("a")
    # b could not be served: a is pinned and nothing else moves
    assert kinds(out, dp.DevFail) and p.used[0] == 60
    p.unpinned("a")
    out = p.create("r3", "c", 60, 0, W1)    # a has a host copy: it leaves without a write
    assert dp.Delete("a", W1) in out and dp.DevGrant("r3", "c") in out
    assert not kinds(out, dp.MoveDown)
    p.validate()


def test_access_writes_a_host_copy_and_keeps_the_device_copy():
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 10, 0, W1)
    assert not p.host_ready("a")
    assert p.access("a") == [dp.MoveDown("a", W1)]
    assert p.access("a") == []              # one move at a time
    assert p.move_done("a") == [] and p.holds("a") and p.host_ready("a")
    assert p.host_ready("unknown")          # not a device object: the host tier serves it
    p.validate()


def test_free_during_a_move_deletes_once_it_ends():
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 10, 0, W1)
    p.access("a")
    assert p.freed("a") == [] and not p.holds("a") and p.known("a")
    assert p.move_done("a") == [dp.Delete("a", W1)] and not p.known("a")
    assert p.used[0] == 0
    p.validate()


def test_failed_moves_are_not_tried_again():
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 60, 0, W1)
    p.create("r2", "b", 60, 0, W1)
    out = p.move_failed("a")
    assert kinds(out, dp.DevFail) and p.holds("a")
    assert kinds(p.create("r3", "c", 60, 0, W1), dp.DevFail)
    p.validate()


def test_evacuate_moves_everything_of_the_holder_down():
    p = dp.DeviceTierPolicy({0: 100, 1: 100})
    p.create("r1", "a", 10, 0, W1)
    p.create("r2", "b", 10, 1, W1)
    p.create("r3", "c", 10, 0, W2)
    p.access("b")
    p.move_done("b")                        # b has a host copy already
    p.pinned("a")
    out = p.evacuate(W1)
    assert dp.MoveDown("a", W1) in out and dp.Delete("b", W1) in out
    assert p.objects_of(W1) == ["a"] and p.objects_of(W2) == ["c"]
    assert p.move_done("a") == [dp.Delete("a", W1)] and not p.objects_of(W1)
    p.validate()


def test_a_dead_holder_loses_its_objects_and_queued_creates():
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 60, 0, W1)
    p.create("r2", "b", 30, 0, W1)
    p.access("b")
    out = p.create("r3", "c", 60, 0, W2)    # a moves down
    assert kinds(out, dp.MoveDown)
    assert p.holder_gone(W1) == [dp.DevGrant("r3", "c")]
    assert not p.known("a") and not p.known("b") and p.used[0] == 60
    p.validate()


@pytest.mark.parametrize("seed", range(5))
def test_random_events_keep_the_invariants(seed):
    rng = random.Random(seed)
    p = dp.DeviceTierPolicy({0: 1000, 1: 500}, max_moves_in_flight=2)
    moving, n = set(), 0
    for _ in range(600):
        n += 1
        event = rng.random()
        live = [o for o in p._objects if p.holds(o)]
        if event < 0.35:
            out = p.create(n, f"o{n}", rng.randint(1, 400), rng.randint(0, 1), rng.choice([W1, W2]),
                           host_copy=rng.random() < 0.2)
        elif event < 0.5 and live:
            oid = rng.choice(live)
            out = [] if not p.pinned(oid) else p.unpinned(oid) if rng.random() < 0.5 else []
        elif event < 0.6 and live:
            out = p.freed(rng.choice(live))
            pinned_freed = [o for o, obj in p._objects.items() if obj.freed and obj.pins]
            if pinned_freed and rng.random() < 0.5:      # a deferred free's last pin goes
                oid = rng.choice(pinned_freed)
                out += p.unpinned(oid, p._objects[oid].pins)
                assert not p.known(oid) or p._objects[oid].moving
        elif event < 0.7 and live:
            out = p.access(rng.choice(live))
        elif event < 0.9 and moving:
            oid = rng.choice(sorted(moving))
            moving.discard(oid)
            out = p.move_done(oid) if rng.random() < 0.9 else p.move_failed(oid)
        elif event < 0.95:
            out = p.evacuate(rng.choice([W1, W2]))
        else:
            out = p.holder_gone(rng.choice([W1, W2]))
            moving = {o for o in moving if p.known(o)}
        for ins in out:
            if isinstance(ins, dp.MoveDown):
                assert ins.oid not in moving
                moving.add(ins.oid)
        moving = {o for o in moving if p.known(o) and p._objects[o].moving}
        p.validate()
        for gpu in (0, 1):
            assert p.used[gpu] <= p.capacity[gpu]


def test_a_free_of_a_pinned_object_waits_for_its_last_pin():
    """A reader in another process maps the device copy (CUDA IPC or shared
    memory): freeing the object must not take the memory from under it."""
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 60, 0, W1)
    assert p.pinned("a") and p.pinned("a")          # the holder's task and an importer
    assert p.freed("a") == [] and not p.holds("a") and p.known("a") and p.used[0] == 60
    assert not p.pinned("a")                       # freed: no new reader maps it
    assert p.unpinned("a") == []
    assert p.unpinned("a") == [dp.Delete("a", W1)] and not p.known("a") and p.used[0] == 0
    p.validate()


def test_an_object_restored_onto_a_device_leaves_it_without_a_write():
    p = dp.DeviceTierPolicy({0: 100})
    assert p.create("r1", "a", 60, 0, W1, host_copy=True) == [dp.DevGrant("r1", "a")]
    assert p.host_ready("a") and p.access("a") == []      # other readers: its host copy
    out = p.create("r2", "b", 60, 0, W2)
    assert out == [dp.Delete("a", W1), dp.DevGrant("r2", "b")]     # no MoveDown
    assert p.totals["moved_down_objects"] == 0
    # a second device copy of one object on one node is refused (the reader keeps host)
    assert isinstance(p.create("r3", "b", 10, 0, W1, host_copy=True)[0], dp.DevFail)
    p.validate()


def test_an_evacuating_holder_drops_a_freed_pinned_object():
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 60, 0, W1)
    p.pinned("a")
    p.freed("a")
    assert p.evacuate(W1) == [dp.Delete("a", W1)] and not p.known("a")
    p.validate()


def test_readers_pins_stay_counted_while_their_holder_evacuates():
    """A reader in another process mapped the copy (one pin) when its holder
    starts to exit: the copy still moves down and leaves once written, the
    reader's later unpin is accepted (before the fix the evacuation zeroed
    the pins and the unpin failed an assertion, dropping the node's whole
    unpin batch), and no new pin is granted on a copy that is going."""
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 10, 0, W1)
    p.create("r2", "b", 10, 0, W1)
    assert p.pinned("a") and p.pinned("b")        # readers mapped both
    out = p.evacuate(W1)
    assert dp.MoveDown("a", W1) in out and dp.MoveDown("b", W1) in out
    assert not p.pinned("a")                       # going: readers use the host copy
    assert p.unpinned("a") == []                   # a reader let go during the move
    p.validate()
    assert p.move_done("a") == [dp.Delete("a", W1)]
    assert p.move_done("b") == [dp.Delete("b", W1)]   # pinned, but its holder exits
    assert p.unpinned("b") == [] and not p.objects_of(W1)
    p.validate()


def test_a_holder_that_is_evacuating_gets_no_new_device_copy():
    """A GPU actor killed while a call of it runs: the node evacuates its
    objects, then the call returns a device value. Granted, that copy would
    not be moved down (the evacuation waits for it until its timeout while
    the object sits on the device, its holder alive); it is refused, so the
    value takes the host tier, and so is a create still queued for room."""
    p = dp.DeviceTierPolicy({0: 100})
    p.create("r1", "a", 60, 0, W1)
    assert p.pinned("a")
    p.create("r2", "c", 30, 0, W2)
    out = p.create("r3", "b", 30, 0, W1)           # queued: c moves down for it
    assert out == [dp.MoveDown("c", W2)]
    out = p.evacuate(W1)
    assert dp.MoveDown("a", W1) in out
    fails = kinds(out, dp.DevFail)
    assert [f.req for f in fails] == ["r3"] and "exiting" in fails[0].message
    p.validate()
    out = p.create("r4", "d", 5, 0, W1)
    assert len(out) == 1 and isinstance(out[0], dp.DevFail) and "exiting" in out[0].message
    assert isinstance(p.create("r5", "e", 5, 0, W1, host_copy=True)[0], dp.DevFail)
    assert p.create("r6", "f", 5, 0, W2) == [dp.DevGrant("r6", "f")]   # others go on
    assert p.move_done("c") == [dp.Delete("c", W2)]
    assert p.move_done("a") == [dp.Delete("a", W1)] and not p.objects_of(W1)
    p.validate()
    p.holder_gone(W1)
    assert p.create("r7", "g", 10, 0, W1) == [dp.DevGrant("r7", "g")]   # forgotten once gone
    p.validate()
