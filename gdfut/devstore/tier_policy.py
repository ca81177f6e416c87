"""Tiering policy of one node's object store: a pure state machine.

No I/O, threads or clocks. The node daemon (the shell) feeds it events — a
create asks for room, an object is sealed, pinned, unpinned, freed, a spill
or a restore finished — and carries out the instructions it answers:

* ``Grant(req)``: allocate the create's slot in the arena now;
* ``GrantDisk(req)``: the object is larger than the host tier: its writer
  writes it straight into a spill file of its own, and readers map it there
  (a *direct* disk object: never in host memory, never restored);
* ``Wait(req)``: the create is queued until room is made (answer later);
* ``Fail(req, message)``: the create can never fit (the message names the sizes);
* ``Spill(oid)``: copy a host object to disk (its host bytes stay counted
  until ``spill_done``);
* ``Evict(oid)``: drop a secondary copy (pulled from another node) from the
  host tier; it is not spilled, its primary lives elsewhere;
* ``Restore(oid)``: allocate a host slot for a spilled object and read it back;
* ``Delete(oid, tier)``: free the object's bytes in that tier.

Tiers, top down: ``device`` (GPU memory of the producing workers, a budget
per GPU, kept by ``device_policy.DeviceTierPolicy``: it moves objects into
``host`` through ordinary creates here), ``host`` (the node's shared-memory arena)
and ``disk`` (spill files). Decisions:

* least-recently-used unpinned sealed objects move down first (``now`` is a
  logical clock the shell passes in), those that move down without a write
  (a restored object whose disk copy is still valid, a secondary copy)
  before those that need one; nothing pinned, unsealed or with I/O in
  flight is ever spilled;
* room is made for the waiting requests (creates and restores, first come
  first served) with at most ``max_spills_in_flight`` spills at a time,
  counting bytes already being spilled, so a create waits for spills in
  flight instead of failing; spilling starts once the host tier is fuller
  than ``spill_threshold`` (0.8, as Ray's ``object_spilling_threshold``), so
  writers usually find room made ahead of them (while spilled data is read
  back, i.e. the last request was a restore, only clean copies are dropped
  ahead of need: a dirty object written out then would be one more to read);
* a pin of a spilled object restores it first (``access``), and the restore
  hands the waiting pins over atomically (``restore_done(oid, pins)``) so a
  restored object is never picked for spilling before its reader has it;
  the disk copy is kept, so moving a restored object down again is a
  ``Delete(oid, "host")`` without a write (as Ray keeps spilled copies);
* a create larger than the host tier goes straight to disk (``GrantDisk``)
  when the disk tier has room for it; a create fails at once only when the
  object is larger than all tiers together (or than the disk tier, since an
  object is never split, or the disk has no room left for it, or it is a
  pulled copy, which is never written to disk); one that cannot be served
  now, with nothing left to spill and no spill in flight, is reported
  ``Stuck`` once and fails only when the shell gives up on it
  (``give_up``), since pins may still be dropped.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Hashable

DEVICE = "device"   # the device tier: device_policy.py
HOST = "host"
DISK = "disk"

ObjectId = Hashable
RequestId = Hashable

_CREATING, _SEALED = "creating", "sealed"
_SPILLING, _RESTORING = "spilling", "restoring"


# -- instructions --------------------------------------------------------------

@dataclass(frozen=True)
class Grant:
    req: RequestId
    oid: ObjectId
    size: int
    extra: int = 0   # for alloc_failed


@dataclass(frozen=True)
class GrantDisk:
    req: RequestId
    oid: ObjectId
    size: int


@dataclass(frozen=True)
class Wait:
    req: RequestId
    oid: ObjectId
    size: int


@dataclass(frozen=True)
class Fail:
    req: RequestId
    oid: ObjectId
    message: str


@dataclass(frozen=True)
class Stuck:
    """Nothing can be spilled and nothing is in flight: the request waits for
    pins to go; the shell gives up on it after a while (``give_up``)."""
    req: RequestId


@dataclass(frozen=True)
class Spill:
    oid: ObjectId
    size: int


@dataclass(frozen=True)
class Evict:
    oid: ObjectId


@dataclass(frozen=True)
class Restore:
    oid: ObjectId
    size: int
    extra: int = 0   # for alloc_failed

    @property
    def req(self):
        return ("restore", self.oid)


@dataclass(frozen=True)
class Delete:
    oid: ObjectId
    tier: str


def _round_up(value: int, alignment: int) -> int:
    return max(alignment, (value + alignment - 1) // alignment * alignment)


@dataclass
class _Obj:
    oid: ObjectId
    size: int
    primary: bool
    last_access: int
    seq: int
    state: str = _CREATING
    on_host: bool = True
    on_disk: bool = False
    pins: int = 0
    freed: bool = False          # freed while I/O or pins were in the way
    spill_failed: bool = False   # never tried again: the disk refused it
    direct: bool = False         # larger than the host tier: lives on disk only


@dataclass
class _Request:
    """A create or a restore waiting for host room."""
    req: RequestId
    oid: ObjectId
    size: int
    restore: bool
    extra: int = 0       # more room asked after the arena had no contiguous block
    stuck: bool = False  # Stuck already reported


class TierPolicy:
    """Which objects live in which tier of one node, and what moves next."""

    def __init__(self, host_capacity: int, disk_capacity: int, *, host_alignment: int = 64,
                 disk_alignment: int = 4096, max_spills_in_flight: int = 8,
                 spill_threshold: float = 0.8) -> None:
        if host_capacity < 0 or disk_capacity < 0:
            raise ValueError(f"tier capacities must be >= 0, got host {host_capacity}, "
                             f"disk {disk_capacity}")
        if not 0 < spill_threshold <= 1:
            raise ValueError(f"spill_threshold must be in (0, 1], got {spill_threshold}")
        if max_spills_in_flight < 1:
            raise ValueError(f"max_spills_in_flight must be >= 1, got {max_spills_in_flight}")
        self.capacity = {HOST: host_capacity - host_capacity % host_alignment, DISK: disk_capacity}
        self.used = {HOST: 0, DISK: 0}
        self._align = {HOST: host_alignment, DISK: disk_alignment}
        self._max_spills = max_spills_in_flight
        self._threshold = int(self.capacity[HOST] * spill_threshold)
        self._objects: dict[ObjectId, _Obj] = {}
        # objects only in the host tier, least recently touched first (the
        # shell's clock is monotonic, so touch order is last-access order):
        # spill victims are found without sorting the table on every event
        self._host_lru: OrderedDict[ObjectId, _Obj] = OrderedDict()
        # the part of it that moves down without a write (a valid disk copy,
        # or a secondary copy): victims are taken from here first
        self._clean_lru: OrderedDict[ObjectId, _Obj] = OrderedDict()
        self._queue: deque[_Request] = deque()
        # creates still queued: oid -> (primary, last access, sequence)
        self._pending_meta: dict[ObjectId, tuple[bool, int, int]] = {}
        # the last request for host room was a restore: a node reading
        # spilled data back spills ahead of need (to the threshold) only what
        # moves down without a write (see _make_room)
        self._reading = False
        self._spilling = 0          # spills in flight
        self._spilling_bytes = 0    # host bytes they will give back
        self._seq = 0
        self.totals = {"spilled_objects": 0, "spilled_bytes": 0, "restored_objects": 0,
                       "restored_bytes": 0, "evicted_objects": 0}

    # -- queries ---------------------------------------------------------------

    def tier_of(self, oid: ObjectId) -> str | None:
        """Where a reader finds the object: ``host`` (readable in the arena),
        ``disk`` (spilled or being restored), None if unknown or freed."""
        obj = self._objects.get(oid)
        if obj is None or obj.freed:
            return None
        return HOST if obj.on_host and obj.state != _RESTORING else DISK

    def size_of(self, oid: ObjectId) -> int | None:
        obj = self._objects.get(oid)
        return None if obj is None or obj.freed else obj.size

    def make_primary(self, oid: ObjectId) -> list:
        """A secondary copy becomes the primary (a task's output written
        again found it here): from now on it is spilled, not evicted."""
        obj = self._objects.get(oid)
        if obj is not None and not obj.freed:
            obj.primary = True
            self._sync(obj)
        return []

    def reserved(self, size: int, tier: str) -> int:
        return _round_up(size, self._align[tier])

    def stats(self) -> dict[str, int]:
        return {"host_bytes": self.used[HOST], "disk_bytes": self.used[DISK],
                "host_capacity": self.capacity[HOST], "disk_capacity": self.capacity[DISK],
                "spills_in_flight": self._spilling, "waiting_requests": len(self._queue),
                **self.totals}

    # -- events ----------------------------------------------------------------

    def create(self, req: RequestId, oid: ObjectId, size: int, primary: bool = True,
               now: int = 0) -> list:
        """A writer asks for ``size`` host bytes for a new object."""
        if size < 0:
            raise ValueError(f"object size must be >= 0, got {size}")
        host_need = self.reserved(size, HOST)
        if oid in self._objects or any(r.oid == oid for r in self._queue):
            return [Fail(req, oid, f"object {oid!r} exists already")]
        if host_need > self.capacity[HOST]:
            return [self._create_on_disk(req, oid, size, primary, now)]
        self._queue.append(_Request(req, oid, size, restore=False, extra=0))
        self._reading = False
        self._seq += 1
        self._pending_meta[oid] = (primary, now, self._seq)
        out = self._progress()
        if not any(isinstance(i, Grant) and i.req == req for i in out) and \
                any(r.req == req for r in self._queue):
            out.insert(0, Wait(req, oid, size))
        return out

    def _create_on_disk(self, req, oid, size: int, primary: bool, now: int):
        """An object larger than the host tier: straight to a spill file."""
        host, disk = self.capacity[HOST], self.capacity[DISK]
        need = self.reserved(size, DISK)
        sizes = f"host {host} + disk {disk} bytes"
        if size > host + disk or need > disk:
            return Fail(req, oid, f"object of {size} bytes is larger than all tiers together "
                                  f"({sizes}; an object is never split between tiers)")
        if not primary:
            return Fail(req, oid, f"a copy of object of {size} bytes pulled from another node "
                                  f"is larger than the host tier ({host} bytes), and pulled "
                                  f"copies are not written to disk")
        if need > self._free(DISK):
            return Fail(req, oid, f"object of {size} bytes is larger than the host tier ({host} "
                                  f"bytes) and the disk tier has {self._free(DISK)} of {disk} "
                                  f"bytes free")
        self._seq += 1
        self._objects[oid] = _Obj(oid, size, primary, now, self._seq, on_host=False,
                                  on_disk=True, direct=True)
        self.used[DISK] += need
        return GrantDisk(req, oid, size)

    def is_direct(self, oid: ObjectId) -> bool:
        """Lives on disk only (larger than the host tier): readers map it."""
        obj = self._objects.get(oid)
        return obj is not None and obj.direct

    def alloc_failed(self, req: RequestId, oid: ObjectId, prior_extra: int = 0) -> list:
        """The shell's arena had no contiguous block for a granted create or
        restore (fragmentation): take the grant back and wait for more room
        than the object's own size. ``prior_extra``: what the last grant of
        this request asked on top (``Grant``/``Restore`` carry it)."""
        obj = self._objects[oid]
        restore = obj.state == _RESTORING
        self.used[HOST] -= self.reserved(obj.size, HOST)
        if restore:
            obj.state, obj.on_host = _SEALED, False
        else:
            del self._objects[oid]
            self._pending_meta[oid] = (obj.primary, obj.last_access, obj.seq)
        self._sync(obj)
        # ask for the object's size again on top, up to the whole tier
        need = self.reserved(obj.size, HOST)
        extra = min(self.capacity[HOST] - need, prior_extra + need)
        self._queue.appendleft(_Request(req, oid, obj.size, restore, extra=extra))
        return self._progress()

    def give_up(self, req: RequestId) -> list:
        """The shell's wait for a ``Stuck`` request ran out: fail it with the
        sizes if it is still stuck (no spill in flight), else ``Stuck`` again
        (ask later). A restore that fails this way fails its readers."""
        r = self._find(req)
        if r is None:
            return []
        if self._spilling:
            return [Stuck(req)]
        self._queue.remove(r)
        self._pending_meta.pop(r.oid, None)
        return [Fail(req, r.oid, self._full_message(r))] + self._progress()

    def cancel(self, req: RequestId) -> list:
        """The writer of a queued create went away."""
        r = self._find(req)
        if r is not None and not r.restore:
            self._queue.remove(r)
            self._pending_meta.pop(r.oid, None)
        return self._progress()

    def sealed(self, oid: ObjectId, now: int | None = None) -> list:
        obj = self._objects.get(oid)
        if obj is None:       # freed while written: the store drops it with its write pin
            return []
        assert obj.state == _CREATING, obj
        obj.state = _SEALED
        self._touch(obj, now)
        return self._progress()

    def pinned(self, oid: ObjectId, count: int = 1, now: int | None = None) -> None:
        """A reader pinned the (host-resident) object."""
        obj = self._objects[oid]
        assert (obj.on_host and obj.state != _RESTORING) or (obj.direct and obj.state == _SEALED), \
            f"pin of {oid!r} not in host memory"
        obj.pins += count
        self._touch(obj, now)

    def unpinned(self, oid: ObjectId, count: int = 1) -> list:
        obj = self._objects[oid]
        assert obj.pins >= count, (oid, obj.pins, count)
        obj.pins -= count
        if obj.freed and not obj.pins and obj.state not in (_SPILLING, _RESTORING):
            return self._remove(oid) + self._progress()
        return self._progress()

    def access(self, oid: ObjectId, now: int | None = None) -> list:
        """A reader wants the object: restore it if it is on disk."""
        obj = self._objects.get(oid)
        if obj is None or obj.freed:
            return []
        self._touch(obj, now)
        if obj.on_host or obj.direct or any(r.oid == oid for r in self._queue):
            return []
        self._queue.append(_Request(("restore", oid), oid, obj.size, restore=True))
        self._reading = True
        return self._progress()

    def freed(self, oid: ObjectId) -> list:
        """The owner freed the object (or its writer aborted): delete it from
        every tier, once no I/O or pin is in the way."""
        obj = self._objects.get(oid)
        if obj is None:
            return []
        obj.freed = True
        if obj.pins or obj.state in (_SPILLING, _RESTORING):
            return []
        for r in list(self._queue):
            if r.oid == oid:
                self._queue.remove(r)
        return self._remove(oid) + self._progress()

    def spill_done(self, oid: ObjectId) -> list:
        obj = self._objects[oid]
        assert obj.state == _SPILLING
        self._end_spill(obj)
        obj.state = _SEALED
        self.totals["spilled_objects"] += 1
        self.totals["spilled_bytes"] += obj.size
        if obj.freed and not obj.pins:
            return self._remove(oid) + self._progress()
        if obj.pins or obj.freed:    # pinned while it was written: keep it in memory too
            self._sync(obj)
            return self._progress()
        return self._drop(obj, oid, HOST) + self._progress()

    def spill_failed(self, oid: ObjectId) -> list:
        obj = self._objects[oid]
        assert obj.state == _SPILLING
        self._end_spill(obj)
        obj.state, obj.spill_failed = _SEALED, True
        out = self._drop(obj, oid, DISK)
        self._sync(obj)
        if obj.freed and not obj.pins:
            out += self._remove(oid)
        return out + self._progress()

    def restore_done(self, oid: ObjectId, pins: int = 0) -> list:
        """The bytes are back in the host slot; ``pins`` waiting readers take
        their pins at the same moment."""
        obj = self._objects[oid]
        assert obj.state == _RESTORING
        obj.state = _SEALED
        obj.pins += pins
        self.totals["restored_objects"] += 1
        self.totals["restored_bytes"] += obj.size
        # the disk copy stays: moving the object down again costs no write
        self._sync(obj)
        out = self._remove(oid) if obj.freed and not obj.pins else []
        return out + self._progress()

    def restore_failed(self, oid: ObjectId) -> list:
        """The spill file could not be read: the object is lost here."""
        obj = self._objects[oid]
        assert obj.state == _RESTORING
        obj.state = _SEALED
        obj.freed = True
        return self._remove(oid) + self._progress()

    # -- internals ---------------------------------------------------------------

    def _find(self, req: RequestId) -> _Request | None:
        return next((r for r in self._queue if r.req == req), None)

    def _touch(self, obj: _Obj, now: int | None) -> None:
        if now is not None:
            obj.last_access = max(obj.last_access, now)
        self._seq += 1
        obj.seq = self._seq
        if obj.oid in self._host_lru:
            self._host_lru.move_to_end(obj.oid)
        if obj.oid in self._clean_lru:
            self._clean_lru.move_to_end(obj.oid)

    def _sync(self, obj: _Obj) -> None:
        """Keep ``_host_lru`` = the live objects readable in the host tier
        (those with a disk copy too are dropped from memory without a write)."""
        if obj.on_host and obj.state != _RESTORING and not obj.spill_failed \
                and self._objects.get(obj.oid) is obj:
            if obj.oid not in self._host_lru:
                self._host_lru[obj.oid] = obj
            clean = obj.on_disk or not obj.primary
            if clean and obj.oid not in self._clean_lru:
                # order among the clean ones: as in _host_lru (a restored
                # object is touched when its reader pins it)
                self._clean_lru[obj.oid] = obj
            elif not clean:
                self._clean_lru.pop(obj.oid, None)
        else:
            self._host_lru.pop(obj.oid, None)
            self._clean_lru.pop(obj.oid, None)

    def _free(self, tier: str) -> int:
        return self.capacity[tier] - self.used[tier]

    def _end_spill(self, obj: _Obj) -> None:
        self._spilling -= 1
        self._spilling_bytes -= self.reserved(obj.size, HOST)

    def _drop(self, obj: _Obj, oid: ObjectId, tier: str) -> list:
        if tier == HOST:
            assert obj.on_host and not obj.pins, "a pinned object is never moved off the host"
            obj.on_host = False
        else:
            assert obj.on_disk
            obj.on_disk = False
        self.used[tier] -= self.reserved(obj.size, tier)
        self._sync(obj)
        return [Delete(oid, tier)]

    def _remove(self, oid: ObjectId) -> list:
        obj = self._objects.pop(oid)
        self._host_lru.pop(oid, None)
        self._clean_lru.pop(oid, None)
        out = []
        for tier, present in ((HOST, obj.on_host), (DISK, obj.on_disk)):
            if present:
                self.used[tier] -= self.reserved(obj.size, tier)
                out.append(Delete(oid, tier))
        return out

    def _progress(self) -> list:
        """Grant what fits, then make room for what waits; repeat while
        evictions free room at once."""
        out: list = []
        while True:
            out += self._grant_waiting()
            made = self._make_room()
            out += made
            if not any(isinstance(i, (Evict, Delete)) for i in made):
                break
        if not self._spilling:
            for r in self._queue:
                if not r.stuck:
                    r.stuck = True
                    out.append(Stuck(r.req))
        else:
            for r in self._queue:
                r.stuck = False
        return out

    def _grant_waiting(self) -> list:
        out = []
        while self._queue:
            r = self._queue[0]
            if self.reserved(r.size, HOST) + r.extra > self._free(HOST):
                break
            self._queue.popleft()
            self.used[HOST] += self.reserved(r.size, HOST)
            if r.restore:
                obj = self._objects[r.oid]
                obj.state, obj.on_host = _RESTORING, True
                self._sync(obj)
                out.append(Restore(r.oid, r.size, r.extra))
            else:
                primary, now, seq = self._pending_meta.pop(r.oid)
                obj = self._objects[r.oid] = _Obj(r.oid, r.size, primary, now, seq)
                self._sync(obj)
                out.append(Grant(r.req, r.oid, r.size, r.extra))
        return out

    def _make_room(self) -> list:
        # host bytes that would be in use once the waiting requests got theirs
        # and the spills in flight ended
        pending = sum(self.reserved(r.size, HOST) + r.extra for r in self._queue) \
            + self.used[HOST] - self._spilling_bytes
        # room is made down to the threshold, so writers find it made ahead
        # of them; but while spilled data is read back (the last request
        # was a restore) only clean copies go ahead of need: a dirty
        # object written out now would be one more to read back (a sequential
        # read of spilled data spilled the unread objects it was about to read)
        deficit = pending - self._threshold
        dirty_deficit = pending - (self.capacity[HOST] if self._reading else self._threshold)
        if deficit <= 0:
            return []
        out = []
        for oid, obj in self._victims(deficit, dirty_deficit):
            host = self.reserved(obj.size, HOST)
            if obj.on_disk:            # restored earlier: its disk copy is still there
                out += self._drop(obj, oid, HOST)
            elif not obj.primary:
                self._objects.pop(oid)
                self._host_lru.pop(oid)
                self._clean_lru.pop(oid)
                self.used[HOST] -= host
                self.totals["evicted_objects"] += 1
                out.append(Evict(oid))
            else:
                obj.state, obj.on_disk = _SPILLING, True
                self._sync(obj)
                self.used[DISK] += self.reserved(obj.size, DISK)
                self._spilling += 1
                self._spilling_bytes += host
                out.append(Spill(oid, obj.size))
        return out

    def _victims(self, deficit: int, dirty_deficit: int | None = None) -> list:
        """Movable objects covering ``deficit`` bytes: first the least
        recently used of those that move down without a write (a restored
        object whose disk copy is still valid, a secondary copy), then, up to
        ``dirty_deficit`` bytes (default ``deficit``), the least recently used
        of the others, as far as spill slots and disk room allow. Dropping a
        clean copy costs no I/O now and at most a read later; spilling a dirty
        one costs a write now, on the path of the request that waits (a
        sequential read of spilled data would otherwise write the unread
        objects out to make room for the read ones)."""
        if dirty_deficit is None:
            dirty_deficit = deficit
        picked, freed = [], 0
        for oid, obj in self._clean_lru.items():
            if freed >= deficit:
                return picked
            if obj.state != _SEALED or obj.pins or obj.freed:
                continue
            picked.append((oid, obj))
            freed += self.reserved(obj.size, HOST)
        slots = self._max_spills - self._spilling
        disk_free = self._free(DISK)
        for oid, obj in self._host_lru.items():
            if freed >= dirty_deficit or slots == 0:
                break
            if obj.state != _SEALED or obj.pins or obj.freed or oid in self._clean_lru:
                continue
            disk = self.reserved(obj.size, DISK)
            if disk > disk_free:
                continue
            slots -= 1
            disk_free -= disk
            picked.append((oid, obj))
            freed += self.reserved(obj.size, HOST)
        return picked

    def _full_message(self, r: _Request) -> str:
        pinned = sum(self.reserved(o.size, HOST) for o in self._objects.values()
                     if o.on_host and (o.pins or o.state != _SEALED))
        return (f"object of {r.size} bytes does not fit in the host tier (capacity "
                f"{self.capacity[HOST]} bytes, {self.used[HOST]} in use, {pinned} of them pinned "
                f"or being written) and nothing more can be spilled (disk tier "
                f"{self.used[DISK]} of {self.capacity[DISK]} bytes in use)")

    def validate(self) -> None:
        """Assert every invariant."""
        used = {HOST: 0, DISK: 0}
        spilling = spilling_bytes = 0
        for oid, obj in self._objects.items():
            assert obj.pins >= 0
            if obj.on_host:
                used[HOST] += self.reserved(obj.size, HOST)
            if obj.on_disk:
                used[DISK] += self.reserved(obj.size, DISK)
            assert obj.on_host or obj.on_disk, f"{oid!r} is in no tier"
            if obj.direct:
                assert not obj.on_host and obj.on_disk and obj.state in (_CREATING, _SEALED)
                assert not obj.pins or obj.state == _SEALED, f"pinned {oid!r} is being written"
            elif obj.pins:
                assert obj.on_host and obj.state not in (_CREATING, _RESTORING), \
                    f"pinned {oid!r} is not readable in host memory"
            if obj.state == _SPILLING:
                assert obj.on_host and obj.on_disk
                spilling += 1
                spilling_bytes += self.reserved(obj.size, HOST)
            if obj.state == _RESTORING:
                assert obj.on_host and obj.on_disk
            if obj.state == _CREATING and not obj.direct:
                assert obj.on_host and not obj.on_disk
        assert used == self.used, (used, self.used)
        for tier in (HOST, DISK):
            assert 0 <= self.used[tier] <= self.capacity[tier], (tier, self.used, self.capacity)
        assert (spilling, spilling_bytes) == (self._spilling, self._spilling_bytes)
        assert self._spilling <= self._max_spills
        queued = [r.oid for r in self._queue]
        assert len(queued) == len(set(queued))
        for r in self._queue:
            if r.restore:
                obj = self._objects[r.oid]
                assert not obj.on_host and obj.on_disk and obj.state == _SEALED
            else:
                assert r.oid not in self._objects and r.oid in self._pending_meta
        assert set(self._pending_meta) == {r.oid for r in self._queue if not r.restore}
        assert set(self._host_lru) == {oid for oid, o in self._objects.items()
                                       if o.on_host and o.state != _RESTORING
                                       and not o.spill_failed}
        assert all(self._objects[oid] is o for oid, o in self._host_lru.items())
        assert set(self._clean_lru) == {oid for oid, o in self._host_lru.items()
                                        if o.on_disk or not o.primary}
