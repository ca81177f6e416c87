"""Pure parts of the benchmark harness (bench/): no cluster, no subprocess."""

import sys
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root: ``bench``

from bench import report, run, stats, workloads  # noqa: E402


# --- aggregation -------------------------------------------------------------

def test_summarize_median_min_max_of_numeric_fields():
    runs = [{"tasks_per_s": 3.0, "ok": True, "samples": [1, 2], "name": "a"},
            {"tasks_per_s": 1.0, "ok": True, "samples": [3], "name": "b"},
            {"tasks_per_s": 2.0, "ok": False, "samples": [], "name": "c"}]
    summary = stats.summarize(runs)
    assert summary == {"tasks_per_s": {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}}


def test_summarize_even_count_and_missing_fields():
    runs = [{"a": 1, "b": 10}, {"a": 4}]
    summary = stats.summarize(runs)
    assert summary["a"] == {"median": 2.5, "min": 1, "max": 4, "n": 2}
    assert summary["b"] == {"median": 10, "min": 10, "max": 10, "n": 1}


def test_summarize_no_runs():
    assert stats.summarize([]) == {}


# --- ratios ------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["us_per_hop", "elapsed_s", "ready_s", "teardown_s"])
def test_speedup_time_metrics_are_other_over_gdfut(metric):
    assert stats.speedup(metric, 2.0, 6.0) == pytest.approx(3.0)   # gdfut 3x faster
    assert stats.speedup(metric, 6.0, 2.0) == pytest.approx(1 / 3)  # gdfut 3x slower


@pytest.mark.parametrize("metric", ["tasks_per_s", "put_GBps", "get_GBps"])
def test_speedup_rate_metrics_are_gdfut_over_other(metric):
    assert stats.speedup(metric, 6.0, 2.0) == pytest.approx(3.0)
    assert stats.speedup(metric, 2.0, 6.0) == pytest.approx(1 / 3)


def test_speedup_refuses_unknown_direction_and_bad_values():
    assert stats.speedup("put_vs_memcpy", 1.0, 2.0) is None
    assert stats.speedup("memcpy_GBps", 1.0, 2.0) is None
    assert stats.speedup("elapsed_s", 0.0, 2.0) is None
    assert stats.speedup("tasks_per_s", 5.0, 0.0) is None
    assert stats.speedup("elapsed_s", None, 2.0) is None


def test_speedup_label_always_says_faster():
    assert stats.speedup_label(2.5) == "2.50x faster"
    assert stats.speedup_label(1.0) == "1.00x faster"
    assert stats.speedup_label(0.5) == "0.50x faster (2.00x slower)"
    assert stats.speedup_label(None) == "n/a"


def _doc(workload_summaries):
    return {"workloads": {key: {"summary": {m: {"median": v, "min": v, "max": v, "n": 1}
                                            for m, v in metrics.items()}}
                          for key, metrics in workload_summaries.items()}}


def test_compare_uses_medians_headline_and_direction():
    gdfut = _doc({"W1": {"tasks_per_s": 20_000, "submit_s": 0.1},
                  "W2": {"us_per_hop": 100.0}, "W3": {"put_vs_memcpy": 0.5}})
    ray = _doc({"W1": {"tasks_per_s": 5_000, "submit_s": 1.0},
                "W2": {"us_per_hop": 400.0}, "W3": {"put_vs_memcpy": 0.1}})
    headline = {"W1": ("tasks_per_s",), "W2": ("us_per_hop",), "W3": ("put_vs_memcpy",)}
    rows = stats.compare(gdfut, ray, headline)
    assert [(r["workload"], r["metric"], r["speedup"]) for r in rows] == [
        ("W1", "tasks_per_s", 4.0), ("W2", "us_per_hop", 4.0)]
    assert rows[0]["label"] == "4.00x faster"


def test_compare_skips_workloads_missing_on_either_side():
    gdfut = _doc({"W1": {"tasks_per_s": 1.0}, "W4": {"elapsed_s": 1.0}})
    dask = _doc({"W1": {}, "W6": {"ready_s": 1.0}})
    assert stats.compare(gdfut, dask, None) == []


def test_comparison_table_labels_every_row():
    rows = [{"workload": "W4", "metric": "elapsed_s", "gdfut": 0.2, "other": 0.1,
             "speedup": 0.5, "label": stats.speedup_label(0.5)}]
    text = report.comparison_table("dask", rows)
    assert "x faster" in text and "2.00x slower" in text and "dask" in text


# --- arguments ---------------------------------------------------------------

def test_parse_args_defaults():
    args = run.parse_args([])
    assert args.systems is None and args.compare == []
    assert args.workloads == ["W1", "W1b", "W2", "W3", "W4", "W6"]
    assert args.repeat == 3 and args.quick is False and args.timeout == 300.0
    assert args.out.name == "results"


def test_parse_args_lists_are_split_and_deduplicated():
    args = run.parse_args(["--systems", "ray,dask,ray", "--compare", "dask",
                           "--workloads", "W3,W1", "--repeat", "1", "--quick",
                           "--out", "/tmp/x"])
    assert args.systems == ["ray", "dask"] and args.compare == ["dask"]
    assert args.workloads == ["W3", "W1"] and args.repeat == 1 and args.quick
    assert str(args.out) == "/tmp/x"


@pytest.mark.parametrize("argv", [["--systems", "spark"], ["--compare", "gdfut"],
                                  ["--workloads", "W9"], ["--repeat", "0"],
                                  ["--systems", ""]])
def test_parse_args_rejects_bad_values(argv, capsys):
    with pytest.raises(SystemExit):
        run.parse_args(argv)


def test_plan_systems():
    assert run.plan_systems(None, []) == ["gdfut"]
    assert run.plan_systems(["ray", "dask"], []) == ["ray", "dask"]
    assert run.plan_systems(None, ["ray", "dask"]) == ["gdfut", "ray", "dask"]
    assert run.plan_systems(["dask"], ["ray"]) == ["gdfut", "dask", "ray"]


# --- quick scaling -----------------------------------------------------------

def test_full_parameters_follow_the_spec():
    params = run.workload_params(list(workloads.WORKLOADS), quick=False)
    assert params["W1"] == {"tasks": 10_000}
    assert params["W1b"] == {"tasks": 10_000, "owners": 2}
    assert params["W2"] == {"hops": 1000, "round_trips": 200}
    assert params["W3"] == {"array_bytes": 256 << 20, "iterations": 5}
    assert params["W4"] == {"array_bytes": 256 << 20, "tasks": 8}
    assert params["W6"] == {"num_cpus": 2, "object_store_memory": 2 << 30}
    assert workloads.warmup_tasks(False) == 500


def test_quick_divides_sizes_and_counts_by_four():
    params = run.workload_params(list(workloads.WORKLOADS), quick=True)
    assert params["W1"] == {"tasks": 2500}
    assert params["W2"] == {"hops": 250, "round_trips": 50}
    assert params["W3"] == {"array_bytes": 64 << 20, "iterations": 1}
    assert params["W4"] == {"array_bytes": 64 << 20, "tasks": 2}
    assert params["W6"]["num_cpus"] == 2  # the cluster shape is not a workload size
    assert workloads.warmup_tasks(True) == 125


def test_scaled_never_reaches_zero():
    assert workloads.scaled(3, quick=True) == 1
    assert workloads.scaled(3, quick=False) == 3


def test_every_headline_metric_is_shown_and_compared_ones_have_a_direction():
    directed = stats.LOWER_IS_BETTER | stats.HIGHER_IS_BETTER
    for key, wl in workloads.WORKLOADS.items():
        assert any(m in directed for m in wl.headline), key


# --- folding child events into the document ----------------------------------

def _session(tmp_path):
    args = Namespace(workloads=["W1"], repeat=2, quick=True, timeout=300.0, out=tmp_path)
    doc = run.new_doc("ray", args, {"memcpy_GBps": 10.0}, "20260101T000000Z")
    return run.ChildSession("ray", ["W1"], args, doc, tmp_path / "log"), doc


def test_child_events_fill_runs_summary_and_cluster(tmp_path):
    session, doc = _session(tmp_path)
    events = [{"event": "ready", "init_s": 3.0, "warmup_s": 0.5, "warmup_tasks": 125,
               "version": "2.60.0"},
              {"event": "workload_start", "workload": "W1"},
              {"event": "run", "workload": "W1", "run": 0, "result": {"tasks_per_s": 10.0}},
              {"event": "run", "workload": "W1", "run": 1, "result": {"tasks_per_s": 30.0}},
              {"event": "workload_end", "workload": "W1"},
              {"event": "shutdown", "teardown_s": 1.5}]
    for event in events:
        session._apply(event, 0.0)
    wl = doc["workloads"]["W1"]
    assert wl["status"] == "ok" and wl["summary"]["tasks_per_s"]["median"] == 20.0
    assert doc["system_version"] == "2.60.0"
    assert doc["clusters"] == [{"init_s": 3.0, "warmup_s": 0.5, "warmup_tasks": 125,
                                "teardown_s": 1.5}]
    assert session.current is None and session.failure is None


def test_child_workload_error_keeps_earlier_runs(tmp_path):
    session, doc = _session(tmp_path)
    session._apply({"event": "workload_start", "workload": "W1"}, 0.0)
    session._apply({"event": "run", "workload": "W1", "run": 0,
                    "result": {"tasks_per_s": 10.0}}, 0.0)
    session._apply({"event": "workload_error", "workload": "W1", "run": 1,
                    "error": "Traceback...\nCheckFailed: W1 results"}, 0.0)
    session._apply({"event": "workload_end", "workload": "W1"}, 0.0)
    wl = doc["workloads"]["W1"]
    assert wl["status"] == "error" and "CheckFailed" in wl["error"]
    assert wl["summary"]["tasks_per_s"]["n"] == 1
    assert "ERROR: CheckFailed: W1 results" in report.system_table(
        doc, workloads.headline_metrics())


def test_workload_start_sets_the_per_workload_deadline_and_runs_do_not_extend_it(tmp_path):
    session, _ = _session(tmp_path)
    deadline = session._apply({"event": "workload_start", "workload": "W1"}, 0.0)
    assert deadline > 250  # monotonic now + 300 s
    assert session._apply({"event": "run", "workload": "W1", "run": 0,
                           "result": {}}, deadline) == deadline
    assert session.current == "W1"


def test_w6_report_is_found_among_other_output():
    out = 'noise\nBENCH_W6 {"t_ready": 2.0, "result": "None"}\nmore\n'
    assert workloads._w6_report(out) == {"t_ready": 2.0, "result": "None"}
    assert workloads._w6_report("nothing here") is None


def test_fmt_numbers():
    assert report.fmt(12345.6) == "12,346"
    assert report.fmt(123.45) == "123.5"
    assert report.fmt(1.23456) == "1.235"
    assert report.fmt(0.0123456) == "0.01235"
    assert report.fmt(None) == "-"
