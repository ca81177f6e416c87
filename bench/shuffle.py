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
sort + summary) over the same data with no runtime, one process per core in a
``multiprocessing`` pool; each task times itself (blocks go between the phases
through /dev/shm files, untimed) and the limit is (sum of map times + sum of
reduce times) / processes: perfect packing, nothing moved, nothing scheduled.
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
            with DirPeak(spill_dir) as peak:
                rep = run_sort(p["gib"], p["maps"], p["reducers"], strategy,
                               records=p["records"], progress=False)
            runs.append({"ok": rep["ok"], "errors": rep["errors"], "elapsed_s": rep["elapsed_s"],
                         "GBps": rep["GBps"], "spilled_bytes": rep["spilled_bytes"],
                         "restored_bytes": rep["restored_bytes"],
                         "peak_spill_dir_bytes": max(peak.peak, rep["peak_spill_dir_bytes"]),
                         "phases_s": rep["phases_s"], "load_1m": load})
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
            with DirPeak(spill_dir) as peak:
                t0 = time.perf_counter()
                blocks = [mapper.remote(m, n, 0, R) for m, n in enumerate(counts)]
                blocks = [b if R > 1 else [b] for b in blocks]
                sums = ray.get([reducer.remote(r, *[b[r] for b in blocks]) for r in range(R)])
                elapsed = time.perf_counter() - t0
                del blocks
            inp = ray.get([ray.remote(input_summary).remote(m, n, 0)
                           for m, n in enumerate(counts)])
            v = check(sums, inp)
            runs.append({"ok": v["ok"], "errors": v["errors"], "elapsed_s": elapsed,
                         "GBps": p["records"] * 100 / GB / elapsed,
                         "peak_spill_dir_bytes": peak.peak, "load_1m": load,
                         "spilled_bytes": _ray_spilled()})
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
                del blocks
            inp = client.gather([client.submit(input_summary, m, n, 0, pure=False)
                                 for m, n in enumerate(counts)])
            v = check(sums, inp)
            runs.append({"ok": v["ok"], "errors": v["errors"], "elapsed_s": elapsed,
                         "GBps": p["records"] * 100 / GB / elapsed,
                         "peak_spill_dir_bytes": peak.peak, "load_1m": load})
        return runs
    finally:
        client.close()
        cluster.close()


SYSTEMS = {"gdfut": run_gdfut, "ray": run_ray, "dask": run_dask}


# ---- the single-node limit ----

def _limit_map(m, n, seed, reducers, shm):
    t0 = time.perf_counter()
    blocks = map_blocks(m, n, seed, reducers)
    took = time.perf_counter() - t0
    for r, b in enumerate(blocks):               # untimed hand-over to the reducers
        b.tofile(os.path.join(shm, f"{m}-{r}"))
    return took


def _limit_reduce(r, maps, shm):
    from gdfut.shuffle import records
    blocks = [np.fromfile(os.path.join(shm, f"{m}-{r}"), dtype=np.uint8).reshape(-1, 100)
              for m in range(maps)]
    for m in range(maps):
        os.unlink(os.path.join(shm, f"{m}-{r}"))
    t0 = time.perf_counter()
    summary = reduce_summary(r, *blocks)
    return time.perf_counter() - t0, summary


def run_limit(p: dict, repeat: int, procs: int) -> list[dict]:
    counts = counts_of(p)
    runs = []
    for _ in range(repeat):
        load = load_1m()
        shm = tempfile.mkdtemp(prefix="gdfut-limit-", dir="/dev/shm")
        try:
            with mp.get_context("fork").Pool(procs) as pool:
                map_t = pool.starmap(_limit_map, [(m, n, 0, p["reducers"], shm)
                                                  for m, n in enumerate(counts)])
                red = pool.starmap(_limit_reduce, [(r, p["maps"], shm)
                                                   for r in range(p["reducers"])])
                inp = pool.starmap(input_summary, [(m, n, 0) for m, n in enumerate(counts)])
        finally:
            shutil.rmtree(shm, ignore_errors=True)
        v = check([s for _, s in red], inp)
        limit_s = (sum(map_t) + sum(t for t, _ in red)) / procs
        runs.append({"ok": v["ok"], "errors": v["errors"], "elapsed_s": limit_s,
                     "GBps": p["records"] * 100 / GB / limit_s, "map_s": sum(map_t) / procs,
                     "reduce_s": sum(t for t, _ in red) / procs, "processes": procs,
                     "load_1m": load})
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
    for key in ("elapsed_s", "GBps", "spilled_bytes", "peak_spill_dir_bytes", "load_1m"):
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
        jobs = [("gdfut", s) for s in args.strategies.split(",")] + [(o, "simple") for o in others]
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
    print(f"{w} {key:14s} {r['status']:5s} GB/s {g['median']:.3f} [{g['min']:.3f} .. "
          f"{g['max']:.3f}] elapsed {s['elapsed_s']['median']:.2f} s, load "
          f"{s['load_1m']['median']:.1f}{extra}", flush=True)


def _ratios(w, res) -> None:
    systems = res["systems"]
    med = {k: v["summary"]["GBps"]["median"] for k, v in systems.items()
           if v.get("summary", {}).get("GBps")}
    res["ratios"] = {}
    for k in med:
        if k.startswith("gdfut"):
            for base in med:
                if not base.startswith("gdfut"):
                    res["ratios"][f"{k}/{base}"] = med[k] / med[base]
    for k, v in res["ratios"].items():
        print(f"{w} {k}: {v:.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
