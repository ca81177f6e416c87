"""Which implementation runs: the CUDA kernel for device arrays, the numpy twin otherwise.

GPU libraries (cupy, numba.cuda) are imported only when a device array is
given or asked for, so importing ``gdfut.kernels`` costs nothing on a CPU host.
"""
from __future__ import annotations

import importlib
import os

import numpy as np

GPU_INSTALL_HINT = "install the GPU extra: pip install 'gdfut[gpu]'"


class GPULibraryMissing(ImportError):
    """A device array was given but the library that runs the kernel is absent."""


def cpu_mode() -> bool:
    """GDFUT_CPU_MODE=1 forces the numpy twins even where a GPU is present."""
    return os.environ.get("GDFUT_CPU_MODE", "") not in ("", "0")


def is_device_array(x) -> bool:
    """CuPy arrays, torch CUDA tensors (``__cuda_array_interface__``) and numba
    device arrays, real or the simulator's (``copy_to_host``)."""
    return hasattr(x, "__cuda_array_interface__") or hasattr(x, "copy_to_host")


def _import(name: str, why: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise GPULibraryMissing(f"{name} is needed {why} but cannot be imported ({exc}); "
                                f"{GPU_INSTALL_HINT}") from exc


def cupy_module():
    return _import("cupy", "for device arrays")


def numba_cuda():
    """numba's CUDA target (or its simulator under NUMBA_ENABLE_CUDASIM=1)."""
    return _import("numba.cuda", "to run the CUDA kernels on device arrays")


def gpu_usable() -> bool:
    """True where cupy imports and sees a device, and CPU mode is not forced."""
    if cpu_mode():
        return False
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:   # no cupy, no driver, no device
        return False


def array_module(x=None):
    """The array module for ``x``: cupy for a device array, numpy for anything
    else. Without ``x``, the module new arrays should come from: cupy where a GPU
    is usable (see ``gpu_usable``), else numpy."""
    if x is None:
        return cupy_module() if gpu_usable() else np
    if hasattr(x, "__cuda_array_interface__"):
        return cupy_module()
    return np


xp = array_module


def use_cuda(x) -> bool:
    """Whether a kernel given ``x`` runs its CUDA implementation: data already on
    a device stays there (CPU mode only decides where new arrays are made)."""
    return is_device_array(x)
