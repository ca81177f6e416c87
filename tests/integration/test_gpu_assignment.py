"""GPU-aware placement on one node with emulated GPUs (CPU mode): each GPU task
or actor is told which devices its lease holds, and sees only those."""
import os
import time

import pytest

import gdfut
from helpers import assert_no_leaks


@pytest.fixture
def gpu_node():
    info = gdfut.init(num_cpus=2, num_gpus=2, object_store_memory=128 * 1024 * 1024)
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


@gdfut.remote
def devices(hold_s=0.0):
    time.sleep(hold_s)
    return gdfut.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")


@gdfut.remote(num_gpus=1)
class OnGpu:
    def devices(self):
        return (gdfut.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"),
                gdfut.get_runtime_context().get_accelerator_ids())


def test_concurrent_gpu_tasks_get_different_devices(gpu_node):
    one_gpu = devices.options(num_gpus=1)
    results = gdfut.get([one_gpu.remote(0.5), one_gpu.remote(0.5)])
    ids = sorted(r[0][0] for r in results)
    assert ids == [0, 1]
    for gpu_ids, visible in results:
        assert len(gpu_ids) == 1 and visible == str(gpu_ids[0])


def test_two_gpu_task_and_cpu_task(gpu_node):
    gpu_ids, visible = gdfut.get(devices.options(num_gpus=2).remote())
    assert sorted(gpu_ids) == [0, 1] and sorted(visible.split(",")) == ["0", "1"]
    # a CPU task (maybe on the same, reused worker) is told it has no GPU
    assert gdfut.get(devices.remote())[0] == []
    assert gdfut.get_gpu_ids() == []           # the driver holds none


def test_gpu_actor_keeps_its_device(gpu_node):
    a = OnGpu.remote()
    first = gdfut.get(a.devices.remote())
    gpu_ids, visible, accel = first
    assert len(gpu_ids) == 1 and visible == str(gpu_ids[0])
    assert accel == {"GPU": [str(gpu_ids[0])]}
    assert gdfut.get(a.devices.remote()) == first
