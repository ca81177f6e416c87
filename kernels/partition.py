"""Range partitioning of fixed-width keys (the shuffle's map-side kernel).

``pid = (uint16_be(key[0:2]) * R) >> 16`` as workload W5 in bench/README.md defines it.
"""
from __future__ import annotations

import numpy as np


def partition_ids_numpy(records: np.ndarray, num_partitions: int) -> np.ndarray:
    """records: (n, record_len) uint8 array. Returns int64 partition ids."""
    if records.ndim != 2 or records.dtype != np.uint8 or records.shape[1] < 2:
        raise ValueError(f"records must be a 2-D uint8 array with rows of >= 2 bytes, "
                         f"got {records.dtype} {records.shape}")
    if not 1 <= num_partitions <= 65536:
        raise ValueError(f"num_partitions must be in [1, 65536], got {num_partitions}")
    prefix = records[:, 0].astype(np.int64) << 8 | records[:, 1].astype(np.int64)
    return (prefix * num_partitions) >> 16


def partition_ids(records, num_partitions: int):
    """Dispatch on the array type: cupy arrays stay on the device."""
    if hasattr(records, "__cuda_array_interface__"):
        import cupy as cp   # only on GPU hosts
        prefix = records[:, 0].astype(cp.int64) << 8 | records[:, 1].astype(cp.int64)
        return (prefix * num_partitions) >> 16
    return partition_ids_numpy(records, num_partitions)
