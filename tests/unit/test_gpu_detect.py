"""GPU discovery with nvidia-ml-py, and what a node declares from it."""
import json
import sys
import types

import psutil

from gdfut import node

MEMORY = psutil.virtual_memory().total    # the default 'memory' resource of a node


def _fake_pynvml(count, mem_each, fail_init=False):
    mod = types.ModuleType("pynvml")
    calls = {"shutdown": 0}

    class NVMLError_LibraryNotFound(Exception):
        pass

    def init():
        if fail_init:
            raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    def shutdown():
        calls["shutdown"] += 1

    mod.nvmlInit = init
    mod.nvmlShutdown = shutdown
    mod.nvmlDeviceGetCount = lambda: count
    mod.nvmlDeviceGetHandleByIndex = lambda i: i
    mod.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=mem_each[h])
    return mod, calls


def test_detect_counts_devices_and_memory(monkeypatch):
    mod, calls = _fake_pynvml(2, [16 << 30, 24 << 30])
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    assert node.detect_gpus() == (2, 40 << 30)
    assert calls["shutdown"] == 1


def test_no_driver_means_cpu_mode(monkeypatch):
    mod, _ = _fake_pynvml(0, [], fail_init=True)
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    assert node.detect_gpus() == (0, 0)
    assert node.declared_resources(None, None) == (0, {"memory": MEMORY})


def test_declared_resources(monkeypatch):
    mod, _ = _fake_pynvml(1, [80 << 30])
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    assert node.declared_resources(None, None) == (1, {"GPU_memory": 80 << 30, "memory": MEMORY})
    # an explicit figure wins over the detected one
    assert node.declared_resources(None, json.dumps({"GPU_memory": 1 << 30, "memory": 5})) == \
        (1, {"GPU_memory": 1 << 30, "memory": 5})
    # --num-gpus given (emulated GPUs): no detection, no GPU memory invented
    assert node.declared_resources(2, json.dumps({"accel": 1})) == \
        (2, {"accel": 1, "memory": MEMORY})
