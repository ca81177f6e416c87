"""The shuffle's map side on device arrays, in numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1): a map task given device records partitions them with
the CUDA kernels (gdfut.kernels dispatch) into device-resident blocks equal to
the numpy path's. The simulator must be on before numba.cuda is imported, so
the case runs in a subprocess (this file as a script), as test_kernels_cuda."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _case() -> dict:
    import numpy as np
    from numba import cuda

    from gdfut import kernels
    from gdfut.shuffle import records as R
    from gdfut.shuffle import tasks
    from gdfut.shuffle.partition import Hash, KeyRange
    out = {}
    for name, part in (("range", KeyRange()), ("hash", Hash())):
        host = R.generate(0, 300, seed=3, skew=1.0)          # 300: not a multiple of 256
        *dev_blocks, meta = tasks.map_task(cuda.to_device, part, 5, host)
        *np_blocks, np_meta = tasks.map_task(None, part, 5, host)
        on_device = all(kernels.is_device_array(b) for b in dev_blocks)
        same = all(np.array_equal(d.copy_to_host(), h) for d, h in zip(dev_blocks, np_blocks))
        sorted_ok = R.validate(
            [R.summarize(R.sort_records(d.copy_to_host()), r) for r, d in enumerate(dev_blocks)],
            300, R.checksum(host))["ok"] if name == "range" else True
        out[name] = {"on_device": on_device, "same_as_numpy": same,
                     "rows": meta["rows"] == np_meta["rows"], "sorted": sorted_ok,
                     "empty_partition": 0 in np_meta["rows"] or name == "hash"}
    return out


@pytest.mark.skipif(importlib.util.find_spec("numba") is None, reason="numba is not installed")
def test_map_side_on_device_arrays_matches_numpy():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, os.path.abspath(__file__)], capture_output=True,
                          text=True, timeout=110, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("range", "hash"):
        assert result[name] == {"on_device": True, "same_as_numpy": True, "rows": True,
                                "sorted": True, "empty_partition": True}, result


if __name__ == "__main__":
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    print(json.dumps(_case()))
