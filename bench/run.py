"""Benchmark orchestrator: the workloads of bench/README.md on gdfut, Ray and Dask.

    python bench/run.py [--systems gdfut,ray,dask] [--compare ray,dask]
                        [--workloads W1,W1b,W2,W3,W4,W6] [--repeat 3] [--quick]
                        [--out bench/results/] [--timeout 300]

Each system runs in fresh subprocesses of its own (bench/child.py for the
in-cluster workloads, a bare ``python -c`` per W6 run), one system after the
other, so clusters never overlap. One JSON document per system is written to
``<out>/<system>-<timestamp>.json`` and a table printed; with ``--compare``,
gdfut's speed-up over each compared system is printed (and stored in gdfut's
document).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    # Run as ``python bench/run.py``: make ``bench`` importable as a package.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench import procs, report, stats, workloads  # noqa: E402
from bench.systems import IMPORT_PROBES, SYSTEMS, system_env  # noqa: E402
from bench.workloads import WORKLOADS  # noqa: E402

SCHEMA = "gdfut-bench/1"
# Cluster start plus warm-up, and shutdown: generous, they are not measured here.
INIT_TIMEOUT_S = 180.0
SHUTDOWN_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 60.0
# Above this 1-min load average (2 cores) the figures are flagged as noisy.
BUSY_LOAD = 0.5


# --- arguments ---------------------------------------------------------------

def _name_list(choices):
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {unknown or 'empty list'}; choose from {','.join(choices)}")
        return list(dict.fromkeys(names))  # dedupe, keep order
    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", type=_name_list(list(SYSTEMS)), default=None,
                        help="systems to run (default: gdfut)")
    parser.add_argument("--compare", type=_name_list([s for s in SYSTEMS if s != "gdfut"]),
                        default=[], help="also run these and print gdfut's ratio to each")
    parser.add_argument("--workloads", type=_name_list(list(WORKLOADS)),
                        default=list(WORKLOADS))
    parser.add_argument("--repeat", type=_positive_int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="divide every size and count by 4")
    parser.add_argument("--out", type=Path, default=procs.REPO_ROOT / "bench" / "results")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds allowed per workload (all its repeats)")
    return parser.parse_args(argv)


def plan_systems(systems: list[str] | None, compare: list[str]) -> list[str]:
    """gdfut first whenever a comparison is asked for, then the others."""
    planned = list(systems) if systems else ["gdfut"]
    if compare:
        planned = ["gdfut"] + planned + compare
    return list(dict.fromkeys(planned))


def workload_params(keys: list[str], quick: bool) -> dict:
    return {key: WORKLOADS[key].params(quick) for key in keys}


# --- machine and documents ---------------------------------------------------

def probe_system(name: str) -> tuple[bool, str]:
    """Can ``name`` be imported in the environment its benchmark will use?"""
    env, _ = procs.marked_env(system_env())
    try:
        proc = subprocess.run([sys.executable, "-c", IMPORT_PROBES[name]], env=env,
                              cwd=procs.REPO_ROOT, capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"importing {name} took over {PROBE_TIMEOUT_S} s"
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return False, tail
    return True, ""


def machine_info(quick: bool) -> dict:
    nbytes = workloads.scaled(workloads.ARRAY_BYTES, quick)
    return {"python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
            "memcpy_GBps": workloads.memcpy_GBps(nbytes), "memcpy_bytes": nbytes,
            "memcpy_method": "np.copyto into a pre-faulted destination, 1 thread, median of 5",
            "load_1m_start": os.getloadavg()[0]}


def new_doc(name: str, args: argparse.Namespace, machine: dict, stamp: str) -> dict:
    keys = args.workloads
    return {
        "schema": SCHEMA, "system": name, "system_version": None, "timestamp": stamp,
        "argv": sys.argv,
        "config": {"repeat": args.repeat, "quick": args.quick, "timeout_s": args.timeout,
                   "cluster": workloads.cluster_params(),
                   "warmup_tasks": workloads.warmup_tasks(args.quick)},
        "machine": machine,
        "clusters": [],  # one entry per benchmark cluster started (restarts included)
        "workloads": {key: {"title": WORKLOADS[key].title,
                            "params": WORKLOADS[key].params(args.quick),
                            "status": "not run", "runs": [], "summary": {}, "error": None}
                      for key in keys},
        "notes": [], "leaked_processes": [],
    }


def finish_workload(doc: dict, key: str, error: str | None) -> None:
    wl = doc["workloads"][key]
    wl["summary"] = stats.summarize(wl["runs"])
    if error:
        wl["error"] = error
    wl["status"] = "error" if wl["error"] else "ok"


# --- in-cluster workloads: one child process per cluster ---------------------

class ChildSession:
    """One bench/child.py process: start it, follow its events, enforce timeouts."""

    def __init__(self, name: str, keys: list[str], args, doc: dict, log_path: Path):
        self.name, self.keys, self.args, self.doc = name, keys, args, doc
        self.log_path = log_path
        self.current: str | None = None   # workload started and not yet ended
        self.ready = False
        self.failure: str | None = None   # why the session ended early, if it did

    def run(self) -> None:
        out = self.args.out
        stem = f"{self.name}-{self.doc['timestamp']}-{len(self.doc['clusters'])}"
        config_path, events_path = out / f".{stem}.config.json", out / f".{stem}.events.jsonl"
        config_path.write_text(json.dumps(self._config()))
        events_path.write_text("")
        env, mark = procs.marked_env(system_env())
        with open(self.log_path, "a") as log:
            proc = subprocess.Popen([sys.executable, "-m", "bench.child", str(config_path),
                                     str(events_path)], env=env, cwd=procs.REPO_ROOT,
                                    stdout=log, stderr=subprocess.STDOUT)
            try:
                self._follow(proc, events_path, mark)
            finally:
                if proc.poll() is None:  # e.g. KeyboardInterrupt: stop the whole tree
                    procs.kill_marked(mark, [proc.pid])
                proc.wait()
        self._note_leaks(procs.reap_leftovers(mark))
        config_path.unlink()
        events_path.unlink()

    def _config(self) -> dict:
        return {"system": self.name, "workloads": self.keys, "repeat": self.args.repeat,
                "cluster": workloads.cluster_params(),
                "warmup_tasks": workloads.warmup_tasks(self.args.quick),
                "params": workload_params(self.keys, self.args.quick)}

    def _follow(self, proc, events_path: Path, mark: str) -> None:
        deadline = time.monotonic() + INIT_TIMEOUT_S
        offset = 0
        while True:
            exited = proc.poll() is not None
            with open(events_path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            complete = chunk[:chunk.rfind(b"\n") + 1]  # only whole lines
            offset += len(complete)
            for line in complete.decode("utf-8").splitlines():
                deadline = self._apply(json.loads(line), deadline)
            if exited:
                if proc.returncode != 0 and self.failure is None and self.current:
                    self.failure = f"child process exited with rc={proc.returncode}"
                return
            if time.monotonic() > deadline:
                self._timed_out(proc, mark)
                return
            time.sleep(0.1)

    def _apply(self, event: dict, deadline: float) -> float:
        """Fold one child event into the document; return the new deadline."""
        kind, key = event["event"], event.get("workload")
        now = time.monotonic()
        if kind == "ready":
            self.ready = True
            self.doc["system_version"] = event["version"]
            self.doc["clusters"].append({k: event[k] for k in ("init_s", "warmup_s",
                                                               "warmup_tasks")})
            return now + SHUTDOWN_TIMEOUT_S
        if kind == "init_error":
            self.failure = "cluster start failed:\n" + event["error"]
            return now + SHUTDOWN_TIMEOUT_S
        if kind == "workload_start":
            self.current = key
            return now + self.args.timeout  # one budget for all repeats
        if kind == "run":
            self.doc["workloads"][key]["runs"].append(event["result"])
            return deadline
        if kind == "workload_error":
            self.doc["workloads"][key]["error"] = event["error"]
            return deadline
        if kind == "workload_end":
            finish_workload(self.doc, key, None)
            self.current = None
            return now + SHUTDOWN_TIMEOUT_S
        if kind == "shutdown":
            self.doc["clusters"][-1]["teardown_s"] = event["teardown_s"]
        elif kind == "shutdown_error":
            self.doc["notes"].append(f"{self.name} shutdown failed: {event['error']}")
        return deadline

    def _timed_out(self, proc, mark: str) -> None:
        where = f"workload {self.current}" if self.current else \
            ("shutdown" if self.ready else "cluster start")
        self.failure = f"timeout: {where} exceeded its time limit; child killed"
        procs.kill_marked(mark, [proc.pid])
        proc.wait()

    def _note_leaks(self, leaked: list[str]) -> None:
        if leaked:
            self.doc["leaked_processes"].extend(leaked)
            print(f"  WARNING: {self.name} left {len(leaked)} processes; killed: {leaked}")


def run_in_cluster(name: str, keys: list[str], args, doc: dict, log_path: Path) -> None:
    """Run ``keys`` in as few clusters as possible.

    A workload that hangs or kills the child costs only itself: the child is
    stopped, the workload marked failed, and a fresh cluster runs the rest.
    """
    remaining = list(keys)
    while remaining:
        session = ChildSession(name, remaining, args, doc, log_path)
        session.run()
        done = [k for k in remaining if doc["workloads"][k]["status"] != "not run"]
        if session.current:  # died or timed out inside this workload
            finish_workload(doc, session.current, session.failure)
            done.append(session.current)
        elif session.failure and not session.ready:  # no cluster: nothing can run
            for key in remaining:
                finish_workload(doc, key, session.failure)
            return
        elif session.failure:
            doc["notes"].append(session.failure)
        remaining = [k for k in remaining if k not in done]
        if remaining and not done:  # no progress: do not loop forever
            for key in remaining:
                finish_workload(doc, key, "child process ended before running it")
            return
        if remaining:
            doc["notes"].append(f"restarted the {name} cluster for {','.join(remaining)}")


# --- fresh-process workloads (W6) --------------------------------------------

def run_fresh(name: str, key: str, args, doc: dict) -> None:
    wl = doc["workloads"][key]
    for _ in range(args.repeat):
        load_1m = os.getloadavg()[0]
        try:
            result = WORKLOADS[key].run(name, wl["params"], args.timeout)
        except Exception as exc:  # recorded, and the next workload still runs
            finish_workload(doc, key, f"{type(exc).__name__}: {exc}")
            return
        result["load_1m"] = load_1m
        wl["runs"].append(result)
        doc["leaked_processes"].extend(result["leaked"])
    finish_workload(doc, key, None)


# --- main --------------------------------------------------------------------

def bench_system(name: str, args, machine: dict, stamp: str) -> dict:
    doc = new_doc(name, args, machine, stamp)
    log_path = args.out / f"{name}-{stamp}.log"
    doc["log"] = str(log_path)
    cluster_keys = [k for k in args.workloads if not WORKLOADS[k].fresh_process]
    if cluster_keys:
        run_in_cluster(name, cluster_keys, args, doc, log_path)
    for key in args.workloads:
        if WORKLOADS[key].fresh_process:
            run_fresh(name, key, args, doc)
    if doc["system_version"] is None:
        doc["system_version"] = SYSTEMS[name]().version()
    return doc


def write_doc(doc: dict, out: Path) -> Path:
    path = out / f"{doc['system']}-{doc['timestamp']}.json"
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def print_comparisons(docs: dict, compare: list[str]) -> None:
    if "gdfut" not in docs:
        print("\nNOTE: gdfut did not run, so there is nothing to compare.")
        return
    headline = workloads.headline_metrics()
    comparisons = {}
    for other in compare:
        if other not in docs:
            print(f"\nNOTE: {other} did not run; no comparison with it.")
            continue
        rows = stats.compare(docs["gdfut"], docs[other], headline)
        comparisons[other] = rows
        print("\n" + report.comparison_table(other, rows))
    docs["gdfut"]["comparisons"] = comparisons


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if not procs.become_subreaper():
        print("NOTE: cannot become a child subreaper; leak checks rely on env markers only")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    machine = machine_info(args.quick)
    print(f"memcpy baseline: {report.fmt(machine['memcpy_GBps'])} GB/s "
          f"({machine['memcpy_bytes'] >> 20} MiB, 1 thread)")
    if machine["load_1m_start"] > BUSY_LOAD:
        print(f"NOTE: machine busy (1-min load {machine['load_1m_start']:.2f}); "
              f"expect noisy figures")
    docs = {}
    for name in plan_systems(args.systems, args.compare):
        ok, why = probe_system(name)
        if not ok:
            print(f"\nNOTE: skipping {name}: cannot import it ({why})")
            continue
        print(f"\nrunning {name} ...", flush=True)
        docs[name] = bench_system(name, args, machine, stamp)
        path = write_doc(docs[name], args.out)
        print(report.system_table(docs[name], workloads.headline_metrics()))
        print(f"  -> {path}")
    if args.compare:
        print_comparisons(docs, args.compare)
        if "gdfut" in docs:
            write_doc(docs["gdfut"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
