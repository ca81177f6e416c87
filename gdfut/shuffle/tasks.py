"""Task bodies of the shuffle: map, merge (push and riffle) and reduce.

Each task returns its blocks as separate objects (``num_returns``) followed by
one small metadata dict (rows and bytes per block, the node it ran on), so the
driver learns sizes and placement without touching the blocks.
"""
from __future__ import annotations

import os

import numpy as np

from gdfut import kernels


def nbytes(block) -> int:
    return int(getattr(block, "nbytes", 0) or 0)


def rows(block) -> int:
    shape = getattr(block, "shape", None)
    if shape:
        return int(shape[0])
    try:
        return len(block)
    except TypeError:
        return 0


def concat_blocks(blocks: list):
    """Default merge: arrays are concatenated on their device; lists joined."""
    blocks = [b for b in blocks if b is not None]
    if not blocks:
        return None
    first = blocks[0]
    if hasattr(first, "shape"):
        if len(blocks) == 1:
            return first
        return kernels.xp(first).concatenate(blocks, axis=0)
    out = []
    for b in blocks:
        out.extend(b)
    return out


def _node_id() -> str | None:
    import gdfut
    if not gdfut.is_initialized():       # called outside a cluster (tests, the limit bench)
        return None
    return gdfut.get_runtime_context().get_node_id()


def _meta(blocks) -> dict:
    return {"node": _node_id(), "rows": [rows(b) for b in blocks],
            "bytes": [nbytes(b) for b in blocks]}


def _returns(blocks: list):
    """A task with num_returns=R+1 returns a tuple of R blocks and the meta."""
    return (*blocks, _meta(blocks))


FN_ATTR = "gdfut_shuffle_fn"     # on an error a user's function raised: which one


def fn_name(fn) -> str:
    fn = getattr(fn, "func", fn)             # functools.partial: the function inside
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)[:60]


def call_user(role: str, fn, *args):
    """``fn(*args)``; an error it raises is marked with ``role`` and its name
    (an attribute, which travels with the pickled error), so the driver can
    say which of the user's functions failed, not only which task."""
    try:
        return fn(*args)
    except Exception as exc:
        try:
            setattr(exc, FN_ATTR, f"{role} {fn_name(fn)}")
        except Exception:    # an exception class with __slots__: the traceback still tells
            pass
        raise


def check_block(block, what: str):
    """A map's block must be an array with one row per record: a clear error
    here, not an AttributeError from deep inside the partitioner."""
    if not (hasattr(block, "shape") and hasattr(block, "ndim")):
        raise TypeError(f"{what} returned {type(block).__name__}, but a shuffle block must "
                        f"be an array with one row per record (numpy, or cupy on a GPU)")
    return block


def map_task(map_fn, partitioner, num_reducers: int, item):
    from gdfut.shuffle.partition import split
    data = call_user("input", item) if callable(item) else item
    if map_fn is not None:
        block = check_block(call_user("map_fn", map_fn, data), f"map_fn {fn_name(map_fn)}")
    else:
        block = check_block(data, "the input (no map_fn)")
    pids = call_user("partitioner", partitioner, block, num_reducers)
    return _returns(split(block, pids, num_reducers))


def push_merge_task(merge_fn, *blocks):
    merged = call_user("merge_fn", merge_fn or concat_blocks, list(blocks))
    return _returns([merged])


def riffle_merge_task(merge_fn, num_reducers: int, *blocks):
    """blocks are map-major: block r of the i-th map at blocks[i * R + r]."""
    assert len(blocks) % num_reducers == 0
    fn = merge_fn or concat_blocks
    merged = [call_user("merge_fn", fn, list(blocks[r::num_reducers]))
              for r in range(num_reducers)]
    return _returns(merged)


def partition_path(output_dir: str, reducer: int) -> str:
    return os.path.join(output_dir, f"part-{reducer:05d}")


def reduce_task(reduce_fn, reducer: int, output_dir, *blocks):
    result = call_user("reduce_fn", reduce_fn, list(blocks), reducer)
    if output_dir is None:
        return result
    path = partition_path(output_dir, reducer)
    data = result.get() if hasattr(result, "get") and kernels.is_device_array(result) else result
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        if isinstance(data, (bytes, bytearray, memoryview)):
            f.write(data)
        else:
            np.ascontiguousarray(data).tofile(f)
    os.replace(tmp, path)       # a partition file exists only once complete
    return path
