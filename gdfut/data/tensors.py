"""Columns of a batch as torch tensors for ``iter_torch_batches``.

A device array (CuPy, or anything with ``__cuda_array_interface__`` and
``__dlpack__``) goes to torch through DLPack, ``torch.from_dlpack``: the
tensor shares the array's device memory, no host copy. A numpy column is
wrapped (``torch.as_tensor``) and moved to ``device``. ``from_dlpack`` and
``as_tensor`` are parameters so the DLPack path is tested without torch
(``numpy.from_dlpack`` goes through the same protocol).
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import kernels


def check_device(device: str, cuda_available: bool, where: str = "iter_torch_batches") -> None:
    """A clear error before the pipeline runs when CUDA is asked for and absent."""
    if str(device).startswith("cuda") and not cuda_available:
        raise RuntimeError(f"{where}(device={device!r}): this PyTorch sees no CUDA device "
                           f"(torch.cuda.is_available() is False: no GPU, or a CPU-only "
                           f"torch build); use device='cpu' or 'auto'")


def column_tensor(values, *, device: str, dtype=None, from_dlpack, as_tensor, to=None):
    """One column as a tensor. ``to(tensor, device, dtype)`` moves/casts it
    (torch's ``Tensor.to``; None: leave it where it is)."""
    if kernels.is_device_array(values):
        if not hasattr(values, "__dlpack__"):
            raise TypeError(f"iter_torch_batches: a device column of type "
                            f"{type(values).__name__} has no __dlpack__; it cannot be "
                            f"handed to torch without a host copy")
        tensor = from_dlpack(values)               # shares the device memory
    else:
        values = np.ascontiguousarray(values)
        if not values.flags.writeable and str(device).startswith("cpu"):
            values = values.copy()                 # a view of the store: torch wants to own it
        with warnings.catch_warnings():            # a read-only view copied to the device
            warnings.simplefilter("ignore", UserWarning)
            tensor = as_tensor(values)
    return tensor if to is None else to(tensor, device, dtype)


def torch_batch(batch: dict, torch, device: str, dtypes) -> dict:
    def to(tensor, dev, dtype):
        return tensor.to(device=dev, dtype=dtype) if dtype is not None else tensor.to(device=dev)

    out = {}
    for name, values in batch.items():
        dtype = dtypes.get(name) if isinstance(dtypes, dict) else dtypes
        out[name] = column_tensor(values, device=device, dtype=dtype,
                                  from_dlpack=torch.from_dlpack, as_tensor=torch.as_tensor, to=to)
    return out
