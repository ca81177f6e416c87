"""The node daemon's device tier: the shell around ``DeviceTierPolicy``.

Device objects live in the worker process that made them (in GPU memory, or
in its own memory for an emulated GPU in CPU mode); the node only keeps the
books (``devstore/device_policy.py``) and tells holders what to do:
``DEVICE_SPILL`` (write a host copy through the ordinary host-tier create,
which may itself spill to disk) and ``DEVICE_DELETE`` (drop device copies).
A reader in another process asks for the object as for any stored one
(``STORE_PIN``, or a pull from another node): the host tier waits here until
the host copy exists (``when_host_ready``). A reader that holds the same GPU
maps the device copy instead (``import_for``: the holder exports it with
``DEVICE_EXPORT`` — CUDA IPC on a real GPU, a shared-memory segment this
node names, and unlinks, on an emulated one); its pin keeps the device copy
until its view is garbage. A GPU reader of an object moved down restores it
onto its own device (``create(..., restored=True)``).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import time

from . import protocol as P
from .devstore import device_policy as dp
from .devstore.arena import SHM_DIR
from .ids import short
from .transport import tcp

log = logging.getLogger("gdfut.node")

MOVE_TIMEOUT_S = 120.0      # one host copy written by a holder
EXPORT_TIMEOUT_S = 60.0     # a holder shares one device copy (a copy into shm when emulated)
EVACUATE_TIMEOUT_S = 30.0   # a holder about to exit: all its objects moved down
EMULATED_DEFAULT = 1 << 30  # per emulated GPU, at most (and half the host store)
REAL_GPU_FRACTION = 0.5     # of each GPU's memory, by default
LOG_RATE_BYTES = 64 << 20   # moves this large log their rate


def cpu_mode() -> bool:
    return os.environ.get("GDFUT_CPU_MODE", "") not in ("", "0")


def default_device_memory(num_gpus: float, gpu_memory_total: float, host_store: int) -> int:
    """``device_store_memory`` per GPU when not given: a fraction of each
    GPU's memory on real GPUs, on emulated ones (CPU mode, backed by host
    memory) at most 1 GiB and half the host store."""
    n = math.ceil(num_gpus or 0)
    if n and gpu_memory_total and not cpu_mode():
        return int(gpu_memory_total / n * REAL_GPU_FRACTION)
    return int(min(EMULATED_DEFAULT, host_store // 2))


class DeviceTier:
    def __init__(self, node, num_gpus: float, capacity_per_gpu: int):
        self.node = node
        gpus = range(math.ceil(num_gpus or 0))
        self.policy = dp.DeviceTierPolicy({g: capacity_per_gpu for g in gpus})
        self.creates: dict = {}            # req key -> (peer, req_id, owner)
        self.host_waiters: dict = {}       # oid -> [callback] waiting for a host copy
        self.evacuations: dict = {}        # holder -> future set once it holds nothing
        self.pins_of: dict = {}            # oid -> {process: pins} on its device copy
        self.segments: dict = {}           # oid -> shm name of its exported device copy
        self.imports = 0                   # device copies mapped by another process
        self.restores = 0                  # objects restored onto a device from host
        self._ids = 0

    # -- events from workers -------------------------------------------------
    def create(self, peer, req_id, oid, size, host_size, gpu, owner, restored=False) -> None:
        """A device object of ``size`` bytes whose host copy takes
        ``host_size``: one whose host copy could never be written (larger
        than the host tier) is refused: it takes the host path (a spill file
        of its own, or ObjectStoreFullError with the sizes) instead of being
        stuck on the device where no other process could read it.
        ``restored``: a GPU reader put an object it read through host memory
        onto its device; its host copy stays (moving it down again writes
        nothing)."""
        host_capacity = self.node.tiers.policy.capacity["host"]
        if restored:
            self._ids += 1
            key = ("device", self._ids)
            self.creates[key] = (peer, req_id, oid, self.node.object_owner.get(oid, owner), True)
            self.run(self.policy.create(key, oid, size, gpu, peer.wid, host_copy=True))
            return
        if host_size > host_capacity:
            peer.conn.reply(req_id, {"fallback": f"its host copy ({host_size} bytes) would not "
                                                 f"fit in the host tier ({host_capacity} bytes)"})
            return
        self._ids += 1
        key = ("device", self._ids)
        self.creates[key] = (peer, req_id, oid, owner, False)
        self.run(self.policy.create(key, oid, size, gpu, peer.wid))

    def pin(self, oid, holder) -> bool:
        loc = self.policy.location(oid)
        if loc is None or loc[1] != holder or not self.policy.pinned(oid):
            return False
        self._count_pin(oid, holder)
        return True

    def _count_pin(self, oid, process) -> None:
        pins = self.pins_of.setdefault(oid, {})
        pins[process] = pins.get(process, 0) + 1

    def unpin(self, pins, process) -> None:
        """``process`` let go of device copies (only pins it holds count)."""
        for oid, count in pins:
            held = self.pins_of.get(oid, {})
            n = min(count, held.get(process, 0))
            if not n:
                continue
            held[process] -= n
            if not held[process]:
                del held[process]
                if not held:
                    del self.pins_of[oid]
            self.run(self.policy.unpinned(oid, n))

    def release_pins(self, process) -> None:
        """A process went: its pins on device copies go (an importer's
        mapping died with it)."""
        for oid in [o for o, held in self.pins_of.items() if process in held]:
            self.unpin([(oid, self.pins_of[oid][process])], process)

    # -- readers on the same GPU (CUDA IPC / shared memory) ----------------------
    def importable(self, oid, gpus, reader) -> bool:
        """``reader`` (holding ``gpus``) can map the device copy itself: it is
        on one of its GPUs, held by another live process."""
        loc = self.policy.location(oid)
        if loc is None or loc[0] not in gpus or loc[1] == reader:
            return False
        peer = self.node.peers.get(loc[1])
        return peer is not None and not peer.closed

    def segment_name(self, oid) -> str:
        """The shared-memory segment an emulated GPU's exported device copy
        lives in (named by this node, under the session's prefix, so the
        node and the test helpers can find it)."""
        return f"{self.node.arena_name}-dev-{oid.hex()}"

    async def import_for(self, oid, reader):
        """The export of ``oid``'s device copy for ``reader``, pinned for it
        (``DEVICE_UNPIN`` when its view is garbage); None when it cannot
        have one (the reader then goes through the host tier)."""
        loc = self.policy.location(oid)
        peer = self.node.peers.get(loc[1]) if loc is not None else None
        if peer is None or peer.closed or not self.policy.pinned(oid):
            return None
        self._count_pin(oid, reader)
        name = self.segment_name(oid)
        try:
            reply = await asyncio.wait_for(peer.conn.request(P.DEVICE_EXPORT, oid, name),
                                           EXPORT_TIMEOUT_S)
        except (tcp.ConnectionLost, tcp.RemoteError, OSError, asyncio.TimeoutError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        if "shm" in reply:
            if self.policy.holds(oid) or self.pins_of.get(oid):
                self.segments[oid] = reply["shm"]
            else:                          # gone meanwhile (its holder died)
                _unlink(reply["shm"])
        if reply.get("error") or not self.policy.known(oid):
            log.warning("device object %s could not be shared with %s: %s", short(oid),
                        short(reader), reply.get("error", "its device copy is gone"))
            self.unpin([(oid, 1)], reader)
            return None
        self.imports += 1
        return reply

    def free(self, oid) -> None:
        self.run(self.policy.freed(oid))

    def source(self, oid):
        """[host, port] where the holder of ``oid``'s device copy serves
        device pulls over ucx (``device_transfer``), or None."""
        loc = self.policy.location(oid)
        peer = self.node.peers.get(loc[1]) if loc is not None else None
        if peer is None or peer.closed or not self.policy.holds(oid):
            return None
        return peer.device_addr

    def when_host_ready(self, oid, then) -> bool:
        """False when the host tier can serve ``oid`` now; else True, and
        ``then()`` runs once the host copy exists (or the device copy is gone,
        or its host copy could not be written: the pin finds nothing then)."""
        if self.policy.host_ready(oid):
            return False
        if self.policy.move_refused(oid):
            log.warning("device object %s has no host copy (writing it failed); a reader in "
                        "another process cannot have it", short(oid))
            return False
        self.host_waiters.setdefault(oid, []).append(then)
        self.run(self.policy.access(oid))
        return True

    async def evacuate(self, holder) -> None:
        """Move every object of ``holder`` down before it exits."""
        if not self.policy.objects_of(holder):
            return
        fut = self.evacuations.get(holder)
        if fut is None:
            fut = self.evacuations[holder] = asyncio.get_running_loop().create_future()
            self.run(self.policy.evacuate(holder))
            self._check_evacuated(holder)
        try:
            await asyncio.wait_for(asyncio.shield(fut), EVACUATE_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("worker %s: %d device objects not moved to host within %.0f s",
                        short(holder), len(self.policy.objects_of(holder)), EVACUATE_TIMEOUT_S)

    def holder_gone(self, holder) -> None:
        self.release_pins(holder)
        lost = self.policy.objects_of(holder)
        self.run(self.policy.holder_gone(holder))
        for oid in lost:
            self._forget(oid)
            self._wake(oid)
        self._check_evacuated(holder)

    def _forget(self, oid) -> None:
        """The device copy is gone: its exported segment's name goes (the
        mappings of readers stay valid until they drop them) and so do the
        pins counted on it."""
        if self.policy.known(oid):
            return
        name = self.segments.pop(oid, None)
        if name is not None:
            _unlink(name)
        self.pins_of.pop(oid, None)

    def close(self) -> None:
        """The node stops: no exported segment outlives it."""
        for name in self.segments.values():
            _unlink(name)
        self.segments.clear()

    # -- instructions ----------------------------------------------------------
    def run(self, instructions) -> None:
        for ins in instructions:
            kind = type(ins)
            if kind is dp.DevGrant:
                peer, req_id, oid, owner, restored = self.creates.pop(ins.req)
                self.node.note_owner(oid, owner)
                self.restores += restored
                if not peer.closed:
                    peer.conn.reply(req_id, {"ok": True})
            elif kind is dp.DevFail:
                peer, req_id, _, _, _ = self.creates.pop(ins.req)
                if not peer.closed:
                    peer.conn.reply(req_id, {"fallback": ins.message})
            elif kind is dp.MoveDown:
                self.node.tasks.spawn("device move", self.move_down(ins.oid, ins.holder))
            elif kind is dp.Delete:
                peer = self.node.peers.get(ins.holder)
                if peer is not None and not peer.closed:
                    peer.conn.send([P.DEVICE_DELETE, [ins.oid]])
                self._forget(ins.oid)
                self._wake(ins.oid)
                self._check_evacuated(ins.holder)
            else:
                raise AssertionError(f"unknown device tier instruction {ins!r}")

    async def move_down(self, oid, holder) -> None:
        peer = self.node.peers.get(holder)
        ok = False
        loc = self.policy.location(oid)
        if peer is not None and not peer.closed:
            try:
                t0 = time.perf_counter()
                reply = await asyncio.wait_for(peer.conn.request(P.DEVICE_SPILL, oid),
                                               MOVE_TIMEOUT_S)
                ok = bool(reply.get("ok"))
                if ok and loc is not None and loc[2] >= LOG_RATE_BYTES:
                    dt = time.perf_counter() - t0
                    log.info("moved device object %s (%d MiB, GPU %d) to host in %.3f s: "
                             "%.2f GB/s", short(oid), loc[2] >> 20, loc[0], dt,
                             loc[2] / max(dt, 1e-9) / 1e9)
                if not ok:
                    log.warning("moving device object %s to host failed: %s", short(oid),
                                reply.get("error"))
            except (tcp.ConnectionLost, tcp.RemoteError, OSError, asyncio.TimeoutError) as exc:
                log.warning("moving device object %s to host failed: %s", short(oid), exc)
        if not self.policy.known(oid):
            return                         # its holder died meanwhile: lost already
        freed = not self.policy.holds(oid)
        self.run(self.policy.move_done(oid) if ok else self.policy.move_failed(oid))
        if freed and ok:                   # freed while moving: free the new host copy too
            self.node.tiers.free(oid)
        self._wake(oid)
        self._check_evacuated(holder)

    def _wake(self, oid) -> None:
        """Readers waiting for a host copy: it exists, or the device copy is
        gone, or writing it failed (their pin finds no host copy then)."""
        if not self.policy.host_ready(oid) and self.policy.holds(oid) \
                and not self.policy.move_refused(oid):
            return
        for then in self.host_waiters.pop(oid, ()):
            then()

    def _check_evacuated(self, holder) -> None:
        fut = self.evacuations.get(holder)
        if fut is not None and not self.policy.objects_of(holder):
            del self.evacuations[holder]
            if not fut.done():
                fut.set_result(None)

    # -- reporting -------------------------------------------------------------
    def rows(self) -> list[dict]:
        return [{"object_id": oid, "size": size, "state": "SEALED", "pins": pins,
                 "primary": True, "tier": "device", "gpu": gpu}
                for oid, gpu, size, pins, _ in self.policy.rows()]

    def stats(self) -> dict:
        s = self.policy.stats()
        return {"device_bytes": sum(s["device_bytes"].values()),
                "device_capacity": sum(s["device_capacity"].values()),
                "device_bytes_per_gpu": {str(g): b for g, b in s["device_bytes"].items()},
                "device_capacity_per_gpu": {str(g): b for g, b in s["device_capacity"].items()},
                "device_objects": len(self.policy.rows()),
                "device_moves_in_flight": s["device_moves_in_flight"],
                "moved_down_objects": s["moved_down_objects"],
                "moved_down_bytes": s["moved_down_bytes"],
                "device_imports": self.imports, "device_restores": self.restores,
                "device_segments": len(self.segments)}


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        pass
