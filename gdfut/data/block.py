"""Blocks and batches: a block is a ``pyarrow.Table``; a batch is what a user
function sees (a dict of numpy arrays, a Table or a pandas DataFrame).

Pure functions, no runtime calls: they run in the driver and in workers.
Multi-dimensional numpy columns (images, embeddings) are stored as Arrow
fixed-shape tensor columns and come back as numpy arrays of the same shape.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

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


def numpy_to_column(values) -> pa.Array:
    arr = np.asarray(values)
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


# ------------------------------------------------------------ batches
def to_batch(table: pa.Table, batch_format: str) -> Any:
    if batch_format == "pyarrow":
        return table
    if batch_format == "pandas":
        return table.to_pandas()
    return {name: column_to_numpy(table.column(name)) for name in table.column_names}


def from_batch(batch: Any, where: str) -> pa.Table:
    """What a batch function returned, as a block; BatchFormatError naming
    ``where`` (the operator) when it is not a batch."""
    if isinstance(batch, pa.Table):
        return batch
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
def concat(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_columns or t.num_rows]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    return pa.concat_tables(tables, promote_options="default")


def select(table: pa.Table, columns: list[str], where: str) -> pa.Table:
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


def metadata(table: pa.Table) -> dict:
    return {"num_rows": table.num_rows, "size_bytes": int(table.nbytes)}


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
