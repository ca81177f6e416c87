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


class _FakeCupyArray:
    """Stands in for a cupy array: device memory behind __cuda_array_interface__."""

    def __init__(self, host: np.ndarray):
        self._host = host
        self.shape, self.dtype, self.nbytes = host.shape, host.dtype, host.nbytes

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.dtype.str, "version": 3,
                "data": (self._host.ctypes.data, False)}


@pytest.fixture
def fake_cupy(monkeypatch):
    import sys
    import types
    cupy = types.ModuleType("cupy")
    cupy.ndarray = _FakeCupyArray
    cupy.asnumpy = lambda a: a._host.copy()
    cupy.asarray = lambda a: a if isinstance(a, _FakeCupyArray) else _FakeCupyArray(np.asarray(a))
    cupy.from_dlpack = lambda x: x
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    return cupy


def test_real_gpu_host_twin_has_the_layout_its_dry_run_promised(fake_cupy):
    """The host size sent at create comes from a dry twin (empty arrays): the
    host copy written later must take exactly that many bytes."""
    from gdfut import serialization as ser
    value = {"emb": _FakeCupyArray(np.arange(50_000, dtype=np.float32)),
             "ids": [_FakeCupyArray(np.arange(30_000, dtype=np.int64)), "tag"], "n": 7}
    assert d.device_bytes(value, real=True) == 50_000 * 4 + 30_000 * 8
    assert d.device_bytes(np.zeros(10), real=True) == 0
    dry = d.host_twin(value, real=True, dry=True)
    real = d.host_twin(value, real=True)
    assert isinstance(real["emb"], np.ndarray) and (real["emb"] == np.arange(50_000)).all()
    assert real["ids"][1] == "tag" and real["n"] == 7
    size = lambda v: ser.serialize(v).store_layout()[2]
    assert size(dry) == size(real)
    back = d.to_device(real)                      # a driver's get on a real GPU
    assert isinstance(back["emb"], _FakeCupyArray) and isinstance(back["ids"][0], _FakeCupyArray)
    assert back["ids"][1] == "tag"


def test_an_emulated_export_is_a_shared_segment_read_without_a_copy(tmp_path):
    """The emulated GPU's CUDA IPC: the holder's copy moves once into a
    shared-memory segment, which it keeps using (writable); a reader maps
    the same pages read-only, and its release runs when its views go."""
    import gc
    import os
    from gdfut import device_ipc
    from gdfut.devstore.arena import SHM_DIR
    name = f"gdfut-unit-{os.getpid()}-dev-test"
    value = {"x": np.arange(100_000, dtype=np.int64), "tag": "t"}
    export, held = device_ipc.shm_export(value, name)
    try:
        assert export["shm"] == name and os.path.exists(os.path.join(SHM_DIR, name))
        assert held["x"].flags.writeable and (held["x"] == value["x"]).all()
        released = []
        seen = device_ipc.shm_import(export, lambda: released.append(1))
        assert (seen["x"] == value["x"]).all() and seen["tag"] == "t"
        assert not seen["x"].flags.writeable
        held["x"][0] = -7                              # same pages: no copy in between
        assert seen["x"][0] == -7
        x = seen["x"][10:20]
        del seen
        gc.collect()
        assert not released                            # a slice still maps it
        del x
        gc.collect()
        assert released == [1]
    finally:
        os.unlink(os.path.join(SHM_DIR, name))
    assert (held["x"][1:] == value["x"][1:]).all()      # a mapping outlives the name


def test_private_copy_is_writable_and_independent():
    src = np.arange(1000)
    src.flags.writeable = False
    out = d.private_copy(({"a": src}, [src]))
    assert out[0]["a"].flags.writeable and (out[1][0] == src).all()
    out[0]["a"][0] = 5
    assert src[0] == 0


def test_cuda_ipc_export_names_the_base_allocation_and_import_closes_its_handles(monkeypatch):
    """The CUDA IPC path's bookkeeping, against a stand-in for cupy whose
    "device memory" is host memory: a pool sub-allocation is exported as the
    handle of its base allocation plus its offset; the importer rebuilds the
    value's structure, maps each array at base + offset, and closes every
    handle it opened (and releases its pin) once the last array is garbage.
    (The real CUDA calls never ran here: no GPU.)"""
    import gc
    import sys
    import types
    from gdfut import device_ipc

    pool = np.zeros(4 << 20, np.uint8)             # one cudaMalloc block of a memory pool
    base = pool.ctypes.data
    closed, opened = [], []

    class Ptr:
        def __init__(self, ptr):
            self.ptr = ptr

    class FakeArray:                                # a cupy.ndarray over pool memory
        def __init__(self, shape, dtype, memptr, strides=None):
            self.shape, self.dtype = tuple(shape), np.dtype(dtype)
            self.data, self.nbytes = memptr, int(np.prod(shape)) * self.dtype.itemsize
            self.strides = strides or (self.dtype.itemsize,)

        @property
        def __cuda_array_interface__(self):
            return {"shape": self.shape, "typestr": self.dtype.str, "version": 3,
                    "data": (self.data.ptr, False), "strides": self.strides}

        def host(self):
            return np.ctypeslib.as_array((np.ctypeslib.ctypes.c_uint8 * self.nbytes)
                                         .from_address(self.data.ptr)).view(self.dtype)

    class UnownedMemory:
        def __init__(self, ptr, size, owner):
            self.ptr, self.size, self.owner = ptr, size, owner

    class MemoryPointer:
        def __init__(self, mem, offset):
            self.mem, self.ptr = mem, mem.ptr + offset

    class Device:
        def __init__(self, i=0):
            self.i = i

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def synchronize(self):
            pass

    def open_handle(h):
        opened.append(h)
        return int.from_bytes(h, "little")

    runtime = types.SimpleNamespace(
        ipcGetMemHandle=lambda p: p.to_bytes(64, "little"), ipcOpenMemHandle=open_handle,
        ipcCloseMemHandle=closed.append)
    cupy = types.ModuleType("cupy")
    cupy.ndarray = FakeArray
    cupy.asarray = lambda x: x
    cupy.cuda = types.SimpleNamespace(runtime=runtime, UnownedMemory=UnownedMemory,
                                      MemoryPointer=MemoryPointer, Device=Device)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(device_ipc, "allocation_base",
                        lambda p: (base, pool.nbytes) if base <= p < base + pool.nbytes else 1 / 0)

    a = FakeArray((1000,), np.float32, Ptr(base + 4096))
    b = FakeArray((500,), np.int64, Ptr(base + (1 << 20)))
    a.host()[:] = np.arange(1000)
    b.host()[:] = -np.arange(500)
    export = device_ipc.cuda_export({"emb": a, "ids": [b, "tag"], "n": 7}, gpu=3)
    assert [x["offset"] for x in export["ipc"]] == [4096, 1 << 20]
    assert {x["handle"] for x in export["ipc"]} == {base.to_bytes(64, "little")}
    assert export["gpu"] == 3
    released = []
    value = device_ipc.cuda_import(export, 0, lambda: released.append(1))
    assert value["n"] == 7 and value["ids"][1] == "tag"
    emb, ids = value["emb"], value["ids"][0]
    assert emb.data.ptr == base + 4096 and ids.data.ptr == base + (1 << 20)
    assert (emb.host() == np.arange(1000)).all() and (ids.host() == -np.arange(500)).all()
    assert len(opened) == 2 and not closed
    del value, emb
    gc.collect()
    assert not closed and not released            # ids still maps it
    del ids
    gc.collect()
    assert closed == [base, base] and released == [1]
