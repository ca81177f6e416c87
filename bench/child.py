"""Runs one system's in-cluster workloads in a process of its own.

    python -m bench.child CONFIG_JSON EVENTS_JSONL

The orchestrator (bench/run.py) starts this once per system, so no two
systems' clusters ever share a process. Progress goes to EVENTS_JSONL, one
JSON object per line, flushed as it happens: if a workload hangs, the
orchestrator kills this process and still has every run finished before it.
stdout/stderr are left to the systems' own logging.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

from bench.systems import make_system
from bench.workloads import WORKLOADS, warm_up


class Events:
    def __init__(self, path: str):
        self._file = open(path, "a", encoding="utf-8")

    def emit(self, event: str, **fields) -> None:
        fields.update(event=event, t=time.time())
        self._file.write(json.dumps(fields) + "\n")
        self._file.flush()


def start_cluster(system, cfg: dict, events: Events) -> bool:
    """init + warm-up; both outside every workload's timing."""
    try:
        t0 = time.perf_counter()
        system.init(**cfg["cluster"])
        init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm_up(system, cfg["warmup_tasks"])
        warmup_s = time.perf_counter() - t0
    except Exception:
        events.emit("init_error", error=traceback.format_exc())
        return False
    events.emit("ready", init_s=init_s, warmup_s=warmup_s,
                warmup_tasks=cfg["warmup_tasks"], version=system.version())
    return True


def run_workload(system, key: str, cfg: dict, events: Events) -> None:
    """All repetitions of one workload; an exception ends this workload only."""
    workload = WORKLOADS[key]
    params = cfg["params"][key]
    events.emit("workload_start", workload=key)
    for index in range(cfg["repeat"]):
        load_1m = os.getloadavg()[0]  # before the run: the machine's own load
        try:
            result = workload.run(system, params)
        except Exception:
            events.emit("workload_error", workload=key, run=index,
                        error=traceback.format_exc())
            break
        result["load_1m"] = load_1m
        events.emit("run", workload=key, run=index, result=result)
    events.emit("workload_end", workload=key)


def main(argv: list[str]) -> int:
    config_path, events_path = argv
    with open(config_path, encoding="utf-8") as f:
        cfg = json.load(f)
    events = Events(events_path)
    system = make_system(cfg["system"])
    ok = start_cluster(system, cfg, events)
    if ok:
        for key in cfg["workloads"]:
            run_workload(system, key, cfg, events)
    try:
        t0 = time.perf_counter()
        system.shutdown()
        events.emit("shutdown", teardown_s=time.perf_counter() - t0)
    except Exception:
        events.emit("shutdown_error", error=traceback.format_exc())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
