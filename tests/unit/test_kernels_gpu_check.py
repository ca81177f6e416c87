"""bench/gpu_check.py on a machine without a GPU: a clear skip, exit 0."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from gdfut.node import detect_gpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(detect_gpus()[0] > 0, reason="this host has a GPU: gpu_check runs for real")
def test_gpu_check_without_gpu_skips_every_check_and_exits_0(tmp_path):
    out_json = tmp_path / "rows.json"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"),
                          "--json", str(out_json)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("no GPU: skipped")
    for check in ("NVML discovery", "kernels", "copies"):
        row = next((ln for ln in lines if ln.startswith(check)), None)
        assert row is not None and "skipped" in row.split(), out.stdout
    rows = json.loads(out_json.read_text())
    assert rows and all(r["status"] == "skipped" for r in rows)


def test_gpu_check_with_a_gpu_but_no_cupy_fails_naming_the_fix(monkeypatch, capsys):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(os.path.join(ROOT, "bench"))
    monkeypatch.setattr(gpu_check, "detect_gpus", lambda: (1, 80 << 30))
    monkeypatch.setitem(sys.modules, "cupy", None)          # as if cupy were not installed
    assert gpu_check.main([]) == 1
    out = capsys.readouterr().out
    assert "no GPU" not in out
    assert "FAIL" in out and "pip install 'gdfut[gpu]'" in out


# The kernel section of gpu_check in numba's CUDA simulator, cupy stood in by
# numba device arrays: the device/twin comparison and the table work.
SIM_KERNELS = """
import argparse, sys, time, types, warnings
warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
import numpy as np
from numba import cuda
fake = types.ModuleType("cupy")
fake.asarray = lambda a: cuda.to_device(np.asarray(a))
fake.cuda = types.SimpleNamespace(Stream=types.SimpleNamespace(
    null=types.SimpleNamespace(synchronize=lambda: None)))
sys.modules["cupy"] = fake
sys.path.insert(0, "bench")
import gpu_check
ctx = gpu_check.Context(argparse.Namespace(records=300), deadline=time.monotonic() + 300)
rows = gpu_check.check_kernels(ctx)
print(gpu_check.format_table(rows))
sys.exit(0 if len(rows) == 7 and all(r.status == "ok" for r in rows) else 1)
"""


@pytest.mark.timeout(300)
def test_gpu_check_kernel_section_in_the_cuda_simulator():
    if importlib.util.find_spec("numba") is None:
        pytest.skip("numba is not installed (pip install 'gdfut[test]')")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", SIM_KERNELS], capture_output=True, text=True,
                         timeout=280, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "kernel pack (records)" in out.stdout


def test_gpu_check_device_object_checks_run_on_an_emulated_gpu(tmp_path):
    """--emulated: the device-tier checks (between tasks, another process on
    the GPU zero-copy, restore onto the device, spill D->H->disk and back,
    the tier's copies) on a CPU-mode GPU."""
    out_json = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"),
                          "--emulated", "--object-mib", "8", "--copy-mib", "32",
                          "--json", str(out_json)],
                         capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {r["check"]: r for r in json.loads(out_json.read_text())}
    for check in ("NVML discovery", "kernels", "copies"):
        assert rows[check]["status"] == "skipped"
    device = [r for name, r in rows.items() if name.startswith("device:")]
    assert len(device) == 7 and all(r["status"] == "ok" for r in device), device
    assert "the object itself" in rows["device: GPU task -> GPU task"]["figure"]
    ipc = rows["device: other process, same GPU (IPC)"]["note"]
    assert "2 imports, 0 host-tier bytes, 0 moved down" in ipc, ipc      # zero-copy
    restore = rows["device: restore onto the device"]["note"]
    assert "1 restored" in restore and "device" in restore, restore
    spill = rows["device: spill D->H->disk, restore"]["figure"]
    assert all(int(spill.split()[i]) > 0 for i in (0, 2, 4)), spill
    # two nodes over ucx: in CPU mode the GPU-to-GPU path is not taken, and
    # the check says that was expected (no real GPU, no CUDA in UCX)
    across = [r for name, r in rows.items() if name.startswith("device across nodes")]
    if across[0]["status"] == "skipped":
        assert "needs ucxx" in across[0]["note"], across
    else:
        assert len(across) == 2 and all(r["status"] == "ok" for r in across), across
        assert "taken: no" in across[0]["note"] and "expected" in across[0]["note"], across
