"""From a logical plan (a source and operators) to stages, and the
all-to-all operators (repartition, random_shuffle) as plain tasks.

Fusion (as Ray): consecutive function operators with the same resources run
as one task per block, and a file read runs inside the first function
stage's task, so a block goes from the file through every fused transform
without passing through the object store in between.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import api
from . import block as B
from .context import DataContext
from .executor import Stage, StreamingExecutor
from .progress import wanted as progress_wanted
from .stages import ReadTask


@dataclass
class Source:
    name: str
    items: list                       # (ReadTask or block ref, bytes, rows or None) per block
    blocks: list = field(default_factory=list)   # (ref, metadata) when made from memory

    @classmethod
    def from_reads(cls, name: str, reads: list[ReadTask]) -> "Source":
        return cls(name, [(r, 0, None) for r in reads])

    @classmethod
    def from_blocks(cls, name: str, blocks: list) -> "Source":
        return cls(name, [(ref, meta["size_bytes"], meta["num_rows"]) for ref, meta in blocks],
                   list(blocks))

    @property
    def reads(self) -> bool:
        return bool(self.items) and isinstance(self.items[0][0], ReadTask)

    @property
    def rows_known(self) -> bool:
        """Every read's rows are known before it runs (Parquet footers, range)."""
        return all(rows is not None for _, _, rows in self.items)


@dataclass(frozen=True)
class MapOp:
    name: str
    transform: object
    kind: str                         # "task" or "actor"
    resources: tuple                  # (num_cpus, num_gpus)
    concurrency: object
    remote_args: dict


@dataclass(frozen=True)
class AllToAllOp:
    name: str
    fn: Callable                      # [(ref, meta)] -> [(ref, meta)]


def resources(num_cpus, num_gpus, where: str) -> tuple:
    for label, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or value < 0):
            raise ValueError(f"{where}: {label} must be a number >= 0, got {value!r}")
    gpus = 0.0 if num_gpus is None else float(num_gpus)
    # A GPU stage asks for no CPU unless told: its GPU share is what it waits
    # for, and the CPUs stay free for the reads and CPU stages feeding it.
    cpus = (0.0 if gpus > 0 else 1.0) if num_cpus is None else float(num_cpus)
    return cpus, gpus


def check_concurrency(concurrency, is_class: bool, where: str):
    if concurrency is None:
        return 1 if is_class else None
    if isinstance(concurrency, int) and not isinstance(concurrency, bool) and concurrency >= 1:
        return concurrency
    if (is_class and isinstance(concurrency, tuple) and len(concurrency) == 2 and
            all(isinstance(c, int) and not isinstance(c, bool) for c in concurrency) and
            1 <= concurrency[0] <= concurrency[1]):
        return concurrency
    shape = "an int >= 1 or a tuple (min, max) with 1 <= min <= max" if is_class else \
        "an int >= 1 (a (min, max) pool is for a class)"
    raise ValueError(f"{where}: concurrency must be {shape}, got {concurrency!r}")


# ------------------------------------------------------------ stages
def _batch_rows(op) -> int | None:
    """The explicit batch_size of a map_batches op: its stage's bundles hold k * N rows."""
    exact = isinstance(op, MapOp) and getattr(op.transform, "exact", False)
    return op.transform.batch_size if exact else None


def build_stages(source: Source, ops) -> list[Stage]:
    """A map_batches with a batch_size starts a stage of its own (its batches
    are cut from bundles of its input blocks, which it can only make from
    blocks whose rows are known: not fused after another transform, nor after
    a read whose rows are unknown before it runs). After reads whose rows are
    known (Parquet footers, range) it fuses: its bundles are rows of reads,
    and each task reads just those rows (``ReadTask.read_rows``)."""
    target = DataContext.get_current().target_max_block_size
    stages: list[Stage] = []
    for op in ops:
        cpus, gpus = op.resources
        last = stages[-1] if stages else None
        if (op.kind == "task" and last is not None and last.kind == "task" and
                (last.num_cpus, last.num_gpus) == (cpus, gpus) and last.concurrency is None
                and op.concurrency is None and not op.remote_args and not last.remote_args
                and _batch_rows(op) is None):
            last.chain.append(op.transform)
            last.name = f"{last.name}->{op.name}"
            continue
        stages.append(Stage(op.name, op.kind, [op.transform], cpus, gpus, op.concurrency,
                            dict(op.remote_args), _batch_rows(op), target))
    if source.reads:
        if stages and stages[0].kind == "task" and (stages[0].min_rows is None
                                                     or source.rows_known):
            stages[0].name = f"{source.name}->{stages[0].name}"
        else:
            stages.insert(0, Stage(source.name, "task", []))
        if stages[0].min_rows is None:
            stages[0].max_bundle_bytes = None      # a read is bundled whole
    return stages


def _store_memory() -> int:
    total = sum(int(n.get("object_store_memory") or 0) for n in api.nodes()
                if n.get("state") == "ALIVE")
    return total or 1 << 30


def _max_tasks(stage: Stage, cluster: dict) -> int:
    if isinstance(stage.concurrency, int):
        return stage.concurrency
    cpus = cluster.get("CPU", 1)
    cap = int(cpus // stage.num_cpus) if stage.num_cpus > 0 else int(2 * cpus) or 2
    if stage.num_gpus > 0:
        cap = min(cap, int(cluster.get("GPU", 0) // stage.num_gpus))
        if cap < 1:
            raise ValueError(f"{stage.name}: asks for num_gpus={stage.num_gpus} per task but "
                             f"the cluster has {cluster.get('GPU', 0)} GPUs")
    return max(1, cap) + 1             # one queued at the scheduler hides the round trip


def execute(source: Source, ops: tuple, prefetch_blocks: int, stats):
    """Stream (ref, metadata) of the plan's output blocks, in order."""
    barrier = max((i for i, op in enumerate(ops) if isinstance(op, AllToAllOp)), default=None)
    if barrier is not None:
        upstream = list(execute(source, ops[:barrier], 1, stats))
        op = ops[barrier]
        with stats.barrier(op.name) as record:
            blocks = op.fn(upstream)
            record(blocks)
        del upstream
        source, ops = Source.from_blocks(op.name, blocks), ops[barrier + 1:]
    stages = build_stages(source, ops)
    if not stages:
        yield from source.blocks
        return
    ctx = DataContext.get_current()
    budget = ctx.op_memory_budget_bytes or int(ctx.store_fraction * _store_memory()
                                               / len(stages))
    cluster = api.cluster_resources()
    executor = StreamingExecutor(source.items, stages, budgets=[budget] * len(stages),
                                 prefetch_blocks=prefetch_blocks,
                                 max_tasks=[_max_tasks(s, cluster) for s in stages],
                                 slots_per_actor=ctx.max_tasks_in_flight_per_actor,
                                 progress=progress_wanted(ctx.enable_progress_bars),
                                 actor_restarts=(ctx.actor_max_restarts,
                                                 ctx.actor_max_task_retries))
    stats.add_executor(executor)
    yield from executor.blocks()


# ------------------------------------------------------------ all-to-all
def _slice_concat(pieces, *tables):
    """Rows [start, stop) of each table, concatenated, as Arrow (a CPU task:
    a barrier's output is on the host)."""
    out = B.concat([B.to_table(t).slice(start, stop - start)
                    for t, (start, stop) in zip(tables, pieces)])
    return out, B.metadata(out)


_slice_concat_remote = api.remote(num_returns=2)(_slice_concat)


def row_ranges(blocks: list, ranges: list[tuple[int, int]]) -> list:
    """One block per [start, stop) range of the dataset's rows, by tasks."""
    offsets = np.cumsum([0] + [m["num_rows"] for _, m in blocks])
    pairs = []
    for start, stop in ranges:
        refs, pieces = [], []
        for i, (ref, _) in enumerate(blocks):
            lo, hi = max(start, offsets[i]), min(stop, offsets[i + 1])
            if lo < hi:
                refs.append(ref)
                pieces.append((int(lo - offsets[i]), int(hi - offsets[i])))
        pairs.append(_slice_concat_remote.remote(pieces, *refs))
    metas = api.get([m for _, m in pairs])
    return [(ref, meta) for (ref, _), meta in zip(pairs, metas)]


def repartition(blocks: list, n: int) -> list:
    total = sum(m["num_rows"] for _, m in blocks)
    bounds = [round(i * total / n) for i in range(n + 1)]
    return row_ranges(blocks, list(zip(bounds, bounds[1:])))


class TableRows:
    """An Arrow table in the shape ``gdfut.shuffle``'s map task splits: a 1-D
    array of rows (``shape``, ``nbytes``, ``take(order, axis=0)``, slices), so
    the shuffle's stable counting sort by partition id moves whole rows."""

    ndim = 1

    def __init__(self, table, seed: int = 0):
        self.table, self.seed = table, seed

    @property
    def shape(self):
        return (self.table.num_rows,)

    @property
    def nbytes(self):
        return int(self.table.nbytes)

    def take(self, order, axis=0, out=None, mode="raise"):
        assert axis == 0 and out is None
        return TableRows(self.table.take(np.asarray(order)), self.seed)

    def __getitem__(self, rows: slice):
        assert isinstance(rows, slice) and rows.step in (None, 1)
        start, stop, _ = rows.indices(self.table.num_rows)
        return TableRows(self.table.slice(start, max(0, stop - start)), self.seed)

    def __len__(self):
        return self.table.num_rows


class ShuffleInput:
    """A shuffle map's input: block ``ref`` (read in the map task) and its seed."""

    def __init__(self, ref, seed: int):
        self.ref, self.seed = ref, seed

    def __call__(self) -> TableRows:
        return TableRows(B.to_table(api.get(self.ref)), self.seed)


def random_partition(block: TableRows, num_reducers: int) -> np.ndarray:
    """Rows to reducers at random, in equal shares (reducer j gets the rows of
    a random permutation's positions [j n / R, (j + 1) n / R))."""
    n = block.shape[0]
    perm = np.random.default_rng(block.seed).permutation(n)
    return (perm * num_reducers // max(n, 1)).astype(np.int64)


def shuffle_reduce(seeds, blocks: list, reducer: int):
    table = B.concat([b.table for b in blocks])
    return table.take(np.random.default_rng(seeds[reducer]).permutation(table.num_rows))


def share_rows(n: int, r: int, reducers: int) -> int:
    """Rows of a block of ``n`` that ``random_partition`` gives reducer ``r``."""
    return -(-(r + 1) * n // reducers) - -(-r * n // reducers) if n else 0


def random_shuffle(blocks: list, seed: int | None, num_blocks: int | None) -> list:
    """A random permutation of the rows on ``gdfut.shuffle``: each map sends
    its block's rows to the ``n`` reducers at random, in equal shares; each
    reducer joins its parts and permutes them. Seeded: the same ``seed`` gives
    the same order (on the same blocks)."""
    from functools import partial

    from .. import shuffle as SH
    if not blocks:
        return []
    n = num_blocks or len(blocks)
    rng = np.random.default_rng(seed)
    map_seeds = rng.integers(0, 2**63, size=len(blocks))
    reduce_seeds = [int(x) for x in rng.integers(0, 2**63, size=n)]
    inputs = [ShuffleInput(ref, int(s)) for s, (ref, _) in zip(map_seeds, blocks)]
    refs = SH.shuffle(inputs, None, partial(shuffle_reduce, reduce_seeds), n,
                      partitioner=random_partition, strategy="simple", progress=False)
    out = []
    for r, ref in enumerate(refs):
        rows = [share_rows(m["num_rows"], r, n) for _, m in blocks]
        nbytes = sum(m["size_bytes"] * k // m["num_rows"] for (_, m), k in zip(blocks, rows)
                     if m["num_rows"])
        out.append((ref, {"num_rows": sum(rows), "size_bytes": int(nbytes)}))
    return out


def num_blocks_for(n_rows: int, override: int | None) -> int:
    if override is not None:
        if not isinstance(override, int) or override < 1:
            raise ValueError(f"override_num_blocks must be an int >= 1, got {override!r}")
        return override
    return max(1, min(DataContext.get_current().default_num_blocks, n_rows))


def split_rows(n_rows: int, n_blocks: int) -> list[tuple[int, int]]:
    bounds = [math.floor(i * n_rows / n_blocks) for i in range(n_blocks + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a] or [(0, 0)]
