"""Copying large buffers into the store with several threads.

One thread copies ~0.9x the speed of a plain memcpy into the shared-memory
arena; two or more threads, each taking the next 8 MiB chunk of the same
buffer, reach memory bandwidth (``np.copyto`` releases the GIL, so the
chunks really run at once). The calling thread copies too, so a pool of
``COPY_THREADS - 1`` helper threads is enough; it is started on the first
large copy and stopped by ``shutdown()`` (the runtime's shutdown calls it).

Chunks are handed out by a shared counter rather than submitted one by one:
each thread loops taking the next chunk, so a thread slowed by other work on
its core simply copies fewer chunks, and the pool sees one submission per
helper per copy, not one per chunk.
"""
from __future__ import annotations

import itertools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np

PARALLEL_COPY_MIN = 16 << 20     # buffers under this are copied by the caller alone
PARALLEL_COPY_CHUNK = 8 << 20    # a chunk amortises a GIL round trip (~0.4 ms of copying)
MAX_COPY_THREADS = 4             # memory bandwidth is reached well before this


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


COPY_THREADS = max(1, min(MAX_COPY_THREADS, _usable_cpus()))


def plan_chunks(nbytes: int, chunk: int = PARALLEL_COPY_CHUNK) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``chunk`` bytes covering ``nbytes``."""
    if chunk <= 0:
        raise ValueError(f"chunk size must be > 0, got {chunk}")
    return [(start, min(start + chunk, nbytes)) for start in range(0, nbytes, chunk)]


def threads_for(nbytes: int, threads: int = COPY_THREADS, minimum: int = PARALLEL_COPY_MIN,
                chunk: int = PARALLEL_COPY_CHUNK) -> int:
    """How many threads (the caller included) copy ``nbytes``: one below the
    threshold, else one per chunk up to ``threads``."""
    if nbytes < minimum or threads <= 1:
        return 1
    return max(1, min(threads, -(-nbytes // chunk)))


class CopyPool:
    """A bounded pool of helper threads for ``copy_into``; safe to share
    between user threads (each copy waits only for its own chunks)."""

    def __init__(self, threads: int = COPY_THREADS, minimum: int = PARALLEL_COPY_MIN,
                 chunk: int = PARALLEL_COPY_CHUNK) -> None:
        self.threads = threads
        self.minimum = minimum
        self.chunk = chunk
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def copy_into(self, dst, src) -> None:
        """Copy the bytes of ``src`` into ``dst`` (same length, both contiguous)."""
        d = np.frombuffer(dst, dtype=np.uint8)
        s = np.frombuffer(src, dtype=np.uint8)
        if d.nbytes != s.nbytes:
            raise ValueError(f"copy of {s.nbytes} bytes into a destination of {d.nbytes} bytes")
        n = threads_for(s.nbytes, self.threads, self.minimum, self.chunk)
        if n == 1:
            np.copyto(d, s)
            return
        chunks = plan_chunks(s.nbytes, self.chunk)
        taken = itertools.count()       # next() is atomic under the GIL

        def copy_chunks() -> None:
            while (i := next(taken)) < len(chunks):
                start, stop = chunks[i]
                np.copyto(d[start:stop], s[start:stop])

        executor = self._start()
        helpers: list[Future] = [executor.submit(copy_chunks) for _ in range(n - 1)]
        try:
            copy_chunks()
        finally:
            # Never return (not even on an exception or an interrupt) while a
            # helper may still write into dst: the caller frees the slot next.
            for _ in chunks:             # stop helpers that have not started
                next(taken)
            wait(helpers)
        for helper in helpers:
            helper.result()              # re-raises a helper's exception

    def shutdown(self) -> None:
        """Stop the helper threads (joined); a later copy starts them again."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    @property
    def running_threads(self) -> int:
        executor = self._executor
        return 0 if executor is None else len(executor._threads)

    def _start(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.threads - 1,
                                                    thread_name_prefix="gdfut-copy")
            return self._executor


_pool = CopyPool()


def copy_into(dst, src) -> None:
    """Copy ``src`` into ``dst`` with the process's copy pool."""
    _pool.copy_into(dst, src)


def shutdown() -> None:
    _pool.shutdown()
