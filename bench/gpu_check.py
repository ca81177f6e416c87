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
- device objects (a gdfut cluster with one GPU, ``device_store_memory`` of a
  few ``--object-mib`` objects): a cupy array returned by a GPU task read by
  the next GPU task (same process: the object itself) and by an actor in
  another process on the same GPU (CUDA IPC, zero-copy: the node counts the
  import, no host-tier byte is used, nothing moves down; first and second
  read as GB/s); an object moved down to host read by a GPU task (restored
  onto its device: tier "device" again); device spill D->H->disk of more objects than device and host hold
  together, every one read back intact by a GPU task and by ``get``; and the
  device tier's own copies: ``get(ref, device="cpu")`` of an object on the
  device (D->H: the holder writes the host copy) and ``get`` of a host-tier
  device object in the driver (H->D, a cupy array), as ratios to the plain
  CuPy copies above.
- device objects across nodes (two nodes on this host, data plane ucx): a
  GPU actor on one node reads a device object made on the other; whether the
  GPU-to-GPU path (``gdfut/device_transfer.py``) was taken (it must be, on a
  real GPU with UCX built with CUDA) and its GB/s against a plain CuPy device
  copy, and the host path's (``GDFUT_DEVICE_TRANSFER=host``) against it.

``--emulated`` runs the device-object checks in CPU mode (``GDFUT_CPU_MODE=1``,
an emulated GPU, numpy arrays; baselines: a numpy copy) so their logic runs
without a GPU; the other checks are skipped then.

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


# ---- device objects: the device tier of a gdfut cluster ----

def _make_array(i, n):
    import gdfut
    xp = gdfut.array_module()
    return xp.full(n, i % 251, dtype=xp.uint8)


def _check_array(a, i, n):
    """(intact, how it was served): a cupy array, or a writable numpy array
    on an emulated GPU, is the object itself (or a device copy of it: IPC on
    a real GPU, a restore); a read-only numpy array is a mapped view (of
    another process's device copy, or of the host copy: the node's counters
    tell which)."""
    intact = bool(a.shape == (n,) and bool((a == i % 251).all()))
    kind = type(a).__module__.split(".")[0]
    itself = kind != "numpy" or bool(a.flags.writeable)
    return intact, f"{kind}, " + ("the object itself" if itself else "a read-only view")


def _plain_gbps(direction: str, nbytes: int, emulated: bool, ctx: Context) -> float:
    """The baseline copy: plain cupy (from the copies check, or measured
    now); a numpy copy of the same bytes on an emulated GPU."""
    if not emulated and direction in ctx.baselines:
        return ctx.baselines[direction]
    src = np.full(nbytes, 3, np.uint8)
    if emulated:
        dst = np.empty_like(src)
        dst.fill(0)
        return _median_gbps(nbytes, lambda: np.copyto(dst, src))
    import cupy
    dev = cupy.asarray(src)
    fn = (lambda: cupy.asarray(src)) if direction == "H->D" else (lambda: cupy.asnumpy(dev))
    return _gbps(nbytes, fn)


def check_device_objects(ctx: Context) -> list[Row]:
    import os
    import tempfile
    import gdfut
    emulated = bool(ctx.args.emulated)
    obj = ctx.args.object_mib << 20
    big = ctx.args.copy_mib << 20
    device_budget = max(4 * obj, big + obj)
    host = 4 * obj + 2 * big
    make = gdfut.remote(num_gpus=1)(_make_array)
    check = gdfut.remote(num_gpus=1)(_check_array)

    @gdfut.remote(num_gpus=0.5)
    class Side:
        def make(self, i, n):
            return _make_array(i, n)

        def check(self, a, i, n):
            return _check_array(a, i, n)

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gdfut-gpu-check-") as spill:
        gdfut.init(num_cpus=4, num_gpus=1, object_store_memory=host,
                   device_store_memory=device_budget, spill_dir=spill, log_to_driver=False)
        try:
            rows += _device_between_tasks(make, check, Side, obj)
            if ctx.time_left() > 30:
                rows += _device_restore(make, check, obj, device_budget)
            if ctx.time_left() > 30:
                rows += _device_spill(make, check, obj, device_budget, host)
            if ctx.time_left() > 30:
                rows += _device_copies(ctx, make, big, emulated)
        finally:
            gdfut.shutdown()
        left = [f for _, _, files in os.walk(spill) for f in files if f.startswith("spill-")]
        rows.append(Row("device: spill files gone", "ok" if not left else "FAIL",
                        note=f"{len(left)} left" if left else "after shutdown"))
    return rows


def _tiers():
    from gdfut import protocol as P, runtime_context
    return runtime_context.require().node_request(P.NODE_STATUS)["tiers"]


def _device_between_tasks(make, check, Side, obj) -> list[Row]:
    import gdfut
    ref = make.remote(5, obj)
    intact, served = gdfut.get(check.remote(ref, 5, obj))
    rows = [Row("device: GPU task -> GPU task", "ok" if intact else "FAIL", served,
                note=f"{obj >> 20} MiB (one GPU: the next task usually runs in the same worker)")]
    rows += _device_ipc(Side, obj)
    return rows


def _device_ipc(Side, obj) -> list[Row]:
    """Another process on the same GPU maps the producer's device copy (CUDA
    IPC; a shared-memory segment on an emulated GPU): zero-copy, checked by
    the node's counters — one more import, no host-tier byte, nothing moved
    down. First read (the export: on an emulated GPU the copy moves into the
    segment once) and a second read (mapping only), each as GB/s of the
    object's size."""
    import gdfut
    a, b = Side.remote(), Side.remote()
    ref = a.make.remote(9, obj)
    gdfut.wait([ref])
    gdfut.get(b.check.remote(np.full(4, 9, np.uint8), 9, 4))   # b started before timing
    before = _tiers()
    times, served = [], ""
    intact = True
    for _ in range(2):
        t0 = time.perf_counter()
        ok, served = gdfut.get(b.check.remote(ref, 9, obj))
        times.append(time.perf_counter() - t0)
        intact = intact and ok
    after = _tiers()
    imports = after.get("device_imports", 0) - before.get("device_imports", 0)
    host = after["host_bytes"] - before["host_bytes"]
    moved = after["moved_down_objects"] - before["moved_down_objects"]
    zero_copy = imports == 2 and host == 0 and moved == 0
    rows = [Row("device: other process, same GPU (IPC)", "ok" if intact and zero_copy else "FAIL",
                f"{obj / times[0] / 1e9:.2f} / {obj / times[1] / 1e9:.2f} GB/s",
                note=f"{served}; {imports} imports, {host} host-tier bytes, {moved} moved down; "
                     f"{obj >> 20} MiB, first read {times[0] * 1e3:.0f} ms (export), "
                     f"second {times[1] * 1e3:.0f} ms")]
    del ref
    gdfut.kill(a)
    gdfut.kill(b)
    return rows


def _device_restore(make, check, obj, device_budget) -> list[Row]:
    """An object moved down to host, read by a GPU task: restored onto that
    task's device (tier "device" again, counted in the budget); figure: the
    read with its restore, as GB/s (H->D on a real GPU)."""
    import gdfut
    from gdfut import protocol as P, runtime_context
    n = device_budget // obj + 1                   # one more than fits: the first moves down
    refs = [make.remote(i, obj) for i in range(n)]
    gdfut.wait(refs, num_returns=n, timeout=300)

    def tiers_of(ref):
        rows = runtime_context.require().node_request(P.NODE_MEMORY)["store"]
        return sorted(r["tier"] for r in rows if bytes(r["object_id"]) == ref.id)
    deadline = time.monotonic() + 60
    while "device" in tiers_of(refs[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    before = _tiers()
    t0 = time.perf_counter()
    intact, served = gdfut.get(check.remote(refs[0], 0, obj), timeout=300)
    dt = time.perf_counter() - t0
    after = _tiers()
    restored = after.get("device_restores", 0) - before.get("device_restores", 0)
    where = tiers_of(refs[0])
    ok = intact and restored == 1 and "device" in where and after["device_bytes"] <= device_budget
    del refs
    return [Row("device: restore onto the device", "ok" if ok else "FAIL",
                f"{obj / dt / 1e9:.2f} GB/s",
                note=f"{served}; {restored} restored, now in {'+'.join(where)}; "
                     f"{obj >> 20} MiB read by a GPU task in {dt * 1e3:.0f} ms")]


def _device_spill(make, check, obj, device_budget, host) -> list[Row]:
    import gdfut
    n = (device_budget + host) // obj + 4          # more than device and host together
    t0 = time.perf_counter()
    refs = [make.remote(i, obj) for i in range(n)]
    gdfut.wait(refs, num_returns=n, timeout=600)
    made = time.perf_counter() - t0
    t = _tiers()
    moved, spilled = t.get("moved_down_objects", 0), t.get("spilled_objects", 0)
    t0 = time.perf_counter()
    by_task = gdfut.get([check.remote(r, i, obj) for i, r in enumerate(refs)], timeout=600)
    by_get = []
    for i, r in enumerate(refs):
        v = gdfut.get(r, device="cpu")
        by_get.append(bool(v.shape == (obj,) and (v == i % 251).all()))
        del v
    read = time.perf_counter() - t0
    restored = _tiers().get("restored_objects", 0)
    ok = all(x[0] for x in by_task) and all(by_get) and moved > 0 and spilled > 0 and restored > 0
    del refs
    return [Row("device: spill D->H->disk, restore", "ok" if ok else "FAIL",
                f"{moved} moved, {spilled} spilled, {restored} restored",
                note=f"{n} x {obj >> 20} MiB through {device_budget >> 20} MiB device + "
                     f"{host >> 20} MiB host; made in {made:.1f} s, read back (task and get) "
                     f"in {read:.1f} s")]


def _median_gbps(nbytes: int, fn) -> float:
    times = []
    for _ in range(COPY_REPEAT):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def _device_copies(ctx, make, nbytes, emulated) -> list[Row]:
    import gdfut
    rows = []
    ref = make.remote(1, nbytes)
    gdfut.wait([ref])
    t0 = time.perf_counter()
    v = gdfut.get(ref, device="cpu")        # the holder writes the host copy now
    dt = time.perf_counter() - t0
    ok = isinstance(v, np.ndarray) and bool(v[0] == 1 and v[-1] == 1)
    del v
    base = _plain_gbps("D->H", nbytes, emulated, ctx)
    rate = nbytes / dt / 1e9
    rows.append(Row("device: D->H get(device='cpu')", "ok" if ok else "FAIL", f"{rate:.2f} GB/s",
                    f"{base:.2f} GB/s", f"{rate / base:.2f}x",
                    f"{nbytes >> 20} MiB: the holder's host copy (serialize + store write)"))
    t0 = time.perf_counter()
    v = gdfut.get(ref)                      # host copy -> cupy in the driver (numpy emulated)
    if not emulated:
        import cupy
        cupy.cuda.Stream.null.synchronize()
    dt = time.perf_counter() - t0
    want = "numpy" if emulated else "cupy"
    ok = type(v).__module__.split(".")[0] == want and bool(v[0] == 1 and v[-1] == 1)
    del v
    base = _plain_gbps("H->D", nbytes, emulated, ctx)
    rate = nbytes / dt / 1e9
    rows.append(Row("device: H->D get() in the driver", "ok" if ok else "FAIL",
                    f"{rate:.2f} GB/s", f"{base:.2f} GB/s", f"{rate / base:.2f}x",
                    f"{nbytes >> 20} MiB, a {want} array from the host tier" +
                    (" (emulated: a zero-copy view, no copy to compare)" if emulated else "")))
    del ref
    return rows


# ---- device objects between two nodes over ucx ----

def _read_there(refs, i, n, mode):
    """In a GPU actor on the other node: read refs[0] with
    GDFUT_DEVICE_TRANSFER=mode (read per pull, so one process can time both
    paths); (intact, served, GPU-to-GPU pulls it took, seconds, facts)."""
    import os
    import gdfut
    from gdfut import device_transfer as dtr, runtime_context
    os.environ[dtr.ENV] = mode
    rt = runtime_context.require()
    before = rt.device.pulls.received_objects
    t0 = time.perf_counter()
    v = gdfut.get(refs[0])
    if type(v).__module__.split(".")[0] == "cupy":
        import cupy
        cupy.cuda.Stream.null.synchronize()
    secs = time.perf_counter() - t0
    intact, served = _check_array(v, i, n)
    facts = dtr.local_facts(rt)
    return intact, served, rt.device.pulls.received_objects - before, secs, facts


def _plain_d2d_gbps(nbytes: int, emulated: bool) -> float:
    if emulated:
        src = np.full(nbytes, 3, np.uint8)
        dst = np.empty_like(src)
        dst.fill(0)
        return _median_gbps(nbytes, lambda: np.copyto(dst, src))
    import cupy
    src = cupy.full(nbytes, 3, cupy.uint8)
    dst = cupy.empty_like(src)
    return _gbps(nbytes, lambda: cupy.copyto(dst, src))


def check_device_across_nodes(ctx: Context) -> list[Row]:
    """Two nodes on this host (both on GPU 0), data plane ucx: a GPU actor on
    node b reads a device object made on node a. The device path
    (``gdfut/device_transfer.py``: the holder's worker sends the device
    arrays, the reader receives them into cupy memory) must be taken where
    there is a real GPU and UCX has CUDA; its GB/s (second read, connection
    up) against a plain cupy device copy and against the host path
    (``GDFUT_DEVICE_TRANSFER=host``: host copy, data plane, restore) of
    another object of the same size, in the same run. One host and one GPU:
    UCX moves it with cuda_ipc/cuda_copy; between hosts it would use
    RDMA/NVLink where UCX finds them."""
    import gdfut
    from gdfut.testing import Cluster
    try:
        from gdfut.transport.ucx import import_ucxx
        import_ucxx()
    except RuntimeError as exc:
        return [Row("device across nodes (ucx)", "skipped", note=str(exc))]
    emulated = bool(ctx.args.emulated)
    n = ctx.args.object_mib << 20
    store = 4 * n + (64 << 20)
    make = gdfut.remote(num_gpus=1)(_make_array)

    @gdfut.remote(num_gpus=1)
    class Reader:
        def read(self, refs, i, n, mode):
            return _read_there(refs, i, n, mode)

    c = Cluster(transport="ucx")
    rows: list[Row] = []
    try:
        a = c.add_node(num_cpus=2, num_gpus=1, object_store_memory=store, wait=False)
        b = c.add_node(num_cpus=2, num_gpus=1, object_store_memory=store)
        c.connect()
        on = {k: gdfut.NodeAffinitySchedulingStrategy(x.node_id) for k, x in (("a", a), ("b", b))}
        refs = [make.options(scheduling_strategy=on["a"]).remote(i, n) for i in range(3)]
        gdfut.wait(refs, num_returns=3)
        reader = Reader.options(scheduling_strategy=on["b"]).remote()
        first = gdfut.get(reader.read.remote([refs[0]], 0, n, "auto"))
        second = gdfut.get(reader.read.remote([refs[0]], 0, n, "auto"))
        host = gdfut.get(reader.read.remote([refs[1]], 1, n, "host"))
        base = _plain_d2d_gbps(n, emulated)
        dev_rate, host_rate = n / second[3] / 1e9, n / host[3] / 1e9
        taken = bool(first[2] and second[2])
        want = not emulated and all(first[4].values())
        ok = first[0] and second[0] and host[0] and taken == want
        facts = ", ".join(f"{k}={v}" for k, v in first[4].items() if k != "device_object")
        rows.append(Row("device across nodes (ucx): device path", "ok" if ok else "FAIL",
                        f"{dev_rate:.2f} GB/s", f"{base:.2f} GB/s", f"{dev_rate / base:.2f}x",
                        f"{n >> 20} MiB, taken: {'yes' if taken else 'no (figures: the host path)'} "
                        f"({'expected' if taken == want else 'NOT expected'}; {facts}); "
                        f"{second[1]}; first read {n / first[3] / 1e9:.2f} GB/s"
                        " (baseline: a plain " + ("numpy" if emulated else "cupy") +
                        " device copy)"))
        rows.append(Row("device across nodes (ucx): host path", "ok" if host[0] else "FAIL",
                        f"{host_rate:.2f} GB/s", f"{dev_rate:.2f} GB/s",
                        f"{host_rate / dev_rate:.2f}x",
                        f"GDFUT_DEVICE_TRANSFER=host, another {n >> 20} MiB object; "
                        f"{host[1]} (baseline: the device-path row)"))
        del refs
    finally:
        c.shutdown()
    return rows


CHECKS = [("NVML discovery", check_nvml), ("kernels", check_kernels), ("copies", check_copies),
          ("device objects", check_device_objects),
          ("device across nodes", check_device_across_nodes)]
EMULATED_CHECKS = {"device objects", "device across nodes"}


# ---- running and printing ----

def gpu_libraries_missing() -> str | None:
    for name in ("cupy", "numba.cuda"):
        try:
            __import__(name)
        except ImportError as exc:
            return f"{name} cannot be imported ({exc}); {kernels.dispatch.GPU_INSTALL_HINT}"
    return None


def run_checks(ctx: Context) -> list[Row]:
    emulated = bool(getattr(ctx.args, "emulated", False))
    if not ctx.gpus[0] and not emulated:
        return [Row(name, "skipped", note="no GPU") for name, _ in CHECKS]
    missing = None if emulated else gpu_libraries_missing()
    if missing:
        return [Row(name, "FAIL", note=missing) for name, _ in CHECKS]
    rows = []
    for name, check in CHECKS:
        if emulated and name not in EMULATED_CHECKS:
            rows.append(Row(name, "skipped", note="--emulated: needs a real GPU"))
            continue
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
    ap.add_argument("--object-mib", type=int, default=256,
                    help="size of each device object in the device-tier checks")
    ap.add_argument("--emulated", action="store_true",
                    help="run the device-object checks on an emulated GPU (CPU mode)")
    ap.add_argument("--budget-s", type=float, default=300.0, help="stop starting checks after this")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args(argv)
    if args.emulated:
        import os
        os.environ["GDFUT_CPU_MODE"] = "1"      # before any gdfut process starts
    t0 = time.monotonic()
    ctx = Context(args, deadline=t0 + args.budget_s, gpus=detect_gpus())
    if not ctx.gpus[0] and not args.emulated:
        print("no GPU: skipped (NVML finds no device here; every GPU check below is skipped)")
    rows = run_checks(ctx)
    print(format_table(rows))
    print(f"\n{time.monotonic() - t0:.1f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return 1 if any(r.status == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
