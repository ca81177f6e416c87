"""gdfut.shuffle with tasks that hold (emulated) GPUs (issue 10, point 3):
the same sort code runs, each map's blocks are device objects of its GPU,
reducers in other processes on that GPU map them (no host copy), and the
output validates; nothing is left on the device tier afterwards."""
import pytest

from gdfut.shuffle.sort import run_sort
from helpers import emulated_gpu_cluster, node_tiers as tiers, wait_until

MIB = 1 << 20


@pytest.fixture
def gpu_cluster(tmp_path, monkeypatch):
    with emulated_gpu_cluster(tmp_path, monkeypatch, host=128 * MIB, device=64 * MIB) as info:
        yield info


@pytest.mark.parametrize("strategy", ["simple", "push"])
def test_sort_on_emulated_gpus_keeps_blocks_on_the_device(gpu_cluster, strategy):
    before = tiers()
    seen = {}

    def probe():                      # while the output refs are alive
        seen.update(tiers())

    # 4 maps x 20,000 records: ~500 KB per block, above the 100 KiB device floor
    rep = run_sort(0, 4, 4, strategy, records=4 * 20_000, gpus_per_task=0.5,
                   max_reducer_blocks=0, merge_factor=2, progress=False, after_sort=probe)
    assert rep["ok"], rep["errors"]
    assert rep["records"] == 80_000
    imports = seen["device_imports"] - before["device_imports"]
    # reducers (other worker processes on the GPU) mapped the maps' device blocks
    assert imports > 0, seen
    if strategy == "push":
        assert rep["merges"] > 0
    wait_until(lambda: tiers()["device_bytes"] == 0 and tiers()["device_segments"] == 0,
               timeout=20, what="the shuffle's device blocks to be freed")
