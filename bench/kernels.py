"""The numpy twins of gdfut.kernels on one core: partition and pack of 100-byte records.

    python -m bench.kernels [--size-mib 1024] [--partitions 16] [--repeat 3] [--json out.json]

Records as in W5 (bench/README.md): 100 bytes, the key in bytes 0-9, made
before timing. Timed, each ``--repeat`` times: ``partition_ids`` (W5's range
formula), ``hash_partition_ids`` (10-byte key), ``histogram`` and ``pack``
(a stable counting sort into one buffer, per-partition offsets); "partition +
pack" is the sum of the range partition and the pack, the map side of a
shuffle. The reference is a single-thread ``np.copyto`` of the same bytes in
the same run, so the figures can be read as a fraction of memcpy. numpy runs
these on one core. Prints one JSON document (median, min, max of each
figure); GB = 1e9 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

from gdfut.kernels import hash_partition_ids, histogram, pack, partition_ids

RECORD_SIZE = 100


def make_records(n: int, seed: int = 0) -> np.ndarray:
    recs = np.random.default_rng(seed).integers(0, 256, size=(n, RECORD_SIZE), dtype=np.uint8)
    recs[:, 10:20] = recs[:, 0:10]              # W5's integrity copy of the key
    return recs


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _rates(n: int, seconds: list[float]) -> dict:
    rps = [n / s for s in seconds]
    gbps = [n * RECORD_SIZE / s / 1e9 for s in seconds]
    return {"records_per_s": _summary(rps), "GBps": _summary(gbps),
            "seconds": _summary(seconds)}


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(nbytes: int, num_partitions: int, repeat: int) -> dict:
    n = nbytes // RECORD_SIZE
    recs = make_records(n)
    copy_dst = np.empty_like(recs)
    copy_dst.fill(0)                            # fault its pages outside the timing
    times = {k: [] for k in ("memcpy", "partition_ids", "hash_partition_ids", "histogram",
                             "pack", "partition_and_pack")}
    for _ in range(repeat):
        times["memcpy"].append(_timed(np.copyto, copy_dst, recs)[0])
        t_pid, pids = _timed(partition_ids, recs, num_partitions)
        times["partition_ids"].append(t_pid)
        times["hash_partition_ids"].append(_timed(hash_partition_ids, recs, num_partitions)[0])
        times["histogram"].append(_timed(histogram, pids, num_partitions)[0])
        t_pack, packed = _timed(pack, recs, pids, num_partitions)
        times["pack"].append(t_pack)
        times["partition_and_pack"].append(t_pid + t_pack)
        _check(packed, num_partitions, n)
        del packed
    figures = {k: _rates(n, v) for k, v in times.items()}
    memcpy = figures["memcpy"]["GBps"]["median"]
    for k, f in figures.items():
        f["ratio_to_memcpy"] = f["GBps"]["median"] / memcpy
    return {"bench": "kernels (numpy twins, one core)", "records": n, "record_size": RECORD_SIZE,
            "bytes": n * RECORD_SIZE, "partitions": num_partitions, "repeat": repeat,
            "figures": figures, "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "loadavg_1m": os.getloadavg()[0]}


def _check(packed, num_partitions: int, n: int) -> None:
    """Untimed: all records are there, each in its own partition."""
    assert int(packed.offsets[-1]) == n
    expect = np.repeat(np.arange(num_partitions), packed.counts)
    assert np.array_equal(partition_ids(packed.data, num_partitions), expect), \
        "a record is packed outside its partition"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the document to this file")
    args = ap.parse_args(argv)
    doc = run(args.size_mib << 20, args.partitions, args.repeat)
    text = json.dumps(doc, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
