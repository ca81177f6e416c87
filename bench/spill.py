"""Spill benchmark: write and read back more data than the host tier holds.

    python bench/spill.py [--total-gib 4] [--host-gib 1] [--object-mib 64]
                          [--dir DIR] [--json out.json] [--compare ray]

An embedded gdfut cluster with ``object_store_memory`` = ``--host-gib`` puts
``--total-gib`` of 64 MiB numpy arrays (the older ones are spilled to
``--dir`` while later ones are written), then gets every one back in the
order it was put (the spilled ones are restored). Spill GB/s is the bytes the
node reports spilled over the put phase; restore GB/s the bytes restored over
the get phase. The reference, measured in the same run in the same
directory, is a plain sequential ``os.pwrite`` of the same bytes in chunks
of the same size to one file, and ``os.preadv`` of them back (neither side
calls fsync: both measure what the filesystem does with the same calls).
Each measured write phase starts from the same state: an untimed
``os.sync()`` first writes back the dirty pages left by the phase before (the
reference's 4 GiB would otherwise still be flushing and throttle the spills
that follow it, or the other way round).
The figures quoted are the ratios to that reference. GB = 1e9 bytes.

``--compare ray`` runs the same program on Ray in the same run (Ray's
``object_store_memory`` = the host tier, filesystem spilling into the same
directory): its spill and restore GB/s are the bytes Ray's memory summary
reports spilled (restored) over its put (get) phase, by the same definition.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GIB = 1 << 30
MIB = 1 << 20


def reference(directory: str, total: int, chunk: int) -> tuple[float, float]:
    """Sequential write then read of ``total`` bytes in ``chunk`` pieces: GB/s."""
    buf = np.full(chunk, 7, dtype=np.uint8)
    path = os.path.join(directory, "reference.bin")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.sync()                 # untimed: start with no dirty backlog
        t0 = time.perf_counter()
        for off in range(0, total, chunk):
            os.pwrite(fd, buf, off)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for off in range(0, total, chunk):
            os.preadv(fd, [buf], off)
        read_s = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return total / write_s / 1e9, total / read_s / 1e9


def through_gdfut(directory: str, total: int, host: int, chunk: int) -> dict:
    import gdfut
    from gdfut import protocol as P, runtime_context
    gdfut.init(num_cpus=2, object_store_memory=host, spill_dir=os.path.join(directory, "spill"))
    try:
        rt = runtime_context.require()
        count = total // chunk
        os.sync()                 # untimed: start with no dirty backlog
        t0 = time.perf_counter()
        refs = [gdfut.put(np.full(chunk, i % 251, dtype=np.uint8)) for i in range(count)]
        put_s = time.perf_counter() - t0
        after_put = rt.node_request(P.NODE_STATUS)["tiers"]
        t0 = time.perf_counter()
        for i, ref in enumerate(refs):
            value = gdfut.get(ref)
            assert value[0] == value[-1] == i % 251, f"object {i} read back wrong"
            del value
        get_s = time.perf_counter() - t0
        tiers = rt.node_request(P.NODE_STATUS)["tiers"]
        del refs
    finally:
        gdfut.shutdown()
    spilled = after_put["spilled_bytes"]
    restored = tiers["restored_bytes"]
    return {"objects": count, "put_s": put_s, "get_s": get_s, "spilled_bytes": spilled,
            "restored_bytes": restored, "spill_GBps": spilled / put_s / 1e9,
            "restore_GBps": restored / get_s / 1e9,
            "spill_io_GBps": tiers["spilled_bytes"] / max(tiers["write_busy_s"], 1e-9) / 1e9,
            "restore_io_GBps": restored / max(tiers["read_busy_s"], 1e-9) / 1e9}


def _ray_mib(summary: str, what: str) -> float:
    """MiB after "Spilled" / "Restored" in ``ray memory --stats-only`` text."""
    import re
    m = re.search(rf"{what} (\d+(?:\.\d+)?) MiB", summary)
    return float(m.group(1)) if m else 0.0


def through_ray(directory: str, total: int, host: int, chunk: int) -> dict:
    import ray
    from ray._private.internal_api import memory_summary
    spill_dir = os.path.join(directory, "ray-spill")
    os.makedirs(spill_dir, exist_ok=True)
    ctx = ray.init(num_cpus=2, object_store_memory=host, include_dashboard=False,
                   object_spilling_directory=spill_dir)
    try:
        count = total // chunk
        os.sync()                 # untimed: start with no dirty backlog
        t0 = time.perf_counter()
        refs = [ray.put(np.full(chunk, i % 251, dtype=np.uint8)) for i in range(count)]
        put_s = time.perf_counter() - t0
        address = ctx.address_info["address"]     # other Ray clusters may run here too
        after_put = memory_summary(address=address, stats_only=True)
        t0 = time.perf_counter()
        for i, ref in enumerate(refs):
            value = ray.get(ref)
            assert value[0] == value[-1] == i % 251, f"object {i} read back wrong (ray)"
            del value
        get_s = time.perf_counter() - t0
        after_get = memory_summary(address=address, stats_only=True)
        del refs
    finally:
        ray.shutdown()
    spilled = _ray_mib(after_put, "Spilled") * MIB
    restored = _ray_mib(after_get, "Restored") * MIB
    return {"objects": count, "put_s": put_s, "get_s": get_s, "spilled_bytes": spilled,
            "restored_bytes": restored, "spill_GBps": spilled / put_s / 1e9,
            "restore_GBps": restored / get_s / 1e9, "version": ray.__version__}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--total-gib", type=float, default=4.0)
    ap.add_argument("--host-gib", type=float, default=1.0)
    ap.add_argument("--object-mib", type=int, default=64)
    ap.add_argument("--dir", default=None, help="directory to spill into (default: a temp dir)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--compare", choices=("ray",), default=None,
                    help="also run the same program on Ray, in the same run")
    args = ap.parse_args(argv)
    total, host, chunk = int(args.total_gib * GIB), int(args.host_gib * GIB), args.object_mib * MIB
    if total <= host:
        ap.error("--total-gib must exceed --host-gib, or nothing is spilled")
    directory = tempfile.mkdtemp(prefix="gdfut-spill-bench-", dir=args.dir)
    try:
        ref_write, ref_read = reference(directory, total, chunk)
        run = through_gdfut(directory, total, host, chunk)
        ray_run = through_ray(directory, total, host, chunk) if args.compare == "ray" else None
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result = {**run, "reference_write_GBps": ref_write, "reference_read_GBps": ref_read,
              "spill_ratio": run["spill_GBps"] / ref_write,
              "restore_ratio": run["restore_GBps"] / ref_read,
              "total_bytes": total, "host_bytes": host, "object_bytes": chunk,
              "load_1min": os.getloadavg()[0]}
    print(f"{total / GIB:.1f} GiB through a {host / GIB:.2f} GiB host tier in "
          f"{chunk // MIB} MiB objects")
    print(f"  spill   {run['spill_GBps']:6.2f} GB/s  reference write {ref_write:6.2f} GB/s  "
          f"ratio {result['spill_ratio']:.2f}x  ({run['spilled_bytes'] / GIB:.2f} GiB spilled)")
    print(f"  restore {run['restore_GBps']:6.2f} GB/s  reference read  {ref_read:6.2f} GB/s  "
          f"ratio {result['restore_ratio']:.2f}x  ({run['restored_bytes'] / GIB:.2f} GiB restored)")
    print(f"  disk tier's own rate (bytes over time with I/O in flight): spill "
          f"{run['spill_io_GBps']:.2f} GB/s ({run['spill_io_GBps'] / ref_write:.2f}x), restore "
          f"{run['restore_io_GBps']:.2f} GB/s ({run['restore_io_GBps'] / ref_read:.2f}x)")
    if ray_run is not None:
        result["ray"] = ray_run
        vs_spill = run["spill_GBps"] / max(ray_run["spill_GBps"], 1e-9)
        vs_restore = run["restore_GBps"] / max(ray_run["restore_GBps"], 1e-9)
        print(f"  ray {ray_run['version']}: spill {ray_run['spill_GBps']:.2f} GB/s "
              f"({ray_run['spill_GBps'] / ref_write:.2f}x reference; gdfut/ray "
              f"{vs_spill:.2f}x), restore "
              f"{ray_run['restore_GBps']:.2f} GB/s ({ray_run['restore_GBps'] / ref_read:.2f}x "
              f"reference; gdfut/ray {vs_restore:.2f}x)"
              f"; {ray_run['spilled_bytes'] / GIB:.2f} GiB spilled, "
              f"{ray_run['restored_bytes'] / GIB:.2f} GiB restored; put phase "
              f"{ray_run['put_s']:.1f} s (gdfut {run['put_s']:.1f} s), get phase "
              f"{ray_run['get_s']:.1f} s (gdfut {run['get_s']:.1f} s)")
    print(f"  load average {result['load_1min']:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
