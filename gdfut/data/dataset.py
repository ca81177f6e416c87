"""``Dataset``: a lazy plan (a source and logical operators) with Ray Data's
transforms and consumers. Nothing runs until a consumer asks; each consumer
run builds stages (``plan.py``) and streams them through the executor."""
from __future__ import annotations

import os
from typing import Callable

import pyarrow as pa

from .. import api
from . import block as B
from . import plan as PL
from . import stages as S
from .stats import DatasetStats, RunStats
from .tensors import check_device, torch_batch


class Dataset:
    def __init__(self, source: PL.Source, ops: tuple = ()):
        self._source = source
        self._ops = tuple(ops)
        self._last_run: RunStats | None = None

    def _with(self, op) -> "Dataset":
        return Dataset(self._source, self._ops + (op,))

    def __repr__(self):
        names = [self._source.name] + [op.name for op in self._ops]
        return f"Dataset({' -> '.join(names)})"

    # ================================================================ transforms
    def map_batches(self, fn, *, batch_size: int | None | str = "default",
                    batch_format: str = "default", num_cpus: float | None = None,
                    num_gpus: float | None = None, concurrency=None, fn_args=None,
                    fn_kwargs=None, fn_constructor_args=None, fn_constructor_kwargs=None,
                    zero_copy_batch: bool = False, **ray_remote_args) -> "Dataset":
        """Apply ``fn`` to batches. A function runs as tasks; a class runs on
        an actor pool of ``concurrency`` actors (an int, or ``(min, max)`` to
        scale on queue length), each building the class once."""
        where = f"map_batches({S.fn_name(fn)})"
        fmt = B.check_batch_format(batch_format, where)
        # An explicit batch_size is exact: batches of N rows across blocks (the
        # stage bundles its input, see bundler.py); the default is a hint, cut
        # within each block, so the map stays fused with the read before it.
        exact = batch_size != "default"
        if batch_size == "default":
            batch_size = 1024 if num_gpus is None else None   # Ray: whole blocks on GPUs
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"{where}: batch_size must be an int >= 1 or None, "
                             f"got {batch_size!r}")
        is_class = isinstance(fn, type)
        if not is_class and not callable(fn):
            raise TypeError(f"{where}: fn must be a function or a class, got "
                            f"{type(fn).__name__}")
        if not is_class and (fn_constructor_args or fn_constructor_kwargs):
            raise ValueError(f"{where}: fn_constructor_args/kwargs are for a class")
        concurrency = PL.check_concurrency(concurrency, is_class, where)
        transform = S.MapBatches(fn, batch_size, fmt, fn_args, fn_kwargs, fn_constructor_args,
                                 fn_constructor_kwargs, is_class, exact=exact,
                                 device=bool(num_gpus))
        return self._with(PL.MapOp(transform.name, transform, "actor" if is_class else "task",
                                   PL.resources(num_cpus, num_gpus, where), concurrency,
                                   ray_remote_args))

    def map(self, fn: Callable[[dict], dict], *, fn_args=None, fn_kwargs=None,
            num_cpus: float | None = None, num_gpus: float | None = None,
            concurrency=None) -> "Dataset":
        return self._row_op("Map", fn, fn_args, fn_kwargs, num_cpus, num_gpus, concurrency)

    def filter(self, fn: Callable[[dict], bool], *, fn_args=None, fn_kwargs=None,
               num_cpus: float | None = None, num_gpus: float | None = None,
               concurrency=None) -> "Dataset":
        return self._row_op("Filter", fn, fn_args, fn_kwargs, num_cpus, num_gpus, concurrency)

    def flat_map(self, fn: Callable[[dict], list], *, fn_args=None, fn_kwargs=None,
                 num_cpus: float | None = None, num_gpus: float | None = None,
                 concurrency=None) -> "Dataset":
        return self._row_op("FlatMap", fn, fn_args, fn_kwargs, num_cpus, num_gpus, concurrency)

    def _row_op(self, kind, fn, fn_args, fn_kwargs, num_cpus, num_gpus, concurrency):
        where = f"{kind.lower()}({S.fn_name(fn)})"
        if not callable(fn) or isinstance(fn, type):
            raise TypeError(f"{where}: needs a function of one row, got {type(fn).__name__}")
        concurrency = PL.check_concurrency(concurrency, False, where)
        t = S.RowTransform(kind, fn, fn_args, fn_kwargs)
        return self._with(PL.MapOp(t.name, t, "task", PL.resources(num_cpus, num_gpus, where),
                                   concurrency, {}))

    def add_column(self, col: str, fn: Callable, *, batch_format: str = "pandas",
                   num_cpus: float | None = None) -> "Dataset":
        if not isinstance(col, str):
            raise TypeError(f"add_column: col must be a str, got {type(col).__name__}")
        fmt = B.check_batch_format(batch_format, f"add_column({col})")
        t = S.AddColumn(col, fn, fmt)
        return self._with(PL.MapOp(t.name, t, "task", PL.resources(num_cpus, None, t.name),
                                   None, {}))

    def select_columns(self, cols) -> "Dataset":
        cols = [cols] if isinstance(cols, str) else list(cols)
        if not cols or not all(isinstance(c, str) for c in cols):
            raise ValueError(f"select_columns: cols must be column names, got {cols!r}")
        t = S.SelectColumns(cols)
        return self._with(PL.MapOp(t.name, t, "task", PL.resources(None, None, t.name),
                                   None, {}))

    def repartition(self, num_blocks: int, *, shuffle: bool = False) -> "Dataset":
        if not isinstance(num_blocks, int) or num_blocks < 1:
            raise ValueError(f"repartition: num_blocks must be an int >= 1, got {num_blocks!r}")
        if shuffle:
            return self.random_shuffle(num_blocks=num_blocks)
        return self._with(PL.AllToAllOp(f"Repartition({num_blocks})",
                                        lambda blocks: PL.repartition(blocks, num_blocks)))

    def random_shuffle(self, *, seed: int | None = None,
                       num_blocks: int | None = None) -> "Dataset":
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"random_shuffle: seed must be an int, got {type(seed).__name__}")
        return self._with(PL.AllToAllOp("RandomShuffle",
                                        lambda blocks: PL.random_shuffle(blocks, seed,
                                                                         num_blocks)))

    def split(self, n: int, *, equal: bool = False) -> list["MaterializedDataset"]:
        """``n`` materialized datasets; ``equal=True`` gives each the same
        number of rows (the remainder dropped, as Ray)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"split: n must be an int >= 1, got {n!r}")
        blocks = self._run_to_list()
        if equal:
            total = sum(m["num_rows"] for _, m in blocks)
            each = total // n
            parts = PL.row_ranges(blocks, [(i * each, (i + 1) * each) for i in range(n)])
            return [MaterializedDataset(PL.Source.from_blocks("Split", [p])) for p in parts]
        groups = [blocks[i::n] for i in range(n)]
        return [MaterializedDataset(PL.Source.from_blocks("Split", g)) for g in groups]

    def write_parquet(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        for _ in self._with(PL.MapOp("WriteParquet", S.WriteParquet(path), "task",
                                     PL.resources(None, None, "write_parquet"), None,
                                     {}))._run_blocks():
            pass

    # ================================================================ consumers
    def _run_blocks(self, prefetch_blocks: int = 1):
        """(ref, metadata) of each output block, streamed; stats kept."""
        self._last_run = stats = RunStats()
        try:
            yield from PL.execute(self._source, self._ops, prefetch_blocks, stats)
        finally:
            stats.finish()

    def _run_to_list(self) -> list:
        return list(self._run_blocks())

    def iter_internal_ref_bundles(self):
        return self._run_blocks()

    def iter_batches(self, *, batch_size: int | None = 256, batch_format: str = "default",
                     prefetch_batches: int = 1, drop_last: bool = False,
                     local_shuffle_buffer_size=None, local_shuffle_seed=None):
        """Batches of ``batch_size`` rows (the last may be smaller unless
        ``drop_last``), across block boundaries. ``prefetch_batches`` blocks
        are fetched ahead while the caller works, and count in the last
        operator's byte budget."""
        fmt = B.check_batch_format(batch_format, "iter_batches")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"iter_batches: batch_size must be an int >= 1 or None, "
                             f"got {batch_size!r}")
        if not isinstance(prefetch_batches, int) or prefetch_batches < 0:
            raise ValueError(f"iter_batches: prefetch_batches must be an int >= 0, "
                             f"got {prefetch_batches!r}")
        if local_shuffle_buffer_size is not None and (
                not isinstance(local_shuffle_buffer_size, int) or local_shuffle_buffer_size < 1):
            raise ValueError(f"iter_batches: local_shuffle_buffer_size must be an int >= 1, "
                             f"got {local_shuffle_buffer_size!r}")
        if local_shuffle_buffer_size is not None and batch_size is None:
            raise ValueError("iter_batches: local_shuffle_buffer_size needs a batch_size")
        return _Batches(self, batch_size, fmt, prefetch_batches, drop_last,
                        local_shuffle_buffer_size, local_shuffle_seed)

    def _tables(self, prefetch: int):
        """Blocks as they are: Arrow tables, and device blocks of GPU stages
        (converted to the host only where the consumer wants host batches)."""
        for ref, _ in self._run_blocks(prefetch_blocks=prefetch):
            yield B.as_block(api.get(ref))

    def iter_torch_batches(self, *, batch_size: int | None = 256, dtypes=None,
                           device: str = "auto", collate_fn=None, prefetch_batches: int = 1,
                           drop_last: bool = False, local_shuffle_buffer_size=None,
                           local_shuffle_seed=None):
        """Batches as dicts of torch tensors on ``device`` ("auto": CUDA when
        torch sees a GPU, else CPU); ``dtypes`` a torch dtype or a dict of them.
        Device columns go to torch through DLPack (``tensors.py``); "cuda"
        without a CUDA device is an error at once."""
        try:
            import torch
        except ImportError:
            raise ImportError("iter_torch_batches needs PyTorch, which is not installed: "
                              "pip install torch (or use iter_batches for numpy)") from None
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        check_device(device, torch.cuda.is_available())
        return self._torch_batches(torch, device, dtypes, collate_fn, batch_size,
                                   prefetch_batches, drop_last, local_shuffle_buffer_size,
                                   local_shuffle_seed)

    def _torch_batches(self, torch, device, dtypes, collate_fn, batch_size, prefetch_batches,
                       drop_last, local_shuffle_buffer_size, local_shuffle_seed):
        batches = self.iter_batches(batch_size=batch_size, batch_format="numpy",
                                    prefetch_batches=prefetch_batches, drop_last=drop_last,
                                    local_shuffle_buffer_size=local_shuffle_buffer_size,
                                    local_shuffle_seed=local_shuffle_seed)
        batches._host = False          # device blocks' arrays go to torch by DLPack
        for batch in batches:
            yield collate_fn(batch) if collate_fn is not None else \
                torch_batch(batch, torch, device, dtypes)

    def iter_rows(self):
        for ref, _ in self._run_blocks():
            yield from B.table_to_rows(B.to_table(api.get(ref)))

    def take(self, limit: int = 20) -> list[dict]:
        if not isinstance(limit, int) or limit < 0:
            raise ValueError(f"take: limit must be an int >= 0, got {limit!r}")
        rows: list = []
        if limit == 0:
            return rows
        gen = self._run_blocks()
        try:
            for ref, _ in gen:
                piece = B.as_block(api.get(ref)).slice(0, limit - len(rows))
                rows += B.table_to_rows(B.to_table(piece))
                if len(rows) >= limit:
                    break
        finally:
            gen.close()                 # stops the pipeline early: nothing left running
        return rows

    def take_batch(self, batch_size: int = 20, *, batch_format: str = "default"):
        fmt = B.check_batch_format(batch_format, "take_batch")
        table = B.table_from_rows(self.take(batch_size)) if batch_size else pa.table({})
        return B.to_batch(table, fmt)

    def take_all(self, limit: int | None = None) -> list[dict]:
        rows = []
        for ref, _ in self._run_blocks():
            rows += B.table_to_rows(B.to_table(api.get(ref)))
            if limit is not None and len(rows) > limit:
                raise ValueError(f"take_all: the dataset has more than {limit} rows")
        return rows

    def count(self) -> int:
        return sum(meta["num_rows"] for _, meta in self._run_blocks())

    def schema(self) -> pa.Schema | None:
        """The schema of the first non-empty block (runs the pipeline that far)."""
        gen = self._run_blocks()
        try:
            for ref, meta in gen:
                if meta["num_rows"]:
                    return B.block_schema(api.get(ref))
        finally:
            gen.close()
        return None

    def columns(self) -> list[str] | None:
        schema = self.schema()
        return None if schema is None else list(schema.names)

    def to_arrow_refs(self) -> list:
        """Refs of Arrow tables: a device block is copied to Arrow by a task."""
        return [_to_arrow_remote.remote(ref) if meta.get("device") else ref
                for ref, meta in self._run_blocks()]

    def to_arrow(self) -> pa.Table:
        return B.concat([B.to_table(api.get(ref)) for ref, _ in self._run_blocks()])

    def to_pandas(self, limit: int | None = None):
        table = self.to_arrow()
        if limit is not None and table.num_rows > limit:
            raise ValueError(f"to_pandas: the dataset has {table.num_rows} rows, more than "
                             f"limit={limit}")
        return table.to_pandas()

    def to_numpy_refs(self):
        raise NotImplementedError("to_numpy_refs is not supported; use to_arrow_refs")

    def materialize(self) -> "MaterializedDataset":
        blocks = self._run_to_list()
        ds = MaterializedDataset(PL.Source.from_blocks("Materialized", blocks))
        ds._last_run = self._last_run
        return ds

    def stats(self) -> DatasetStats:
        """Wall time, rows/s and bytes per operator and the time the consumer
        waited, of this dataset's last run (a str, as in Ray, with the figures
        as attributes)."""
        return self._last_run.snapshot() if self._last_run is not None else \
            DatasetStats.empty()


def _to_arrow(block) -> pa.Table:
    return B.to_table(block)


_to_arrow_remote = api.remote(num_cpus=0)(_to_arrow)


class _Batches:
    """What ``iter_batches`` returns: an iterable (as Ray's), each iteration a
    fresh run of the dataset."""

    def __init__(self, ds, batch_size, fmt, prefetch, drop_last, buffer_size, seed):
        self._ds, self._args = ds, (batch_size, fmt, prefetch, drop_last, buffer_size, seed)
        self._host = True              # numpy batches of device blocks copied to the host

    def __iter__(self):
        batch_size, fmt, prefetch, drop_last, buffer_size, seed = self._args
        tables = self._ds._tables(prefetch)
        if buffer_size is None:
            pieces = B.rebatch(tables, batch_size, drop_last)
        else:
            pieces = B.shuffle_rebatch(tables, batch_size, buffer_size, seed, drop_last)
        try:
            for piece in pieces:
                yield B.to_batch(piece, fmt, host=self._host)
        finally:
            pieces.close()
            tables.close()                 # stops the pipeline if the caller stopped early


class MaterializedDataset(Dataset):
    """A dataset whose blocks are computed and held in the object store."""

    def num_blocks(self) -> int:
        return len(self._source.items)

    def count(self) -> int:
        if not self._ops:
            return sum(m["num_rows"] for _, m in self._source.blocks)
        return super().count()
