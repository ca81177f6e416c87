"""Backpressure: a slow consumer keeps every operator's bytes in flight under
its budget, and a dataset larger than the store streams through it without
a spill."""
import sys
import time

import cloudpickle
import numpy as np
import pytest

import gdfut
import gdfut.data as gd
from helpers import assert_no_leaks, node_status

cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import this file

MiB = 1 << 20
STORE_SMALL = 48 * MiB
BLOCK_ROWS = MiB // 8           # one float64 column: 1 MiB blocks
BLOCKS = 80                     # 80 MiB through a 48 MiB store
BUDGET = 4 * MiB


@pytest.fixture
def small_store():
    info = gdfut.init(num_cpus=2, object_store_memory=STORE_SMALL)
    ctx = gd.DataContext.get_current()
    old = ctx.op_memory_budget_bytes
    ctx.op_memory_budget_bytes = BUDGET
    try:
        yield info
    finally:
        ctx.op_memory_budget_bytes = old
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def as_float(batch):
    return {"x": batch["id"].astype(np.float64)}


def plus_one(batch):
    return {"x": batch["x"] + 1.0}


def test_slow_consumer_stays_under_budget_and_never_spills(small_store):
    ds = (gd.range(BLOCKS * BLOCK_ROWS, override_num_blocks=BLOCKS)
          .map_batches(as_float, batch_size=None)
          .map_batches(plus_one, batch_size=None, num_cpus=0.5))
    peak_used, total = 0, 0.0
    for i, batch in enumerate(ds.iter_batches(batch_size=BLOCK_ROWS, prefetch_batches=2)):
        time.sleep(0.02)                           # the consumer is the bottleneck
        total += float(batch["x"].sum())
        if i % 4 == 0:
            peak_used = max(peak_used, node_status()["store"]["used_bytes"])
    n = BLOCKS * BLOCK_ROWS
    assert total == pytest.approx(n * (n - 1) / 2 + n)
    stats = ds.stats()
    for op in stats.operators:
        assert op["budget_bytes"] == BUDGET
        # the head-of-line block may exceed the budget by one block, never more
        assert op["peak_bytes_in_flight"] <= BUDGET + MiB, op
    tiers = node_status()["tiers"]
    assert tiers["spilled_bytes"] == 0 and tiers["spilled_objects"] == 0, tiers
    # two operators' budgets (and one block each past them) plus slack for the
    # blocks being freed: far below the 80 MiB that went through
    assert peak_used <= 2 * (BUDGET + MiB) + 8 * MiB, peak_used
    assert stats.consumer_wait_s < stats.wall_s
