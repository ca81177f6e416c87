"""HostStoreState: exact event -> result sequences and a seeded model check."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gdfut.devstore.host_store import (
    CREATED,
    SEALED,
    CreateError,
    Freed,
    HostStoreState,
    OpResult,
    Status,
)

W1, W2, W3 = b"worker-1", b"worker-2", b"worker-3"


def sealed(store: HostStoreState, object_id: bytes, size: int, holder: bytes = W1, now: int = 0) -> int:
    result = store.create(object_id, size, holder, now=now)
    assert result.ok, result
    assert store.seal(object_id, holder).ok
    return result.offset


def test_create_write_seal_pin_unpin_delete() -> None:
    store = HostStoreState(1024)
    result = store.create(b"a", 100, W1)
    assert result.ok and result.offset == 0 and result.error is None
    assert not store.contains(b"a")
    assert store.pin(b"a", W2) is None  # readers wait for the seal
    info = store.get(b"a")
    assert info.state == CREATED and info.pins == {W1: 1} and info.creator == W1
    store.validate()

    assert store.seal(b"a", W1) == OpResult(Status.OK)
    assert store.contains(b"a")
    assert store.get(b"a").state == SEALED and store.get(b"a").pins == {}
    assert store.pin(b"a", W2) == (0, 100)
    assert store.pin(b"a", W2) == (0, 100)
    assert store.get(b"a").pins == {W2: 2}
    assert store.unpin(b"a", W2, count=2).ok
    assert store.delete(b"a") == [Freed(b"a", 0, 100, 128)]
    assert not store.contains(b"a") and store.get(b"a") is None
    assert store.stats()["used_bytes"] == 0
    store.validate()


def test_seal_and_abort_errors() -> None:
    store = HostStoreState(1024)
    assert store.seal(b"nope", W1).status is Status.NOT_FOUND
    assert store.abort(b"nope", W1).status is Status.NOT_FOUND
    store.create(b"a", 10, W1)
    assert store.seal(b"a", W2).status is Status.NOT_HOLDER
    assert store.abort(b"a", W2).status is Status.NOT_HOLDER
    assert store.seal(b"a", W1).ok
    assert store.seal(b"a", W1).status is Status.WRONG_STATE
    assert store.abort(b"a", W1).status is Status.WRONG_STATE
    store.validate()


def test_abort_frees_unsealed_object() -> None:
    store = HostStoreState(1024)
    store.create(b"a", 200, W1)
    result = store.abort(b"a", W1)
    assert result.ok and result.freed == (Freed(b"a", 0, 200, 256),)
    assert store.stats()["num_objects"] == 0
    store.validate()


def test_create_existing_id() -> None:
    store = HostStoreState(1024)
    sealed(store, b"a", 10)
    result = store.create(b"a", 10, W2)
    assert not result.ok and result.error == CreateError.EXISTS == "exists"
    store.validate()


def test_create_when_full_reports_sizes() -> None:
    store = HostStoreState(1024, alignment=64)
    sealed(store, b"a", 256)
    sealed(store, b"b", 256)
    sealed(store, b"c", 256)
    store.delete(b"b")  # a 256-byte hole plus 256 free at the end: 512 free, 256 contiguous
    result = store.create(b"big", 300, W1)
    assert not result.ok and result.error == "full"
    assert (result.needed, result.capacity, result.used, result.largest_free) == (300, 1024, 512, 256)
    assert result.offset is None
    assert store.get(b"big") is None
    assert store.create(b"fits", 256, W1).offset == 256  # best fit: the hole
    store.validate()


def test_unpin_errors() -> None:
    store = HostStoreState(1024)
    assert store.unpin(b"nope", W1).status is Status.NOT_FOUND
    store.create(b"a", 10, W1)
    assert store.unpin(b"a", W1).status is Status.WRONG_STATE  # write pin goes via seal
    store.seal(b"a", W1)
    assert store.unpin(b"a", W2).status is Status.NOT_HOLDER
    store.pin(b"a", W2)
    assert store.unpin(b"a", W2, count=2).status is Status.NOT_HOLDER
    assert store.get(b"a").pins == {W2: 1}
    with pytest.raises(ValueError):
        store.unpin(b"a", W2, count=0)
    store.validate()


def test_delete_of_pinned_object_waits_for_last_pin() -> None:
    store = HostStoreState(1024)
    sealed(store, b"a", 64)
    store.pin(b"a", W1)
    store.pin(b"a", W2)
    assert store.delete(b"a") == []
    info = store.get(b"a")
    assert info.delete_pending
    assert not store.contains(b"a")
    assert store.pin(b"a", W3) is None  # no new readers of a deleted object
    assert store.delete(b"a") == []  # repeated delete: still waiting
    assert store.stats()["delete_pending"] == 1
    store.validate()
    assert store.unpin(b"a", W1).freed == ()
    assert store.unpin(b"a", W2).freed == (Freed(b"a", 0, 64, 64),)
    assert store.stats()["num_objects"] == 0
    store.validate()


def test_delete_while_writing_frees_at_seal_or_abort() -> None:
    store = HostStoreState(1024)
    store.create(b"a", 64, W1)
    store.create(b"b", 64, W1)
    assert store.delete(b"a") == [] and store.delete(b"b") == []
    store.validate()
    assert store.seal(b"a", W1).freed == (Freed(b"a", 0, 64, 64),)
    assert store.abort(b"b", W1).freed == (Freed(b"b", 64, 64, 64),)
    assert store.stats()["used_bytes"] == 0
    store.validate()


def test_delete_absent_is_noop() -> None:
    store = HostStoreState(1024)
    assert store.delete(b"nope") == []


def test_release_holder_drops_pins_aborts_writes_and_runs_pending_deletes() -> None:
    store = HostStoreState(4096)
    sealed(store, b"kept", 64)
    sealed(store, b"deleted", 64)
    store.create(b"writing", 64, W1)
    store.create(b"other-writer", 64, W2)
    for _ in range(3):
        store.pin(b"kept", W1)
    store.pin(b"kept", W2)
    store.pin(b"deleted", W1)
    store.delete(b"deleted")
    freed = store.release_holder(W1)
    assert sorted(f.object_id for f in freed) == [b"deleted", b"writing"]
    assert store.get(b"kept").pins == {W2: 1}
    assert store.get(b"other-writer").state == CREATED
    assert store.release_holder(W1) == []
    assert store.release_holder(b"never-seen") == []
    store.validate()


def test_lru_unpinned_orders_by_access() -> None:
    store = HostStoreState(4096)
    for index, object_id in enumerate([b"a", b"b", b"c", b"d"]):
        sealed(store, object_id, 64, now=index)
    store.create(b"unsealed", 64, W1, now=-5)
    assert store.lru_unpinned(10) == [b"a", b"b", b"c", b"d"]
    store.pin(b"a", W1, now=10)  # pinned: not a candidate
    assert store.lru_unpinned(10) == [b"b", b"c", b"d"]
    store.unpin(b"a", W1)
    store.pin(b"b", W1, now=11)
    store.unpin(b"b", W1)
    assert store.lru_unpinned(10) == [b"c", b"d", b"a", b"b"]
    assert store.lru_unpinned(2) == [b"c", b"d"]
    assert store.touch(b"c", now=12) and not store.touch(b"nope")
    assert store.lru_unpinned(10) == [b"d", b"a", b"b", b"c"]
    store.pin(b"d", W2)
    store.delete(b"d")  # pending delete: not a candidate either
    assert store.lru_unpinned(10) == [b"a", b"b", b"c"]
    store.validate()


def test_lru_without_clock_uses_access_order() -> None:
    store = HostStoreState(4096)
    for object_id in (b"a", b"b", b"c"):
        sealed(store, object_id, 1)
    store.pin(b"a", W1)
    store.unpin(b"a", W1)
    assert store.lru_unpinned(3) == [b"b", b"c", b"a"]


def test_stats_and_objects_listing() -> None:
    store = HostStoreState(1000, alignment=64)
    sealed(store, b"a", 10)
    store.create(b"b", 100, W2, primary=False)
    store.pin(b"a", W3)
    assert store.stats() == {
        "num_objects": 2,
        "used_bytes": 64 + 128,
        "capacity": 960,
        "pinned_objects": 2,
        "largest_free": 960 - 192,
        "delete_pending": 0,
    }
    listing = {info.object_id: info for info in store.objects()}
    assert listing[b"a"].pins == {W3: 1} and listing[b"a"].primary
    assert listing[b"b"].state == CREATED and not listing[b"b"].primary
    listing[b"a"].pins[W1] = 5  # a snapshot: editing it changes nothing
    store.validate()


def test_zero_size_objects_get_distinct_offsets() -> None:
    store = HostStoreState(1024)
    assert sealed(store, b"a", 0) != sealed(store, b"b", 0)
    assert store.pin(b"a", W1) == (0, 0)
    store.validate()


class Model:
    """What the store should do, without any allocator."""

    def __init__(self) -> None:
        self.state: dict[bytes, str] = {}
        self.creator: dict[bytes, bytes] = {}
        self.pins: dict[bytes, Counter] = {}
        self.pending: set[bytes] = set()

    def forget(self, object_id: bytes) -> None:
        for table in (self.state, self.creator, self.pins):
            del table[object_id]
        self.pending.discard(object_id)

    def free_if_done(self, object_id: bytes) -> list[bytes]:
        if object_id in self.pending and not +self.pins[object_id]:
            self.forget(object_id)
            return [object_id]
        return []


def _freed_ids(freed) -> list[bytes]:
    return sorted(f.object_id for f in freed)


OPS = ["create", "seal", "abort", "pin", "unpin", "delete", "release"]
OP_WEIGHTS = [20, 12, 3, 25, 25, 12, 2]


@pytest.mark.parametrize("seed", range(6))
def test_randomized_against_model(seed: int) -> None:
    rng = random.Random(seed)
    store = HostStoreState(64 * rng.randint(8, 40), alignment=64)
    model = Model()
    ids = [b"obj-%d" % i for i in range(12)]
    holders = [W1, W2, W3]
    for step in range(1500):
        op = rng.choices(OPS, weights=OP_WEIGHTS)[0]
        # Mostly act on objects that exist, as their writer, so that the
        # success paths are exercised as often as the refusals.
        known = list(model.state)
        if op != "create" and known and rng.random() < 0.8:
            object_id = rng.choice(known)
        else:
            object_id = rng.choice(ids)
        holder = rng.choice(holders)
        if op in ("seal", "abort") and object_id in model.creator and rng.random() < 0.8:
            holder = model.creator[object_id]
        pinners = [h for h, c in model.pins.get(object_id, Counter()).items() if c]
        if op == "unpin" and pinners and rng.random() < 0.8:
            holder = rng.choice(pinners)
        if op == "create":
            size = rng.choice([0, 1, 64, 100, 300, 700])
            result = store.create(object_id, size, holder, now=step)
            if object_id in model.state:
                assert result.error == "exists"
            elif result.error == "full":
                assert result.largest_free < max(64, -(-size // 64) * 64)
            else:
                assert result.ok
                model.state[object_id], model.creator[object_id] = CREATED, holder
                model.pins[object_id] = Counter({holder: 1})
        elif op in ("seal", "abort"):
            result = getattr(store, op)(object_id, holder)
            if object_id not in model.state:
                assert result.status is Status.NOT_FOUND
            elif model.state[object_id] != CREATED:
                assert result.status is Status.WRONG_STATE
            elif model.creator[object_id] != holder:
                assert result.status is Status.NOT_HOLDER
            elif op == "seal":
                model.state[object_id] = SEALED
                model.pins[object_id][holder] -= 1
                assert _freed_ids(result.freed) == model.free_if_done(object_id)
            else:
                model.forget(object_id)
                assert _freed_ids(result.freed) == [object_id]
        elif op == "pin":
            readable = model.state.get(object_id) == SEALED and object_id not in model.pending
            assert (store.pin(object_id, holder, now=step) is not None) == readable
            if readable:
                model.pins[object_id][holder] += 1
        elif op == "unpin":
            count = rng.choice([1, 1, 2])
            result = store.unpin(object_id, holder, count)
            if object_id not in model.state:
                assert result.status is Status.NOT_FOUND
            elif model.state[object_id] != SEALED:
                assert result.status is Status.WRONG_STATE
            elif model.pins[object_id][holder] < count:
                assert result.status is Status.NOT_HOLDER
            else:
                model.pins[object_id][holder] -= count
                assert _freed_ids(result.freed) == model.free_if_done(object_id)
        elif op == "delete":
            freed = store.delete(object_id)
            expected: list[bytes] = []
            if object_id in model.state:
                model.pending.add(object_id)
                expected = model.free_if_done(object_id)
            assert _freed_ids(freed) == expected
        else:
            freed = store.release_holder(holder)
            expected = []
            for oid in list(model.state):
                if model.state[oid] == CREATED and model.creator[oid] == holder:
                    model.forget(oid)
                    expected.append(oid)
                elif model.pins[oid][holder]:
                    model.pins[oid][holder] = 0
                    expected += model.free_if_done(oid)
            assert _freed_ids(freed) == sorted(expected)
        store.validate()
        assert set(info.object_id for info in store.objects()) == set(model.state)
        for oid in ids:
            assert store.contains(oid) == (model.state.get(oid) == SEALED and oid not in model.pending)
        for info in store.objects():
            assert info.pins == {h: c for h, c in model.pins[info.object_id].items() if c}
            assert info.delete_pending == (info.object_id in model.pending)
    # Teardown: every holder gone and every object deleted leaves an empty arena.
    for holder in holders:
        store.release_holder(holder)
    for oid in ids:
        store.delete(oid)
    assert store.stats()["num_objects"] == 0 and store.stats()["used_bytes"] == 0
    store.validate()
