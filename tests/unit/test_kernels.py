"""The numpy twins of gdfut.kernels against straightforward Python references,
and the dispatch between twins and CUDA kernels (the kernels themselves are
checked against these twins in test_kernels_cuda.py)."""
import bisect
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from gdfut import kernels
from gdfut.kernels import (hash_partition_ids, hash_partition_keys, histogram, pack,
                           partition_ids, range_partition_keys)

MASK = (1 << 64) - 1


def _mix(z):
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & MASK
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _fnv(key: bytes):
    h = 0xCBF29CE484222325
    for b in key:
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def _records(n, size=100, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size), dtype=np.uint8)


def test_partition_ids_match_definition():
    recs = _records(1000)
    pids = partition_ids(recs, 16)
    expect = [((int(r[0]) << 8 | int(r[1])) * 16) >> 16 for r in recs]
    assert pids.tolist() == expect
    assert pids.min() >= 0 and pids.max() < 16


def test_partition_ids_bad_input():
    with pytest.raises(ValueError, match="2-D uint8"):
        partition_ids(np.zeros(10), 4)
    with pytest.raises(ValueError, match="num_partitions"):
        partition_ids(np.zeros((2, 10), dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="num_partitions"):
        partition_ids(np.zeros((2, 10), dtype=np.uint8), 65537)


@pytest.mark.parametrize("num_partitions,key_size", [(1, 10), (7, 10), (64, 3), (1000, 1)])
def test_hash_partition_ids_match_reference(num_partitions, key_size):
    recs = _records(3000, seed=num_partitions)
    expect = [_mix(_fnv(bytes(r[:key_size]))) % num_partitions for r in recs]
    assert hash_partition_ids(recs, num_partitions, key_size).tolist() == expect


def test_hash_partition_ids_depend_on_the_key_only():
    recs = _records(500)
    other = recs.copy()
    other[:, 10:] = 0
    assert np.array_equal(hash_partition_ids(recs, 16), hash_partition_ids(other, 16))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint64, np.uint8])
def test_range_partition_keys_match_bisect(dtype):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(3)
    keys = rng.integers(info.min, info.max, size=5000, dtype=dtype, endpoint=True)
    bounds = np.sort(rng.choice(keys, size=9))
    bounds[4] = bounds[5]                       # a repeated boundary: an empty partition
    expect = [bisect.bisect_right(bounds.tolist(), int(k)) for k in keys]
    got = range_partition_keys(keys, bounds)
    assert got.dtype == np.int64 and got.tolist() == expect
    assert range_partition_keys(keys, []).tolist() == [0] * keys.size


def test_range_partition_keys_bad_boundaries():
    keys = np.arange(10)
    with pytest.raises(ValueError, match="sorted"):
        range_partition_keys(keys, [5, 3])
    with pytest.raises(ValueError, match="fit the keys"):
        range_partition_keys(keys.astype(np.uint8), [300])
    with pytest.raises(ValueError, match="1-D integer"):
        range_partition_keys(keys.astype(float), [3])


@pytest.mark.parametrize("num_partitions", [1, 5, 1 << 20])
def test_hash_partition_keys_match_reference(num_partitions):
    keys = np.random.default_rng(4).integers(-(1 << 62), 1 << 62, size=4000)
    keys[:3] = [-1, 0, np.iinfo(np.int64).min]
    expect = [_mix(int(k) & MASK) % num_partitions for k in keys]
    assert hash_partition_keys(keys, num_partitions).tolist() == expect


def test_histogram_matches_counter():
    pids = np.random.default_rng(5).integers(0, 37, size=10000)
    pids[:5000] = 3                             # skewed
    c = Counter(pids.tolist())
    assert histogram(pids, 40).tolist() == [c.get(r, 0) for r in range(40)]
    assert histogram(np.zeros(0, dtype=np.int64), 4).tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match=r"in \[0, 36\)"):
        histogram(pids, 37 - 1)
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        histogram(np.array([-1, 0]), 4)


def _bucketed(rows, pids, num_partitions):
    """The reference pack: a list per partition, rows appended in input order."""
    buckets = [[] for _ in range(num_partitions)]
    for row, p in zip(rows.tolist(), pids.tolist()):
        buckets[p].append(row)
    return buckets


@pytest.mark.parametrize("n,num_partitions,skew", [
    (20000, 16, False), (20000, 16, True), (3001, 1, False), (0, 8, False), (5000, 70000, False)])
def test_pack_records_match_buckets(n, num_partitions, skew):
    recs = _records(n, size=12, seed=n)
    pids = np.random.default_rng(6).integers(0, num_partitions, size=n)
    if skew and n:
        pids[: n * 9 // 10] = num_partitions - 1
    packed = pack(recs, pids, num_partitions)
    buckets = _bucketed(recs, pids, num_partitions)
    assert packed.counts.tolist() == [len(b) for b in buckets]
    assert packed.offsets[0] == 0 and packed.offsets[-1] == n
    assert np.array_equal(np.diff(packed.offsets), packed.counts)
    assert packed.data.shape == recs.shape and packed.data.dtype == np.uint8
    for r in range(0, num_partitions, max(1, num_partitions // 50)):
        part = packed.data[packed.offsets[r]:packed.offsets[r + 1]]
        assert part.tolist() == buckets[r]      # stable: input order within a partition


def test_pack_key_column_and_w5_pipeline():
    recs = _records(30000)
    pids = partition_ids(recs, 16)
    packed = pack(recs, pids, 16)
    for r in range(16):
        part = packed.data[packed.offsets[r]:packed.offsets[r + 1]]
        assert np.all(partition_ids(part, 16) == r)
    keys = np.random.default_rng(7).integers(0, 1000, size=5000).astype(np.int32)
    kp = pack(keys, range_partition_keys(keys, [100, 500]), 3)
    assert kp.data.dtype == np.int32
    assert kp.data.tolist() == ([k for k in keys.tolist() if k < 100]
                                + [k for k in keys.tolist() if 100 <= k < 500]
                                + [k for k in keys.tolist() if k >= 500])


def test_pack_bad_input():
    recs = _records(10)
    with pytest.raises(ValueError, match="one id per row"):
        pack(recs, np.zeros(9, dtype=np.int64), 4)
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        pack(recs, np.full(10, 4), 4)
    with pytest.raises(TypeError, match="num_partitions must be an int"):
        pack(recs, np.zeros(10, dtype=np.int64), True)


def test_array_module_is_numpy_for_host_arrays():
    assert kernels.array_module(np.zeros(3)) is np
    assert kernels.xp is kernels.array_module
    assert not kernels.is_device_array(np.zeros(3))


def test_device_array_without_cupy_names_the_fix(monkeypatch):
    class FakeDeviceArray:
        __cuda_array_interface__ = {"shape": (3,), "typestr": "<f8", "data": (0, False),
                                    "version": 3}
    monkeypatch.setitem(sys.modules, "cupy", None)      # as if cupy were not installed
    assert kernels.is_device_array(FakeDeviceArray())
    with pytest.raises(kernels.GPULibraryMissing, match=r"cupy .*pip install 'gdfut\[gpu\]'"):
        kernels.array_module(FakeDeviceArray())


def test_cpu_mode_makes_new_arrays_with_numpy(monkeypatch):
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    assert kernels.array_module() is np


def test_import_loads_no_gpu_library():
    code = ("import sys, gdfut.kernels as k, numpy as np; k.pack(np.zeros((4, 10), np.uint8), "
            "np.zeros(4, np.int64), 2); print(sorted(m for m in ('numba', 'cupy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
