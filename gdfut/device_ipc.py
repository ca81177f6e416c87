"""Sharing a device object with another process on the same GPU, zero-copy.

The holder exports its device copy once (``DEVICE_EXPORT``, asked by its
node for a reader holding the same GPU); readers map it, pinned in the node's
device tier until their last view is garbage, when they unmap it and send
``DEVICE_UNPIN``. Two ways:

* **Real GPU: CUDA IPC.** For each device array in the value (also inside
  tuples, lists and dicts), ``cudaIpcGetMemHandle`` of the allocation the
  array lives in, plus the array's offset inside it: CuPy's memory pool hands
  out sub-allocations of larger ``cudaMalloc`` blocks and an IPC handle always
  names the base allocation, so the base is found with the driver's
  ``cuMemGetAddressRange``. The reader opens each handle
  (``cudaIpcOpenMemHandle``), wraps the pointer as ``cupy.cuda.UnownedMemory``
  and builds ``cupy.ndarray``s over it; ``cudaIpcCloseMemHandle`` runs when
  the last array is garbage. torch CUDA tensors and other
  ``__cuda_array_interface__``/DLPack objects are exported through a CuPy view
  of their memory and arrive as CuPy arrays. The holder keeps its arrays
  alive while any reader is pinned (the node's device tier never drops a
  pinned device copy, and defers a free until the last pin goes).
  Written against CuPy's documented API; never run on a GPU here.
* **Emulated GPU (CPU mode).** A process's own memory cannot be mapped by
  another, so at its first export the device copy moves once into a
  shared-memory segment of that GPU (``/dev/shm/<arena>-dev-<oid>``, named
  by the node, which unlinks it when the device copy goes, when the holder
  dies and when the node stops); the holder then uses the segment's copy
  itself (same bytes, writable), readers map it read-only. No host-tier
  (arena) bytes are used, and the bytes stay counted once, against the GPU's
  ``device_store_memory``.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import pickle

import numpy as np

from . import serialization as ser
from .devstore.arena import SHM_DIR, map_file_readonly



# -- emulated GPUs: a shared-memory segment per exported device copy -----------

def shm_export(value, name: str):
    """Write ``value`` into a new segment ``name``; returns (the export
    message, the value rebuilt over the segment for the holder, writable)."""
    s = ser.serialize(value, "a device object")
    layout = s.store_layout()
    size = max(layout[2], 1)
    path = os.path.join(SHM_DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size)          # shared, read-write
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    region = np.frombuffer(mm, np.uint8)
    ser.write_into(memoryview(region), s, layout)
    return {"shm": name, "size": size}, ser.loads_from_store(region)


def shm_import(export: dict, on_release):
    """The value over an exported segment, read-only, no copy;
    ``on_release()`` runs once its last view is garbage."""
    region = map_file_readonly(os.path.join(SHM_DIR, export["shm"]), 0, export["size"],
                               on_release)
    return ser.loads_from_store(region)


# -- real GPUs: CUDA IPC -----------------------------------------------------------

class _Slot:
    """Where an exported array was in the value's structure."""
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (_Slot, (self.index,))


_libcuda = []


def allocation_base(ptr: int) -> tuple[int, int]:
    """(base, size) of the CUDA allocation holding device pointer ``ptr``
    (``cuMemGetAddressRange``): an IPC handle names a whole allocation, and a
    pool's sub-allocation is at an offset inside one."""
    if not _libcuda:
        lib = ctypes.CDLL("libcuda.so.1")
        fn = lib.cuMemGetAddressRange_v2
        fn.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t),
                       ctypes.c_uint64]
        fn.restype = ctypes.c_int
        _libcuda.append(fn)
    base, size = ctypes.c_uint64(0), ctypes.c_size_t(0)
    rc = _libcuda[0](ctypes.byref(base), ctypes.byref(size), ctypes.c_uint64(ptr))
    if rc != 0:
        raise RuntimeError(f"cuMemGetAddressRange failed for pointer {ptr:#x} (CUresult {rc})")
    return int(base.value), int(size.value)


def _as_cupy(x):
    import cupy
    if isinstance(x, cupy.ndarray):
        return x
    if hasattr(x, "__cuda_array_interface__"):
        return cupy.asarray(x)            # a view of the same memory
    return cupy.from_dlpack(x)


def cuda_export(value, gpu: int) -> dict:
    """IPC handles of the device arrays in ``value`` and its structure."""
    import cupy
    cupy.cuda.Device().synchronize()      # the producer's kernels have written it
    arrays = []

    def visit(x):
        arr = _as_cupy(x)
        ptr = int(arr.data.ptr)
        base, _ = allocation_base(ptr) if arr.nbytes else (ptr, 0)
        handle = bytes(cupy.cuda.runtime.ipcGetMemHandle(base))
        arrays.append({"handle": handle, "offset": ptr - base, "shape": list(arr.shape),
                       "dtype": arr.dtype.str, "strides": list(arr.strides),
                       "nbytes": int(arr.nbytes)})
        return _Slot(len(arrays) - 1)
    from .device_objects import DESCEND, is_device_value, map_leaves
    skeleton = map_leaves(value, lambda x: visit(x) if is_device_value(x, True) else DESCEND)
    return {"ipc": arrays, "skeleton": ser.serialize_inline(skeleton).pickle_bytes, "gpu": gpu}


class _IpcMapping:
    """Handles opened for one import; closed, and the pin released, when the
    last array over them is garbage."""

    def __init__(self, on_release):
        self.ptrs: list[int] = []
        self._on_release = on_release

    def __del__(self):
        import cupy
        for p in self.ptrs:
            try:
                cupy.cuda.runtime.ipcCloseMemHandle(p)
            except Exception:
                pass
        on_release, self._on_release = self._on_release, None
        if on_release is not None:
            on_release()


def cuda_import(export: dict, device_index: int, on_release):
    """The exported value as CuPy arrays over the holder's memory (no copy)."""
    import cupy
    mapping = _IpcMapping(on_release)
    arrays = []
    with cupy.cuda.Device(device_index):
        for a in export["ipc"]:
            ptr = int(cupy.cuda.runtime.ipcOpenMemHandle(a["handle"]))
            mapping.ptrs.append(ptr)
            mem = cupy.cuda.UnownedMemory(ptr, a["offset"] + a["nbytes"], mapping)
            memptr = cupy.cuda.MemoryPointer(mem, a["offset"])
            arrays.append(cupy.ndarray(tuple(a["shape"]), np.dtype(a["dtype"]), memptr,
                                       tuple(a["strides"])))
    from .device_objects import DESCEND, map_leaves
    return map_leaves(pickle.loads(export["skeleton"]),
                      lambda x: arrays[x.index] if isinstance(x, _Slot) else DESCEND)
