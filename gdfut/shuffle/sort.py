"""The sort benchmark: ``python -m gdfut.shuffle.sort`` (also ``gdfut bench sort``).

Generates ``--gib`` GiB of 100-byte records (gensort's layout as W5 defines
it: 10-byte key, its copy in bytes 10-19, 80 random bytes) in ``--maps`` map
tasks, sorts them into ``--reducers`` partitions with ``gdfut.shuffle``, then
validates as valsort does: record count, order within and across partitions,
and the checksum of all records against the checksum of the input.

In memory (default) each reducer sorts and returns its partition's summary;
with ``--output-dir`` each reducer writes its sorted partition to a file and
validation reads the files back. Tasks that get GPUs (``--gpus-per-task``)
generate, partition and sort on the device (CuPy through gdfut.kernels).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time

GiB = 1 << 30
GB = 1e9


# ---- task bodies (module level: shipped by reference) ----

def make_block(map_index: int, num_records: int, seed: int, skew: float):
    """A map's records: on the device when the task was given a GPU and one
    is usable (CuPy), else numpy (CPU mode, emulated GPUs)."""
    import numpy as np

    import gdfut
    from gdfut import kernels
    from gdfut.shuffle import records
    xp = kernels.xp() if gdfut.is_initialized() and gdfut.get_gpu_ids() else np
    return records.generate(map_index, num_records, seed, skew, xp=xp)


def input_summary(map_index: int, num_records: int, seed: int, skew: float) -> tuple[int, int]:
    from gdfut.shuffle import records
    rec = records.generate(map_index, num_records, seed, skew)
    return rec.shape[0], records.checksum(rec)


def merge_sorted(blocks):
    from gdfut.shuffle import records
    return records.sort_records(records.concat(blocks))


def reduce_summary(blocks, reducer: int) -> dict:
    """Sort and summarize; the concatenated and sorted records live in buffers
    the process reuses (only the summary leaves), so they cost no page faults."""
    from gdfut.shuffle import records
    rec = records.concat(blocks, scratch_slot="reduce-in")
    return records.summarize(records.sort_records(rec, scratch_slot="reduce-out"), reducer)


def reduce_sorted(blocks, reducer: int):
    from gdfut.shuffle import records
    return records.sort_records(records.concat(blocks))


def file_summary(path: str, reducer: int) -> dict:
    from gdfut.shuffle import records
    return records.summarize(records.read_partition(path), reducer)


# ---- the benchmark ----

def split_records(total: int, maps: int) -> list[int]:
    base, extra = divmod(total, maps)
    return [base + (1 if m < extra else 0) for m in range(maps)]


def run_sort(gib: float, maps: int, reducers: int, strategy: str = "simple", *,
             output_dir: str | None = None, seed: int = 0, skew: float = 0.0,
             merge_factor: int = 4, max_reducer_blocks: int | None = None,
             gpus_per_task: float = 0, progress: bool | None = None,
             records: int | None = None, sorted_merges: bool = False,
             after_sort=None) -> dict:
    """One sort on the running cluster; returns the report (``ok`` etc.).

    Merges (push, riffle) concatenate by default: the reducer sorts once.
    ``sorted_merges=True`` sorts in the merge too (Exoshuffle's merge), which
    only pays where reducers are the bottleneck; on one node it doubles the
    sorting. ``after_sort()``: called once the sort is done, before the
    (untimed) validation; its result is the report's ``after_sort``."""
    import gdfut
    from gdfut.shuffle import records as R
    from gdfut.shuffle import shuffle
    total = records if records is not None else int(gib * GiB) // R.RECORD_SIZE
    counts = split_records(total, maps)
    inputs = [functools.partial(make_block, m, n, seed, skew) for m, n in enumerate(counts)]
    opts = {"num_gpus": gpus_per_task} if gpus_per_task else {}
    t0 = time.perf_counter()
    out = shuffle(inputs, None, reduce_sorted if output_dir else reduce_summary, reducers,
                  "range", strategy, merge_fn=merge_sorted if sorted_merges else None,
                  merge_factor=merge_factor, max_reducer_blocks=max_reducer_blocks,
                  output_dir=output_dir, progress=progress,
                  map_options=opts, merge_options=opts, reduce_options=opts)
    results = gdfut.get(list(out))
    sort_s = time.perf_counter() - t0
    probe = after_sort() if after_sort is not None else None
    t1 = time.perf_counter()
    if output_dir:
        summarize = gdfut.remote(file_summary)
        summaries = gdfut.get([summarize.remote(p, r) for r, p in enumerate(results)])
    else:
        summaries = results
    check_input = gdfut.remote(input_summary)
    inp = gdfut.get([check_input.remote(m, n, seed, skew) for m, n in enumerate(counts)])
    expected_checksum = sum(c for _, c in inp) & R.MASK64
    verdict = R.validate(summaries, sum(n for n, _ in inp), expected_checksum)
    validate_s = time.perf_counter() - t1
    s = out.stats
    nbytes = total * R.RECORD_SIZE
    return {"ok": verdict["ok"], "errors": verdict["errors"], "records": verdict["records"],
            "bytes": nbytes, "elapsed_s": sort_s, "GBps": nbytes / GB / sort_s,
            "strategy": strategy, "maps": maps, "reducers": reducers,
            "merge_factor": merge_factor, "merges": s.merges,
            "spilled_bytes": s.spilled_bytes, "restored_bytes": s.restored_bytes,
            "peak_spill_dir_bytes": s.peak_spill_dir_bytes,
            "phases_s": {**s.phase_s, "validate": validate_s},
            "output_dir": output_dir, "after_sort": probe}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m gdfut.shuffle.sort",
                                 description="sort benchmark on gdfut.shuffle (gensort layout, "
                                             "valsort checks)")
    ap.add_argument("--gib", type=float, default=1.0, help="GiB of records (2^30 bytes)")
    ap.add_argument("--records", type=int, default=None,
                    help="exact number of records (overrides --gib)")
    ap.add_argument("--maps", type=int, default=16)
    ap.add_argument("--reducers", type=int, default=16)
    ap.add_argument("--strategy", choices=("simple", "push", "riffle"), default="simple")
    ap.add_argument("--merge-factor", type=int, default=4,
                    help="maps per merge (push, riffle)")
    ap.add_argument("--max-reducer-blocks", type=int, default=None,
                    help="push: merge rounds only while a reducer would read more blocks "
                         "than this (default: 0 on several nodes, 256 on one)")
    ap.add_argument("--sorted-merges", action="store_true",
                    help="merges sort their output too (default: they concatenate)")
    ap.add_argument("--num-cpus", type=float, default=None)
    ap.add_argument("--object-store-memory", type=int, default=None, metavar="BYTES")
    ap.add_argument("--spill-dir", default=None, metavar="DIR")
    ap.add_argument("--address", default=None, metavar="HOST:PORT",
                    help="join this cluster instead of starting one")
    ap.add_argument("--session-dir", default=None, metavar="DIR",
                    help="with --address: the cluster's session directory (its token); "
                         "default: the latest session on this machine")
    ap.add_argument("--output-dir", default=None, metavar="DIR",
                    help="write sorted partitions here (validated from the files)")
    ap.add_argument("--gpus-per-task", type=float, default=0,
                    help="GPUs for each map, merge and reduce (records live on the device)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skew", type=float, default=0.0, help="skewed keys (0: uniform)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--json", action="store_true",
                    help="print the report as one JSON object on the last line")
    return ap


def _check_args(ap, a) -> None:
    """Every flag checked before a cluster starts: ``ap.error`` (exit 2) names it."""
    import math
    if a.maps < 1 or a.reducers < 1:
        ap.error("--maps and --reducers must be >= 1")
    if a.reducers > 1 << 16:
        ap.error("--reducers must be <= 65536 (range partitions split a 16-bit key prefix)")
    if a.records is None and not (math.isfinite(a.gib) and a.gib > 0):
        ap.error(f"--gib must be a number > 0, got {a.gib}")
    if a.records is not None and a.records < 0:
        ap.error(f"--records must be >= 0, got {a.records}")
    if a.merge_factor < 1:
        ap.error(f"--merge-factor must be >= 1, got {a.merge_factor}")
    if a.max_reducer_blocks is not None and a.max_reducer_blocks < 0:
        ap.error(f"--max-reducer-blocks must be >= 0, got {a.max_reducer_blocks}")
    if a.seed < 0:
        ap.error(f"--seed must be >= 0, got {a.seed}")
    if not (math.isfinite(a.skew) and a.skew >= 0):
        ap.error(f"--skew must be a number >= 0, got {a.skew}")
    if not (math.isfinite(a.gpus_per_task) and a.gpus_per_task >= 0):
        ap.error(f"--gpus-per-task must be >= 0, got {a.gpus_per_task}")
    if a.num_cpus is not None and not (math.isfinite(a.num_cpus) and a.num_cpus > 0):
        ap.error(f"--num-cpus must be > 0 (the maps and reducers need CPUs), got {a.num_cpus}")
    if a.address and (a.num_cpus is not None or a.object_store_memory or a.spill_dir):
        ap.error("--num-cpus, --object-store-memory and --spill-dir apply to the cluster this "
                 "command starts; with --address the running cluster's settings hold")
    if a.session_dir and not a.address:
        ap.error("--session-dir names the session of the cluster --address joins")
    _check_places(ap, a)


def _check_places(ap, a) -> None:
    """--address's form, the store options and --output-dir (made if missing)."""
    from gdfut.tier_options import TierOptionError, check_store_options, check_writable_dir
    if a.address and a.address != "auto":
        from gdfut.api import _join_address
        from gdfut.exceptions import InvalidAddressError
        try:
            _join_address(a.address, None)
        except InvalidAddressError as exc:
            ap.error(f"--address: {exc}")
    try:
        tiers = check_store_options(a.object_store_memory, None, a.spill_dir,
                                    names={"object_store_memory": "--object-store-memory",
                                           "spill_dir": "--spill-dir"})
        if a.output_dir is not None:
            a.output_dir = check_writable_dir(a.output_dir, "--output-dir")
    except TierOptionError as exc:
        ap.error(str(exc))
    a.spill_dir = tiers["spill_dir"]


def _print_report(rep: dict) -> None:
    print(f"sort: {rep['records']:,} records ({rep['bytes'] / GB:.3f} GB), strategy "
          f"{rep['strategy']}, {rep['maps']} maps, {rep['reducers']} reducers")
    print(f"  elapsed {rep['elapsed_s']:.2f} s, {rep['GBps']:.3f} GB/s")
    print("  phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in rep["phases_s"].items()))
    print(f"  spilled {rep['spilled_bytes'] / GB:.2f} GB, restored "
          f"{rep['restored_bytes'] / GB:.2f} GB, spill dir peak "
          f"{rep['peak_spill_dir_bytes'] / GB:.2f} GB")
    print("  validation: " + ("OK" if rep["ok"] else "FAILED: " + "; ".join(rep["errors"])))


def main(argv=None) -> int:
    ap = _parser()
    a = ap.parse_args(argv)
    _check_args(ap, a)
    import gdfut
    from gdfut.exceptions import GdfutError
    try:
        if a.address:
            gdfut.init(address=a.address, session_dir=a.session_dir, log_to_driver=True)
        else:
            gdfut.init(num_cpus=a.num_cpus, object_store_memory=a.object_store_memory,
                       spill_dir=a.spill_dir)
        try:
            rep = run_sort(a.gib, a.maps, a.reducers, a.strategy, output_dir=a.output_dir,
                           seed=a.seed, skew=a.skew, merge_factor=a.merge_factor,
                           max_reducer_blocks=a.max_reducer_blocks,
                           gpus_per_task=a.gpus_per_task,
                           progress=False if (a.no_progress or a.json) else None,
                           records=a.records, sorted_merges=a.sorted_merges)
        finally:
            gdfut.shutdown()
    except GdfutError as exc:      # no cluster there, a task that cannot run...: its message
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        if a.json:
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    _print_report(rep)
    if a.json:
        print(json.dumps(rep))
    return 0 if rep["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
