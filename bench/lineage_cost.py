"""W1 throughput with lineage kept against lineage off, in the same run.

    python bench/lineage_cost.py                 # 7 interleaved pairs of W1 (10,000 no-ops)
    python bench/lineage_cost.py --pairs 9 --tasks 5000 --out /tmp/lineage.json

One gdfut cluster (2 worker CPUs, as every workload in bench/README.md),
warmed up with 500 no-ops. Then W1 runs alternately with
``TaskSubmitter.keep_lineage`` on and off (the order inside each pair
alternates too, so a drift of the machine's load does not favour one side).
Each pair gives a ratio kept/off of tasks per second and one of the
driver's CPU time per task (all its threads: where lineage is recorded;
much less disturbed by other processes on a shared machine than
throughput); the figures are the medians of those ratios (and the medians
of each side), with the 1-minute load average before every run. Issue 9 asks that lineage cost at most 5%.
"""
from __future__ import annotations

import argparse
import json
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
    cpu0 = time.process_time()
    row = workloads.w1_tiny_tasks(system, {"tasks": tasks})
    # the driver's CPU time (all its threads) per task: where lineage is kept,
    # and much less disturbed by other processes than wall-clock throughput
    row["driver_cpu_us_per_task"] = (time.process_time() - cpu0) / tasks * 1e6
    row["load_1m"] = load
    return row


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
    return {"workload": "W1", "tasks": tasks, "pairs": pairs, "runs": runs,
            "ratios_kept_over_off": ratios,
            "median_ratio_kept_over_off": statistics.median(ratios),
            "min_ratio": min(ratios), "max_ratio": max(ratios),
            "median_tasks_per_s": median,
            "cpu_ratios_kept_over_off": cpu_ratios,
            "median_cpu_ratio_kept_over_off": statistics.median(cpu_ratios),
            "median_driver_cpu_us_per_task": cpu}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=7)
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
    print("kept/off per pair: " + ", ".join(f"{x:.3f}" for x in result["ratios_kept_over_off"]))
    print(f"median kept/off: {result['median_ratio_kept_over_off']:.3f} "
          f"(min {result['min_ratio']:.3f}, max {result['max_ratio']:.3f}); load "
          f"{min(r['load_1m'] for s in result['runs'].values() for r in s):.1f}-"
          f"{max(r['load_1m'] for s in result['runs'].values() for r in s):.1f}")
    print(f"driver CPU per task: kept {result['median_driver_cpu_us_per_task']['kept']:.1f} us, "
          f"off {result['median_driver_cpu_us_per_task']['off']:.1f} us; median kept/off per "
          f"pair {result['median_cpu_ratio_kept_over_off']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
