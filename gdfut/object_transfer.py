"""Node-to-node object transfer (data plane), pull-based.

A node that needs an object (a local process asked for it) pulls it from a
node holding a copy, in chunks, straight into a slot of its own store: at most
one transfer per object per node (later requests wait for the one in flight)
and a bound on the bytes in flight per node. The copy is *secondary*: the
store may evict it when space runs short; the primary stays where it was made
until its owner frees it.

The serving side pins the object for the duration of each chunk, so a free
that races a transfer is deferred by the store, never torn.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

from .ids import short
from .transport.base import get_backend

log = logging.getLogger("gdfut.transfer")

CHUNK_BYTES = 64 * 1024 * 1024
MAX_BYTES_IN_FLIGHT = 256 * 1024 * 1024     # per node, across all pulls
ENDPOINTS_PER_PEER = 2                      # parallel streams to one source node
PULL = "pull"
DEVICE_SOURCE = "device_src"                # where a device object's holder serves (ucx)
LOG_PULLS_FROM_BYTES = 64 * 1024 * 1024     # pulls this large are logged with their rate


class ByteBudget:
    """A semaphore counted in bytes (asyncio), bounding data in flight."""

    def __init__(self, limit: int):
        assert limit > 0
        self.limit = limit
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> int:
        n = min(n, self.limit)          # one chunk larger than the budget still goes alone
        async with self._cond:
            while self.used + n > self.limit:
                await self._cond.wait()
            self.used += n
        return n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            assert self.used >= 0
            self._cond.notify_all()


class TransferError(Exception):
    pass


class ObjectTransfer:
    """The node's data-plane server and puller."""

    def __init__(self, node, backend_name: str):
        self.node = node
        self.backend = get_backend(backend_name)
        self.backend_name = backend_name
        self.listener = None
        self.inflight: dict[bytes, asyncio.Future] = {}
        self.budget = ByteBudget(MAX_BYTES_IN_FLIGHT)
        self.pools: dict[tuple, asyncio.Queue] = {}
        self._serve_ids = itertools.count(1)
        self.stats = {"pulls": 0, "pulled_bytes": 0, "served_bytes": 0, "failed_pulls": 0}

    async def start(self, host: str) -> tuple:
        self.listener = await self.backend.listen(host, 0, self.node.token, self.serve)
        return tuple(self.listener.address)

    async def close(self):
        for pool in self.pools.values():
            while not pool.empty():
                ep = pool.get_nowait()
                if ep is not None:
                    await ep.close()
        if self.listener is not None:
            await self.listener.close()

    # ------------------------------------------------------------- serving
    async def serve(self, ep) -> None:
        holder = ("transfer", next(self._serve_ids))
        arena = self.node.arena
        try:
            while True:
                msg = await ep.recv_frame()
                if msg and msg[0] == DEVICE_SOURCE and len(msg) == 2 and isinstance(msg[1], bytes):
                    await ep.send_frame([DEVICE_SOURCE, self.node.device.source(msg[1])])
                    continue
                if not msg or msg[0] != PULL:
                    log.warning("bad data-plane request %r", msg[:1] if msg else msg)
                    return
                _, oid, offset, length = msg
                loc = await self.node.tiers.pin_async(oid, holder)   # restored if spilled
                if loc is None:
                    await ep.send_frame(["missing", 0])
                    continue
                try:
                    start, size = loc[-2:]
                    length = max(0, min(length, size - offset))
                    await ep.send_frame(["ok", size, length])
                    if length and len(loc) == 3:   # lives in a spill file of its own
                        await ep.send_buffer(memoryview(await asyncio.to_thread(
                            _read_file, loc[0], start + offset, length)))
                    elif length:
                        await ep.send_buffer(arena.view(start + offset, length))
                    self.stats["served_bytes"] += length
                finally:
                    self.node.tiers.unpin(oid, holder)
        except (ConnectionError, asyncio.IncompleteReadError, EOFError, OSError):
            return
        finally:
            self.node.tiers.release_holder(holder)

    # -------------------------------------------------------------- pulling
    async def pull(self, oid: bytes, size: int, source_addr: tuple) -> None:
        """Make ``oid`` present (sealed) in this node's store."""
        if self.node.store.contains(oid):
            return
        fut = self.inflight.get(oid)
        if fut is not None:
            await asyncio.shield(fut)
            return
        fut = asyncio.get_running_loop().create_future()
        self.inflight[oid] = fut
        try:
            await self._pull(oid, size, tuple(source_addr))
            fut.set_result(None)
        except BaseException as exc:
            self.stats["failed_pulls"] += 1
            fut.set_exception(exc)
            fut.exception()       # retrieved: waiters re-raise it themselves
            raise
        finally:
            del self.inflight[oid]

    async def _pull(self, oid, size, source_addr):
        node = self.node
        t0 = time.perf_counter()
        offset = await node.create_secondary(oid, size)
        holder = node.transfer_holder
        try:
            await self._receive(oid, size, source_addr, offset)
        except BaseException:
            node.tiers.abort(oid, holder)
            raise
        node.tiers.seal(oid, holder)
        self.stats["pulls"] += 1
        self.stats["pulled_bytes"] += size
        secs = time.perf_counter() - t0
        if size >= LOG_PULLS_FROM_BYTES:
            log.info("pulled %s (%d bytes) from %s in %.1f ms: %.2f GB/s", short(oid), size,
                     source_addr, secs * 1e3, size / secs / 1e9)

    async def _receive(self, oid, size, source_addr, offset):
        """Chunks move on up to ENDPOINTS_PER_PEER streams at once, so one
        stream's request/reply gap overlaps another's bytes."""
        chunks = [(pos, min(CHUNK_BYTES, size - pos)) for pos in range(0, size, CHUNK_BYTES)]
        chunks = chunks or [(0, 0)]
        next_chunk = iter(chunks)

        async def stream():
            for pos, want in next_chunk:      # shared iterator: each chunk taken once
                await self._receive_chunk(oid, size, source_addr, offset, pos, want)

        streams = [asyncio.ensure_future(stream())
                   for _ in range(min(ENDPOINTS_PER_PEER, len(chunks)))]
        try:
            await asyncio.gather(*streams)
        except BaseException:
            for t in streams:
                t.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
            raise

    async def _receive_chunk(self, oid, size, source_addr, offset, pos, want):
        granted = await self.budget.acquire(max(want, 1))
        try:
            ep = await self._endpoint(source_addr)
            try:
                await ep.send_frame([PULL, oid, pos, want])
                reply = await ep.recv_frame()
                if reply[0] != "ok":
                    raise TransferError(f"object {short(oid)} is not on node {source_addr}")
                if reply[1] != size or reply[2] != want:
                    raise TransferError(f"object {short(oid)}: node {source_addr} has "
                                        f"{reply[1]} bytes, sent {reply[2]} of chunk at {pos}; "
                                        f"expected {size} and {want}")
                if want:
                    await ep.recv_into(self.node.arena.view(offset + pos, want))
            except BaseException:
                await ep.close()
                self._give_back(source_addr, None)
                raise
            self._give_back(source_addr, ep)
        finally:
            await self.budget.release(granted)

    async def device_source(self, oid: bytes, source_addr: tuple):
        """Ask the node at ``source_addr`` where the holder of ``oid``'s
        device copy serves device pulls: [host, port] or None."""
        ep = await self._endpoint(source_addr)
        try:
            await ep.send_frame([DEVICE_SOURCE, oid])
            reply = await ep.recv_frame()
        except BaseException:
            await ep.close()
            self._give_back(source_addr, None)
            raise
        self._give_back(source_addr, ep)
        if len(reply) != 2 or reply[0] != DEVICE_SOURCE:
            raise TransferError(f"bad device source reply {reply!r:.80}")
        return reply[1]

    async def _endpoint(self, addr):
        pool = self.pools.get(addr)
        if pool is None:
            pool = self.pools[addr] = asyncio.Queue()
            for _ in range(ENDPOINTS_PER_PEER):
                pool.put_nowait(None)      # a slot: connect lazily
        ep = await pool.get()
        if ep is None:
            try:
                ep = await self.backend.connect(addr, self.node.token)
            except BaseException:
                pool.put_nowait(None)
                raise
        return ep

    def _give_back(self, addr, ep):
        self.pools[addr].put_nowait(ep)


def _read_file(path: str, offset: int, length: int) -> bytes:
    """Bytes of an object that lives in a spill file (larger than the host tier)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        parts, done = [], 0
        while done < length:
            part = os.pread(fd, length - done, offset + done)
            if not part:
                raise OSError(f"{path} ends before byte {offset + length}")
            parts.append(part)
            done += len(part)
        return b"".join(parts) if len(parts) > 1 else parts[0]
    finally:
        os.close(fd)
