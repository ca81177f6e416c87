"""parallel_copy: chunk plans, thread counts, and the pooled copy itself."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gdfut import parallel_copy
from gdfut import serialization as ser
from gdfut.parallel_copy import CopyPool, plan_chunks, threads_for

KiB = 1 << 10
CHUNK = 64 * KiB
MINIMUM = 128 * KiB


@pytest.fixture
def pool():
    p = CopyPool(threads=3, minimum=MINIMUM, chunk=CHUNK)
    yield p
    p.shutdown()


def _pattern(nbytes: int) -> np.ndarray:
    return np.resize(np.arange(251, dtype=np.uint8), nbytes)   # period 251 shows misplaced chunks


# -- the pure parts ------------------------------------------------------------------

@pytest.mark.parametrize("nbytes", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 7])
def test_plan_chunks_covers_every_byte_once(nbytes):
    chunks = plan_chunks(nbytes, CHUNK)
    assert all(0 < stop - start <= CHUNK for start, stop in chunks)
    assert [c[0] for c in chunks] == list(range(0, nbytes, CHUNK))
    assert chunks == [] if nbytes == 0 else chunks[-1][1] == nbytes
    assert all(a[1] == b[0] for a, b in zip(chunks, chunks[1:]))


def test_plan_chunks_rejects_a_bad_chunk_size():
    with pytest.raises(ValueError, match="chunk size"):
        plan_chunks(10, 0)


def test_threads_for():
    assert threads_for(MINIMUM - 1, 4, MINIMUM, CHUNK) == 1          # small: the caller alone
    assert threads_for(MINIMUM, 4, MINIMUM, CHUNK) == 2               # two chunks, two threads
    assert threads_for(10 * CHUNK, 4, MINIMUM, CHUNK) == 4            # bounded by the pool
    assert threads_for(10 * CHUNK, 1, MINIMUM, CHUNK) == 1            # one CPU: no helpers


# -- the copy --------------------------------------------------------------------------

@pytest.mark.parametrize("nbytes", [MINIMUM - 1, MINIMUM, MINIMUM + 1, 5 * CHUNK - 1, 5 * CHUNK,
                                    5 * CHUNK + 1, 17 * CHUNK + 4097])
def test_copy_is_exact_around_chunk_boundaries(pool, nbytes):
    src = _pattern(nbytes)
    dst = np.zeros(nbytes + 2, np.uint8)          # guard bytes on both sides
    pool.copy_into(memoryview(dst)[1:-1], memoryview(src))
    assert np.array_equal(dst[1:-1], src)
    assert dst[0] == 0 and dst[-1] == 0


def test_small_buffers_stay_on_the_calling_thread(pool):
    src = _pattern(MINIMUM - 1)
    pool.copy_into(memoryview(np.zeros_like(src)), memoryview(src))
    assert pool.running_threads == 0


def test_large_buffers_use_the_helpers_and_they_stop_at_shutdown(pool):
    before = set(threading.enumerate())
    src = _pattern(8 * CHUNK)
    for _ in range(5):                                # reused, never more than the bound
        pool.copy_into(memoryview(np.zeros_like(src)), memoryview(src))
    assert 1 <= pool.running_threads <= pool.threads - 1
    pool.shutdown()
    assert pool.running_threads == 0
    assert set(threading.enumerate()) <= before


def test_a_length_mismatch_is_refused(pool):
    with pytest.raises(ValueError, match="destination of"):
        pool.copy_into(memoryview(np.zeros(10, np.uint8)), memoryview(np.zeros(11, np.uint8)))


def test_an_exception_in_a_helper_reaches_the_caller(pool, monkeypatch):
    real_copyto = np.copyto
    caller = threading.get_ident()

    def copyto(d, s):
        if threading.get_ident() != caller:
            raise MemoryError("helper failed")
        real_copyto(d, s)

    monkeypatch.setattr(parallel_copy.np, "copyto", copyto)
    src = _pattern(16 * CHUNK)
    with pytest.raises(MemoryError, match="helper failed"):
        pool.copy_into(memoryview(np.zeros_like(src)), memoryview(src))


def test_an_exception_in_the_caller_waits_for_the_helpers(pool, monkeypatch):
    real_copyto = np.copyto
    caller = threading.get_ident()
    helper_done = []

    def copyto(d, s):
        if threading.get_ident() == caller:
            raise KeyboardInterrupt
        time.sleep(0.01)      # slow helpers: the caller surely takes a chunk too
        real_copyto(d, s)
        helper_done.append(len(helper_done))

    monkeypatch.setattr(parallel_copy.np, "copyto", copyto)
    src = _pattern(16 * CHUNK)
    with pytest.raises(KeyboardInterrupt):
        pool.copy_into(memoryview(np.zeros_like(src)), memoryview(src))
    # nothing runs after the call returned: the helpers' work is finished
    settled = len(helper_done)
    pool.shutdown()
    assert len(helper_done) == settled


def test_write_into_copies_large_buffers_exactly():
    arr = np.arange(3 * parallel_copy.PARALLEL_COPY_CHUNK // 8 + 5, dtype=np.float64)
    s = ser.serialize(arr)
    header, offsets, total = s.store_layout()
    slot = bytearray(total)
    ser.write_into(memoryview(slot), s)
    assert np.array_equal(ser.loads_from_store(np.frombuffer(bytes(slot), np.uint8)), arr)
    parallel_copy.shutdown()
