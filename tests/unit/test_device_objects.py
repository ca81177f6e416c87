"""What the worker keeps as a device object (issue 8), without a cluster."""
import numpy as np
import pytest

from gdfut import device_objects as d


@pytest.fixture(autouse=True)
def fresh_mode(monkeypatch):
    monkeypatch.setattr(d, "_MODE", [])


def test_device_bytes_looks_into_tuples_lists_and_dicts():
    a, b = np.zeros(1000, np.uint8), np.zeros(10, np.int64)
    assert d.device_bytes(a, real=False) == 1000
    assert d.device_bytes((a, [b, {"k": a}], "text", 3), real=False) == 2080
    deep = [[[[[a]]]]]                           # deeper than MAX_DEPTH: not looked into
    assert d.device_bytes(deep, real=False) == 0
    assert d.device_bytes(a, real=True) == 0     # numpy is not a device array on a real GPU


def test_arrow_tables_are_device_values_on_an_emulated_gpu():
    pa = pytest.importorskip("pyarrow")
    t = pa.table({"x": np.arange(1000)})
    assert d.is_device_value(t, real=False) and d.device_bytes(t, real=False) == t.nbytes


def test_host_twin_is_the_value_itself_on_an_emulated_gpu():
    v = {"a": np.ones(4)}
    assert d.host_twin(v, real=False) is v


def test_device_mode(monkeypatch):
    import gdfut.node
    monkeypatch.setattr(d, "gpu_usable", lambda: False)
    monkeypatch.delenv("GDFUT_CPU_MODE", raising=False)
    monkeypatch.setattr(gdfut.node, "detect_gpus", lambda: (0, 0))
    assert d.device_mode() == d.EMULATED           # no GPU: emulated ones
    monkeypatch.setattr(d, "_MODE", [])
    monkeypatch.setattr(gdfut.node, "detect_gpus", lambda: (2, 160 << 30))
    assert d.device_mode() is None                 # GPUs, but cupy cannot use them
    monkeypatch.setattr(d, "_MODE", [])
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    assert d.device_mode() == d.EMULATED


def test_store_keeps_nothing_without_a_gpu_or_below_the_minimum():
    class RT:
        gpu_ids = ()
        dispatch: dict = {}
    rt = RT()
    objs = d.DeviceObjects(rt)
    assert objs.store(b"o" * 20, np.zeros(1 << 20, np.uint8), b"w" * 16) is None
    rt.gpu_ids = (0,)
    assert objs.store(b"o" * 20, np.zeros(100, np.uint8), b"w" * 16) is None   # too small
    assert not objs.held
