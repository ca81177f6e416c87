"""The workloads defined in bench/README.md, written once against an adapter.

A workload is a ``params(quick)`` function and a ``run`` function that does
one timed repetition and returns a flat dict of measurements (numbers are
summarised as median/min/max; lists are kept as raw samples). Correctness is
checked after each timed section, outside the timing, and a failed check
raises ``CheckFailed`` so the run is recorded as an error.

To add a workload (W5, W5L, a transfer benchmark): write its params and run
functions, list its headline metrics (with their direction in
``bench/stats.py``), and add it to ``WORKLOADS``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from bench import procs, tasks
from bench.systems import system_env

MiB = 1 << 20
GB = 1e9  # bench/README.md: GB = 10^9 bytes

# Cluster shape shared by every system (bench/README.md: 2 worker CPUs).
NUM_CPUS = 2
# Room for a few 256 MiB objects at once; not scaled by --quick because it is
# a cluster setting, not a workload size.
OBJECT_STORE_MEMORY = 2 << 30
WARMUP_TASKS = 500
ARRAY_BYTES = 256 * MiB


class CheckFailed(Exception):
    """A workload produced a wrong result."""


def check(condition: bool, message: str) -> None:
    # Not ``assert``: checks must survive ``python -O``.
    if not condition:
        raise CheckFailed(message)


def scaled(n: int, quick: bool) -> int:
    """--quick divides every size and count by 4 (never below 1)."""
    return max(1, n // 4) if quick else n


def cluster_params() -> dict:
    return {"num_cpus": NUM_CPUS, "object_store_memory": OBJECT_STORE_MEMORY}


def warmup_tasks(quick: bool) -> int:
    return scaled(WARMUP_TASKS, quick)


def warm_up(system, n: int) -> None:
    """Start workers and fill caches before W1 (bench/README.md: 500 no-ops)."""
    noop = system.remote(tasks.noop)
    results = system.get([noop() for _ in range(n)])
    check(len(results) == n and all(r is None for r in results), "warm-up results")


def make_array(nbytes: int, seed: int = 0) -> np.ndarray:
    """Random whole numbers as float64: incompressible-ish bytes, exact sums."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, nbytes // 8).astype(np.float64)


def memcpy_GBps(nbytes: int, iterations: int = 5) -> float:
    """Single-thread copy rate into a pre-faulted destination (median)."""
    src = make_array(nbytes, seed=1)
    dst = np.empty_like(src)
    dst.fill(0)  # touch every page so the timing has no page faults
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    check(np.array_equal(dst, src), "memcpy baseline copy")
    return nbytes / GB / statistics.median(times)


# --- W1 tiny-task throughput -------------------------------------------------

def w1_params(quick: bool) -> dict:
    return {"tasks": scaled(10_000, quick)}


def w1_tiny_tasks(system, params: dict) -> dict:
    n = params["tasks"]
    noop = system.remote(tasks.noop)
    t0 = time.perf_counter()
    refs = [noop() for _ in range(n)]  # one submission at a time, as specified
    t1 = time.perf_counter()
    results = system.get(refs)
    t2 = time.perf_counter()
    check(len(results) == n and all(r is None for r in results), "W1 results")
    return {"tasks_per_s": n / (t2 - t0), "submit_s": t1 - t0, "get_s": t2 - t1,
            "total_s": t2 - t0}


# --- W1b tiny tasks from two owners ---------------------------------------------
# Not one of the defined workloads: it shows that throughput grows with owners.
# The driver and one worker submit half each; total time until both halves finish.

def w1b_params(quick: bool) -> dict:
    return {"tasks": scaled(10_000, quick), "owners": 2}


def w1b_two_owners(system, params: dict) -> dict:
    module = {"gdfut": "gdfut", "ray": "ray"}.get(system.name)
    if module is None:
        raise NotImplementedError(f"{system.name}: tasks submitting tasks not mapped")
    n = params["tasks"]
    half = n // 2
    noop = system.remote(tasks.noop)
    helper = system.remote(tasks.submit_noops)
    t0 = time.perf_counter()
    other = helper(module, n - half)            # the second owner
    refs = [noop() for _ in range(half)]
    results = system.get(refs)
    done_by_worker = system.get(other)
    t1 = time.perf_counter()
    check(all(r is None for r in results) and done_by_worker == n - half, "W1b results")
    return {"tasks_per_s": n / (t1 - t0), "total_s": t1 - t0}


# --- W2 task chain latency ---------------------------------------------------

def w2_params(quick: bool) -> dict:
    return {"hops": scaled(1000, quick), "round_trips": scaled(200, quick)}


def w2_chain(system, params: dict) -> dict:
    hops, trips = params["hops"], params["round_trips"]
    inc = system.remote(tasks.inc)

    t0 = time.perf_counter()
    ref = inc(0)
    for _ in range(hops - 1):
        ref = inc(ref)  # previous future as argument, no waiting
    result = system.get(ref)
    chain_s = time.perf_counter() - t0
    check(result == hops, f"W2 chain result {result!r} != {hops}")

    t0 = time.perf_counter()
    answers = [system.get(inc(j)) for j in range(trips)]
    trips_s = time.perf_counter() - t0
    check(answers == [j + 1 for j in range(trips)], "W2 round-trip results")

    return {"us_per_hop": chain_s / hops * 1e6, "chain_s": chain_s,
            "us_per_round_trip": trips_s / trips * 1e6, "round_trips_s": trips_s}


# --- W3 put/get --------------------------------------------------------------

def w3_params(quick: bool) -> dict:
    return {"array_bytes": scaled(ARRAY_BYTES, quick), "iterations": scaled(5, quick)}


def w3_put_get(system, params: dict) -> dict:
    nbytes, iterations = params["array_bytes"], params["iterations"]
    arr = make_array(nbytes)
    put_s, get_s = [], []
    for _ in range(iterations):
        t0 = time.perf_counter()
        ref = system.put(arr)
        t1 = time.perf_counter()
        out = system.get(ref)
        t2 = time.perf_counter()
        check(out.shape == arr.shape and np.array_equal(out, arr), "W3 get != put")
        put_s.append(t1 - t0)
        get_s.append(t2 - t1)
        del out, ref  # free the object before the next put
    # Measured here, in the same process and moment, so load affects both alike.
    memcpy = memcpy_GBps(nbytes)
    put_rate = nbytes / GB / statistics.median(put_s)
    return {"put_GBps": put_rate, "get_GBps": nbytes / GB / statistics.median(get_s),
            "memcpy_GBps": memcpy, "put_vs_memcpy": put_rate / memcpy,
            "put_s_samples": put_s, "get_s_samples": get_s}


# --- W4 pass-by-reference fan-out --------------------------------------------

def w4_params(quick: bool) -> dict:
    return {"array_bytes": scaled(ARRAY_BYTES, quick), "tasks": scaled(8, quick)}


def w4_fan_out(system, params: dict) -> dict:
    nbytes, n = params["array_bytes"], params["tasks"]
    arr = make_array(nbytes)
    expected = float(arr.sum())  # whole numbers: exact in any summation order
    array_sum = system.remote(tasks.array_sum)
    t0 = time.perf_counter()
    ref = system.put(arr)
    t1 = time.perf_counter()
    sums = system.get([array_sum(ref) for _ in range(n)])
    t2 = time.perf_counter()
    check(sums == [expected] * n, f"W4 sums {sums} != {expected}")
    del ref
    return {"elapsed_s": t2 - t0, "put_s": t1 - t0, "fan_out_s": t2 - t1}


# --- W6 cluster start (fresh interpreter) ------------------------------------

W6_SCRIPT = """
import json, time
t_start = time.monotonic()
from bench.systems import make_system
from bench.tasks import noop
system = make_system({name!r})
system.init(num_cpus={num_cpus}, object_store_memory={object_store_memory})
t_init = time.monotonic()
result = system.get(system.remote(noop)())
t_ready = time.monotonic()
t0 = time.perf_counter()
system.shutdown()
teardown_s = time.perf_counter() - t0
print("BENCH_W6 " + json.dumps({{"t_start": t_start, "t_init": t_init,
      "t_ready": t_ready, "teardown_s": teardown_s, "result": repr(result)}}), flush=True)
"""


def w6_params(quick: bool) -> dict:
    return cluster_params()


def w6_cold_start(system_name: str, params: dict, timeout_s: float) -> dict:
    """Spawn ``python -c`` that imports, starts the cluster, runs one no-op.

    ``time.monotonic`` is CLOCK_MONOTONIC, shared by all processes on Linux,
    so the child's timestamps are comparable with the spawn time taken here.
    """
    script = W6_SCRIPT.format(name=system_name, **params)
    env, mark = procs.marked_env(system_env())
    t_spawn = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=procs.REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        procs.kill_marked(mark, [proc.pid])
        proc.communicate()
        raise TimeoutError(f"W6 process did not finish in {timeout_s} s")
    t_exit = time.monotonic()
    leaked = procs.reap_leftovers(mark)
    report = _w6_report(stdout)
    check(proc.returncode == 0 and report is not None,
          f"W6 process rc={proc.returncode}: {stderr[-2000:]}")
    check(report["result"] == "None", f"W6 no-op returned {report['result']}")
    return {"ready_s": report["t_ready"] - t_spawn, "teardown_s": report["teardown_s"],
            "interpreter_s": report["t_start"] - t_spawn,
            "init_s": report["t_init"] - report["t_start"],
            "first_task_s": report["t_ready"] - report["t_init"],
            "exit_s": t_exit - t_spawn, "leaked_processes": len(leaked),
            "leaked": leaked}


def _w6_report(stdout: str) -> dict | None:
    for line in stdout.splitlines():
        if line.startswith("BENCH_W6 "):
            return json.loads(line[len("BENCH_W6 "):])
    return None


# --- registry ----------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    headline: tuple[str, ...]        # metrics shown in tables and compared
    params: Callable[[bool], dict]
    run: Callable[..., dict]
    # False: run(system, params) inside the system's benchmark cluster.
    # True: run(system_name, params, timeout_s) by the orchestrator, which
    # needs no cluster of its own (W6 starts its own in a new interpreter).
    fresh_process: bool = False


WORKLOADS = {w.key: w for w in (
    Workload("W1", "tiny-task throughput", ("tasks_per_s",), w1_params, w1_tiny_tasks),
    Workload("W1b", "tiny tasks from two owners", ("tasks_per_s",), w1b_params,
             w1b_two_owners),
    Workload("W2", "task chain latency", ("us_per_hop", "us_per_round_trip"),
             w2_params, w2_chain),
    Workload("W3", "put/get", ("put_GBps", "get_GBps", "memcpy_GBps", "put_vs_memcpy"),
             w3_params, w3_put_get),
    Workload("W4", "pass-by-reference fan-out", ("elapsed_s",), w4_params, w4_fan_out),
    Workload("W6", "cluster start", ("ready_s", "teardown_s"), w6_params, w6_cold_start,
             fresh_process=True),
)}


def headline_metrics() -> dict[str, tuple[str, ...]]:
    return {key: w.headline for key, w in WORKLOADS.items()}
