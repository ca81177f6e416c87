"""Partitioners: which reducer each row of a map's output goes to.

A partitioner is called in the map task as ``partitioner(block, num_reducers)``
and returns one partition id per row (int array on the block's device). Given
by name or object:

- ``"range"`` / ``KeyRange()``: records (2-D uint8 rows) by their 16-bit key
  prefix, ``pid = (uint16_be(key[0:2]) * R) >> 16`` (W5's formula);
  ``KeyRange(boundaries)`` on a 1-D integer key column: sorted boundaries,
  R = len(boundaries) + 1;
- ``"hash"`` / ``Hash(key_size)``: a hash of the key bytes (records) or of the
  key (a 1-D key column), modulo R;
- any other callable ``fn(block, num_reducers) -> pids``: the user's function.

The ids go to ``gdfut.kernels``, which runs the CUDA kernel for device arrays
and the numpy twin otherwise, so partitioning stays on the block's device.
"""
from __future__ import annotations

from gdfut import kernels


class KeyRange:
    def __init__(self, boundaries=None):
        self.boundaries = boundaries

    def __call__(self, block, num_reducers: int):
        if block.ndim == 1:
            if self.boundaries is None:
                raise ValueError("range partitioning of a key column needs boundaries: "
                                 "KeyRange(boundaries) with num_reducers - 1 sorted keys")
            if len(self.boundaries) != num_reducers - 1:
                raise ValueError(f"KeyRange has {len(self.boundaries)} boundaries, so "
                                 f"{len(self.boundaries) + 1} partitions, but num_reducers "
                                 f"is {num_reducers}")
            return kernels.range_partition_keys(block, self.boundaries)
        return kernels.partition_ids(block, num_reducers)

    def __repr__(self):
        return "KeyRange()" if self.boundaries is None else f"KeyRange({len(self.boundaries)} boundaries)"


class Hash:
    def __init__(self, key_size: int = 10):
        self.key_size = key_size

    def __call__(self, block, num_reducers: int):
        if block.ndim == 1:
            return kernels.hash_partition_keys(block, num_reducers)
        return kernels.hash_partition_ids(block, num_reducers, self.key_size)

    def __repr__(self):
        return f"Hash(key_size={self.key_size})"


def resolve(partitioner):
    """A partitioner callable from a name or a callable; a clear error otherwise."""
    if partitioner in ("range", None):
        return KeyRange()
    if partitioner == "hash":
        return Hash()
    if callable(partitioner):
        return partitioner
    raise ValueError(f"unknown partitioner {partitioner!r}: use 'range', 'hash', "
                     f"KeyRange(boundaries), Hash(key_size) or a function "
                     f"fn(block, num_reducers) -> partition ids")


def split(block, pids, num_reducers: int) -> list:
    """The block's rows grouped by partition id: R views of one packed buffer
    (kernels.pack is a stable counting sort, on the block's device)."""
    packed = kernels.pack(block, pids, num_reducers)
    offsets = packed.offsets
    if hasattr(offsets, "get"):
        offsets = offsets.get()
    elif hasattr(offsets, "copy_to_host"):
        offsets = offsets.copy_to_host()
    offsets = [int(o) for o in offsets]
    return [packed.data[offsets[r]:offsets[r + 1]] for r in range(num_reducers)]
