"""The statistics of bench/lineage_cost.py (pure)."""
import math

from bench.lineage_cost import lineage_micro_us, median_ci, summary


def test_median_ci_takes_the_binomial_order_statistics():
    xs = list(range(1, 22))                  # 21 pairs: the 6th smallest and largest
    assert median_ci(xs) == (6, 16)
    assert median_ci(list(reversed(xs))) == (6, 16)
    lo, hi = median_ci([1.0, 2.0, 3.0, 4.0, 5.0])   # 5 pairs: only the extremes (p=0.0625)
    assert math.isnan(lo) and math.isnan(hi)
    assert median_ci(list(range(6))) == (0, 5)        # 6 pairs: p = 2/64 <= 0.025


def test_summary_reports_the_median_and_geometric_mean():
    s = summary([0.9, 1.0, 1.0, 1.1, 1.0, 0.95, 1.05])
    assert s["median"] == 1.0
    assert s["min"] == 0.9 and s["max"] == 1.1
    assert s["geomean_ci95"][0] < s["geomean"] < s["geomean_ci95"][1]
    assert 0.97 < s["geomean"] < 1.01


def test_lineage_micro_times_record_and_release():
    m = lineage_micro_us(n=200, repeats=2)
    assert 0 < m["record_us"] < 1000 and 0 < m["release_us"] < 1000
