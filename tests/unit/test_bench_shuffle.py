"""bench/shuffle.py's pure parts and its single-node limit on tiny data."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from bench import shuffle as B  # noqa: E402


def test_params_follow_the_workload_definitions():
    w5, w5l = B.params("W5", False), B.params("W5L", False)
    assert (w5["gib"], w5["maps"], w5["reducers"]) == (1.0, 16, 16)
    assert (w5l["gib"], w5l["maps"], w5l["reducers"], w5l["object_store_memory"]) == \
        (4.0, 64, 64, 1 << 30)
    assert w5["records"] == (1 << 30) // 100
    q = B.params("W5", True)
    assert (q["gib"], q["maps"], q["reducers"]) == (0.25, 4, 4)


def test_summary_and_ratios():
    runs = [{"ok": True, "GBps": g, "elapsed_s": 1 / g, "load_1m": 1.0, "cpu_GBps": 2 * g}
            for g in (0.1, 0.2, 0.3)]
    s = B.summary(runs)
    assert s["GBps"] == {"median": 0.2, "min": 0.1, "max": 0.3} and s["all_ok"]
    assert not B.summary(runs + [{"ok": False}])["all_ok"]
    res = {"systems": {"limit": {"summary": B.summary(runs)},
                       "gdfut-simple": {"summary": B.summary([dict(r, GBps=r["GBps"] * 2)
                                                              for r in runs])}}}
    B._ratios("W5", res)
    assert abs(res["ratios"]["gdfut-simple/limit (GBps)"] - 2.0) < 1e-9
    assert abs(res["ratios"]["gdfut-simple/limit (cpu_GBps)"] - 1.0) < 1e-9


def test_limit_sorts_and_validates_tiny_data():
    p = {"gib": 0, "maps": 5, "reducers": 3, "records": 5000, "object_store_memory": 0}
    runs = B.run_limit(p, 1, 2)
    assert len(runs) == 1 and runs[0]["ok"], runs[0]["errors"]
    assert runs[0]["GBps"] > 0 and runs[0]["cpu_GBps"] > 0 and runs[0]["processes"] == 2
