"""W1 throughput with lineage kept against lineage off, in the same run.

    python bench/lineage_cost.py                 # 21 interleaved pairs of W1 (10,000 no-ops)
    python bench/lineage_cost.py --pairs 9 --tasks 5000 --out /tmp/lineage.json

One gdfut cluster (2 worker CPUs, as every workload in bench/README.md),
warmed up with 500 no-ops. Then W1 runs alternately with
``TaskSubmitter.keep_lineage`` on and off (the order inside each pair
alternates too, so a drift of the machine's load does not favour one side).
Each pair gives a ratio kept/off of tasks per second and one of the
driver's CPU time per task (all its threads: where lineage is recorded;
much less disturbed by other processes on a shared machine than
throughput). Reported for each: the median of the per-pair ratios with a
distribution-free 95% confidence interval (order statistics of a
Binomial(n, 1/2)), and the geometric mean with a 95% interval (normal
approximation of the mean log ratio); also the garbage collections of each
run, the 1-minute load before every run, and what recording and releasing
one task's lineage costs timed alone (no cluster). Issue 9 asks that
lineage cost at most 5%.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import workloads                      # noqa: E402
from bench.systems import GdfutSystem            # noqa: E402


def set_lineage(keep: bool) -> None:
    from gdfut import runtime_context
    rt = runtime_context.require()
    rt.submitter.keep_lineage = keep       # read on the io thread when a task is submitted


def run_w1(system, tasks: int) -> dict:
    load = os.getloadavg()[0]
    gc_runs = [0, 0, 0]

    def count(phase, info):
        if phase == "stop":
            gc_runs[info["generation"]] += 1
    gc.callbacks.append(count)
    cpu0 = time.process_time()
    try:
        row = workloads.w1_tiny_tasks(system, {"tasks": tasks})
    finally:
        gc.callbacks.remove(count)
    # the driver's CPU time (all its threads) per task: where lineage is kept,
    # and much less disturbed by other processes than wall-clock throughput
    row["driver_cpu_us_per_task"] = (time.process_time() - cpu0) / tasks * 1e6
    row["load_1m"] = load
    row["gc_collections"] = gc_runs
    return row


def median_ci(values: list, confidence: float = 0.95) -> tuple:
    """A distribution-free confidence interval of the median: the order
    statistics (k-th smallest, k-th largest) with k the largest such that a
    Binomial(n, 1/2) falls below k with probability <= (1 - confidence)/2."""
    xs = sorted(values)
    n = len(xs)
    tail, k = 0.0, 0
    while True:
        p = math.comb(n, k) / 2 ** n
        if tail + p > (1 - confidence) / 2:
            break
        tail += p
        k += 1
    if k == 0:
        return (float("nan"), float("nan"))    # too few pairs for this confidence
    return (xs[k - 1], xs[n - k])


def summary(ratios: list) -> dict:
    lo, hi = median_ci(ratios)
    logs = [math.log(r) for r in ratios]
    gmean = math.exp(statistics.fmean(logs))
    half = 0.0
    if len(logs) > 1:      # normal approximation of the mean of log ratios
        half = 1.96 * statistics.stdev(logs) / math.sqrt(len(logs))
    return {"median": statistics.median(ratios), "median_ci95": [lo, hi],
            "geomean": gmean, "geomean_ci95": [math.exp(math.log(gmean) - half),
                                               math.exp(math.log(gmean) + half)],
            "min": min(ratios), "max": max(ratios)}


def lineage_micro_us(n: int = 10_000, repeats: int = 20) -> dict:
    """What recording and releasing one W1 task's lineage costs the driver,
    timed alone (the submitter's record_lineage and release_lineage on
    no-op specs, best of ``repeats``): a third figure, independent of the
    cluster's noise."""
    from gdfut.ids import new_task_id
    from gdfut.submitter import TaskSpec, TaskSubmitter

    class Table:
        @staticmethod
        def is_owned(oid):
            return True

    class Runtime:
        table = Table()
        max_lineage_bytes = 256 * 1024 * 1024

    sub = TaskSubmitter(Runtime())
    best_record = best_release = float("inf")
    for _ in range(repeats):
        specs = [TaskSpec(new_task_id(), b"f" * 16, None, "noop", [], [], 1, {"CPU": 1}, 3,
                          [], [], []) for _ in range(n)]
        t0 = time.perf_counter()
        for spec in specs:
            sub.record_lineage(spec)
        t1 = time.perf_counter()
        for spec in specs:
            sub.release_lineage(spec.tid)
        t2 = time.perf_counter()
        best_record, best_release = min(best_record, t1 - t0), min(best_release, t2 - t1)
    return {"record_us": best_record / n * 1e6, "release_us": best_release / n * 1e6}


def measure(pairs: int, tasks: int) -> dict:
    system = GdfutSystem()
    params = workloads.cluster_params()
    system.init(params["num_cpus"], params["object_store_memory"])
    try:
        workloads.warm_up(system, 500)
        runs = {"kept": [], "off": []}
        ratios, cpu_ratios = [], []
        for i in range(pairs):
            order = ("kept", "off") if i % 2 == 0 else ("off", "kept")
            got = {}
            for side in order:
                set_lineage(side == "kept")
                got[side] = run_w1(system, tasks)
                runs[side].append(got[side])
            ratios.append(got["kept"]["tasks_per_s"] / got["off"]["tasks_per_s"])
            cpu_ratios.append(got["kept"]["driver_cpu_us_per_task"]
                              / got["off"]["driver_cpu_us_per_task"])
        set_lineage(True)
    finally:
        system.shutdown()
    median = {side: statistics.median(r["tasks_per_s"] for r in rows)
              for side, rows in runs.items()}
    cpu = {side: statistics.median(r["driver_cpu_us_per_task"] for r in rows)
           for side, rows in runs.items()}
    loads = [r["load_1m"] for rows in runs.values() for r in rows]
    return {"workload": "W1", "tasks": tasks, "pairs": pairs, "runs": runs,
            "ratios_kept_over_off": ratios, "throughput": summary(ratios),
            "median_tasks_per_s": median,
            "cpu_ratios_kept_over_off": cpu_ratios, "driver_cpu": summary(cpu_ratios),
            "median_driver_cpu_us_per_task": cpu,
            "lineage_micro": lineage_micro_us(), "load_1m": [min(loads), max(loads)]}


def _line(what: str, s: dict) -> str:
    lo, hi = s["median_ci95"]
    glo, ghi = s["geomean_ci95"]
    return (f"{what}: median {s['median']:.3f} (95% CI {lo:.3f}-{hi:.3f}), geometric mean "
            f"{s['geomean']:.3f} (95% CI {glo:.3f}-{ghi:.3f}), min {s['min']:.3f}, "
            f"max {s['max']:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=21)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.pairs < 1 or args.tasks < 1:
        ap.error("--pairs and --tasks must be >= 1")
    result = measure(args.pairs, args.tasks)
    for side in ("kept", "off"):
        rates = ", ".join(f"{r['tasks_per_s']:,.0f}" for r in result["runs"][side])
        print(f"W1 lineage {side:4}: {rates} tasks/s (median "
              f"{result['median_tasks_per_s'][side]:,.0f})")
    print(_line("W1 tasks/s kept/off", result["throughput"]))
    print(_line("driver CPU/task kept/off", result["driver_cpu"]))
    cpu = result["median_driver_cpu_us_per_task"]
    micro = result["lineage_micro"]
    print(f"driver CPU per task: kept {cpu['kept']:.1f} us, off {cpu['off']:.1f} us; lineage "
          f"alone: record {micro['record_us']:.2f} us + release {micro['release_us']:.2f} us "
          f"a task; 1-minute load {result['load_1m'][0]:.1f}-{result['load_1m'][1]:.1f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
