"""GPU kernels with numpy twins (imported as ``gdfut.kernels``).

Every kernel has a numpy twin (``*_numpy``) that runs everywhere (CPU mode,
CI); given a device array (cupy, numba) the same function runs its numba CUDA
kernel (``kernels/cuda.py``, imported only then) and the result stays on the
device. ``array_module(x)`` (alias ``xp``) says which array library goes with x.
"""
from .dispatch import GPULibraryMissing, array_module, cpu_mode, gpu_usable, is_device_array, xp
from .partition import (Packed, hash_partition_ids, hash_partition_ids_numpy, hash_partition_keys,
                        hash_partition_keys_numpy, histogram, histogram_numpy, pack, pack_numpy,
                        partition_ids, partition_ids_numpy, range_partition_keys,
                        range_partition_keys_numpy)

__all__ = [
    "GPULibraryMissing", "Packed", "array_module", "cpu_mode", "gpu_usable", "is_device_array",
    "xp",
    "partition_ids", "partition_ids_numpy", "hash_partition_ids", "hash_partition_ids_numpy",
    "range_partition_keys", "range_partition_keys_numpy", "hash_partition_keys",
    "hash_partition_keys_numpy", "histogram", "histogram_numpy", "pack", "pack_numpy",
]
