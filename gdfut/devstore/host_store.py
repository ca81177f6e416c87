"""Object table of a node's host tier: a pure state machine.

No I/O, threads or clocks: the node daemon (the shell) feeds it events —
a worker creates, seals, pins, unpins; the owner deletes; a process dies —
and carries out what it answers (write at this offset, report these frees,
raise ObjectStoreFullError with these sizes). Bytes live in ``SharedArena``;
this class only decides offsets and lifetimes.

Lifecycle of one object::

    create ──> CREATED ──seal──> SEALED ──delete──> freed
                  │                 │
                abort         delete while pinned: delete_pending,
                  v           freed when the last pin goes
                freed

The creating holder pins the object while it writes (the "write pin"); seal
or abort drops it. Only sealed objects can be pinned by readers.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Hashable, Iterator, Mapping

from gdfut.devstore.allocator import ArenaAllocator

ObjectId = Hashable
HolderId = Hashable

CREATED = "CREATED"
SEALED = "SEALED"


class Status(StrEnum):
    OK = "ok"
    NOT_FOUND = "not_found"  # no such object (or already deleted)
    WRONG_STATE = "wrong_state"  # e.g. seal of a sealed object, unpin of an unsealed one
    NOT_HOLDER = "not_holder"  # holder is not the creator / holds fewer pins than asked


class CreateError(StrEnum):
    FULL = "full"
    EXISTS = "exists"


@dataclass(frozen=True)
class CreateResult:
    """Either ``offset`` (success) or ``error`` with the sizes to report."""

    offset: int | None = None
    error: CreateError | None = None
    needed: int = 0  # bytes asked for
    capacity: int = 0
    used: int = 0
    largest_free: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Freed:
    object_id: ObjectId
    offset: int
    size: int  # object bytes
    released: int  # arena bytes given back (size rounded up to alignment)


@dataclass(frozen=True)
class OpResult:
    status: Status
    freed: tuple[Freed, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@dataclass(frozen=True)
class ObjectInfo:
    """Snapshot of one record, for memory listings."""

    object_id: ObjectId
    offset: int
    size: int
    state: str
    pins: Mapping[HolderId, int]
    primary: bool
    delete_pending: bool
    last_access: int
    creator: HolderId


@dataclass
class _Record:
    object_id: ObjectId
    offset: int
    size: int
    creator: HolderId
    primary: bool
    last_access: int
    access_seq: int  # tie-break for equal last_access: order of accesses
    state: str = CREATED
    pins: dict[HolderId, int] = field(default_factory=dict)
    delete_pending: bool = False

    def snapshot(self) -> ObjectInfo:
        return ObjectInfo(
            self.object_id, self.offset, self.size, self.state, dict(self.pins),
            self.primary, self.delete_pending, self.last_access, self.creator,
        )


class HostStoreState:
    """Table of the objects in one node's arena, with pins and deferred deletes."""

    def __init__(self, capacity: int, alignment: int = 64) -> None:
        self._allocator = ArenaAllocator(capacity, alignment)
        self._records: dict[ObjectId, _Record] = {}
        # holder -> ids it pins (write pins included): release_holder must not
        # scan the whole table when one of many workers dies.
        self._by_holder: dict[HolderId, set[ObjectId]] = {}
        self._access_seq = 0

    # -- writing --------------------------------------------------------------

    def create(
        self, object_id: ObjectId, size: int, holder: HolderId, primary: bool = True, now: int = 0
    ) -> CreateResult:
        """Reserve ``size`` bytes for a new object that ``holder`` will write."""
        if size < 0:
            raise ValueError(f"object size must be >= 0, got {size}")
        if object_id in self._records:
            return CreateResult(error=CreateError.EXISTS, needed=size, **self._space())
        offset = self._allocator.allocate(size)
        if offset is None:
            return CreateResult(error=CreateError.FULL, needed=size, **self._space())
        record = _Record(object_id, offset, size, holder, primary, now, self._next_seq())
        self._records[object_id] = record
        self._add_pin(record, holder, 1)
        return CreateResult(offset=offset, needed=size, **self._space())

    def seal(self, object_id: ObjectId, holder: HolderId) -> OpResult:
        """The writer finished: readers may pin it now. Drops the write pin."""
        record = self._records.get(object_id)
        if record is None:
            return OpResult(Status.NOT_FOUND)
        if record.state != CREATED:
            return OpResult(Status.WRONG_STATE)
        if record.creator != holder:
            return OpResult(Status.NOT_HOLDER)
        record.state = SEALED
        return OpResult(Status.OK, self._drop_pins(record, holder, 1))

    def abort(self, object_id: ObjectId, holder: HolderId) -> OpResult:
        """The writer failed: free the unsealed object."""
        record = self._records.get(object_id)
        if record is None:
            return OpResult(Status.NOT_FOUND)
        if record.state != CREATED:
            return OpResult(Status.WRONG_STATE)
        if record.creator != holder:
            return OpResult(Status.NOT_HOLDER)
        self._remove_pins(record, holder)
        return OpResult(Status.OK, (self._free(record),))

    # -- reading --------------------------------------------------------------

    def pin(self, object_id: ObjectId, holder: HolderId, now: int | None = None) -> tuple[int, int] | None:
        """Pin for reading; ``(offset, size)``, or None if absent, unsealed or
        being deleted. ``now`` (logical clock) records the access for LRU."""
        record = self._records.get(object_id)
        if record is None or record.state != SEALED or record.delete_pending:
            return None
        self._add_pin(record, holder, 1)
        self._touch(record, now)
        return record.offset, record.size

    def unpin(self, object_id: ObjectId, holder: HolderId, count: int = 1) -> OpResult:
        """Drop ``count`` read pins; frees the object if a delete was waiting."""
        if count <= 0:
            raise ValueError(f"unpin count must be > 0, got {count}")
        record = self._records.get(object_id)
        if record is None:
            return OpResult(Status.NOT_FOUND)
        if record.state != SEALED:
            return OpResult(Status.WRONG_STATE)  # write pins go via seal/abort
        if record.pins.get(holder, 0) < count:
            return OpResult(Status.NOT_HOLDER)
        return OpResult(Status.OK, self._drop_pins(record, holder, count))

    def touch(self, object_id: ObjectId, now: int | None = None) -> bool:
        """Record an access without pinning (e.g. a copy-out get)."""
        record = self._records.get(object_id)
        if record is None:
            return False
        self._touch(record, now)
        return True

    # -- freeing --------------------------------------------------------------

    def delete(self, object_id: ObjectId) -> list[Freed]:
        """Free now if unpinned, else when the last pin goes. Returns what was
        freed now (empty if absent or deferred)."""
        record = self._records.get(object_id)
        if record is None:
            return []
        if record.pins:
            record.delete_pending = True
            return []
        return [self._free(record)]

    def release_holder(self, holder: HolderId) -> list[Freed]:
        """``holder`` (a process) died: drop its pins, abort its unfinished
        writes, and carry out the deletes they were holding back."""
        freed: list[Freed] = []
        for object_id in list(self._by_holder.get(holder, ())):
            record = self._records[object_id]
            if record.state == CREATED:
                self._remove_pins(record, holder)
                freed.append(self._free(record))
            else:
                freed.extend(self._drop_pins(record, holder, record.pins[holder]))
        assert holder not in self._by_holder
        return freed

    # -- queries ----------------------------------------------------------------

    def holdings(self, holder: HolderId) -> list[tuple[ObjectId, str, int]]:
        """``(object id, state, pins)`` of everything ``holder`` pins (write
        pins of unsealed objects included), for the shell to tell its tiering
        policy what a ``release_holder`` is about to release."""
        return [(oid, self._records[oid].state, self._records[oid].pins[holder])
                for oid in self._by_holder.get(holder, ())]

    def make_primary(self, object_id: ObjectId) -> None:
        """The copy here is the object's primary from now on."""
        record = self._records.get(object_id)
        if record is not None:
            record.primary = True

    def contains(self, object_id: ObjectId) -> bool:
        """True if the object is sealed and readable (not being deleted)."""
        record = self._records.get(object_id)
        return record is not None and record.state == SEALED and not record.delete_pending

    def get(self, object_id: ObjectId) -> ObjectInfo | None:
        record = self._records.get(object_id)
        return None if record is None else record.snapshot()

    def objects(self) -> Iterator[ObjectInfo]:
        for record in list(self._records.values()):
            yield record.snapshot()

    def lru_unpinned(self, limit: int) -> list[ObjectId]:
        """Up to ``limit`` sealed, unpinned, live ids, least recently used first
        (candidates for spilling to disk)."""
        candidates = (
            r for r in self._records.values() if r.state == SEALED and not r.pins and not r.delete_pending
        )
        oldest = heapq.nsmallest(limit, candidates, key=lambda r: (r.last_access, r.access_seq))
        return [r.object_id for r in oldest]

    def stats(self) -> dict[str, int]:
        return {
            "num_objects": len(self._records),
            "used_bytes": self._allocator.used_bytes,
            "capacity": self._allocator.capacity,
            "pinned_objects": sum(1 for r in self._records.values() if r.pins),
            "largest_free": self._allocator.largest_free_block,
            "delete_pending": sum(1 for r in self._records.values() if r.delete_pending),
        }

    def validate(self) -> None:
        """Assert every invariant of the table and its allocator."""
        allocator = self._allocator
        allocator.validate()
        assert allocator.num_allocations == len(self._records)
        holders_seen: dict[HolderId, set[ObjectId]] = {}
        for object_id, record in self._records.items():
            assert record.object_id == object_id
            assert 0 < record.access_seq <= self._access_seq
            reserved = allocator.size_of(record.offset)
            assert reserved is not None and reserved == allocator.reserved_size(record.size)
            assert record.state in (CREATED, SEALED)
            assert all(count > 0 for count in record.pins.values())
            if record.state == CREATED:
                assert record.pins == {record.creator: 1}, "only the writer pins an unsealed object"
            if record.delete_pending:
                assert record.pins, "a pending delete must be waiting on a pin"
            for holder in record.pins:
                holders_seen.setdefault(holder, set()).add(object_id)
        assert holders_seen == self._by_holder

    # -- internals --------------------------------------------------------------

    def _space(self) -> dict[str, int]:
        return {
            "capacity": self._allocator.capacity,
            "used": self._allocator.used_bytes,
            "largest_free": self._allocator.largest_free_block,
        }

    def _next_seq(self) -> int:
        self._access_seq += 1
        return self._access_seq

    def _touch(self, record: _Record, now: int | None) -> None:
        if now is not None:
            record.last_access = max(record.last_access, now)
        record.access_seq = self._next_seq()

    def _add_pin(self, record: _Record, holder: HolderId, count: int) -> None:
        record.pins[holder] = record.pins.get(holder, 0) + count
        self._by_holder.setdefault(holder, set()).add(record.object_id)

    def _remove_pins(self, record: _Record, holder: HolderId) -> None:
        del record.pins[holder]
        ids = self._by_holder[holder]
        ids.discard(record.object_id)
        if not ids:
            del self._by_holder[holder]

    def _drop_pins(self, record: _Record, holder: HolderId, count: int) -> tuple[Freed, ...]:
        """Drop pins; free the record if that was the last pin of a deleted object."""
        remaining = record.pins[holder] - count
        assert remaining >= 0
        if remaining:
            record.pins[holder] = remaining
        else:
            self._remove_pins(record, holder)
        if record.delete_pending and not record.pins:
            return (self._free(record),)
        return ()

    def _free(self, record: _Record) -> Freed:
        assert not record.pins
        del self._records[record.object_id]
        released = self._allocator.free(record.offset)
        return Freed(record.object_id, record.offset, record.size, released)
