"""Sources: files read lazily by the first stage's tasks, in-memory data put
into the object store as blocks when the dataset is made (as Ray)."""
from __future__ import annotations

import builtins
import glob
import os

import numpy as np
import pyarrow as pa

from .. import api
from . import block as B
from . import plan as PL
from . import stages as S
from .context import DataContext
from .dataset import Dataset, MaterializedDataset


def _files(paths, suffix: str, where: str) -> list[str]:
    """Files named by ``paths`` (a path, a directory or a list); directories
    give their files ending with ``suffix``, sorted. A missing path is an
    error now, naming it."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not isinstance(paths, (list, tuple)) or not paths:
        raise ValueError(f"{where}: paths must be a path or a non-empty list of paths, "
                         f"got {paths!r}")
    files = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            found = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True)
                           if os.path.isfile(f) and f.endswith(suffix))
            if not found:
                raise FileNotFoundError(f"{where}: directory {path} has no {suffix} files")
            files += found
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"{where}: path {path} does not exist")
    return files


def read_parquet(paths, *, columns: list[str] | None = None, **ignored) -> Dataset:
    if columns is not None:
        columns = [columns] if isinstance(columns, str) else list(columns)
    files = _files(paths, ".parquet", "read_parquet")
    target = DataContext.get_current().target_max_block_size
    items = [(S.ReadParquetFile(f, columns, groups, group_rows), nbytes, rows)
             for f in files
             for groups, group_rows, nbytes, rows in _row_group_reads(f, columns, target)]
    return Dataset(PL.Source("ReadParquet", items))


def _row_group_reads(path: str, columns, target: int) -> list:
    """The reads of a file, each (row groups, rows of each, estimated bytes,
    rows), from its footer. A file larger than the target max block size
    (its size in memory as estimated) is read as several blocks, each of
    consecutive row groups of about ``target`` bytes; row groups None: one
    read of the whole file. Rows known let the first stage bundle reads by
    rows (an exact ``batch_size`` fused with the read: ``plan.build_stages``)."""
    import pyarrow.parquet as pq
    try:
        meta = pq.ParquetFile(path).metadata
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException):
        return [(None, None, 0, None)]     # the read task reports a bad file, naming it
    fields = [f for f in schema if columns is None or f.name in columns]
    width = sum(f.type.bit_width // 8 for f in fields
                if pa.types.is_primitive(f.type) and not pa.types.is_boolean(f.type))
    rows = [meta.row_group(i).num_rows for i in builtins.range(meta.num_row_groups)]
    sizes = [max(meta.row_group(i).total_byte_size, rows[i] * width)
             for i in builtins.range(meta.num_row_groups)]
    if len(sizes) <= 1 or sum(sizes) <= target:
        return [(None, rows, sum(sizes), sum(rows))]
    groups, current, acc = [], [], 0
    for i, size in enumerate(sizes):
        if current and acc + size > target:
            groups.append(current)
            current, acc = [], 0
        current.append(i)
        acc += size
    groups.append(current)
    return [(g, [rows[i] for i in g], sum(sizes[i] for i in g), sum(rows[i] for i in g))
            for g in groups]


def read_csv(paths, **ignored) -> Dataset:
    files = _files(paths, ".csv", "read_csv")
    return Dataset(PL.Source.from_reads("ReadCSV", [S.ReadCsvFile(f) for f in files]))


def read_numpy(paths, **ignored) -> Dataset:
    """``.npy`` files; each gives a block with one column ``data`` (as Ray)."""
    files = _files(paths, ".npy", "read_numpy")
    return Dataset(PL.Source.from_reads("ReadNumpy", [S.ReadNumpyFile(f) for f in files]))


def range(n: int, *, override_num_blocks: int | None = None) -> Dataset:  # noqa: A001 (Ray's name)
    """Rows ``{"id": 0}`` ... ``{"id": n-1}``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"range: n must be an int >= 0, got {n!r}")
    blocks = PL.num_blocks_for(n, override_num_blocks)
    items = [(S.ReadRange(a, b), 8 * (b - a), b - a) for a, b in PL.split_rows(n, blocks)]
    return Dataset(PL.Source("ReadRange", items))


def _from_tables(name: str, tables: list[pa.Table]) -> MaterializedDataset:
    blocks = [(api.put(t), B.metadata(t)) for t in tables]
    return MaterializedDataset(PL.Source.from_blocks(name, blocks))


def _cut(table: pa.Table, override_num_blocks) -> list[pa.Table]:
    n = PL.num_blocks_for(table.num_rows, override_num_blocks)
    return [table.slice(a, b - a) for a, b in PL.split_rows(table.num_rows, n)]


def from_items(items: list, *, override_num_blocks: int | None = None) -> MaterializedDataset:
    """Rows from a list: dicts are rows, anything else becomes ``{"item": x}``."""
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"from_items: items must be a list, got {type(items).__name__}")
    n = PL.num_blocks_for(len(items), override_num_blocks)
    tables = [B.table_from_rows(list(items[a:b])) for a, b in PL.split_rows(len(items), n)]
    return _from_tables("FromItems", tables)


def from_numpy(ndarrays) -> MaterializedDataset:
    """One block per array, one column ``data`` (rows along axis 0, as Ray)."""
    arrays = [ndarrays] if isinstance(ndarrays, np.ndarray) else list(ndarrays)
    if not arrays or not all(isinstance(a, np.ndarray) and a.ndim >= 1 for a in arrays):
        raise TypeError("from_numpy: needs a numpy array (ndim >= 1) or a list of them")
    return _from_tables("FromNumpy", [B.table_from_numpy({"data": a}) for a in arrays])


def from_arrow(tables) -> MaterializedDataset:
    tables = [tables] if isinstance(tables, pa.Table) else list(tables)
    if not tables or not all(isinstance(t, pa.Table) for t in tables):
        raise TypeError("from_arrow: needs a pyarrow.Table or a list of them")
    return _from_tables("FromArrow", tables)


def from_pandas(dfs, *, override_num_blocks: int | None = None) -> MaterializedDataset:
    dfs = dfs if isinstance(dfs, (list, tuple)) else [dfs]
    if not dfs or not all(type(d).__name__ == "DataFrame" for d in dfs):
        raise TypeError("from_pandas: needs a pandas DataFrame or a list of them")
    tables = [B.table_from_pandas(d) for d in dfs]
    if len(tables) == 1 and override_num_blocks is not None:
        tables = _cut(tables[0], override_num_blocks)
    return _from_tables("FromPandas", tables)


__all__ = ["read_parquet", "read_csv", "read_numpy", "range", "from_items", "from_numpy",
           "from_arrow", "from_pandas"]
