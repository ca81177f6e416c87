"""Disk tier of one node: spill files under ``spill_dir``.

``SpillLayout`` (pure) decides where each spilled object goes: small objects
are fused into files of at most ``max_file_bytes`` (256 MiB), appended at
4 KiB-aligned offsets, and an object at least that large gets a file of its
own. Space is reclaimed per object: freeing one punches a hole over its
blocks (``fallocate(FALLOC_FL_PUNCH_HOLE)``), a file whose last object goes is
deleted, and where the filesystem cannot punch holes a file whose live bytes
fall under half its length is compacted (its live objects are copied to the
current file). Disk use therefore stays bounded by the live data plus one
partly filled file (ray#60097: one live object pinning a whole fused file).

``DiskStore`` is the I/O shell: it owns the node's directory
``<spill_dir>/gdfut-<session>-<node>/`` (held by an ``flock`` on its ``lock``
file while the node lives, so a directory whose lock can be taken belongs to
a dead node and is removed at start), and runs ``os.pwrite``/``os.preadv``
between arena memoryviews and the files in a bounded thread pool, several
objects in flight, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("gdfut.disk_store")

MAX_FILE_BYTES = 256 * 1024 * 1024
ALIGNMENT = 4096
IO_THREADS = 4
LOG_SPILLS_FROM_BYTES = 64 * 1024 * 1024   # spills and restores this large log their rate
COMPACT_BELOW = 0.5                        # live fraction under which a file is compacted
DIR_PREFIX = "gdfut-"
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02


def _round_up(value: int, alignment: int = ALIGNMENT) -> int:
    return max(alignment, (value + alignment - 1) // alignment * alignment)


@dataclass(frozen=True)
class Place:
    file_no: int
    offset: int
    size: int


@dataclass
class _File:
    end: int = 0                  # bytes placed (aligned)
    live: int = 0                 # aligned bytes of live objects
    objects: set = field(default_factory=set)


class SpillLayout:
    """Which file and offset each spilled object has; when files go."""

    def __init__(self, max_file_bytes: int = MAX_FILE_BYTES, alignment: int = ALIGNMENT,
                 streams: int = 1) -> None:
        if max_file_bytes < alignment:
            raise ValueError(f"max_file_bytes must be >= {alignment}, got {max_file_bytes}")
        if streams < 1:
            raise ValueError(f"streams must be >= 1, got {streams}")
        self.max_file_bytes = max_file_bytes
        self.alignment = alignment
        self.files: dict[int, _File] = {}
        self.places: dict = {}
        # files small objects are appended to, one per stream: writes to one
        # file are serialized by the filesystem (the inode lock), so spills in
        # flight at once go to different files
        self.currents: list[int | None] = [None] * streams
        self._turn = 0
        self._next_file = 0

    @property
    def current(self) -> int | None:
        """The file the next small object goes to (if it fits there)."""
        return self.currents[self._turn]

    def place(self, oid, size: int, alone: bool = False) -> Place:
        """Where ``oid`` goes; ``alone``: in a file of its own (an object
        mapped by its readers, so never moved by compaction)."""
        if oid in self.places:
            raise ValueError(f"object {oid!r} is spilled already")
        need = _round_up(size, self.alignment)
        if need >= self.max_file_bytes or alone:
            file_no = self._new_file()           # a large object: a file of its own
        else:
            self._turn = (self._turn + 1) % len(self.currents)
            cur = self.files.get(self.current) if self.current is not None else None
            if cur is None or cur.end + need > self.max_file_bytes:
                self.currents[self._turn] = self._new_file()
            file_no = self.current
        f = self.files[file_no]
        where = Place(file_no, f.end, size)
        f.end += need
        f.live += need
        f.objects.add(oid)
        self.places[oid] = where
        return where

    def remove(self, oid) -> tuple[Place, bool]:
        """Forget ``oid``; True when its file holds nothing live any more
        (the shell deletes it)."""
        where = self.places.pop(oid)
        f = self.files[where.file_no]
        f.live -= _round_up(where.size, self.alignment)
        f.objects.discard(oid)
        if f.objects:
            return where, False
        del self.files[where.file_no]
        self.currents = [None if n == where.file_no else n for n in self.currents]
        return where, True

    def move(self, oid, size: int) -> tuple[Place, Place, bool]:
        """Compaction: a new place for ``oid`` in the current file; returns
        (old, new, old file now empty)."""
        old, empty = self.remove(oid)
        return old, self.place(oid, size), empty

    def sparse_candidates(self, below: float = COMPACT_BELOW) -> list[int]:
        """Files, other than the one being appended to, whose live bytes fell
        under ``below`` of their length."""
        return [n for n, f in self.files.items()
                if n not in self.currents and f.end and f.live < below * f.end]

    def live_bytes(self) -> int:
        return sum(f.live for f in self.files.values())

    def _new_file(self) -> int:
        self._next_file += 1
        self.files[self._next_file] = _File()
        return self._next_file


def _libc_fallocate():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


_fallocate = _libc_fallocate()


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Give the blocks of ``[offset, offset + length)`` back to the
    filesystem; False where it cannot (then compaction reclaims them)."""
    if _fallocate is None:
        return False
    if _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, f"fallocate(PUNCH_HOLE) failed: {os.strerror(err)}")


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done, total = 0, len(view)
    while done < total:
        done += os.pwrite(fd, view[done:], offset + done)


def _pread_all(fd: int, view: memoryview, offset: int) -> None:
    done, total = 0, len(view)
    while done < total:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            raise OSError(errno.EIO, f"spill file ends early at {offset + done}")
        done += got


def remove_dead_node_dirs(spill_dir: str) -> list[str]:
    """Delete the spill directories of nodes that are gone (their lock can be
    taken); returns the paths removed."""
    removed = []
    try:
        names = os.listdir(spill_dir)
    except FileNotFoundError:
        return removed
    for name in names:
        path = os.path.join(spill_dir, name)
        if not name.startswith(DIR_PREFIX) or not os.path.isdir(path):
            continue
        try:
            fd = os.open(os.path.join(path, "lock"), os.O_RDWR)
        except FileNotFoundError:
            fd = None      # never locked (a node that died while starting), or half removed
        except OSError:
            continue
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue       # its node is alive
        finally:
            if fd is not None:
                os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


SPILL_CAPACITY_ENV = "GDFUT_SPILL_CAPACITY"


class DiskStore:
    """Spill files of one node, written and read by a bounded thread pool."""

    def __init__(self, spill_dir: str, name: str, *, max_file_bytes: int = MAX_FILE_BYTES,
                 io_threads: int = IO_THREADS) -> None:
        self.spill_dir = spill_dir
        for path in remove_dead_node_dirs(spill_dir):
            log.info("removed the spill directory of a dead node: %s", path)
        self.path = os.path.join(spill_dir, DIR_PREFIX + name)
        self._lock_fd: int | None = None     # the directory is made at the first spill
        self._closed = False
        self.layout = SpillLayout(max_file_bytes, streams=io_threads)
        self._fds: dict[int, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="gdfut-spill")
        # hole punches get a thread of their own: a slow punch must not hold
        # an I/O thread a restore is waiting for
        self._punch_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gdfut-punch")
        self._io_on: dict[int, int] = {}     # file -> reads/writes in flight on it
        self._doomed: set[int] = set()       # emptied files waiting for their I/O to end
        self.can_punch = True
        self._moving: dict = {}              # oid -> its compaction copy in flight
        self._compacting: set[int] = set()
        self._punches: set = set()           # hole punches in flight (futures)
        self.stats = {"written_bytes": 0, "read_bytes": 0, "punched_bytes": 0,
                      "files_deleted": 0, "compactions": 0, "write_busy_s": 0.0,
                      "read_busy_s": 0.0, "peak_file_bytes": 0}
        # time with at least one write (read) in flight: the tier's own rate
        # is bytes over busy time, whatever else the node was waiting for
        self._busy = {"write": [0, 0.0], "read": [0, 0.0]}    # kind -> [in flight, since]

    def capacity(self) -> int:
        """Bytes the disk tier may use: the free space of its filesystem now,
        less 5% so the disk is never filled to the last block, and at most
        ``GDFUT_SPILL_CAPACITY`` bytes where that is set (a quota)."""
        probe = self.spill_dir
        while not os.path.isdir(probe):          # not made yet: its nearest parent
            probe = os.path.dirname(probe) or "."
        free = int(shutil.disk_usage(probe).free * 0.95)
        quota = os.environ.get(SPILL_CAPACITY_ENV, "").strip()
        if not quota:
            return free
        try:
            return min(free, max(0, int(quota)))
        except ValueError:
            raise ValueError(f"{SPILL_CAPACITY_ENV} must be a number of bytes, "
                             f"got {quota!r}") from None

    def disk_bytes(self) -> int:
        """Bytes the spill files take on disk (allocated blocks)."""
        total = 0
        for fd in list(self._fds.values()):
            try:
                total += os.fstat(fd).st_blocks * 512
            except OSError:
                pass
        return total

    async def spill(self, oid, view: memoryview) -> None:
        """Write ``view`` (an arena slot) to a spill file, off the loop."""
        where = self.layout.place(oid, len(view))
        t0 = time.perf_counter()
        try:
            with self._timing("write"):
                await self._run_io(where.file_no, _pwrite_all, view, where.offset)
        except BaseException:
            self._forget(oid)
            raise
        self.stats["written_bytes"] += len(view)
        # the high-water of disk use, seen after every write (where it grows):
        # a sampler polling disk_bytes() misses files that live under a second
        self.stats["peak_file_bytes"] = max(self.stats["peak_file_bytes"], self.disk_bytes())
        self._log_rate("spilled", oid, len(view), t0)

    async def restore(self, oid, view: memoryview) -> None:
        """Read ``oid`` back into ``view`` (a fresh arena slot), off the loop."""
        moving = self._moving.get(oid)
        if moving is not None:
            await asyncio.shield(moving)
        where = self.layout.places[oid]
        if len(view) != where.size:
            raise ValueError(f"restore of {where.size} bytes into a slot of {len(view)}")
        t0 = time.perf_counter()
        with self._timing("read"):
            await self._run_io(where.file_no, _pread_all, view, where.offset)
        self.stats["read_bytes"] += len(view)
        self._log_rate("restored", oid, len(view), t0)

    def reserve(self, oid, size: int) -> tuple[str, int]:
        """A file of its own for an object written and read in place (larger
        than the host tier): (path, offset), the file already ``size`` long."""
        where = self.layout.place(oid, size, alone=True)
        try:
            fd = self._fd(where.file_no)
            os.ftruncate(fd, where.offset + size)
        except BaseException:
            self._forget(oid)
            raise
        return self._file_path(where.file_no), where.offset

    def delete(self, oid) -> None:
        """Free ``oid``'s blocks now: punch a hole, or delete its file when it
        was the last live object; compact sparse files where holes cannot be
        punched."""
        if oid not in self.layout.places:
            return
        self._forget(oid)
        self._compact_sparse()

    async def punches_done(self) -> None:
        """Wait until the hole punches issued so far have ended."""
        while self._punches:
            await asyncio.gather(*list(self._punches), return_exceptions=True)

    def _compact_sparse(self) -> None:
        if self.can_punch:
            return
        for file_no in self.layout.sparse_candidates():
            if file_no not in self._compacting:
                self._compacting.add(file_no)
                asyncio.get_running_loop().create_task(self._compact(file_no))

    def close(self) -> None:
        """The node stops: every spill file and the directory go."""
        if self._closed:
            return
        self._closed = True
        self._punch_pool.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        try:
            os.rmdir(self.spill_dir)       # only if nothing else lives there
        except OSError:
            pass

    # -- internals -------------------------------------------------------------

    @contextlib.contextmanager
    def _timing(self, kind: str):
        busy = self._busy[kind]
        if busy[0] == 0:
            busy[1] = time.perf_counter()
        busy[0] += 1
        try:
            yield
        finally:
            busy[0] -= 1
            if busy[0] == 0:
                self.stats[f"{kind}_busy_s"] += time.perf_counter() - busy[1]

    def _forget(self, oid) -> None:
        where, empty = self.layout.remove(oid)
        if empty:
            self._drop_file(where.file_no)
        else:
            self._punch(where)

    def _punch(self, where: Place) -> None:
        """Free the object's blocks in the I/O pool, off the event loop: a
        punch waits for the range's writeback and, on a filesystem mounted
        with ``discard``, for the device (measured here: 0.4-4 ms per MiB, up
        to 110 ms for one call), which stalled every store request of the
        node. Safe to defer: offsets are never reused (files are append-only)
        and the file stays open while the punch is in flight (``_io_on``)."""
        fd = self._fds.get(where.file_no)
        if fd is None or not self.can_punch:
            return
        length = _round_up(where.size, self.layout.alignment)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:                # no loop (a synchronous caller): punch here
            self._punched(length, punch_hole(fd, where.offset, length))
            return
        self._io_on[where.file_no] = self._io_on.get(where.file_no, 0) + 1
        fut = loop.run_in_executor(self._punch_pool, punch_hole, fd, where.offset, length)
        self._punches.add(fut)
        fut.add_done_callback(lambda f: self._punch_ended(f, where.file_no, length))

    def _punch_ended(self, fut, file_no: int, length: int) -> None:
        self._punches.discard(fut)
        self._end_io(file_no)
        if fut.cancelled():                 # the store closed
            return
        ok = fut.exception() is None and bool(fut.result())
        self._punched(length, ok)
        if not ok:
            self._compact_sparse()

    def _punched(self, length: int, ok: bool) -> None:
        if ok:
            self.stats["punched_bytes"] += length
        elif self.can_punch:
            self.can_punch = False
            log.warning("%s cannot punch holes: spill files are compacted instead", self.path)

    def _drop_file(self, file_no: int) -> None:
        if self._io_on.get(file_no):
            self._doomed.add(file_no)      # deleted when its I/O ends
            return
        fd = self._fds.pop(file_no, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self._file_path(file_no))
            self.stats["files_deleted"] += 1
        except FileNotFoundError:
            pass

    def _file_path(self, file_no: int) -> str:
        return os.path.join(self.path, f"spill-{file_no:06d}.bin")

    def _own_directory(self) -> None:
        """Make the node's directory and hold its lock (first spill only, so
        a node that never spills leaves nothing behind even when killed)."""
        os.makedirs(self.path, exist_ok=True)
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._lock_fd = fd

    def _fd(self, file_no: int) -> int:
        if self._lock_fd is None:
            self._own_directory()
        fd = self._fds.get(file_no)
        if fd is None:
            fd = os.open(self._file_path(file_no), os.O_RDWR | os.O_CREAT, 0o600)
            self._fds[file_no] = fd
        return fd

    async def _run_io(self, file_no: int, fn, view, offset) -> None:
        fd = self._fd(file_no)
        self._io_on[file_no] = self._io_on.get(file_no, 0) + 1
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, fn, fd, view, offset)
        finally:
            self._end_io(file_no)

    def _end_io(self, file_no: int) -> None:
        self._io_on[file_no] -= 1
        if not self._io_on[file_no]:
            del self._io_on[file_no]
            if file_no in self._doomed:
                self._doomed.discard(file_no)
                self._drop_file(file_no)

    async def _compact(self, file_no: int) -> None:
        """Copy the live objects of a sparse file into the current one."""
        try:
            await self._compact_file(file_no)
        finally:
            self._compacting.discard(file_no)

    async def _compact_file(self, file_no: int) -> None:
        f = self.layout.files.get(file_no)
        if f is None:
            return
        self.stats["compactions"] += 1
        for oid in list(f.objects):
            where = self.layout.places.get(oid)
            if where is None or where.file_no != file_no:
                continue
            data = bytearray(where.size)
            await self._run_io(file_no, _pread_all, memoryview(data), where.offset)
            if self.layout.places.get(oid) != where:
                continue                  # freed meanwhile
            old, new, empty = self.layout.move(oid, where.size)
            copy = asyncio.ensure_future(
                self._run_io(new.file_no, _pwrite_all, memoryview(data), new.offset))
            self._moving[oid] = copy
            try:
                await copy
            finally:
                del self._moving[oid]
            if empty:
                self._drop_file(old.file_no)

    def _log_rate(self, what: str, oid, size: int, t0: float) -> None:
        if size >= LOG_SPILLS_FROM_BYTES:
            secs = max(time.perf_counter() - t0, 1e-9)
            log.info("%s %d bytes in %.1f ms: %.2f GB/s", what, size, secs * 1e3, size / secs / 1e9)
