"""Device objects GPU to GPU between nodes (gdfut/device_transfer.py): the
pure path decision, and the wire (structure, then one buffer per array) over
each data-plane backend with numpy arrays standing in for device arrays (no
GPU here; the cupy half runs in bench/gpu_check.py)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gdfut import device_transfer as dt
from gdfut.transport.base import get_backend

TOKEN = b"cluster-token"
try:
    from gdfut.transport.ucx import import_ucxx
    import_ucxx()
    UCX_SKIP = None
except RuntimeError as exc:
    UCX_SKIP = f"ucxx not importable ({exc})"


@pytest.fixture(params=["inproc", "tcp", pytest.param("ucx", marks=pytest.mark.skipif(
    UCX_SKIP is not None, reason=UCX_SKIP or ""))])
def backend_name(request) -> str:
    return request.param


def make_backend(name):
    return get_backend(name)


def run(coro, timeout: float = 30.0):
    """Run ``coro`` on a fresh loop; nothing but ucxx's own progress tasks
    may be left running afterwards."""
    import os

    async def main():
        result = await asyncio.wait_for(coro, timeout)
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                and f"{os.sep}ucxx{os.sep}" not in getattr(
                    getattr(t.get_coro(), "cr_code", None), "co_filename", "")]
        assert not left, f"tasks left after close: {left}"
        return result
    return asyncio.run(main())

ALL = dict(transport="ucx", device_object=True, reader_gpu=True, ucx_cuda=True)


def test_device_path_only_when_every_fact_allows_it():
    assert dt.choose_path(**ALL, holder_serves=True) == dt.DEVICE
    assert dt.choose_path(**ALL, holder_serves=None) == dt.ASK
    for fact, value in [("transport", "tcp"), ("device_object", False),
                        ("reader_gpu", False), ("ucx_cuda", False)]:
        facts = {**ALL, fact: value}
        assert dt.choose_path(**facts, holder_serves=True) == dt.HOST, fact
        assert dt.choose_path(**facts, holder_serves=None) == dt.HOST, fact
    assert dt.choose_path(**ALL, holder_serves=False) == dt.HOST
    assert dt.choose_path(**ALL, holder_serves=True, mode="host") == dt.HOST


def test_a_forced_device_path_names_what_is_missing():
    assert dt.choose_path(**ALL, holder_serves=True, mode="device") == dt.DEVICE
    with pytest.raises(dt.DevicePathUnavailable, match="no usable GPU"):
        dt.choose_path(**{**ALL, "reader_gpu": False}, holder_serves=None, mode="device")
    with pytest.raises(dt.DevicePathUnavailable, match="'tcp', not 'ucx'"):
        dt.choose_path(**{**ALL, "transport": "tcp"}, holder_serves=None, mode="device")
    with pytest.raises(dt.DevicePathUnavailable, match="cuda_copy"):
        dt.choose_path(**{**ALL, "ucx_cuda": False}, holder_serves=None, mode="device")
    with pytest.raises(dt.DevicePathUnavailable, match="holder does not serve"):
        dt.choose_path(**ALL, holder_serves=False, mode="device")


def test_the_holder_serves_only_with_ucx_a_gpu_and_cuda_in_ucx():
    assert dt.serves_device_pulls("ucx", True, True)
    assert not dt.serves_device_pulls("tcp", True, True)
    assert not dt.serves_device_pulls("ucx", False, True)
    assert not dt.serves_device_pulls("ucx", True, False)
    assert not dt.serves_device_pulls("ucx", True, True, mode="host")


def test_mode_from_the_environment():
    assert dt.forced_mode({}) == "auto"
    assert dt.forced_mode({dt.ENV: " Device "}) == "device"
    with pytest.raises(ValueError, match="choose one of"):
        dt.forced_mode({dt.ENV: "gpu"})


class _Rt:
    """A reader's runtime in CPU mode: it must decide without asking anyone."""
    def __init__(self, transport, gpu_ids=(0,)):
        self.node_info = {"transport": transport}
        self.gpu_ids = gpu_ids

    @property
    def node_conn(self):
        raise AssertionError("the host path was not chosen locally")


@pytest.mark.parametrize("transport", ["tcp", "ucx"])
def test_cpu_mode_keeps_the_host_path_and_a_forced_device_path_fails(transport, monkeypatch):
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    monkeypatch.delenv(dt.ENV, raising=False)
    rt = _Rt(transport)
    assert dt.local_path(rt) == dt.HOST
    assert asyncio.run(dt.fetch(rt, b"o" * 20, b"n" * 20)) is None
    monkeypatch.setenv(dt.ENV, "device")
    with pytest.raises(dt.DevicePathUnavailable, match="no usable GPU"):
        asyncio.run(dt.fetch(rt, b"o" * 20, b"n" * 20))


def _value():
    strided = np.arange(60, dtype=np.int32).reshape(6, 10)[:, ::3]   # not contiguous
    return {"x": np.arange(1000, dtype=np.float64), "meta": ("label", 3),
            "parts": [strided, np.zeros((0, 4), np.uint8), np.array(7, np.int16)]}


def test_values_cross_every_backend_array_by_array(backend_name):
    held = {b"a" * 20: _value()}
    pins, unpins = [], []

    async def pin(oid):
        pins.append(oid)
        return oid != b"m" * 20          # "m": moving down, the pin is refused

    async def go():
        be = make_backend(backend_name)

        async def handler(ep):
            await dt.serve_pulls(ep, held.get, pin, unpins.append, real=False)
        listener = await be.listen("127.0.0.1", 0, TOKEN, handler)
        ep = await be.connect(listener.address, TOKEN)
        await ep.send_frame([dt.PULL, b"a" * 20])
        got = await dt.recv_value(ep, await ep.recv_frame(), lambda n: np.empty(n, np.uint8))
        for missing in (b"z" * 20, b"m" * 20):
            held[b"m" * 20] = _value()
            await ep.send_frame([dt.PULL, missing])
            assert await ep.recv_frame() == [dt.GONE]
        await ep.send_frame(["bye"])
        await ep.close()
        await listener.close()
        return got
    got = run(go())
    want = _value()
    assert got["meta"] == want["meta"]
    np.testing.assert_array_equal(got["x"], want["x"])
    for g, w in zip(got["parts"], want["parts"]):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_array_equal(g, w)
    assert pins == [b"a" * 20, b"m" * 20]     # "z" is not held: never pinned
    assert unpins == [b"a" * 20]              # one unpin per pin that held


def test_a_bad_header_is_refused():
    for header in ([dt.VALUE, b"", [[[1], "|O"]]], [dt.VALUE, b"", [[[-1], "<f8"]]],
                   [dt.VALUE, b"", [[[1], "<f8"]] * (dt.MAX_ARRAYS + 1)], [dt.VALUE, "x", []]):
        with pytest.raises((ValueError, TypeError)):
            asyncio.run(dt.recv_value(None, header, lambda n: np.empty(n, np.uint8)))


class _Node:
    def __init__(self, answer):
        self.answer = answer
        self.asked = []

    async def request(self, mtype, *fields):
        self.asked.append((mtype, fields))
        return self.answer


class _GpuRt:
    """A reader whose facts allow the device path (as on a GPU machine)."""
    token = TOKEN

    def __init__(self, answer):
        self.node_conn = _Node(answer)
        self.device = type("D", (), {})()
        self.device.pulls = dt.DevicePulls(self)


@pytest.mark.skipif(UCX_SKIP is not None, reason=UCX_SKIP or "")
def test_fetch_pulls_from_the_holder_reuses_its_endpoint_and_falls_back(monkeypatch):
    from gdfut import protocol as P
    monkeypatch.setattr(dt, "local_facts", lambda rt: dict(ALL))
    monkeypatch.delenv(dt.ENV, raising=False)
    held, connections = {b"a" * 20: _value()}, []

    async def pin(oid):
        return True

    async def go():
        async def handler(ep):
            connections.append(ep)
            await dt.serve_pulls(ep, held.get, pin, lambda oid: None, real=False)
        listener = await get_backend("ucx").listen("127.0.0.1", 0, TOKEN, handler)
        rt = _GpuRt(list(listener.address))
        alloc = lambda n: np.empty(n, np.uint8)   # noqa: E731
        first = await dt.fetch(rt, b"a" * 20, b"n" * 20, alloc)
        second = await dt.fetch(rt, b"a" * 20, b"n" * 20, alloc)
        gone = await dt.fetch(rt, b"z" * 20, b"n" * 20, alloc)       # not held: host path
        assert rt.node_conn.asked[0] == (P.NODE_DEVICE_SOURCE, (b"a" * 20, b"n" * 20))
        assert len(connections) == 1                                   # one endpoint, reused
        nowhere = _GpuRt(None)                                         # the holder does not serve
        assert await dt.fetch(nowhere, b"a" * 20, b"n" * 20, alloc) is None
        await listener.close()
        await rt.device.pulls.close()
        dead = _GpuRt(list(listener.address))                          # listener gone: host path
        assert await dt.fetch(dead, b"a" * 20, b"n" * 20, alloc) is None
        await dead.device.pulls.close()
        return first, second, gone
    first, second, gone = run(go())
    assert gone is None
    for got in (first, second):
        np.testing.assert_array_equal(got["x"], _value()["x"])
        np.testing.assert_array_equal(got["parts"][0], _value()["parts"][0])
