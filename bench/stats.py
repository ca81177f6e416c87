"""Pure helpers: aggregation of runs and gdfut-vs-other ratios.

No clocks, processes or systems here, so tests/unit/test_bench_harness.py
covers all of it without a cluster.
"""

from __future__ import annotations

import statistics

# Direction of every metric that may be compared across systems. A metric not
# listed here is recorded and summarised but never turned into a ratio, so a
# new metric cannot be silently compared the wrong way round.
LOWER_IS_BETTER = frozenset({
    "us_per_hop", "us_per_round_trip", "elapsed_s", "ready_s", "teardown_s",
})
HIGHER_IS_BETTER = frozenset({
    "tasks_per_s", "put_GBps", "get_GBps",
})


def is_number(value) -> bool:
    # bool is an int subclass but a check flag, not a measurement.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def summarize(runs: list[dict]) -> dict:
    """median/min/max of every numeric field found in any run.

    Fields missing from some runs are summarised over the runs that have them,
    with ``n`` saying how many did.
    """
    fields: dict[str, list[float]] = {}
    for run in runs:
        for key, value in run.items():
            if is_number(value):
                fields.setdefault(key, []).append(value)
    return {key: {"median": statistics.median(values), "min": min(values),
                  "max": max(values), "n": len(values)}
            for key, values in fields.items()}


def speedup(metric: str, gdfut_value: float, other_value: float) -> float | None:
    """How many times faster gdfut is than the other system (>1: gdfut wins).

    Time metrics: other/gdfut. Rate metrics: gdfut/other. None when the
    direction is unknown or a value makes the ratio meaningless.
    """
    if not (is_number(gdfut_value) and is_number(other_value)):
        return None
    if metric in LOWER_IS_BETTER:
        num, den = other_value, gdfut_value
    elif metric in HIGHER_IS_BETTER:
        num, den = gdfut_value, other_value
    else:
        return None
    if den <= 0 or num < 0:
        return None
    return num / den


def speedup_label(ratio: float | None) -> str:
    """Always phrased as 'x faster'; below 1 the slowdown is spelled out too."""
    if ratio is None:
        return "n/a"
    if ratio >= 1:
        return f"{ratio:.2f}x faster"
    return f"{ratio:.2f}x faster ({1 / ratio:.2f}x slower)"


def compare(gdfut_doc: dict, other_doc: dict,
            headline: dict[str, tuple[str, ...]] | None = None) -> list[dict]:
    """Rows of gdfut's speed-up over another system, on summary medians.

    ``headline`` limits each workload to its headline metrics; without it
    every metric with a known direction is compared.
    """
    rows = []
    other_workloads = other_doc.get("workloads", {})
    for wl_key, gd_wl in gdfut_doc.get("workloads", {}).items():
        other_summary = (other_workloads.get(wl_key) or {}).get("summary", {})
        gd_summary = gd_wl.get("summary", {})
        metrics = headline.get(wl_key, ()) if headline is not None else gd_summary
        for metric in metrics:
            if metric not in gd_summary or metric not in other_summary:
                continue
            gd_median = gd_summary[metric]["median"]
            other_median = other_summary[metric]["median"]
            ratio = speedup(metric, gd_median, other_median)
            if ratio is None:
                continue
            rows.append({"workload": wl_key, "metric": metric, "gdfut": gd_median,
                         "other": other_median, "speedup": ratio,
                         "label": speedup_label(ratio)})
    return rows
