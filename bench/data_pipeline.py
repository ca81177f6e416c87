"""D1 — streaming preprocessing pipeline, gdfut.data side by side with Ray Data.

    python bench/data_pipeline.py                 # 16 files x 200k rows, both systems
    python bench/data_pipeline.py --quick         # 16 files x 50k rows (under a minute)
    python bench/data_pipeline.py --systems gdfut --repeat 3

Definition (the contract; change it and older figures are void):
- Input: 16 Parquet files, each 200,000 rows of 16 float64 columns c0..c15
  (uniform [0, 1), seeded per file), written once before any system runs
  and read by both. ``--quick`` divides the rows by 4.
- Pipeline, the same program on both systems:
  ``read_parquet(dir)`` → ``map_batches(normalise, batch_size=4096)``
  (z-score with fixed constants) → ``map_batches(Model, num_gpus=0.5,
  concurrency=2, batch_size=4096)`` (a 16×4 matrix product and tanh; the
  "model" weights built in the constructor) → ``iter_batches(batch_size=4096)``
  in the driver, which sums the four output columns. ``num_cpus=0`` is
  gdfut's default for a GPU stage; Ray Data's default gives each actor a CPU,
  and on 2 CPUs its two actors then hold both and the read never runs (it
  hangs: seen with Ray 2.60), so the program says it for both.
- Cluster: 2 CPUs, 1 emulated GPU (so two actors share it at 0.5 each),
  1 GiB object store, started before timing; each system in its own fresh
  process. One untimed warm-up pass over the first 2 files, then ``--repeat``
  timed passes.
- Metric: ``rows_per_s`` (rows out of iter_batches / wall time of the pass).
  Also ``peak_store_bytes``: the largest object store use sampled every
  0.1 s during the passes, and bytes spilled. Results are checked: row
  count, and the four column sums equal across systems (relative 1e-9;
  summation order differs).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

FILES = 16
ROWS = 200_000
COLS = 16
BATCH = 4096
STORE = 1 << 30
COLUMNS = [f"c{i}" for i in range(COLS)]


# ------------------------------------------------------------ the program
def normalise(batch: dict) -> dict:
    return {c: (batch[c] - 0.5) / 0.2886751345948129 for c in COLUMNS}


class Model:
    def __init__(self):
        self.w = np.random.default_rng(0).standard_normal((COLS, 4))

    def __call__(self, batch: dict) -> dict:
        x = np.stack([batch[c] for c in COLUMNS], axis=1)
        y = np.tanh(x @ self.w)
        return {f"p{j}": y[:, j] for j in range(4)}


def consume(ds) -> tuple[int, list[float]]:
    rows, sums = 0, np.zeros(4)
    for batch in ds.iter_batches(batch_size=BATCH):
        rows += len(batch["p0"])
        sums += [float(batch[f"p{j}"].sum()) for j in range(4)]
    return rows, sums.tolist()


def pipeline(data_mod, paths):
    return (data_mod.read_parquet(paths)
            .map_batches(normalise, batch_size=BATCH)
            .map_batches(Model, num_gpus=0.5, num_cpus=0, concurrency=2, batch_size=BATCH))


# ------------------------------------------------------------ input
def make_files(directory: str, files: int, rows: int) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    paths = []
    for i in range(files):
        rng = np.random.default_rng(1000 + i)
        table = pa.table({c: rng.random(rows) for c in COLUMNS})
        path = os.path.join(directory, f"part-{i:03d}.parquet")
        pq.write_table(table, path)
        paths.append(path)
    return paths


# ------------------------------------------------------------ store sampling
class Sampler:
    """Largest value of ``probe()`` seen every ``interval`` s, on a thread."""

    def __init__(self, probe, interval: float = 0.1):
        self.probe, self.interval, self.peak = probe, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, int(self.probe()))
            except Exception:       # a probe that fails once must not end the run
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _gdfut_store_used():
    from gdfut import protocol as P, runtime_context
    return runtime_context.require().node_request(P.NODE_STATUS)["store"]["used_bytes"]


def _gdfut_spilled():
    from gdfut import protocol as P, runtime_context
    return runtime_context.require().node_request(P.NODE_STATUS)["tiers"]["spilled_bytes"]


def _ray_store_stats():
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address
    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return reply.store_stats


# ------------------------------------------------------------ one system (child process)
def run_system(system: str, paths: list[str], repeat: int) -> dict:
    if system == "gdfut":
        import gdfut
        import gdfut.data as data
        gdfut.init(num_cpus=2, num_gpus=1, object_store_memory=STORE)
        data.DataContext.get_current().enable_progress_bars = False
        used, spilled, version, stop = _gdfut_store_used, _gdfut_spilled, gdfut.__version__, \
            gdfut.shutdown
    else:
        import ray
        import ray.data as data
        ray.init(num_cpus=2, num_gpus=1, object_store_memory=STORE, include_dashboard=False,
                 log_to_driver=False)
        ctx = data.DataContext.get_current()
        ctx.enable_progress_bars = False
        used = lambda: _ray_store_stats().object_store_bytes_used          # noqa: E731
        spilled = lambda: _ray_store_stats().spilled_bytes_total           # noqa: E731
        version, stop = ray.__version__, ray.shutdown
    try:
        consume(pipeline(data, paths[:2]))                 # warm-up, not timed
        runs = []
        for _ in range(repeat):
            with Sampler(used) as sampler:
                t0 = time.perf_counter()
                rows, sums = consume(pipeline(data, paths))
                elapsed = time.perf_counter() - t0
            runs.append({"rows": rows, "sums": sums, "elapsed_s": elapsed,
                         "rows_per_s": rows / elapsed, "peak_store_bytes": sampler.peak,
                         "load_avg_1m": os.getloadavg()[0]})
        return {"system": system, "version": version, "runs": runs,
                "spilled_bytes": int(spilled())}
    finally:
        stop()


# ------------------------------------------------------------ pure helpers
def same_results(a: dict, b: dict, rel: float = 1e-9) -> bool:
    """Same row count and column sums (to ``rel``) in every run of both."""
    runs = a["runs"] + b["runs"]
    first = runs[0]
    return all(r["rows"] == first["rows"] and
               all(abs(x - y) <= rel * max(1.0, abs(y)) for x, y in zip(r["sums"], first["sums"]))
               for r in runs)


def summary(doc: dict) -> dict:
    rates = [r["rows_per_s"] for r in doc["runs"]]
    peaks = [r["peak_store_bytes"] for r in doc["runs"]]
    return {"rows_per_s_median": statistics.median(rates), "rows_per_s_min": min(rates),
            "rows_per_s_max": max(rates), "peak_store_bytes": max(peaks),
            "spilled_bytes": doc["spilled_bytes"]}


def ratio(gdfut_doc: dict, other_doc: dict) -> float:
    return summary(gdfut_doc)["rows_per_s_median"] / summary(other_doc)["rows_per_s_median"]


# ------------------------------------------------------------ driver
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="rows per file / 4 (a smoke test)")
    ap.add_argument("--systems", default="gdfut,ray")
    ap.add_argument("--repeat", type=int, default=None, help="timed passes (default 3, quick 1)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per system")
    ap.add_argument("--out", default=None, help="write the JSON document here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    if args.child:
        paths = sorted(os.path.join(args.dir, f) for f in os.listdir(args.dir))
        print(json.dumps(run_system(args.child, paths, repeat)))
        return 0
    rows = ROWS // 4 if args.quick else ROWS
    docs = {}
    with tempfile.TemporaryDirectory(prefix="gdfut-d1-") as tmp:
        make_files(tmp, FILES, rows)
        for system in args.systems.split(","):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", system, "--dir", tmp,
                   "--repeat", str(repeat)]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"{system}: timed out after {args.timeout} s")
                continue
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                print(f"{system}: failed (rc {proc.returncode})\n{proc.stderr[-3000:]}")
                continue
            docs[system] = json.loads(lines[-1])
    result = {"workload": "D1", "files": FILES, "rows_per_file": rows, "columns": COLS,
              "repeat": repeat, "systems": {k: {**v, "summary": summary(v)}
                                            for k, v in docs.items()}}
    for name, doc in docs.items():
        s = summary(doc)
        print(f"{name} {doc['version']}: {s['rows_per_s_median']:,.0f} rows/s (min "
              f"{s['rows_per_s_min']:,.0f}, max {s['rows_per_s_max']:,.0f}), peak store "
              f"{s['peak_store_bytes'] / 2**20:.0f} MiB, spilled {s['spilled_bytes'] / 2**20:.0f} "
              f"MiB")
    if "gdfut" in docs:
        for other in [k for k in docs if k != "gdfut"]:
            same = same_results(docs["gdfut"], docs[other])
            r = ratio(docs["gdfut"], docs[other])
            result[f"ratio_vs_{other}"], result[f"same_results_as_{other}"] = r, same
            print(f"gdfut / {other} rows/s: {r:.2f}x; results identical: {same}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if docs else 1


if __name__ == "__main__":
    sys.exit(main())
