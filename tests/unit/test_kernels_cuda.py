"""Each CUDA kernel of gdfut.kernels against its numpy twin, in numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1), so CI checks the kernels without a GPU.

The simulator must be on before numba.cuda is first imported, so the cases
run in a subprocess (this file run as a script), leaving the other tests'
processes untouched. The simulator runs ~15k threads/s: inputs are a few
hundred records, with 300 (not a multiple of the 256-thread block) the norm.
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASE_NAMES = [
    "partition_ids", "partition_ids_empty", "partition_ids_one_partition", "partition_ids_skewed",
    "hash_partition_ids", "hash_partition_ids_empty", "hash_partition_ids_one_partition",
    "range_partition_keys", "range_partition_keys_empty", "range_partition_keys_no_boundaries",
    "hash_partition_keys", "hash_partition_keys_empty", "hash_partition_keys_one_partition",
    "histogram", "histogram_global_bins", "histogram_empty", "histogram_skewed",
    "histogram_out_of_range",
    "pack_records", "pack_records_many_chunks", "pack_records_skewed", "pack_one_partition",
    "pack_empty", "pack_key_column", "pack_out_of_range", "pack_is_stable",
    "dispatch_keeps_device_arrays",
]


# ---- the cases (run in the simulator subprocess) ----

def _cases():
    import numpy as np
    from numba import cuda

    from gdfut import kernels
    from gdfut.kernels import cuda as kc
    from gdfut.kernels import partition as kp

    rng = np.random.default_rng(11)
    recs = rng.integers(0, 256, size=(300, 12), dtype=np.uint8)
    wide = rng.integers(0, 256, size=(70, 100), dtype=np.uint8)
    skew = recs.copy()
    skew[:280, :2] = 7                              # 280 of 300 records in one partition
    empty = np.zeros((0, 12), dtype=np.uint8)
    keys = rng.integers(-(1 << 40), 1 << 40, size=300)
    bounds = np.sort(rng.choice(keys, size=6))
    pids = kp.partition_ids_numpy(recs, 16)

    def host(x):
        return x.copy_to_host()

    def same(got, want):
        got = [host(g) for g in got] if isinstance(got, tuple) else host(got)
        want = list(want) if isinstance(want, tuple) else want
        if isinstance(want, list):
            assert all(np.array_equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want)), \
                f"{got} != {want}"
        else:
            assert got.dtype == want.dtype and np.array_equal(got, want), f"{got} != {want}"

    def raises_same(fn_cuda, fn_numpy, *args):
        errors = []
        for fn in (fn_cuda, fn_numpy):
            try:
                fn(*args)
                errors.append(None)
            except ValueError as exc:
                errors.append(str(exc))
        assert errors[0] is not None and errors[0] == errors[1], errors

    def pack_case(rows, p, r, **kw):
        same(tuple(kc.pack_cuda(rows, p, r, **kw)), kp.pack_numpy(rows, p, r))

    return {
        "partition_ids": lambda: same(kc.partition_ids_cuda(recs, 16), kp.partition_ids_numpy(recs, 16)),
        "partition_ids_empty": lambda: same(kc.partition_ids_cuda(empty, 4), kp.partition_ids_numpy(empty, 4)),
        "partition_ids_one_partition": lambda: same(kc.partition_ids_cuda(recs, 1),
                                                    kp.partition_ids_numpy(recs, 1)),
        "partition_ids_skewed": lambda: same(kc.partition_ids_cuda(skew, 65536),
                                             kp.partition_ids_numpy(skew, 65536)),
        "hash_partition_ids": lambda: same(kc.hash_partition_ids_cuda(recs, 13, 10),
                                           kp.hash_partition_ids_numpy(recs, 13, 10)),
        "hash_partition_ids_empty": lambda: same(kc.hash_partition_ids_cuda(empty, 3),
                                                 kp.hash_partition_ids_numpy(empty, 3)),
        "hash_partition_ids_one_partition": lambda: same(kc.hash_partition_ids_cuda(recs, 1, 4),
                                                         kp.hash_partition_ids_numpy(recs, 1, 4)),
        "range_partition_keys": lambda: same(kc.range_partition_keys_cuda(keys, bounds),
                                             kp.range_partition_keys_numpy(keys, bounds)),
        "range_partition_keys_empty": lambda: same(kc.range_partition_keys_cuda(keys[:0], bounds),
                                                   kp.range_partition_keys_numpy(keys[:0], bounds)),
        "range_partition_keys_no_boundaries": lambda: same(kc.range_partition_keys_cuda(keys, []),
                                                           kp.range_partition_keys_numpy(keys, [])),
        "hash_partition_keys": lambda: same(kc.hash_partition_keys_cuda(keys, 10),
                                            kp.hash_partition_keys_numpy(keys, 10)),
        "hash_partition_keys_empty": lambda: same(kc.hash_partition_keys_cuda(keys[:0], 10),
                                                  kp.hash_partition_keys_numpy(keys[:0], 10)),
        "hash_partition_keys_one_partition": lambda: same(kc.hash_partition_keys_cuda(keys, 1),
                                                          kp.hash_partition_keys_numpy(keys, 1)),
        "histogram": lambda: same(kc.histogram_cuda(pids, 16), kp.histogram_numpy(pids, 16)),
        "histogram_global_bins": lambda: same(kc.histogram_cuda(pids * 100, 2000),
                                              kp.histogram_numpy(pids * 100, 2000)),
        "histogram_empty": lambda: same(kc.histogram_cuda(pids[:0], 5), kp.histogram_numpy(pids[:0], 5)),
        "histogram_skewed": lambda: same(kc.histogram_cuda(kp.partition_ids_numpy(skew, 16), 16),
                                         kp.histogram_numpy(kp.partition_ids_numpy(skew, 16), 16)),
        "histogram_out_of_range": lambda: raises_same(kc.histogram_cuda, kp.histogram_numpy,
                                                      np.array([0, 5, 1]), 5),
        "pack_records": lambda: pack_case(wide, kp.partition_ids_numpy(wide, 16), 16),
        "pack_records_many_chunks": lambda: pack_case(recs, pids, 16, chunk=7),
        "pack_records_skewed": lambda: pack_case(skew, kp.partition_ids_numpy(skew, 16), 16, chunk=16),
        "pack_one_partition": lambda: pack_case(recs, np.zeros(300, dtype=np.int64), 1, chunk=32),
        "pack_empty": lambda: pack_case(empty, np.zeros(0, dtype=np.int64), 4),
        "pack_key_column": lambda: pack_case(keys, kp.hash_partition_keys_numpy(keys, 5), 5, chunk=9),
        "pack_out_of_range": lambda: raises_same(kc.pack_cuda, kp.pack_numpy, recs[:3],
                                                 np.array([0, 4, 1]), 4),
        "pack_is_stable": lambda: _stable(kc, np),
        "dispatch_keeps_device_arrays": lambda: _dispatch(kernels, kp, cuda, recs, np),
    }


def _stable(kc, np):
    """Rows numbered in input order come out increasing within each partition."""
    order = np.arange(300, dtype=np.int64)
    p = np.random.default_rng(2).integers(0, 3, size=300)
    packed = kc.pack_cuda(order, p, 3, chunk=11)
    data, offsets = packed.data.copy_to_host(), packed.offsets.copy_to_host()
    for r in range(3):
        part = data[offsets[r]:offsets[r + 1]]
        assert np.all(np.diff(part) > 0) and np.all(p[part] == r), part


def _dispatch(kernels, kp, cuda, recs, np):
    d = cuda.to_device(recs)
    ids = kernels.partition_ids(d, 16)
    assert hasattr(ids, "copy_to_host"), type(ids)      # the CUDA path, result on the device
    packed = kernels.pack(d, ids, 16)
    assert hasattr(packed.data, "copy_to_host")
    assert np.array_equal(packed.data.copy_to_host(), kp.pack_numpy(recs, kp.partition_ids_numpy(recs, 16), 16).data)


def _run_cases():
    import traceback
    import warnings
    warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)  # uint64 hashing wraps
    results = {}
    for name, case in _cases().items():
        try:
            case()
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc(limit=4)
    print("RESULTS " + json.dumps(results))


# ---- the tests (in the pytest process) ----

@pytest.fixture(scope="module")
def sim_results():
    if importlib.util.find_spec("numba") is None:
        pytest.skip("numba is not installed (pip install 'gdfut[test]'): the CUDA kernels "
                    "cannot be run in its simulator")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True,
                         text=True, timeout=400, env=env, cwd=ROOT)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULTS ")]
    assert out.returncode == 0 and lines, f"simulator run failed:\n{out.stdout}\n{out.stderr}"
    return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.timeout(420)
def test_every_case_ran(sim_results):
    assert sorted(sim_results) == sorted(CASE_NAMES)


@pytest.mark.timeout(420)
@pytest.mark.parametrize("case", CASE_NAMES)
def test_cuda_kernel_matches_twin(sim_results, case):
    assert sim_results[case] == "ok", sim_results[case]


if __name__ == "__main__":
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1", "run through pytest (it sets the simulator)"
    _run_cases()
