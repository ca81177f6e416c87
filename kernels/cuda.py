"""numba CUDA kernels for kernels/partition.py (imported only for device arrays).

Each ``*_cuda`` function takes a cupy array, a numba device array or a numpy
array (copied to the device), and returns device arrays: cupy arrays when the
input was a cupy array (zero-copy views), numba device arrays otherwise. Under
``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in numba's simulator.

Partition ids: one thread per record. Histogram: one thread per record with
atomics, counted in shared memory per block when the partitions fit there.
Pack is a counting sort (Exoshuffle's map side) and stable, so its output is
deterministic: each thread owns a chunk of consecutive rows; pass 1 counts
its chunk per partition, pass 2 turns the (chunk, partition) counts into
exclusive prefix sums down each partition's column, pass 3 scans the offsets
of the partitions, pass 4 gives each row its destination (partition offset +
rows of earlier chunks + earlier rows of its own chunk), pass 5 scatters the
rows, one thread per byte. No atomics decide an order.
"""
from __future__ import annotations

import numpy as np

from .dispatch import numba_cuda
from .partition import (FNV_OFFSET, FNV_PRIME, MAX_RANGE_PARTITIONS, MIX1, MIX2, Packed,
                        check_key_size, check_keys, check_num_partitions, check_pack_input,
                        check_records, out_of_range, sorted_boundaries)

cuda = numba_cuda()         # GPULibraryMissing, naming the fix, when numba is absent
from numba import int32, int64, uint64  # noqa: E402  (numba is importable: checked above)

THREADS = 256
SHARED_BINS = 1024          # histogram bins kept in shared memory per block (4 KiB)
MIN_CHUNK = 256             # rows per thread in pack's counting passes


# ---- moving arrays to and from the device ----

def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


def _to_device(x):
    """A numba device array for x (zero-copy for cupy and other CUDA arrays)."""
    if hasattr(x, "copy_to_host"):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        return cuda.as_cuda_array(x)
    return cuda.to_device(np.ascontiguousarray(x))


def _like(out, template):
    """Results in the caller's kind of device array."""
    if _is_cupy(template):
        import cupy
        return cupy.asarray(out)
    return out


def _blocks(n: int) -> int:
    return (n + THREADS - 1) // THREADS


def _zeros(n: int, dtype=np.int64):
    return cuda.to_device(np.zeros(n, dtype=dtype))


def _int64_pids(pids):
    if np.dtype(pids.dtype) == np.int64:
        return _to_device(pids)
    if _is_cupy(pids):
        return _to_device(pids.astype("int64"))
    host = pids.copy_to_host() if hasattr(pids, "copy_to_host") else np.asarray(pids)
    return cuda.to_device(host.astype(np.int64))


# ---- device functions (uint64 throughout: mixing with int64 would give floats) ----

@cuda.jit(device=True)
def _mix64(z):
    z ^= z >> uint64(30)
    z *= uint64(MIX1)
    z ^= z >> uint64(27)
    z *= uint64(MIX2)
    z ^= z >> uint64(31)
    return z


# ---- partition ids: one thread per record ----

@cuda.jit
def _range_pid_kernel(records, num_partitions, out):
    i = cuda.grid(1)
    if i < records.shape[0]:
        prefix = (int64(records[i, 0]) << 8) | int64(records[i, 1])
        out[i] = (prefix * num_partitions) >> 16


@cuda.jit
def _hash_pid_kernel(records, key_size, num_partitions, out):
    i = cuda.grid(1)
    if i < records.shape[0]:
        h = uint64(FNV_OFFSET)
        for j in range(key_size):
            h ^= uint64(records[i, j])
            h *= uint64(FNV_PRIME)
        out[i] = int64(_mix64(h) % uint64(num_partitions))


@cuda.jit
def _range_keys_kernel(keys, boundaries, out):
    i = cuda.grid(1)
    if i < keys.shape[0]:
        k = keys[i]
        lo = 0
        hi = boundaries.shape[0]
        while lo < hi:              # boundaries <= k, as searchsorted(side="right")
            mid = (lo + hi) // 2
            if boundaries[mid] <= k:
                lo = mid + 1
            else:
                hi = mid
        out[i] = lo


@cuda.jit
def _hash_keys_kernel(keys, num_partitions, out):
    i = cuda.grid(1)
    if i < keys.shape[0]:
        out[i] = int64(_mix64(uint64(keys[i])) % uint64(num_partitions))


def _launch_ids(kernel, n: int, *args):
    out = cuda.device_array(n, dtype=np.int64)
    if n:
        kernel[_blocks(n), THREADS](*args, out)
    return out


def partition_ids_cuda(records, num_partitions: int):
    check_records(records)
    check_num_partitions(num_partitions, MAX_RANGE_PARTITIONS)
    out = _launch_ids(_range_pid_kernel, records.shape[0], _to_device(records), num_partitions)
    return _like(out, records)


def hash_partition_ids_cuda(records, num_partitions: int, key_size: int = 10):
    check_records(records, min_key=1)
    check_key_size(records, key_size)
    check_num_partitions(num_partitions)
    out = _launch_ids(_hash_pid_kernel, records.shape[0], _to_device(records),
                      key_size, num_partitions)
    return _like(out, records)


def range_partition_keys_cuda(keys, boundaries):
    check_keys(keys)
    b = cuda.to_device(sorted_boundaries(boundaries, keys.dtype))
    out = _launch_ids(_range_keys_kernel, keys.shape[0], _to_device(keys), b)
    return _like(out, keys)


def hash_partition_keys_cuda(keys, num_partitions: int):
    check_keys(keys)
    check_num_partitions(num_partitions)
    out = _launch_ids(_hash_keys_kernel, keys.shape[0], _to_device(keys), num_partitions)
    return _like(out, keys)


# ---- histogram: one thread per record, atomics ----

@cuda.jit
def _histogram_shared_kernel(pids, num_partitions, counts, bad):
    local = cuda.shared.array(SHARED_BINS, int32)
    t = cuda.threadIdx.x
    for b in range(t, num_partitions, cuda.blockDim.x):
        local[b] = 0
    cuda.syncthreads()
    i = cuda.grid(1)
    if i < pids.shape[0]:
        p = pids[i]
        if p >= 0 and p < num_partitions:
            cuda.atomic.add(local, p, 1)
        else:
            cuda.atomic.add(bad, 0, 1)
    cuda.syncthreads()
    for b in range(t, num_partitions, cuda.blockDim.x):
        if local[b] != 0:
            cuda.atomic.add(counts, b, int64(local[b]))


@cuda.jit
def _histogram_global_kernel(pids, num_partitions, counts, bad):
    i = cuda.grid(1)
    if i < pids.shape[0]:
        p = pids[i]
        if p >= 0 and p < num_partitions:
            cuda.atomic.add(counts, p, 1)
        else:
            cuda.atomic.add(bad, 0, 1)


def _raise_if_bad(bad, num_partitions: int) -> None:
    if int(bad.copy_to_host()[0]):
        raise out_of_range(num_partitions)


def histogram_cuda(pids, num_partitions: int):
    check_num_partitions(num_partitions)
    if pids.ndim != 1 or np.dtype(pids.dtype).kind not in "iu":
        raise ValueError(f"pids must be a 1-D integer array, got {pids.dtype} {pids.shape}")
    d = _int64_pids(pids)
    counts, bad = _zeros(num_partitions), _zeros(1)
    n = d.shape[0]
    if n:
        kernel = (_histogram_shared_kernel if num_partitions <= SHARED_BINS
                  else _histogram_global_kernel)
        kernel[_blocks(n), THREADS](d, num_partitions, counts, bad)
        _raise_if_bad(bad, num_partitions)
    return _like(counts, pids)


# ---- pack: a stable counting sort ----

@cuda.jit
def _chunk_count_kernel(pids, chunk, hist, bad):
    """Pass 1: hist[t, p] = rows of chunk t in partition p."""
    t = cuda.grid(1)
    if t < hist.shape[0]:
        num_partitions = hist.shape[1]
        for p in range(num_partitions):
            hist[t, p] = 0
        end = min((t + 1) * chunk, pids.shape[0])
        for i in range(t * chunk, end):
            p = pids[i]
            if p >= 0 and p < num_partitions:
                hist[t, p] += 1
            else:
                cuda.atomic.add(bad, 0, 1)


@cuda.jit
def _column_scan_kernel(hist, counts):
    """Pass 2: hist[t, p] becomes the rows of p in chunks before t; counts[p] the total."""
    p = cuda.grid(1)
    if p < hist.shape[1]:
        total = 0
        for t in range(hist.shape[0]):
            c = hist[t, p]
            hist[t, p] = total
            total += c
        counts[p] = total


@cuda.jit
def _offsets_kernel(counts, offsets):
    """Pass 3 (one thread: R is small next to n): exclusive prefix sum, then n."""
    if cuda.grid(1) == 0:
        total = 0
        for p in range(counts.shape[0]):
            offsets[p] = total
            total += counts[p]
        offsets[counts.shape[0]] = total


@cuda.jit
def _destination_kernel(pids, chunk, hist, offsets, dest):
    """Pass 4: each row's place in the packed buffer, in input order per chunk."""
    t = cuda.grid(1)
    if t < hist.shape[0]:
        end = min((t + 1) * chunk, pids.shape[0])
        for i in range(t * chunk, end):
            p = pids[i]
            dest[i] = offsets[p] + hist[t, p]
            hist[t, p] += 1


@cuda.jit
def _scatter_rows_kernel(rows, dest, out):
    """Pass 5 for 2-D rows: one thread per byte, reads coalesced."""
    k = cuda.grid(1)
    width = rows.shape[1]
    if k < rows.shape[0] * width:
        i = k // width
        j = k - i * width
        out[dest[i], j] = rows[i, j]


@cuda.jit
def _scatter_items_kernel(rows, dest, out):
    """Pass 5 for a 1-D column."""
    i = cuda.grid(1)
    if i < rows.shape[0]:
        out[dest[i]] = rows[i]


def pack_cuda(rows, pids, num_partitions: int, chunk: int | None = None) -> Packed:
    """``chunk``: rows per thread in the counting passes (tests make it small to
    cover many chunks; the default keeps the (chunk, partition) table near n)."""
    check_pack_input(rows, pids, num_partitions)
    d_rows, d_pids = _to_device(rows), _int64_pids(pids)
    n = d_rows.shape[0]
    chunk = chunk or max(MIN_CHUNK, num_partitions)
    num_chunks = max(1, (n + chunk - 1) // chunk)
    hist = cuda.device_array((num_chunks, num_partitions), dtype=np.int64)
    counts, offsets, bad = (cuda.device_array(num_partitions, dtype=np.int64),
                            cuda.device_array(num_partitions + 1, dtype=np.int64), _zeros(1))
    dest = cuda.device_array(n, dtype=np.int64)
    out = cuda.device_array(d_rows.shape, dtype=d_rows.dtype)
    _chunk_count_kernel[_blocks(num_chunks), THREADS](d_pids, chunk, hist, bad)
    _raise_if_bad(bad, num_partitions)
    _column_scan_kernel[_blocks(num_partitions), THREADS](hist, counts)
    _offsets_kernel[1, 1](counts, offsets)
    if n:
        _destination_kernel[_blocks(num_chunks), THREADS](d_pids, chunk, hist, offsets, dest)
        if d_rows.ndim == 2:
            if d_rows.shape[1]:
                _scatter_rows_kernel[_blocks(n * d_rows.shape[1]), THREADS](d_rows, dest, out)
        else:
            _scatter_items_kernel[_blocks(n), THREADS](d_rows, dest, out)
    return Packed(_like(out, rows), _like(counts, rows), _like(offsets, rows))
