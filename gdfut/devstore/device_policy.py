"""Device tier of one node's object store: a pure state machine.

The device tier holds objects in the (real or emulated) GPU memory of the
worker process that made them, with a byte budget per GPU
(``device_store_memory``). It sits above the host tier: an object moves down
by writing a host copy (the host tier's ``TierPolicy`` then decides, as for
any host object, whether it goes on to disk). No I/O, threads or clocks: the
node (``node_device.DeviceTier``) feeds events and carries out instructions.

Instructions:

* ``DevGrant(req)``: the create fits; the object is on the device now;
* ``DevFail(req, message)``: the object does not fit on this device (larger
  than its budget, or nothing left to move down): the writer stores it in
  the host tier instead, so a device create never fails a task;
* ``MoveDown(oid, holder)``: the holder writes a host copy of the object;
* ``Delete(oid, "device")``: the holder drops its device copy.

Decisions:

* least-recently-used unpinned objects move down first when a create needs
  room; nothing pinned is dropped from the device (a pin taken while a
  move is in flight keeps the device copy: the host copy is written anyway);
* an object that already has a host copy leaves the device without a write;
* a reader in another process (``access``) gets a host copy written without
  dropping the device copy (the producer may still use it);
* a holder that exits (``evacuate``) moves all its objects down first, and
  from then on its creates are refused (they take the host tier: a copy made
  during the evacuation would be moved by nobody); one that dies
  (``holder_gone``) loses them (the owner rebuilds them). Pins do
  not hold an exiting holder's copies (its memory goes with its process),
  but they stay counted: a reader that mapped a copy unpins it later, and
  no new pin is granted on a copy that is going;
* pins count the holder's own readers and readers in other processes that
  map the device copy (CUDA IPC, or a shared-memory segment of an emulated
  GPU): a free of a pinned object drops the device copy only once the last
  pin goes, so no importer ever maps freed memory;
* an object restored onto a device (a GPU reader of an object that was
  moved down, ``create(..., host_copy=True)``) already has its host copy:
  it leaves the device again without a write.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Hashable

DEVICE = "device"

ObjectId = Hashable
RequestId = Hashable


@dataclass(frozen=True)
class DevGrant:
    req: RequestId
    oid: ObjectId


@dataclass(frozen=True)
class DevFail:
    req: RequestId
    oid: ObjectId
    message: str


@dataclass(frozen=True)
class MoveDown:
    oid: ObjectId
    holder: Hashable


@dataclass(frozen=True)
class Delete:
    oid: ObjectId
    holder: Hashable
    tier: str = DEVICE


@dataclass
class _DevObj:
    oid: ObjectId
    gpu: int
    holder: Hashable
    size: int
    pins: int = 0
    moving: bool = False        # a host copy is being written
    drop_after: bool = False    # drop the device copy once the host copy exists
    host_copy: bool = False     # a host copy exists
    move_failed: bool = False   # never picked again: the host refused it
    freed: bool = False         # freed while a move was in flight
    evacuating: bool = False    # its holder exits: the device copy goes, pinned or not


@dataclass
class _Req:
    req: RequestId
    oid: ObjectId
    size: int
    holder: Hashable
    host_copy: bool = False


class DeviceTierPolicy:
    """Which objects live on which device, and which move down next."""

    def __init__(self, capacities: dict[int, int], max_moves_in_flight: int = 4) -> None:
        for gpu, cap in capacities.items():
            if cap < 0:
                raise ValueError(f"device_store_memory must be >= 0, got {cap} for GPU {gpu}")
        if max_moves_in_flight < 1:
            raise ValueError(f"max_moves_in_flight must be >= 1, got {max_moves_in_flight}")
        self.capacity = dict(capacities)
        self.used = {gpu: 0 for gpu in capacities}
        self._max_moves = max_moves_in_flight
        self._moves = {gpu: 0 for gpu in capacities}        # moves in flight
        self._dropping = {gpu: 0 for gpu in capacities}     # bytes those moves give back
        # per GPU, objects least recently touched first
        self._lru: dict[int, OrderedDict] = {gpu: OrderedDict() for gpu in capacities}
        self._objects: dict[ObjectId, _DevObj] = {}
        self._queue: dict[int, deque] = {gpu: deque() for gpu in capacities}
        # holders evacuated (about to exit) and not gone yet: a create from one
        # is refused (one entry per live holder; ``holder_gone`` drops it)
        self._exiting: set = set()
        self.totals = {"moved_down_objects": 0, "moved_down_bytes": 0}

    # -- queries ---------------------------------------------------------------

    def holds(self, oid: ObjectId) -> bool:
        """The device copy exists (the holder can serve the object itself)."""
        obj = self._objects.get(oid)
        return obj is not None and not obj.freed

    def known(self, oid: ObjectId) -> bool:
        """Tracked here (a freed object stays until its move ends)."""
        return oid in self._objects

    def host_ready(self, oid: ObjectId) -> bool:
        """A reader in another process can read the object's host copy now
        (or the device tier has nothing to do with it)."""
        obj = self._objects.get(oid)
        return obj is None or obj.host_copy

    def move_refused(self, oid: ObjectId) -> bool:
        """Writing its host copy failed: not tried again."""
        obj = self._objects.get(oid)
        return obj is not None and obj.move_failed and not obj.moving

    def location(self, oid: ObjectId):
        obj = self._objects.get(oid)
        return None if obj is None or obj.freed else (obj.gpu, obj.holder, obj.size)

    def objects_of(self, holder) -> list:
        return [o.oid for o in self._objects.values() if o.holder == holder]

    def rows(self) -> list[tuple]:
        """(oid, gpu, size, pins, holder) of every device copy."""
        return [(o.oid, o.gpu, o.size, o.pins, o.holder) for o in self._objects.values()
                if not o.freed]

    def stats(self) -> dict:
        return {"device_bytes": dict(self.used), "device_capacity": dict(self.capacity),
                "device_moves_in_flight": sum(self._moves.values()), **self.totals}

    # -- events ----------------------------------------------------------------

    def create(self, req: RequestId, oid: ObjectId, size: int, gpu: int, holder,
               host_copy: bool = False) -> list:
        """The holder made an object of ``size`` device bytes on ``gpu``
        (``host_copy``: restored onto the device from its host copy, which
        stays)."""
        if size < 0:
            raise ValueError(f"object size must be >= 0, got {size}")
        if gpu not in self.capacity:
            return [DevFail(req, oid, f"GPU {gpu} is not a device of this node "
                                      f"(devices {sorted(self.capacity)})")]
        if size > self.capacity[gpu]:
            return [DevFail(req, oid, f"object of {size} bytes is larger than the device tier "
                                      f"of GPU {gpu} ({self.capacity[gpu]} bytes)")]
        if oid in self._objects or any(r.oid == oid for q in self._queue.values() for r in q):
            return [DevFail(req, oid, f"object {oid!r} is on a device already")]
        if holder in self._exiting:
            # its evacuation has begun (the node kills it once that ends): a copy
            # granted now would not be moved down, so the evacuation would wait for
            # it until its timeout, and nobody would free it meanwhile
            return [DevFail(req, oid, "its holder is exiting")]
        self._queue[gpu].append(_Req(req, oid, size, holder, host_copy))
        return self._progress(gpu)

    def pinned(self, oid: ObjectId, count: int = 1) -> bool:
        """The holder uses its device copy (a task's argument): True when the
        copy exists. A pin during a move keeps the device copy."""
        obj = self._objects.get(oid)
        if obj is None or obj.freed or obj.evacuating:
            return False
        obj.pins += count
        if obj.drop_after:
            obj.drop_after = False
            self._dropping[obj.gpu] -= obj.size
        self._touch(obj)
        return True

    def unpinned(self, oid: ObjectId, count: int = 1) -> list:
        obj = self._objects.get(oid)
        if obj is None:
            return []
        assert obj.pins >= count, (oid, obj.pins, count)
        obj.pins -= count
        if obj.freed and not obj.pins and not obj.moving:     # a deferred free
            return self._remove(obj) + self._progress(obj.gpu)
        return self._progress(obj.gpu)

    def access(self, oid: ObjectId) -> list:
        """A reader in another process needs a host copy."""
        obj = self._objects.get(oid)
        if obj is None or obj.freed or obj.host_copy or obj.moving or obj.move_failed:
            return []
        self._touch(obj)     # readers bound these moves (not max_moves_in_flight)
        return [self._start_move(obj, drop=False, limit=False)]

    def move_done(self, oid: ObjectId) -> list:
        obj = self._objects[oid]
        assert obj.moving
        self._end_move(obj)
        obj.host_copy = True
        self.totals["moved_down_objects"] += 1
        self.totals["moved_down_bytes"] += obj.size
        if (obj.freed or obj.drop_after) and (not obj.pins or obj.evacuating):
            return self._remove(obj) + self._progress(obj.gpu)
        obj.drop_after = False
        return self._progress(obj.gpu)

    def move_failed(self, oid: ObjectId) -> list:
        obj = self._objects[oid]
        assert obj.moving
        self._end_move(obj)
        obj.move_failed, obj.drop_after = True, False
        self._lru[obj.gpu].pop(oid, None)
        if obj.freed and not obj.pins:
            return self._remove(obj) + self._progress(obj.gpu)
        return self._progress(obj.gpu)

    def freed(self, oid: ObjectId) -> list:
        """The owner freed the object: drop the device copy (after a move in
        flight, which the shell then frees on the host too; after the last
        pin, so nothing reading it loses its memory)."""
        for q in self._queue.values():
            for r in list(q):
                if r.oid == oid:
                    q.remove(r)
        obj = self._objects.get(oid)
        if obj is None or obj.freed:
            return []
        obj.freed = True
        self._lru[obj.gpu].pop(oid, None)
        if obj.moving or obj.pins:
            return []
        return self._remove(obj) + self._progress(obj.gpu)

    def evacuate(self, holder) -> list:
        """The holder is about to exit: every object of it moves down, pinned
        or not (its device memory ends with it); those with a host copy just
        leave. Pins stay counted, so readers that mapped a copy can still
        unpin it while its move is in flight."""
        self._exiting.add(holder)
        out: list = []
        gpus = set()
        for gpu, q in self._queue.items():      # not granted yet: the host tier instead
            for r in [r for r in q if r.holder == holder]:
                q.remove(r)
                gpus.add(gpu)
                out.append(DevFail(r.req, r.oid, "its holder is exiting"))
        for obj in [o for o in self._objects.values() if o.holder == holder]:
            gpus.add(obj.gpu)
            obj.evacuating = True
            if obj.moving:
                if not obj.drop_after:
                    obj.drop_after = True
                    self._dropping[obj.gpu] += obj.size
            elif obj.host_copy or obj.move_failed or obj.freed:
                out += self._remove(obj)
            else:
                out.append(self._start_move(obj, drop=True, limit=False))
        for gpu in gpus:
            out += self._progress(gpu)
        return out

    def holder_gone(self, holder) -> list:
        """The holder died: its device copies are gone (no instruction for
        them); its queued creates go too."""
        self._exiting.discard(holder)
        gpus = set()
        for obj in [o for o in self._objects.values() if o.holder == holder]:
            gpus.add(obj.gpu)
            if obj.moving:
                self._end_move(obj)
            self._objects.pop(obj.oid)
            self._lru[obj.gpu].pop(obj.oid, None)
            self.used[obj.gpu] -= obj.size
        for gpu, q in self._queue.items():
            for r in [r for r in q if r.holder == holder]:
                q.remove(r)
                gpus.add(gpu)
        out: list = []
        for gpu in gpus:
            out += self._progress(gpu)
        return out

    # -- internals ---------------------------------------------------------------

    def _touch(self, obj: _DevObj) -> None:
        lru = self._lru[obj.gpu]
        if obj.oid in lru:
            lru.move_to_end(obj.oid)

    def _start_move(self, obj: _DevObj, drop: bool, limit: bool = True) -> MoveDown:
        assert not obj.moving and not obj.host_copy
        assert not limit or self._moves[obj.gpu] < self._max_moves
        obj.moving, obj.drop_after = True, drop
        self._moves[obj.gpu] += 1
        if drop:
            self._dropping[obj.gpu] += obj.size
        return MoveDown(obj.oid, obj.holder)

    def _end_move(self, obj: _DevObj) -> None:
        obj.moving = False
        self._moves[obj.gpu] -= 1
        if obj.drop_after:
            self._dropping[obj.gpu] -= obj.size

    def _remove(self, obj: _DevObj) -> list:
        self._objects.pop(obj.oid)
        self._lru[obj.gpu].pop(obj.oid, None)
        self.used[obj.gpu] -= obj.size
        return [Delete(obj.oid, obj.holder)]

    def _free(self, gpu: int) -> int:
        return self.capacity[gpu] - self.used[gpu]

    def _progress(self, gpu: int) -> list:
        """Grant what fits (first come first served), move objects down for
        what waits; fail what can never be served now (the writer uses the
        host tier instead of waiting on pins)."""
        out: list = []
        q = self._queue[gpu]
        while True:
            while q and q[0].size <= self._free(gpu):
                r = q.popleft()
                self.used[gpu] += r.size
                obj = self._objects[r.oid] = _DevObj(r.oid, gpu, r.holder, r.size,
                                                     host_copy=r.host_copy)
                self._lru[gpu][r.oid] = obj
                out.append(DevGrant(r.req, r.oid))
            if not q:
                return out
            made = self._make_room(gpu)
            out += made
            if any(isinstance(i, Delete) for i in made):
                continue                  # room made at once: grant again
            if self._moves[gpu] == 0:     # nothing will give bytes back
                r = q.popleft()
                out.append(DevFail(r.req, r.oid, self._full_message(r, gpu)))
                continue
            return out

    def _make_room(self, gpu: int) -> list:
        deficit = sum(r.size for r in self._queue[gpu]) + self.used[gpu] \
            - self._dropping[gpu] - self.capacity[gpu]
        out: list = []
        for oid, obj in list(self._lru[gpu].items()):
            if deficit <= 0:
                break
            if obj.pins or obj.moving or obj.move_failed or obj.freed:
                continue
            if obj.host_copy:
                out += self._remove(obj)
            elif self._moves[gpu] < self._max_moves:
                out.append(self._start_move(obj, drop=True))
            else:
                continue
            deficit -= obj.size
        return out

    def _full_message(self, r: _Req, gpu: int) -> str:
        pinned = sum(o.size for o in self._objects.values() if o.gpu == gpu and o.pins)
        return (f"object of {r.size} bytes does not fit in the device tier of GPU {gpu} "
                f"(capacity {self.capacity[gpu]} bytes, {self.used[gpu]} in use, {pinned} of "
                f"them pinned) and nothing more can move down")

    def validate(self) -> None:
        """Assert every invariant."""
        used = {gpu: 0 for gpu in self.capacity}
        moves = {gpu: 0 for gpu in self.capacity}
        dropping = {gpu: 0 for gpu in self.capacity}
        for oid, obj in self._objects.items():
            used[obj.gpu] += obj.size
            assert obj.pins >= 0
            if obj.moving:
                moves[obj.gpu] += 1
                assert not obj.host_copy
                if obj.drop_after:
                    dropping[obj.gpu] += obj.size
            else:
                assert not obj.drop_after
            in_lru = oid in self._lru[obj.gpu]
            assert in_lru == (not obj.freed and not obj.move_failed), (oid, obj)
        assert used == self.used, (used, self.used)
        assert moves == self._moves and dropping == self._dropping
        assert not any(r.holder in self._exiting for q in self._queue.values() for r in q)
        for gpu in self.capacity:
            assert 0 <= self.used[gpu] <= self.capacity[gpu], (gpu, self.used, self.capacity)
            assert all(oid in self._objects for oid in self._lru[gpu])
