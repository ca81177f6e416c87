"""W5 and W5L (bench/README.md): the sort shuffle on gdfut.shuffle, the same
program on Ray and Dask (``--compare``), and beside them the single-node limit.

    python -m bench.shuffle                                # W5, gdfut simple + push, limit
    python -m bench.shuffle --workloads W5,W5L --compare ray,dask --repeat 3
    python -m bench.shuffle --quick --repeat 1             # sizes and counts / 4

Every system runs in a fresh process per workload (W5L needs a 1 GiB store),
with 2 worker CPUs, a warm-up, then ``--repeat`` timed sorts in that cluster.
The map and reduce bodies are the same functions on every system
(gdfut.shuffle.sort / records: generation, W5's range partition through
gdfut.kernels, sort, summary); validation (count, order, checksum against the
input) runs after each timed sort and is not timed.

The limit: the same maps (generate + partition) and reducers (concatenate +
sort + summary) over the same data with no runtime, one process per core,
maps and reducers dealt round-robin to the processes; the limit is the
slowest process's map time plus the slowest process's reduce time. Between
the two phases (untimed, between barriers) the blocks go to their reducer's
process through /dev/shm files; nothing is scheduled, serialized or stored.
An untimed first round warms the processes up (heap, page faults), as the
benchmark clusters' workers are warm after their first run. Beside the wall
time the limit reports ``cpu_GBps``: the CPU seconds the processes spent,
divided by the cores, as the rate the cores would give with no other load
(the shared host's load otherwise moves the wall-time limit by 2-3x).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

GiB = 1 << 30
MiB = 1 << 20
GB = 1e9
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CPUS = 2

WORKLOADS = {
    "W5": {"gib": 1.0, "maps": 16, "reducers": 16, "object_store_memory": 2 * GiB},
    "W5L": {"gib": 4.0, "maps": 64, "reducers": 64, "object_store_memory": 1 * GiB},
}


def params(workload: str, quick: bool) -> dict:
    p = dict(WORKLOADS[workload])
    if quick:                                   # bench/README.md: sizes and counts / 4
        p["gib"] /= 4
        p["maps"] = max(1, p["maps"] // 4)
        p["reducers"] = max(1, p["reducers"] // 4)
        p["object_store_memory"] = max(256 * MiB, p["object_store_memory"] // 4)
    p["records"] = int(p["gib"] * GiB) // 100
    return p


def load_1m() -> float:
    return os.getloadavg()[0]


def tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and all its descendants:
    the cluster's daemons and workers (a process that exits in between is
    missed, so this is a lower bound)."""
    import psutil
    total = 0.0
    me = psutil.Process()
    for proc in [me] + me.children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def with_cpu(run: dict, cpu_s: float, nbytes: int) -> dict:
    """cpu_GBps: bytes over the run's CPU seconds divided by the cores, the
    rate if the cores were the cluster's alone (comparable with the limit's)."""
    run["cpu_s"] = cpu_s / NUM_CPUS
    run["cpu_GBps"] = nbytes / GB / run["cpu_s"] if cpu_s > 0 else None
    return run


# ---- bodies shared by all systems ----

def map_blocks(map_index: int, num_records: int, seed: int, reducers: int):
    from gdfut.shuffle import partition, records
    rec = records.generate(map_index, num_records, seed)
    return partition.split(rec, partition.KeyRange()(rec, reducers), reducers)


def reduce_summary(reducer: int, *blocks) -> dict:
    from gdfut.shuffle.sort import reduce_summary as fn
    return fn(list(blocks), reducer)


def input_summary(map_index, num_records, seed):
    from gdfut.shuffle.sort import input_summary as fn
    return fn(map_index, num_records, seed, 0.0)


def counts_of(p: dict) -> list[int]:
    from gdfut.shuffle.sort import split_records
    return split_records(p["records"], p["maps"])


def check(summaries, inp) -> dict:
    from gdfut.shuffle import records
    return records.validate(summaries, sum(n for n, _ in inp),
                            sum(c for _, c in inp) & records.MASK64)


class DirPeak:
    """Largest allocated size of a directory tree, sampled every 0.2 s."""

    def __init__(self, path: str):
        self.path, self.peak = path, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def size(self) -> int:
        total = 0
        for root, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def _run(self):
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.size())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.size())


# ---- the systems (each in its own child process) ----

def run_gdfut(p: dict, strategy: str, repeat: int, spill_dir: str) -> list[dict]:
    import gdfut
    from gdfut.shuffle.sort import run_sort
    gdfut.init(num_cpus=NUM_CPUS, object_store_memory=p["object_store_memory"],
               spill_dir=spill_dir, log_to_driver=False)
    try:
        noop = gdfut.remote(_noop)
        gdfut.get([noop.remote() for _ in range(100)])
        runs = []
        for _ in range(repeat):
            load = load_1m()
            cpu0 = tree_cpu_s()
            with DirPeak(spill_dir) as peak:
                rep = run_sort(p["gib"], p["maps"], p["reducers"], strategy,
                               records=p["records"], progress=False, after_sort=tree_cpu_s)
            cpu = rep["after_sort"] - cpu0
            runs.append(with_cpu({"ok": rep["ok"], "errors": rep["errors"], "elapsed_s": rep["elapsed_s"],
                         "GBps": rep["GBps"], "spilled_bytes": rep["spilled_bytes"],
                         "restored_bytes": rep["restored_bytes"],
                         "peak_spill_dir_bytes": max(peak.peak, rep["peak_spill_dir_bytes"]),
                         "phases_s": rep["phases_s"], "load_1m": load}, cpu, p["records"] * 100))
        return runs
    finally:
        gdfut.shutdown()


def _noop():
    return None


def run_ray(p: dict, strategy: str, repeat: int, spill_dir: str) -> list[dict]:
    import ray
    ray.init(num_cpus=NUM_CPUS, object_store_memory=p["object_store_memory"],
             include_dashboard=False, log_to_driver=False,
             _system_config={"object_spilling_config": json.dumps(
                 {"type": "filesystem", "params": {"directory_path": spill_dir}})})
    try:
        R = p["reducers"]
        mapper = ray.remote(num_returns=R)(map_blocks) if R > 1 else ray.remote(
            lambda *a: map_blocks(*a)[0])
        reducer = ray.remote(reduce_summary)
        ray.get([ray.remote(_noop).remote() for _ in range(100)])
        counts = counts_of(p)
        runs = []
        for _ in range(repeat):
            load = load_1m()
            cpu0 = tree_cpu_s()
            with DirPeak(spill_dir) as peak:
                t0 = time.perf_counter()
                blocks = [mapper.remote(m, n, 0, R) for m, n in enumerate(counts)]
                blocks = [b if R > 1 else [b] for b in blocks]
                sums = ray.get([reducer.remote(r, *[b[r] for b in blocks]) for r in range(R)])
                elapsed = time.perf_counter() - t0
                cpu = tree_cpu_s() - cpu0
                del blocks
            inp = ray.get([ray.remote(input_summary).remote(m, n, 0)
                           for m, n in enumerate(counts)])
            v = check(sums, inp)
            runs.append(with_cpu({"ok": v["ok"], "errors": v["errors"], "elapsed_s": elapsed,
                                  "GBps": p["records"] * 100 / GB / elapsed,
                                  "peak_spill_dir_bytes": peak.peak, "load_1m": load,
                                  "spilled_bytes": _ray_spilled()}, cpu, p["records"] * 100))
        return runs
    finally:
        ray.shutdown()


def _ray_spilled():
    """Ray's own spill total (from its memory summary text), or None."""
    try:
        import re

        from ray._private.internal_api import memory_summary
        text = memory_summary(stats_only=True)
        m = re.search(r"Spilled (\d+) MiB", text)
        return int(m.group(1)) * MiB if m else 0
    except Exception:
        return None


def run_dask(p: dict, strategy: str, repeat: int, spill_dir: str) -> list[dict]:
    import operator

    from distributed import Client, LocalCluster
    limit = p["object_store_memory"] // NUM_CPUS if p["gib"] * GiB > p["object_store_memory"] \
        else "auto"
    cluster = LocalCluster(n_workers=NUM_CPUS, threads_per_worker=1, processes=True,
                           dashboard_address=None, memory_limit=limit, local_directory=spill_dir)
    client = Client(cluster)
    try:
        R = p["reducers"]
        client.gather([client.submit(_noop, pure=False) for _ in range(100)])
        counts = counts_of(p)
        runs = []
        for _ in range(repeat):
            load = load_1m()
            cpu0 = tree_cpu_s()
            with DirPeak(spill_dir) as peak:
                t0 = time.perf_counter()
                maps = [client.submit(map_blocks, m, n, 0, R, pure=False)
                        for m, n in enumerate(counts)]
                blocks = [[client.submit(operator.getitem, f, r, pure=False) for r in range(R)]
                          for f in maps]
                del maps
                sums = client.gather([client.submit(reduce_summary, r, *[b[r] for b in blocks],
                                                    pure=False) for r in range(R)])
                elapsed = time.perf_counter() - t0
                cpu = tree_cpu_s() - cpu0
                del blocks
            inp = client.gather([client.submit(input_summary, m, n, 0, pure=False)
                                 for m, n in enumerate(counts)])
            v = check(sums, inp)
            runs.append(with_cpu({"ok": v["ok"], "errors": v["errors"], "elapsed_s": elapsed,
                                  "GBps": p["records"] * 100 / GB / elapsed,
                                  "peak_spill_dir_bytes": peak.peak, "load_1m": load},
                                 cpu, p["records"] * 100))
        return runs
    finally:
        client.close()
        cluster.close()


SYSTEMS = {"gdfut": run_gdfut, "ray": run_ray, "dask": run_dask}


# ---- the single-node limit ----

def _limit_process(rank, procs, p, shm, barrier, results, rounds):
    """One of ``procs`` processes: maps rank, rank+procs, ... then reducers
    likewise, ``rounds`` times (round 0 warms the process up: its heap and
    pages, as a benchmark cluster's workers are warm). Only the map and
    reduce work is timed; blocks for other processes' reducers go through
    /dev/shm files between barriers, so no untimed I/O overlaps another
    process's timed work."""
    counts = counts_of(p)
    R, M = p["reducers"], p["maps"]
    mine_m = range(rank, M, procs)
    mine_r = set(range(rank, R, procs))
    for rnd in range(rounds):
        barrier.wait()
        t0, c0 = time.perf_counter(), time.process_time()
        outputs = {m: map_blocks(m, counts[m], 0, R) for m in mine_m}
        map_s, map_cpu = time.perf_counter() - t0, time.process_time() - c0
        barrier.wait()
        kept = {r: [] for r in mine_r}                      # hand-over, untimed
        for m, blocks in outputs.items():
            for r, b in enumerate(blocks):
                if r in mine_r:
                    kept[r].append((m, b))
                else:
                    b.tofile(os.path.join(shm, f"{m}-{r}"))
        del outputs
        barrier.wait()
        for r in mine_r:
            for m in range(M):
                path = os.path.join(shm, f"{m}-{r}")
                if os.path.exists(path):
                    kept[r].append((m, np.fromfile(path, dtype=np.uint8).reshape(-1, 100)))
                    os.unlink(path)
            kept[r].sort(key=lambda mb: mb[0])
        barrier.wait()
        t1, c1 = time.perf_counter(), time.process_time()
        summaries = [reduce_summary(r, *[b for _, b in kept[r]]) for r in sorted(mine_r)]
        reduce_s, reduce_cpu = time.perf_counter() - t1, time.process_time() - c1
        del kept
        inp = [input_summary(m, counts[m], 0) for m in mine_m]
        results.put((rnd, rank, map_s, reduce_s, summaries, inp, load_1m(), map_cpu + reduce_cpu))


def run_limit(p: dict, repeat: int, procs: int) -> list[dict]:
    ctx = mp.get_context("fork")
    shm = tempfile.mkdtemp(prefix="gdfut-limit-", dir="/dev/shm")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    rounds = repeat + 1
    workers = [ctx.Process(target=_limit_process,
                           args=(i, procs, p, shm, barrier, results, rounds))
               for i in range(procs)]
    try:
        for w in workers:
            w.start()
        got = [results.get(timeout=900) for _ in range(procs * rounds)]
    finally:
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.kill()
        shutil.rmtree(shm, ignore_errors=True)
    runs = []
    for rnd in range(1, rounds):                # round 0 was the warm-up
        g = [x for x in got if x[0] == rnd]
        v = check([s for x in g for s in x[4]], [i for x in g for i in x[5]])
        map_s, reduce_s = max(x[2] for x in g), max(x[3] for x in g)
        cpu_s = sum(x[7] for x in g) / procs      # the work if the cores were ours alone
        runs.append({"ok": v["ok"], "errors": v["errors"], "elapsed_s": map_s + reduce_s,
                     "GBps": p["records"] * 100 / GB / (map_s + reduce_s),
                     "cpu_s": cpu_s, "cpu_GBps": p["records"] * 100 / GB / cpu_s, "map_s": map_s,
                     "reduce_s": reduce_s, "processes": procs,
                     "load_1m": max(x[6] for x in g)})
    return runs


# ---- orchestration ----

def child_main(args) -> int:
    p = params(args.workload, args.quick)
    spill_dir = tempfile.mkdtemp(prefix=f"bench-{args.system}-spill-")
    try:
        runs = SYSTEMS[args.system](p, args.strategy, args.repeat, spill_dir)
    finally:
        shutil.rmtree(spill_dir, ignore_errors=True)
    print("BENCH_SHUFFLE " + json.dumps(runs), flush=True)
    return 0


def summary(runs: list[dict]) -> dict:
    out = {}
    for key in ("elapsed_s", "GBps", "cpu_GBps", "spilled_bytes", "peak_spill_dir_bytes",
                "load_1m"):
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if vals:
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    out["all_ok"] = bool(runs) and all(r.get("ok") for r in runs)
    return out


def spawn(system, workload, strategy, repeat, quick, timeout) -> dict:
    cmd = [sys.executable, "-m", "bench.shuffle", "--child", "--system", system, "--workload",
           workload, "--strategy", strategy, "--repeat", str(repeat)] + (["--quick"] if quick else [])
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        return {"status": "timeout", "runs": [], "stderr": err[-2000:],
                "wall_s": time.perf_counter() - t0}
    for line in out.splitlines():
        if line.startswith("BENCH_SHUFFLE "):
            runs = json.loads(line[len("BENCH_SHUFFLE "):])
            return {"status": "ok" if all(r["ok"] for r in runs) else "check failed",
                    "runs": runs, "wall_s": time.perf_counter() - t0}
    return {"status": f"error rc={proc.returncode}", "runs": [], "stderr": err[-3000:],
            "wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shuffle")
    ap.add_argument("--workloads", default="W5")
    ap.add_argument("--strategies", default="simple,push")
    ap.add_argument("--compare", default="", help="also run these: ray,dask")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-limit", action="store_true")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "results"))
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--system", default="gdfut", help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="W5", help=argparse.SUPPRESS)
    ap.add_argument("--strategy", default="simple", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_main(args)
    doc = {"schema": "gdfut-bench-shuffle/1", "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ",
           time.gmtime()), "argv": sys.argv, "cpu_count": os.cpu_count(),
           "load_1m_start": load_1m(), "workloads": {}}
    others = [s for s in args.compare.split(",") if s]
    for w in args.workloads.split(","):
        p = params(w, args.quick)
        res = {"params": p, "systems": {}}
        if not args.no_limit:
            runs = run_limit(p, args.repeat, os.cpu_count() or 1)
            res["systems"]["limit"] = {"status": "ok", "runs": runs, "summary": summary(runs)}
            _show(w, "limit", res["systems"]["limit"])
        jobs = [("gdfut", s) for s in args.strategies.split(",") if s] + [(o, "simple") for o in others]
        for system, strategy in jobs:
            key = f"gdfut-{strategy}" if system == "gdfut" else system
            r = spawn(system, w, strategy, args.repeat, args.quick, args.timeout)
            r["summary"] = summary(r["runs"])
            res["systems"][key] = r
            _show(w, key, r)
        _ratios(w, res)
        doc["workloads"][w] = res
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"shuffle-{doc['timestamp'].replace(':', '')}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {path}")
    return 0


def _show(w, key, r) -> None:
    s = r.get("summary") or {}
    g = s.get("GBps")
    if not g:
        print(f"{w} {key:14s} {r['status']} {r.get('stderr', '')[-500:]}", flush=True)
        return
    extra = ""
    if "peak_spill_dir_bytes" in s:
        extra = f" spill-dir peak {s['peak_spill_dir_bytes']['median'] / GB:.2f} GB"
    if "spilled_bytes" in s:
        extra += f" spilled {s['spilled_bytes']['median'] / GB:.2f} GB"
    if "cpu_GBps" in s:
        extra += f" cpu-GB/s {s['cpu_GBps']['median']:.3f}"
    print(f"{w} {key:14s} {r['status']:5s} GB/s {g['median']:.3f} [{g['min']:.3f} .. "
          f"{g['max']:.3f}] elapsed {s['elapsed_s']['median']:.2f} s, load "
          f"{s['load_1m']['median']:.1f}{extra}", flush=True)


def _ratios(w, res) -> None:
    systems = res["systems"]
    res["ratios"] = {}
    for metric in ("GBps", "cpu_GBps"):
        med = {k: v["summary"][metric]["median"] for k, v in systems.items()
               if v.get("summary", {}).get(metric)}
        for k in med:
            if k.startswith("gdfut"):
                for base in med:
                    if not base.startswith("gdfut"):
                        res["ratios"][f"{k}/{base} ({metric})"] = med[k] / med[base]
    for k, v in res["ratios"].items():
        print(f"{w} {k}: {v:.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
