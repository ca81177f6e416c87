"""bench/data_pipeline.py's pure helpers: the result check and the ratio."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import data_pipeline as d1  # noqa: E402


def doc(rate, rows=100, sums=(1.0, 2.0, 3.0, 4.0), peak=10):
    return {"runs": [{"rows": rows, "sums": list(sums), "rows_per_s": rate,
                      "peak_store_bytes": peak}], "spilled_bytes": 0}


def test_same_results_tolerates_summation_order_only():
    a = doc(10)
    assert d1.same_results(a, doc(5, sums=(1.0 + 1e-12, 2.0, 3.0, 4.0)))
    assert not d1.same_results(a, doc(5, sums=(1.001, 2.0, 3.0, 4.0)))
    assert not d1.same_results(a, doc(5, rows=99))


def test_ratio_and_summary():
    assert d1.ratio(doc(30), doc(10)) == 3.0
    s = d1.summary({"runs": doc(1)["runs"] + doc(3, peak=50)["runs"], "spilled_bytes": 7})
    assert s["rows_per_s_median"] == 2 and s["peak_store_bytes"] == 50 and s["spilled_bytes"] == 7


def test_model_and_normalise_shapes():
    import numpy as np
    batch = {c: np.full(5, 0.5) for c in d1.COLUMNS}
    out = d1.Model()(d1.normalise(batch))
    assert sorted(out) == ["p0", "p1", "p2", "p3"] and all(np.all(v == 0) for v in out.values())
