"""Blocks and batches: a block is a ``pyarrow.Table`` or, out of a GPU stage,
a ``DeviceBlock`` (columns of device arrays); a batch is what a user function
sees (a dict of numpy or device arrays, a Table or a pandas DataFrame).

Pure functions, no runtime calls: they run in the driver and in workers.
Multi-dimensional numpy columns (images, embeddings) are stored as Arrow
fixed-shape tensor columns and come back as numpy arrays of the same shape.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .. import kernels
from .errors import BatchFormatError, ColumnNotFoundError

BATCH_FORMATS = ("numpy", "pyarrow", "pandas", "default")


def check_batch_format(batch_format: str, where: str) -> str:
    if batch_format not in BATCH_FORMATS:
        raise ValueError(f"{where}: batch_format must be one of {list(BATCH_FORMATS[:3])}, "
                         f"got {batch_format!r}")
    return "numpy" if batch_format == "default" else batch_format


# ------------------------------------------------------------ columns
def column_to_numpy(column) -> np.ndarray:
    """One Arrow column as numpy (a copy only where Arrow's layout needs one)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column.type, pa.FixedShapeTensorType):
        return column.to_numpy_ndarray()
    return column.to_numpy(zero_copy_only=False)


def to_host(values) -> np.ndarray:
    """A column as numpy: a device array copied to the host (``cupy.asnumpy``
    through its array module; a numba device array's ``copy_to_host``)."""
    if isinstance(values, np.ndarray):
        return values
    if hasattr(values, "__cuda_array_interface__"):
        return kernels.array_module(values).asnumpy(values)
    if hasattr(values, "copy_to_host"):
        return values.copy_to_host()
    return np.asarray(values)


def numpy_to_column(values) -> pa.Array:
    arr = to_host(values)
    if arr.ndim > 1:
        return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arr))
    if arr.ndim == 0:
        raise ValueError("a column must be an array with one value per row, got a scalar")
    return pa.array(arr) if arr.dtype != object else pa.array(list(arr))


def table_from_numpy(columns: dict) -> pa.Table:
    arrays = {str(k): numpy_to_column(v) for k, v in columns.items()}
    lengths = {len(a) for a in arrays.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: "
                         f"{ {k: len(a) for k, a in arrays.items()} }")
    return pa.table(arrays)


def table_from_pandas(df) -> pa.Table:
    return pa.Table.from_pandas(df, preserve_index=False)


def table_from_rows(rows: list) -> pa.Table:
    """Rows (dicts) as a table; rows that are not dicts are ``{"item": row}`` (as Ray)."""
    if not rows:
        return pa.table({})
    rows = [r if isinstance(r, dict) else {"item": r} for r in rows]
    names = list(rows[0])
    cols = {}
    for name in names:
        values = [r.get(name) for r in rows]
        if isinstance(values[0], np.ndarray):
            cols[name] = numpy_to_column(np.stack(values))
        else:
            cols[name] = pa.array(values)
    return pa.table(cols)


def table_to_rows(table: pa.Table) -> list[dict]:
    if any(isinstance(f.type, pa.FixedShapeTensorType) for f in table.schema):
        cols = {n: column_to_numpy(table.column(n)) for n in table.column_names}
        return [{n: cols[n][i] for n in cols} for i in range(table.num_rows)]
    return table.to_pylist()


# ------------------------------------------------------------ device blocks
_DEVICE_KINDS = "biufc"        # dtypes a device array can hold (no strings, no objects)


class DeviceBlock(dict):
    """A GPU stage's output block: column name -> device array of the stage's
    array module (``kernels.array_module()``: cupy on a real GPU; numpy on an
    emulated one, where numpy arrays are the device arrays), all of one length.

    It is a dict so the runtime's device tier sees its arrays (it looks into
    dicts, ``device_objects.device_bytes``): the block is a device object of
    the GPU that made it and another process on that GPU maps it. Where the
    runtime rebuilds the structure (a host copy written on a real GPU, a CUDA
    IPC import) it arrives as a plain dict; ``as_block`` makes it a
    DeviceBlock again. It has the few Table methods blocks are used through
    (``num_rows``, ``nbytes``, ``slice``, ``select``, ``take``)."""
    __slots__ = ()

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.values()))) if self else 0

    @property
    def num_columns(self) -> int:
        return len(self)

    @property
    def nbytes(self) -> int:
        return sum(int(c.nbytes) for c in self.values())

    @property
    def column_names(self) -> list[str]:
        return list(self)

    def slice(self, offset: int = 0, length: int | None = None) -> "DeviceBlock":
        stop = self.num_rows if length is None else min(self.num_rows, offset + length)
        return DeviceBlock({k: c[offset:stop] for k, c in self.items()})

    def select(self, columns) -> "DeviceBlock":
        return DeviceBlock({c: self[c] for c in columns})

    def take(self, indices) -> "DeviceBlock":
        cols = {}
        for k, c in self.items():
            cols[k] = c[kernels.array_module(c).asarray(indices)]
        return DeviceBlock(cols)

    def to_numpy(self) -> dict:
        """The columns on the host (a copy from a real GPU; as they are on an emulated one)."""
        return {k: to_host(c) for k, c in self.items()}

    def to_arrow(self) -> pa.Table:
        return table_from_numpy(self.to_numpy())

    def __repr__(self):
        return f"DeviceBlock({self.num_rows} rows, columns {self.column_names})"


def device_block(batch, where: str) -> DeviceBlock | None:
    """What a GPU stage's batch function returned, as a device block, or None
    where it is not one (then it becomes an Arrow table on the host).

    The rule: a dict whose columns are all arrays of numbers (``_DEVICE_KINDS``,
    one or more dimensions) of which at least one is a device array
    (``kernels.is_device_array``: cupy, torch CUDA, numba). On an emulated GPU
    (``kernels.array_module()`` is numpy: CPU mode, no GPU) numpy arrays are
    the device arrays, so a GPU stage returning a dict of numeric numpy
    arrays makes a device block, and the same path runs in CI. Host columns
    of a block with device columns go to the device (``xp.asarray``); on an
    emulated GPU, device arrays (numba's simulator) come to numpy."""
    if not isinstance(batch, dict) or not batch:
        return None
    xp = kernels.array_module()
    emulated = xp is np
    if not all(kernels.is_device_array(v) or isinstance(v, np.ndarray) for v in batch.values()):
        return None
    if not any(emulated or kernels.is_device_array(v) for v in batch.values()):
        return None
    cols = {str(k): (to_host(v) if emulated else xp.asarray(v)) for k, v in batch.items()}
    if not all(c.ndim >= 1 and np.dtype(c.dtype).kind in _DEVICE_KINDS for c in cols.values()):
        return None
    lengths = {k: len(c) for k, c in cols.items()}
    if len(set(lengths.values())) > 1:
        raise BatchFormatError(f"{where}: the batch function returned a dict that is not a "
                               f"batch (columns have different lengths: {lengths})")
    return DeviceBlock(cols)


def as_block(value):
    """A block as read from the store: a Table, or a DeviceBlock (a plain dict
    where the runtime rebuilt its structure)."""
    if isinstance(value, (pa.Table, DeviceBlock)):
        return value
    if isinstance(value, dict):
        return DeviceBlock(value)
    raise TypeError(f"internal: a block is a pyarrow.Table or a DeviceBlock, "
                    f"got {type(value).__name__}")


def to_table(block) -> pa.Table:
    """A block on the host as Arrow (a device block's columns copied down)."""
    block = as_block(block)
    return block.to_arrow() if isinstance(block, DeviceBlock) else block


def block_schema(block) -> pa.Schema:
    block = as_block(block)
    return block.slice(0, 1).to_arrow().schema if isinstance(block, DeviceBlock) else \
        block.schema


# ------------------------------------------------------------ batches
def to_batch(table, batch_format: str, host: bool = True) -> Any:
    """A block as a batch. A device block in numpy format is its device
    arrays where ``host`` is False (a GPU stage, iter_torch_batches), else
    copied to numpy; other formats go through Arrow on the host."""
    if isinstance(table, DeviceBlock):
        if batch_format == "numpy":
            return dict(table) if not host else table.to_numpy()
        table = table.to_arrow()
    if batch_format == "pyarrow":
        return table
    if batch_format == "pandas":
        return table.to_pandas()
    return {name: column_to_numpy(table.column(name)) for name in table.column_names}


def from_batch(batch: Any, where: str, device: bool = False):
    """What a batch function returned, as a block; BatchFormatError naming
    ``where`` (the operator) when it is not a batch. ``device``: the function
    ran in a GPU stage, whose device arrays make a device block (``device_block``)."""
    if isinstance(batch, pa.Table):
        return batch
    if device:
        block = device_block(batch, where)
        if block is not None:
            return block
    if isinstance(batch, dict):
        try:
            return table_from_numpy(batch)
        except (ValueError, TypeError, pa.ArrowException) as exc:
            raise BatchFormatError(f"{where}: the batch function returned a dict that is not "
                                   f"a batch ({exc})") from None
    if type(batch).__name__ == "DataFrame" and hasattr(batch, "to_dict"):
        return table_from_pandas(batch)
    raise BatchFormatError(f"{where}: the batch function returned {type(batch).__name__}; it "
                           f"must return a dict of numpy arrays, a pyarrow.Table or a pandas "
                           f"DataFrame")


def batch_rows(batch: Any) -> int:
    if isinstance(batch, dict):
        return len(next(iter(batch.values()))) if batch else 0
    return len(batch)


# ------------------------------------------------------------ tables
def concat(tables: list):
    """Blocks joined: device blocks with the same columns stay on the device
    (concatenated by their array module); any other mix goes to Arrow."""
    tables = [t for t in tables if t.num_columns or t.num_rows]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    if all(isinstance(t, DeviceBlock) for t in tables) and \
            len({tuple(t.column_names) for t in tables}) == 1:
        return DeviceBlock({k: kernels.array_module(c).concatenate([t[k] for t in tables])
                            for k, c in tables[0].items()})
    tables = [to_table(t) for t in tables]
    return pa.concat_tables(tables, promote_options="default")


def select(table, columns: list[str], where: str):
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ColumnNotFoundError(f"{where}: column(s) {missing} not found; the block has "
                                  f"columns {table.column_names}")
    return table.select(columns)


def slices(table: pa.Table, batch_size: int | None):
    """The table in consecutive pieces of ``batch_size`` rows (whole when None)."""
    if batch_size is None or table.num_rows <= batch_size:
        yield table
        return
    for start in range(0, table.num_rows, batch_size):
        yield table.slice(start, batch_size)


def metadata(table) -> dict:
    return {"num_rows": table.num_rows, "size_bytes": int(table.nbytes),
            "device": isinstance(table, DeviceBlock)}


def rebatch(tables, batch_size: int | None, drop_last: bool = False):
    """Tables of exactly ``batch_size`` rows cut across the input tables'
    boundaries (the last one shorter unless ``drop_last``); None: each
    non-empty input table as it is."""
    carry: list = []
    carried = 0
    for table in tables:
        if batch_size is None:
            if table.num_rows:
                yield table
            continue
        start = 0
        if carried:
            need = batch_size - carried
            carry.append(table.slice(0, need))
            carried += min(need, table.num_rows)
            start = need
            if carried < batch_size:
                continue
            yield concat(carry)
            carry, carried = [], 0
        while start + batch_size <= table.num_rows:
            yield table.slice(start, batch_size)
            start += batch_size
        if start < table.num_rows:
            carry, carried = [table.slice(start)], table.num_rows - start
    if carried and not drop_last:
        yield concat(carry)


def shuffle_rebatch(tables, batch_size: int, buffer_size: int, seed, drop_last: bool = False):
    """Batches drawn at random from a buffer of at least ``buffer_size`` rows
    (Ray's ``local_shuffle_buffer_size``): each time the buffer is full it is
    permuted and batches are cut off until it holds fewer than
    ``buffer_size`` rows; at the end, the rest, permuted."""
    rng = np.random.default_rng(seed)
    buffer: list = []
    rows = 0

    def cut(final: bool):
        nonlocal buffer, rows
        table = concat(buffer)
        table = table.take(rng.permutation(table.num_rows))
        start = 0
        while table.num_rows - start >= batch_size and (final or
                                                         table.num_rows - start >= buffer_size):
            yield table.slice(start, batch_size)
            start += batch_size
        rest = table.slice(start)
        buffer, rows = [rest], rest.num_rows

    for table in tables:
        buffer.append(table)
        rows += table.num_rows
        if rows >= buffer_size + batch_size:
            yield from cut(final=False)
    if rows:
        yield from cut(final=True)
        if rows and not drop_last:
            yield concat(buffer)
