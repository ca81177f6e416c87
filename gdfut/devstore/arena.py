"""One shared-memory arena per node: the bytes of the host tier.

The node daemon creates ``/dev/shm/gdfut-...`` once, at its full capacity,
and every object lives at some offset inside it (``ArenaAllocator`` picks
the offset). Workers attach to the same file and read objects as read-only
numpy views with no copy.

Why pre-fault: a memcpy into never-touched tmpfs pages runs at ~1.2-1.8 GB/s
(each 4 KiB page is allocated and zeroed on first touch); into faulted pages
it runs at ~16 GB/s. Faulting ahead of time costs the same CPU (measured:
MADV_POPULATE_WRITE ~1.3 GB/s on one thread, no faster than touching), so
what matters is *when* it happens: in a background thread, chunk by chunk,
running ahead of the allocator's high-water mark (``prefault_target``) so
that the next objects land on pages faulted while the node was idle.
Creation still returns at once.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading
from typing import Callable

import numpy as np

SHM_DIR = "/dev/shm"
NAME_PREFIX = "gdfut-"
PREFAULT_CHUNK = 32 << 20
# Keep at least this much beyond the high-water mark faulted (and room for two
# more objects of the largest size seen). Faulted pages stay resident, so this
# is also the memory a fresh node commits before anything is stored, and the
# CPU time its start spends faulting: kept at the old 512 MiB until a quiet
# same-run measurement shows 1 GiB pays for itself (cold 1 GiB pulls).
PREFAULT_AHEAD = 512 << 20
PAGE_SIZE = mmap.PAGESIZE
MADV_POPULATE_WRITE = 23  # Linux >= 5.14: fault pages in writable, data untouched


def prefault_target(high_water: int, largest: int, capacity: int,
                    ahead: int = PREFAULT_AHEAD, step: int = PREFAULT_CHUNK) -> int:
    """How far the arena should be faulted, given the allocator's high-water
    mark (end of the highest object ever placed) and the largest object seen:
    past the mark by room for two more objects of that size, and at least
    ``ahead``; rounded up to whole ``step``s, never past ``capacity``."""
    if min(high_water, largest, capacity, ahead) < 0 or step <= 0:
        raise ValueError(f"prefault_target: negative size or step <= 0 (high_water={high_water}, "
                         f"largest={largest}, capacity={capacity}, ahead={ahead}, step={step})")
    want = high_water + max(ahead, 2 * largest)
    return min(capacity, -(-want // step) * step)


def _check_name(name: str) -> str:
    if not name.startswith(NAME_PREFIX) or "/" in name or len(name) > 255:
        raise ValueError(f"arena name must start with {NAME_PREFIX!r} and contain no '/': {name!r}")
    return name


def _load_madvise() -> Callable[[int, int, int], int] | None:
    """libc ``madvise`` through ctypes, or None where it cannot be found.

    ctypes drops the GIL for the call; ``mmap.madvise`` keeps it (measured: a
    32 MiB MADV_POPULATE_WRITE stalls every other thread for 20-40 ms).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


_madvise = _load_madvise()


class _Pin:
    """Base object of every read-only view handed out by ``readonly_pinned``.

    numpy collapses ``.base`` chains to the first non-ndarray object, so every
    slice, reshape, ``memoryview`` and ``pickle.loads(..., buffers=...)``
    result built from the view keeps this one object alive. When the last of
    them is garbage, ``__del__`` runs ``on_release`` (exactly once: CPython
    runs a finalizer at most once per object).
    """

    __slots__ = ("__array_interface__", "_export", "_on_release")

    def __init__(self, address: int, size: int, export: memoryview, on_release: Callable[[], None]) -> None:
        self.__array_interface__ = {
            "shape": (size,),
            "typestr": "|u1",
            "data": (address, True),  # True: numpy marks the array read-only
            "version": 3,
        }
        # A buffer export of the mmap: while it lives, mmap.close() refuses
        # (BufferError) so the pages cannot be unmapped under a live view.
        self._export = export
        self._on_release = on_release

    def __del__(self) -> None:
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()


def map_file_readonly(path: str, offset: int, size: int,
                      on_release: Callable[[], None]) -> np.ndarray:
    """Read-only uint8 array over ``size`` bytes of a file at ``offset`` (a
    multiple of the page size), no copy: the view a reader gets of an object
    that lives in a spill file. ``on_release()`` runs once, when the array
    and everything made from it are garbage (as ``readonly_pinned``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        # private mapping: pages come from the file as they are read; the
        # address is taken from a writable (copy-on-write) buffer, the array
        # over it is marked read-only
        mm = mmap.mmap(fd, size, offset=offset, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    export = memoryview(mm)
    pin = _Pin(SharedArena._address_of(mm), size, export, on_release)
    array = np.asarray(pin)
    assert array.base is pin and not array.flags.writeable
    return array


class SharedArena:
    """A named, fixed-size shared mapping under /dev/shm."""

    def __init__(self, name: str, mm: mmap.mmap, capacity: int, owner: bool) -> None:
        self.name = name
        self.path = os.path.join(SHM_DIR, name)
        self.capacity = capacity
        self.owner = owner  # created it (and so should unlink it)
        self._mm: mmap.mmap | None = mm
        # One memoryview over the whole mapping; view() slices share its
        # export, pins hold a reference to it.
        self._whole: memoryview | None = memoryview(mm)
        self._base_address = self._address_of(mm)
        self._unlinked = False
        self.prefaulted_bytes = 0
        self.prefault_error: OSError | None = None
        self.prefault_done = threading.Event()
        self._stop = threading.Event()
        self._prefault_thread: threading.Thread | None = None
        # Pre-faulting runs up to a target that the store raises as it fills
        # (note_allocation): faulting a many-GiB arena up front would burn
        # seconds of CPU and commit memory nobody may use.
        self._target_cv = threading.Condition()
        self._high_water = 0
        self._largest = 0
        self._prefault_target = prefault_target(0, 0, capacity, PREFAULT_AHEAD, PREFAULT_CHUNK)

    # -- construction ---------------------------------------------------------

    @property
    def prefault_target_bytes(self) -> int:
        """How far the background thread is to fault (it may still be behind)."""
        with self._target_cv:
            return self._prefault_target

    def note_allocation(self, offset: int, size: int) -> None:
        """An object was placed at ``[offset, offset + size)``: raise the
        high-water mark and with it the pre-fault target."""
        with self._target_cv:
            self._high_water = max(self._high_water, offset + size)
            self._largest = max(self._largest, size)
            target = prefault_target(self._high_water, self._largest, self.capacity,
                                     PREFAULT_AHEAD, PREFAULT_CHUNK)
        self.prefault_to(target)

    def prefault_to(self, nbytes: int) -> None:
        """Raise the pre-fault target to ``nbytes`` (never lowers it)."""
        with self._target_cv:
            target = min(self.capacity, nbytes)
            if target > self._prefault_target:
                self._prefault_target = target
                self._target_cv.notify_all()

    @classmethod
    def create(cls, name: str, capacity: int, prefault: bool = True,
               prefault_initial: int | None = None) -> SharedArena:
        """Create ``/dev/shm/<name>``; returns at once, faulting in the background
        (up to ``prefault_initial`` bytes, default ``prefault_target(0, 0, capacity)``,
        until ``note_allocation`` raises the target)."""
        _check_name(name)
        if capacity <= 0:
            raise ValueError(f"arena capacity must be > 0, got {capacity}")
        _check_space(capacity)
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, capacity)
            mm = mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)  # the mapping keeps the file alive
        arena = cls(name, mm, capacity, owner=True)
        if prefault_initial is not None:
            arena._prefault_target = max(0, min(capacity, prefault_initial))
        if prefault:
            arena._start_prefault()
        else:
            arena.prefault_done.set()
        return arena

    @classmethod
    def attach(cls, name: str) -> SharedArena:
        """Map an arena another process created; no pre-faulting (its pages
        are already resident, we only take cheap minor faults on first use)."""
        _check_name(name)
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_RDWR)
        try:
            capacity = os.fstat(fd).st_size
            if capacity <= 0:
                raise ValueError(f"arena {name!r} is empty")
            mm = mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        arena = cls(name, mm, capacity, owner=False)
        arena.prefault_done.set()
        return arena

    # -- access ---------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._whole is None

    def view(self, offset: int, size: int) -> memoryview:
        """Writable bytes ``[offset, offset + size)``, for a producer to fill."""
        whole = self._require_open()
        self._check_range(offset, size)
        return whole[offset : offset + size]

    def readonly_pinned(self, offset: int, size: int, on_release: Callable[[], None]) -> np.ndarray:
        """Read-only uint8 array over ``[offset, offset + size)``, no copy.

        ``on_release()`` runs exactly once, when this array and everything
        derived from it are garbage; it runs in whichever thread drops the
        last reference, so it must be thread-safe and must not block.
        """
        whole = self._require_open()
        self._check_range(offset, size)
        pin = _Pin(self._base_address + offset, size, whole, on_release)
        array = np.asarray(pin)
        assert array.base is pin and not array.flags.writeable
        return array

    # -- teardown -------------------------------------------------------------

    def close(self) -> None:
        """Stop pre-faulting and unmap. Idempotent.

        If views are still alive the mapping cannot be unmapped yet; we drop
        our references and it is unmapped when the last view is collected.
        """
        self._stop_prefault()
        mm, self._mm = self._mm, None
        self._whole = None  # views and pins keep their own references
        if mm is None:
            return
        try:
            mm.close()
        except BufferError:
            pass  # exported views alive: the mmap dies with the last of them

    def unlink(self) -> None:
        """Remove the /dev/shm name (mappings stay valid). Idempotent."""
        if self._unlinked:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._unlinked = True

    def __enter__(self) -> SharedArena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SharedArena({self.name!r}, capacity={self.capacity}, closed={self.closed})"

    # -- pre-faulting -----------------------------------------------------------

    def _start_prefault(self) -> None:
        thread = threading.Thread(
            target=self._prefault_loop,
            args=(self._base_address, self._mm),
            name=f"gdfut-prefault-{self.name}",
            daemon=True,
        )
        self._prefault_thread = thread
        thread.start()

    def _stop_prefault(self) -> None:
        self._stop.set()
        with self._target_cv:
            self._target_cv.notify_all()
        thread = self._prefault_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._prefault_thread = None

    def _prefault_loop(self, base_address: int, mm: mmap.mmap) -> None:
        # ``mm`` is passed in rather than read from ``self._mm``, which
        # close() clears; close() joins this thread before it unmaps, so the
        # address stays valid for every madvise/read below.
        try:
            use_madvise = _madvise is not None
            for start in range(0, self.capacity, PREFAULT_CHUNK):
                with self._target_cv:
                    while start >= self._prefault_target and not self._stop.is_set():
                        self._target_cv.wait()
                if self._stop.is_set():
                    return
                length = min(PREFAULT_CHUNK, self.capacity - start)
                if use_madvise:
                    try:
                        use_madvise = _populate_write(base_address + start, length)
                    except OSError as error:
                        # e.g. memory ran short: stop faulting, leave the rest
                        # to first touch, and let the shell report it.
                        self.prefault_error = error
                        return
                if not use_madvise:
                    _read_touch(mm, start, length)
                self.prefaulted_bytes = start + length
        finally:
            self.prefault_done.set()

    # -- helpers ------------------------------------------------------------------

    def _require_open(self) -> memoryview:
        if self._whole is None:
            raise ValueError(f"arena {self.name!r} is closed")
        return self._whole

    def _check_range(self, offset: int, size: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.capacity:
            raise ValueError(f"range [{offset}, {offset + size}) outside arena of {self.capacity} bytes")

    @staticmethod
    def _address_of(mm: mmap.mmap) -> int:
        # Take the address, then drop the temporary export at once: a held
        # export would make every later mm.close() fail.
        probe = np.frombuffer(mm, dtype=np.uint8)
        address = probe.ctypes.data
        del probe
        return address


def _check_space(capacity: int) -> None:
    """Refuse an arena bigger than the free space of /dev/shm.

    The file is sparse, so creation would succeed anyway and the first write
    past the limit would kill the process with SIGBUS; better fail here.
    """
    stat = os.statvfs(SHM_DIR)
    available = stat.f_bavail * stat.f_frsize
    if capacity > available:
        raise OSError(
            errno.ENOSPC,
            f"arena of {capacity} bytes does not fit in {SHM_DIR} ({available} bytes free)",
        )


def _populate_write(address: int, length: int) -> bool:
    """MADV_POPULATE_WRITE one chunk; False if the kernel lacks it (< 5.14)."""
    assert _madvise is not None
    if _madvise(address, length, MADV_POPULATE_WRITE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EINVAL:  # advice unknown to this kernel
        return False
    raise OSError(err, f"madvise(MADV_POPULATE_WRITE) failed: {os.strerror(err)}")


def _read_touch(mm: mmap.mmap, start: int, length: int) -> None:
    """Fault one chunk in by reading a byte per page.

    Reading, not writing: producers may already be writing objects into the
    arena while this runs, and a ``= 0`` store could erase their bytes. On
    tmpfs a read fault allocates the page too, which is most of the cost
    (measured ~13 GB/s memcpy afterwards vs ~1.5 untouched).
    """
    chunk = np.frombuffer(mm, dtype=np.uint8, count=length, offset=start)
    int(chunk[::PAGE_SIZE].max())
    del chunk
