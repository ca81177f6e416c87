"""GPU kernels with numpy twins (imported as ``gdfut.kernels``).

Every kernel has a numpy implementation that runs everywhere (CPU mode, CI)
and, where a GPU is present, a cupy/numba implementation selected at run time.
"""
from .partition import partition_ids, partition_ids_numpy

__all__ = ["partition_ids", "partition_ids_numpy"]
