"""The node daemon's tiered object store: the shell around ``TierPolicy``.

It feeds the policy (``devstore/tier_policy.py``) every store event of the
node — creates, seals, pins, unpins, frees, finished spills and restores —
and carries out what it answers on the host tier (``HostStoreState`` over the
arena) and the disk tier (``DiskStore``): a create that does not fit waits
(its answer comes later) while unpinned objects are spilled, a pin of a
spilled object restores it first, and a free deletes the object from every
tier. All pins of readers go through here so the policy knows what is in
use; the spill and restore I/O hold pins of their own in the host table only.

The device tier (``node_device.DeviceTier``, objects in the memory of the
worker that made them) sits above: a reader of a device object here waits
until its holder wrote a host copy, and a free reaches the device tier too.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Callable

from .devstore import tier_policy as tp
from .devstore.disk_store import DiskStore
from .devstore.host_store import CREATED, HostStoreState
from .ids import short

log = logging.getLogger("gdfut.node")

# A create or restore that nothing can make room for (everything pinned or
# being written) waits this long for pins to go before it fails.
STUCK_TIMEOUT_S = 5.0
SPILL_HOLDER = ("tiers", "spill")
RESTORE_HOLDER = ("tiers", "restore")


@dataclass
class _Create:
    oid: bytes
    size: int
    primary: bool
    holder: object
    done: Callable      # done(offset, None) or done(None, message)


class TieredStore:
    def __init__(self, node, store: HostStoreState, disk: DiskStore):
        self.node = node
        self.store = store
        self.disk = disk
        self.policy = tp.TierPolicy(store.stats()["capacity"], disk.capacity())
        self.creates: dict[tuple, _Create] = {}
        self.pin_waiters: dict[bytes, list] = {}   # oid -> [(holder, alive, done)] during restore
        self.stuck_armed: set = set()
        self.device = None          # node_device.DeviceTier, set by the node
        # objects larger than the host tier, in a spill file of their own:
        # oid -> (path, offset, size); their writer; readers' pins
        self.direct: dict[bytes, tuple] = {}
        self.direct_writers: dict[bytes, object] = {}
        self.direct_pins: dict[tuple, int] = {}
        self._ids = 0

    # -- events from the node --------------------------------------------------
    def create(self, oid, size, primary, holder, done) -> tuple:
        """Ask for a slot; ``done`` is called now or once room was made."""
        self._ids += 1
        key = ("create", self._ids)
        self.creates[key] = _Create(oid, size, primary, holder, done)
        self.run(self.policy.create(key, oid, size, primary, now=self.node.tick()))
        return key

    def cancel_create(self, key) -> None:
        """The writer stopped waiting for a queued create."""
        if self.creates.pop(key, None) is not None:
            self.run(self.policy.cancel(key))

    def cancel_creates_of(self, holder) -> None:
        for key, c in list(self.creates.items()):
            if c.holder == holder:
                self.cancel_create(key)

    def seal(self, oid, holder) -> bool:
        if oid in self.direct_writers:
            if self.direct_writers[oid] != holder:
                return False
            del self.direct_writers[oid]
            self.run(self.policy.sealed(oid, self.node.tick()))
            return True
        res = self.store.seal(oid, holder)
        if res.ok:
            self.run(self.policy.sealed(oid, self.node.tick()))
        return res.ok

    def abort(self, oid, holder) -> None:
        if self.direct_writers.get(oid) == holder:
            del self.direct_writers[oid]
            self.run(self.policy.freed(oid))
            return
        if self.store.abort(oid, holder).ok:
            self.run(self.policy.freed(oid))

    def make_primary(self, oid) -> None:
        """A copy here becomes the object's primary (spilled, not evicted)."""
        self.store.make_primary(oid)
        self.policy.make_primary(oid)

    def free(self, oid) -> None:
        if self.device is not None:
            self.device.free(oid)
        self.run(self.policy.freed(oid))
        if self.policy.tier_of(oid) is None:     # readers waiting for its restore
            for _, _, done in self.pin_waiters.pop(oid, ()):
                done(None)

    def pin(self, oid, holder):
        """Pin a host-resident object now: (offset, size), or None; an object
        that lives in a spill file of its own: (path, offset, size)."""
        if oid in self.direct:
            return self._pin_direct(oid, holder)
        if self.policy.tier_of(oid) != tp.HOST:
            return None
        now = self.node.tick()
        loc = self.store.pin(oid, holder, now=now)
        if loc is not None:
            self.policy.pinned(oid, now=now)
        return loc

    def pin_or_restore(self, oid, holder, alive: Callable[[], bool], done: Callable) -> None:
        """Pin, restoring the object from disk first if it was spilled;
        ``done(loc or None)`` once known. A device object gets its host copy
        written by its holder first."""
        if self.device is not None and self.device.when_host_ready(
                oid, lambda: self.pin_or_restore(oid, holder, alive, done)):
            return
        if self.policy.tier_of(oid) == tp.DISK and oid not in self.direct:
            self.pin_waiters.setdefault(oid, []).append((holder, alive, done))
            self.run(self.policy.access(oid, now=self.node.tick()))
            return
        done(self.pin(oid, holder))

    async def pin_async(self, oid, holder):
        fut = asyncio.get_running_loop().create_future()
        self.pin_or_restore(oid, holder, lambda: not fut.done(),
                            lambda loc: fut.done() or fut.set_result(loc))
        return await fut

    def _pin_direct(self, oid, holder):
        if oid in self.direct_writers or self.policy.tier_of(oid) is None:
            return None                    # being written, or freed
        self.policy.pinned(oid, now=self.node.tick())
        key = (oid, holder)
        self.direct_pins[key] = self.direct_pins.get(key, 0) + 1
        return self.direct[oid]

    def disk_pins(self, oid) -> int:
        """Readers' pins of an object that lives in a spill file (0 for a
        spilled one: it is read after a restore, pinned in host memory)."""
        return sum(n for (o, _), n in self.direct_pins.items() if o == oid)

    def unpin(self, oid, holder, count=1) -> None:
        key = (oid, holder)
        if key in self.direct_pins:
            count = min(count, self.direct_pins[key])
            self.direct_pins[key] -= count
            if not self.direct_pins[key]:
                del self.direct_pins[key]
            self.run(self.policy.unpinned(oid, count))
            return
        if self.store.unpin(oid, holder, count).ok:
            self.run(self.policy.unpinned(oid, count))

    def release_holder(self, holder) -> None:
        """A process (or a transfer) went: its pins and unfinished writes go."""
        self.cancel_creates_of(holder)
        for oid in [o for o, h in self.direct_writers.items() if h == holder]:
            self.abort(oid, holder)
        for (oid, h), count in list(self.direct_pins.items()):
            if h == holder:
                self.unpin(oid, holder, count)
        holdings = self.store.holdings(holder)
        self.store.release_holder(holder)
        for oid, state, count in holdings:
            self.run(self.policy.freed(oid) if state == CREATED
                     else self.policy.unpinned(oid, count))

    def stats(self) -> dict:
        s = self.policy.stats()
        device = self.device.stats() if self.device is not None else {}
        return {**device, "host_bytes": s["host_bytes"], "disk_bytes": s["disk_bytes"],
                "host_capacity": s["host_capacity"], "disk_capacity": s["disk_capacity"],
                "disk_file_bytes": self.disk.disk_bytes(),
                "peak_disk_file_bytes": self.disk.stats["peak_file_bytes"], "spill_dir": self.disk.path,
                "spills_in_flight": s["spills_in_flight"], "waiting": s["waiting_requests"],
                "spilled_objects": s["spilled_objects"], "spilled_bytes": s["spilled_bytes"],
                "restored_objects": s["restored_objects"], "restored_bytes": s["restored_bytes"],
                "evicted_objects": s["evicted_objects"],
                "write_busy_s": self.disk.stats["write_busy_s"],
                "read_busy_s": self.disk.stats["read_busy_s"]}

    # -- instructions ------------------------------------------------------------
    def run(self, instructions) -> None:
        for ins in instructions:
            kind = type(ins)
            if kind is tp.Grant:
                self.grant(ins)
            elif kind is tp.GrantDisk:
                self.grant_disk(ins)
            elif kind is tp.Fail:
                self.fail(ins)
            elif kind is tp.Spill:
                self.node.tasks.spawn("spill", self.spill(ins.oid))
            elif kind is tp.Restore:
                self.restore(ins)
            elif kind is tp.Evict:
                self.store.delete(ins.oid)
            elif kind is tp.Delete:
                if ins.tier == tp.HOST:
                    self.store.delete(ins.oid)
                else:
                    self.direct.pop(ins.oid, None)
                    self.disk.delete(ins.oid)
            elif kind is tp.Stuck:
                self.arm_stuck(ins.req)
            elif kind is not tp.Wait:
                raise AssertionError(f"unknown tier instruction {ins!r}")

    def grant(self, ins: tp.Grant) -> None:
        c = self.creates.pop(ins.req)
        res = self.store.create(c.oid, c.size, c.holder, primary=c.primary, now=self.node.tick())
        if not res.ok:       # no contiguous block although the bytes add up
            self.creates[ins.req] = c
            self.run(self.policy.alloc_failed(ins.req, c.oid, ins.extra))
            return
        self.node.arena.note_allocation(res.offset, c.size)
        c.done(res.offset, None)

    def grant_disk(self, ins: tp.GrantDisk) -> None:
        """An object larger than the host tier: its writer writes it into a
        spill file of its own (``done((path, offset), None)``)."""
        c = self.creates.pop(ins.req)
        try:
            path, offset = self.disk.reserve(c.oid, c.size)
        except OSError as exc:
            self.run(self.policy.freed(c.oid))
            c.done(None, f"object of {c.size} bytes is larger than the host tier and its spill "
                         f"file could not be made in {self.disk.path}: {exc}")
            return
        self.direct[c.oid] = (path, offset, c.size)
        self.direct_writers[c.oid] = c.holder
        log.info("object %s of %d bytes is larger than the host tier: written to %s",
                 short(c.oid), c.size, path)
        c.done((path, offset), None)

    def fail(self, ins: tp.Fail) -> None:
        c = self.creates.pop(ins.req, None)
        if c is not None:
            # the disk tier is what the spill directory's filesystem has free:
            # say where it is, a full disk is the usual reason
            c.done(None, f"{ins.message}; the disk tier is the free space under the spill "
                         f"directory {self.disk.spill_dir}")
            return
        log.warning("restore of %s given up: %s", short(ins.oid), ins.message)
        for _, _, done in self.pin_waiters.pop(ins.oid, ()):
            done(None)

    def arm_stuck(self, req) -> None:
        if req in self.stuck_armed:
            return
        self.stuck_armed.add(req)

        def expired():
            self.stuck_armed.discard(req)
            self.run(self.policy.give_up(req))
        asyncio.get_running_loop().call_later(STUCK_TIMEOUT_S, expired)

    async def spill(self, oid) -> None:
        loc = self.store.pin(oid, SPILL_HOLDER)
        if loc is None:        # a bug: the policy and the host table disagree
            log.error("spill of %s, which the host table cannot pin", short(oid))
            self.run(self.policy.spill_failed(oid))
            return
        try:
            await self.disk.spill(oid, self.node.arena.view(*loc))
        except Exception as exc:
            log.error("spilling %s (%d bytes) to %s failed: %s", short(oid), loc[1],
                      self.disk.path, exc)
            self.store.unpin(oid, SPILL_HOLDER)
            self.run(self.policy.spill_failed(oid))
            return
        self.store.unpin(oid, SPILL_HOLDER)
        self.run(self.policy.spill_done(oid))

    def restore(self, ins: tp.Restore) -> None:
        res = self.store.create(ins.oid, ins.size, RESTORE_HOLDER, primary=True,
                                now=self.node.tick())
        if not res.ok:
            self.run(self.policy.alloc_failed(ins.req, ins.oid, ins.extra))
            return
        self.node.arena.note_allocation(res.offset, ins.size)
        self.node.tasks.spawn("restore", self._restore(ins.oid, res.offset, ins.size))

    async def _restore(self, oid, offset, size) -> None:
        try:
            await self.disk.restore(oid, self.node.arena.view(offset, size))
        except Exception as exc:
            log.error("restoring %s (%d bytes) from %s failed: %s", short(oid), size,
                      self.disk.path, exc)
            self.store.abort(oid, RESTORE_HOLDER)
            self.run(self.policy.restore_failed(oid))
            for _, _, done in self.pin_waiters.pop(oid, ()):
                done(None)
            return
        self.store.seal(oid, RESTORE_HOLDER)
        waiters = [w for w in self.pin_waiters.pop(oid, ()) if w[1]()]
        self.run(self.policy.restore_done(oid, pins=len(waiters)))
        for holder, _, done in waiters:   # their pins were counted by restore_done
            done(self.store.pin(oid, holder, now=self.node.tick()))

    def close(self) -> None:
        self.disk.close()


def log_totals(tiers: TieredStore) -> None:
    s = tiers.policy.totals
    if s["spilled_objects"]:
        log.info("tiers: spilled %d objects (%d bytes), restored %d (%d bytes)",
                 s["spilled_objects"], s["spilled_bytes"], s["restored_objects"],
                 s["restored_bytes"])

