"""GPU validation: every GPU path on one GPU, in under five minutes, as a table.

    python bench/gpu_check.py [--records 10000000] [--copy-mib 1024] [--budget-s 300] [--json out.json]

The project has no GPU in CI; this script is how a first run on a GPU host is
checked (issue 8, point 8). Checks, in order:

- NVML discovery: ``gdfut.node.detect_gpus`` (what a node declares) and each
  device's name and memory.
- kernels: each gdfut.kernels CUDA kernel on ``--records`` 100-byte records
  (or int64 keys) on the device against its numpy twin on the same data:
  results must be identical; figures in million records/s, device and twin.
- copies: D->H and H->D of ``--copy-mib`` bytes: the plain CuPy copy
  (``cupy.asarray`` of a numpy array, ``cupy.asnumpy``) is the baseline, and a
  copy through a pinned buffer is reported as a ratio to it, in the same run.

Checks for device objects and spilling add themselves to ``CHECKS`` (a
function taking the ``Context`` and returning rows); their copy figures can be
read against ``ctx.baselines`` (the plain CuPy GB/s, by direction).

Without a GPU it prints the same table, every row "skipped", under a line
"no GPU: skipped", and exits 0. Exit 1 when a check fails. GB = 1e9 bytes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run as a script from anywhere

from gdfut import kernels   # noqa: E402
from gdfut.node import detect_gpus  # noqa: E402

RECORD_SIZE = 100
PARTITIONS = 16
COPY_REPEAT = 3


@dataclass
class Row:
    check: str
    status: str             # "ok", "FAIL" or "skipped"
    figure: str = ""
    baseline: str = ""
    ratio: str = ""
    note: str = ""


@dataclass
class Context:
    args: argparse.Namespace
    deadline: float
    gpus: tuple = (0, 0)
    baselines: dict = field(default_factory=dict)   # "D->H"/"H->D" -> plain cupy GB/s

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


# ---- NVML ----

def check_nvml(ctx: Context) -> list[Row]:
    count, memory = ctx.gpus
    rows = [Row("NVML discovery", "ok" if count else "FAIL", f"{count} GPU(s)",
                note=f"{memory / 2**30:.1f} GiB in all (gdfut.node.detect_gpus)")]
    try:
        import pynvml
        pynvml.nvmlInit()
        try:
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                name = name.decode() if isinstance(name, bytes) else name
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                rows.append(Row(f"  GPU {i}", "ok", name,
                                note=f"{mem.total / 2**30:.1f} GiB, {mem.free / 2**30:.1f} GiB free"))
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:        # detect_gpus found devices, so NVML itself works
        rows.append(Row("  device names", "FAIL", note=f"NVML: {exc}"))
    return rows


# ---- kernels against their twins ----

def _sync():
    import cupy
    cupy.cuda.Stream.null.synchronize()


def _device_time(fn, *args):
    fn(*args)                       # warm-up: numba compiles the kernel here
    _sync()
    t0 = time.perf_counter()
    out = fn(*args)
    _sync()
    return time.perf_counter() - t0, out


def _host(x):
    return x.get() if hasattr(x, "get") else np.asarray(x)


def _same(device_out, twin_out) -> bool:
    if isinstance(twin_out, tuple):
        return all(_same(d, t) for d, t in zip(device_out, twin_out))
    return np.array_equal(_host(device_out), twin_out)


def _kernel_cases(recs, keys, bounds):
    pids = kernels.partition_ids_numpy(recs, PARTITIONS)
    kpids = kernels.hash_partition_keys_numpy(keys, PARTITIONS)
    return [
        ("partition_ids", kernels.partition_ids, kernels.partition_ids_numpy, ("recs", PARTITIONS)),
        ("hash_partition_ids", kernels.hash_partition_ids, kernels.hash_partition_ids_numpy,
         ("recs", PARTITIONS, 10)),
        ("range_partition_keys", kernels.range_partition_keys, kernels.range_partition_keys_numpy,
         ("keys", bounds)),
        ("hash_partition_keys", kernels.hash_partition_keys, kernels.hash_partition_keys_numpy,
         ("keys", PARTITIONS)),
        ("histogram", kernels.histogram, kernels.histogram_numpy, (pids, PARTITIONS)),
        ("pack (records)", kernels.pack, kernels.pack_numpy, ("recs", pids, PARTITIONS)),
        ("pack (key column)", kernels.pack, kernels.pack_numpy, ("keys", kpids, PARTITIONS)),
    ]


def check_kernels(ctx: Context) -> list[Row]:
    import cupy
    n = ctx.args.records
    rng = np.random.default_rng(0)
    recs = rng.integers(0, 256, size=(n, RECORD_SIZE), dtype=np.uint8)
    keys = rng.integers(-(1 << 62), 1 << 62, size=n)
    bounds = np.sort(rng.choice(keys, size=PARTITIONS - 1))
    on_device = {"recs": cupy.asarray(recs), "keys": cupy.asarray(keys)}
    on_host = {"recs": recs, "keys": keys}
    rows = []
    for name, fn, twin, spec in _kernel_cases(recs, keys, bounds):
        if ctx.time_left() < 10:
            rows.append(Row(f"kernel {name}", "skipped", note="time budget spent"))
            continue
        dev_args = [on_device[a] if isinstance(a, str) else _device_arg(a) for a in spec]
        host_args = [on_host[a] if isinstance(a, str) else a for a in spec]
        try:
            t_dev, out = _device_time(fn, *dev_args)
            t0 = time.perf_counter()
            want = twin(*host_args)
            t_twin = time.perf_counter() - t0
            ok = _same(out, want)
        except Exception as exc:
            rows.append(Row(f"kernel {name}", "FAIL", note=f"{type(exc).__name__}: {exc}"))
            continue
        rows.append(Row(f"kernel {name}", "ok" if ok else "FAIL", f"{n / t_dev / 1e6:,.1f} Mrec/s",
                        f"{n / t_twin / 1e6:,.1f} Mrec/s (numpy twin)", f"{t_twin / t_dev:,.1f}x",
                        f"{n:,} rows" + ("" if ok else ": device result differs from the twin")))
    return rows


def _device_arg(a):
    import cupy
    return cupy.asarray(a) if isinstance(a, np.ndarray) else a


# ---- host <-> device copies ----

def _gbps(nbytes: int, fn) -> float:
    times = []
    for _ in range(COPY_REPEAT):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def check_copies(ctx: Context) -> list[Row]:
    import cupy
    import cupyx
    nbytes = ctx.args.copy_mib << 20
    host = np.empty(nbytes, np.uint8)
    host.fill(7)                                # faulted in before any timing
    dev = cupy.asarray(host)
    pinned = cupyx.empty_pinned(nbytes, np.uint8)
    pinned[:] = host
    pageable = np.empty_like(host)
    pageable.fill(0)
    rows = []
    for direction, plain, variants in (
            ("H->D", lambda: cupy.asarray(host),
             [("pinned buffer", lambda: dev.set(pinned)),
              ("pageable, into an allocated array", lambda: dev.set(host))]),
            ("D->H", lambda: cupy.asnumpy(dev),
             [("pinned buffer", lambda: dev.get(out=pinned)),
              ("pageable, into a faulted array", lambda: dev.get(out=pageable))])):
        base = _gbps(nbytes, plain)
        ctx.baselines[direction] = base
        rows.append(Row(f"copy {direction} plain cupy", "ok", f"{base:.2f} GB/s",
                        note=f"{nbytes / 2**30:.2f} GiB, median of {COPY_REPEAT}"))
        for label, fn in variants:
            rate = _gbps(nbytes, fn)
            rows.append(Row(f"copy {direction} {label}", "ok", f"{rate:.2f} GB/s",
                            f"{base:.2f} GB/s", f"{rate / base:.2f}x"))
    ok = bool(np.array_equal(cupy.asnumpy(dev[:1 << 20]), host[:1 << 20]))
    rows.append(Row("copy round trip intact", "ok" if ok else "FAIL", note="first MiB compared"))
    return rows


CHECKS = [("NVML discovery", check_nvml), ("kernels", check_kernels), ("copies", check_copies)]


# ---- running and printing ----

def gpu_libraries_missing() -> str | None:
    for name in ("cupy", "numba.cuda"):
        try:
            __import__(name)
        except ImportError as exc:
            return f"{name} cannot be imported ({exc}); {kernels.dispatch.GPU_INSTALL_HINT}"
    return None


def run_checks(ctx: Context) -> list[Row]:
    if not ctx.gpus[0]:
        return [Row(name, "skipped", note="no GPU") for name, _ in CHECKS]
    missing = gpu_libraries_missing()
    if missing:
        return [Row(name, "FAIL", note=missing) for name, _ in CHECKS]
    rows = []
    for name, check in CHECKS:
        if ctx.time_left() <= 0:
            rows.append(Row(name, "skipped", note="time budget spent"))
            continue
        try:
            rows.extend(check(ctx))
        except Exception as exc:
            rows.append(Row(name, "FAIL", note=f"{type(exc).__name__}: {exc}"))
    return rows


def format_table(rows: list[Row]) -> str:
    cols = ["check", "status", "figure", "baseline", "ratio", "note"]
    cells = [cols] + [[getattr(r, c) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=10_000_000)
    ap.add_argument("--copy-mib", type=int, default=1024)
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop starting checks after this")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    ctx = Context(args, deadline=t0 + args.budget_s, gpus=detect_gpus())
    if not ctx.gpus[0]:
        print("no GPU: skipped (NVML finds no device here; every GPU check below is skipped)")
    rows = run_checks(ctx)
    print(format_table(rows))
    print(f"\n{time.monotonic() - t0:.1f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
