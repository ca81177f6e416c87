"""gdfut.data class stages on one emulated GPU pass their blocks through the
device tier: the next stage's actors (other processes, same GPU) map the
blocks the previous stage's actors hold, with no host copy written for
them (issue 8 point 1, issue 11's device-resident blocks)."""
import numpy as np
import pytest

import gdfut
import gdfut.data as gd
from gdfut import protocol as P, runtime_context
from helpers import assert_no_leaks, wait_until

MIB = 1 << 20
BLOCKS = 6
ROWS = 64 * 1024                     # int64 ids: 512 KiB per block, a device object


@pytest.fixture
def one_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    spill = str(tmp_path / "spill")
    info = gdfut.init(num_cpus=2, num_gpus=1, object_store_memory=128 * MIB,
                      device_store_memory=64 * MIB, spill_dir=spill)
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"], spill)


def tiers():
    return runtime_context.require().node_request(P.NODE_STATUS)["tiers"]


def stage_classes():
    """Defined in a function so they pickle by value (workers cannot import
    this test module)."""
    class Double:
        def __call__(self, batch):
            return {"id": batch["id"] * 2}

    class Check:
        def __call__(self, batch):
            ids = batch["id"]
            # a mapped device block is read-only: not a private copy of a host copy
            return {"id": ids + 1, "mapped": np.full(len(ids), not ids.flags.writeable)}
    return Double, Check


def test_gpu_class_stages_pass_device_blocks_without_host_copies(one_gpu):
    Double, Check = stage_classes()
    ds = (gd.range(BLOCKS * ROWS, override_num_blocks=BLOCKS)
          .map_batches(Double, num_gpus=0.25, concurrency=1, batch_format="numpy")
          .map_batches(Check, num_gpus=0.25, concurrency=1, batch_format="numpy",
                       zero_copy_batch=True))
    before = tiers()
    out = ds.to_pandas()
    np.testing.assert_array_equal(np.sort(out["id"].to_numpy()),
                                  np.arange(BLOCKS * ROWS) * 2 + 1)
    t = tiers()
    imports = t["device_imports"] - before["device_imports"]
    moved = t["moved_down_objects"] - before["moved_down_objects"]
    # every block of the first stage reached the second by mapping it ...
    assert imports >= BLOCKS, t
    assert out["mapped"].all()
    # ... and only the second stage's blocks got host copies (read by the driver)
    assert moved <= BLOCKS, t
    del out, ds
    wait_until(lambda: tiers()["device_bytes"] == 0 and tiers()["device_segments"] == 0,
               timeout=20, what="the device blocks and their segments to go")
