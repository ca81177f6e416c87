"""What runs in workers: block transforms, source reads, the stage task and
the actor of a class stage. Each transform names its operator in errors."""
from __future__ import annotations

import os
import uuid

import numpy as np
import pyarrow as pa

from .. import api
from ..actor import method
from . import block as B
from .errors import DataError, UserCodeException


def fn_name(fn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__     # as Ray: MapBatches(<lambda>)


def _user_error(where: str, exc: BaseException) -> UserCodeException:
    err = UserCodeException(where, f"{type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


# ------------------------------------------------------------ transforms
class Transform:
    """A block -> block function of one logical operator. One that does not
    take device blocks (``accepts_device`` False) gets its input as Arrow."""
    name = "Transform"
    accepts_device = False

    def setup(self) -> None:
        """Once per worker, before the first block (class stages build their callable)."""

    def __call__(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError


class MapBatches(Transform):
    """``device``: a GPU stage's map, whose numpy batches of a device block
    are its device arrays and whose device-array results make device blocks
    (``block.device_block``)."""
    accepts_device = True

    def __init__(self, fn, batch_size, batch_format, fn_args=(), fn_kwargs=None,
                 fn_constructor_args=(), fn_constructor_kwargs=None, is_class=False,
                 exact=False, device=False):
        self.fn, self.batch_size, self.batch_format = fn, batch_size, batch_format
        self.device = device
        self.exact = exact and batch_size is not None   # bundles of k * batch_size rows
        self.fn_args, self.fn_kwargs = tuple(fn_args or ()), dict(fn_kwargs or {})
        self.ctor_args = tuple(fn_constructor_args or ())
        self.ctor_kwargs = dict(fn_constructor_kwargs or {})
        self.is_class = is_class
        self.name = f"MapBatches({fn_name(fn)})"
        self._callable = None if is_class else fn

    def setup(self):
        if self.is_class and self._callable is None:
            try:
                self._callable = self.fn(*self.ctor_args, **self.ctor_kwargs)
            except Exception as exc:
                raise _user_error(f"{self.name} constructor", exc) from exc

    def __call__(self, table):
        if self._callable is None:
            self.setup()
        outs = []
        for piece in B.slices(table, self.batch_size):
            batch = B.to_batch(piece, self.batch_format, host=not self.device)
            try:
                result = self._callable(batch, *self.fn_args, **self.fn_kwargs)
            except DataError:
                raise
            except Exception as exc:
                raise _user_error(self.name, exc) from exc
            if hasattr(result, "__next__") and not isinstance(result, (dict, pa.Table)):
                outs += [B.from_batch(r, self.name, self.device) for r in result]  # generator
            else:
                outs.append(B.from_batch(result, self.name, self.device))
        return B.concat(outs)

    def __getstate__(self):
        state = dict(self.__dict__)
        if self.is_class:
            state["_callable"] = None          # never ship a built model
        return state


class RowTransform(Transform):
    """map / filter / flat_map: a function of one row (a dict)."""

    def __init__(self, kind: str, fn, fn_args=(), fn_kwargs=None):
        assert kind in ("Map", "Filter", "FlatMap")
        self.kind, self.fn = kind, fn
        self.fn_args, self.fn_kwargs = tuple(fn_args or ()), dict(fn_kwargs or {})
        self.name = f"{kind}({fn_name(fn)})"

    def __call__(self, table):
        rows_out = []
        for row in B.table_to_rows(table):
            try:
                result = self.fn(row, *self.fn_args, **self.fn_kwargs)
            except Exception as exc:
                raise _user_error(self.name, exc) from exc
            if self.kind == "Map":
                self._check_row(result)
                rows_out.append(result)
            elif self.kind == "Filter":
                if not isinstance(result, (bool, np.bool_)):
                    raise DataError(f"{self.name}: the filter function returned "
                                    f"{type(result).__name__}; it must return a bool")
                if result:
                    rows_out.append(row)
            else:
                try:
                    items = list(result)
                except TypeError:
                    raise DataError(f"{self.name}: the function returned "
                                    f"{type(result).__name__}; flat_map needs a list of "
                                    f"rows (dicts)") from None
                for item in items:
                    self._check_row(item)
                rows_out += items
        if not rows_out:
            return table.schema.empty_table() if self.kind == "Filter" else pa.table({})
        return B.table_from_rows(rows_out)

    def _check_row(self, row):
        if not isinstance(row, dict):
            raise B.BatchFormatError(f"{self.name}: the function returned "
                                     f"{type(row).__name__}; a row must be a dict")


class AddColumn(Transform):
    def __init__(self, col: str, fn, batch_format: str):
        self.col, self.fn, self.batch_format = col, fn, batch_format
        self.name = f"AddColumn({col})"

    def __call__(self, table):
        batch = B.to_batch(table, self.batch_format)
        try:
            values = self.fn(batch)
        except Exception as exc:
            raise _user_error(self.name, exc) from exc
        if hasattr(values, "to_numpy") and not isinstance(values, (pa.Array, pa.ChunkedArray)):
            values = values.to_numpy()                       # a pandas Series
        column = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else \
            B.numpy_to_column(values)
        if len(column) != table.num_rows:
            raise DataError(f"{self.name}: the function returned {len(column)} values for a "
                            f"block of {table.num_rows} rows")
        if self.col in table.column_names:
            return table.set_column(table.column_names.index(self.col), self.col, column)
        return table.append_column(self.col, column)


class SelectColumns(Transform):
    accepts_device = True

    def __init__(self, cols: list[str]):
        self.cols = list(cols)
        self.name = f"SelectColumns({self.cols})"

    def __call__(self, table):
        return B.select(table, self.cols, self.name)


class WriteParquet(Transform):
    """Writes the block to ``path`` and passes on a one-row summary."""

    def __init__(self, path: str):
        self.path = path
        self.name = "WriteParquet"

    def __call__(self, table):
        import pyarrow.parquet as pq
        name = os.path.join(self.path, f"{uuid.uuid4().hex}.parquet")
        pq.write_table(table, name)
        return pa.table({"path": [name], "num_rows": [table.num_rows]})


# ------------------------------------------------------------ source reads
class ReadTask:
    """A picklable read of one block, run in the first stage's task."""
    name = "Read"

    def __call__(self) -> pa.Table:
        raise NotImplementedError

    def read_rows(self, start: int, stop: int) -> pa.Table:
        """Rows ``[start, stop)`` of the block (a bundle cut by rows across
        reads whose rows are known); reads that can read less override it."""
        table = self()
        return table if (start, stop) == (0, table.num_rows) else \
            table.slice(start, stop - start)


class ReadParquetFile(ReadTask):
    name = "ReadParquet"

    def __init__(self, path: str, columns, row_groups: list[int] | None = None,
                 group_rows: list[int] | None = None):
        self.path, self.columns, self.row_groups = path, columns, row_groups
        self.group_rows = group_rows       # rows of each row group read (from the footer)

    def read_rows(self, start, stop):
        """Only the row groups holding rows ``[start, stop)``, then sliced."""
        if self.group_rows is None or len(self.group_rows) <= 1:
            return super().read_rows(start, stop)
        groups = self.row_groups or list(range(len(self.group_rows)))
        offsets = np.cumsum([0] + list(self.group_rows))
        first = int(np.searchsorted(offsets, start, side="right")) - 1
        last = int(np.searchsorted(offsets, stop, side="left"))
        part = ReadParquetFile(self.path, self.columns, groups[first:last])
        table = part()
        lo = start - int(offsets[first])
        return table.slice(lo, stop - start)

    def __call__(self):
        import pyarrow.parquet as pq
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.name}: file {self.path} does not exist")
        if self.columns is not None:
            names = pq.read_schema(self.path).names
            missing = [c for c in self.columns if c not in names]
            if missing:
                raise B.ColumnNotFoundError(f"{self.name}: column(s) {missing} not found in "
                                            f"{self.path}, which has columns {names}")
        if self.row_groups is not None:
            return pq.ParquetFile(self.path).read_row_groups(self.row_groups,
                                                             columns=self.columns)
        return pq.read_table(self.path, columns=self.columns)


class ReadCsvFile(ReadTask):
    name = "ReadCSV"

    def __init__(self, path: str):
        self.path = path

    def __call__(self):
        import pyarrow.csv as pcsv
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.name}: file {self.path} does not exist")
        return pcsv.read_csv(self.path)


class ReadNumpyFile(ReadTask):
    name = "ReadNumpy"

    def __init__(self, path: str):
        self.path = path

    def __call__(self):
        if not os.path.exists(self.path):
            raise FileNotFoundError(f"{self.name}: file {self.path} does not exist")
        return B.table_from_numpy({"data": np.load(self.path, allow_pickle=False)})


class ReadRange(ReadTask):
    name = "ReadRange"

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def __call__(self):
        return pa.table({"id": np.arange(self.start, self.stop, dtype=np.int64)})

    def read_rows(self, start, stop):
        return ReadRange(self.start + start, self.start + stop)()


# ------------------------------------------------------------ runners
def apply_chain(chain, table):
    for transform in chain:
        if isinstance(table, B.DeviceBlock) and not transform.accepts_device:
            table = table.to_arrow()
        table = transform(table)
    if not isinstance(table, (pa.Table, B.DeviceBlock)):
        raise DataError(f"internal: a transform returned {type(table).__name__}")
    return table


def bundle_table(ranges, items):
    """A bundle's rows: one item whole (``ranges`` None: a read or a block), or
    rows ``[start, stop)`` of each block, concatenated (zero-copy; device
    blocks stay on the device)."""
    if ranges is None:
        assert len(items) == 1
        item = items[0]
        return item() if isinstance(item, ReadTask) else B.as_block(item)
    assert len(ranges) == len(items)
    tables = []
    for t, (a, b) in zip(items, ranges):
        if isinstance(t, ReadTask):          # a read fused with a stage bundling by rows
            tables.append(t.read_rows(a, b))
            continue
        t = B.as_block(t)
        tables.append(t if (a, b) == (0, t.num_rows) else t.slice(a, b - a))
    return tables[0] if len(tables) == 1 else B.concat(tables)


def run_block(chain, ranges, *items):
    """One task of a function stage: read (or take) a bundle, run the chain."""
    table = apply_chain(chain, bundle_table(ranges, items))
    return table, B.metadata(table)


run_block_remote = api.remote(num_returns=2)(run_block)


class MapWorker:
    """The actor of a class stage: builds the user's class once, then maps blocks."""

    def __init__(self, chain):
        self.chain = chain
        for transform in chain:
            transform.setup()

    @method(num_returns=2)
    def process(self, ranges, *items):
        return run_block(self.chain, ranges, *items)

    def ready(self):
        return True
