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
    blocks whose rows are known: not fused after another transform or a read)."""
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
        if stages and stages[0].kind == "task" and stages[0].min_rows is None:
            stages[0].name = f"{source.name}->{stages[0].name}"
        else:
            stages.insert(0, Stage(source.name, "task", []))
        stages[0].max_bundle_bytes = None          # a read is bundled whole
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
    """Rows [start, stop) of each table, concatenated."""
    out = B.concat([t.slice(start, stop - start) for t, (start, stop) in zip(tables, pieces)])
    return out, B.metadata(out)


def _shuffle_map(seed, n_out, table):
    rng = np.random.default_rng(seed)
    table = table.take(rng.permutation(table.num_rows))
    bounds = [round(i * table.num_rows / n_out) for i in range(n_out + 1)]
    parts = [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:])]
    return parts[0] if n_out == 1 else tuple(parts)


def _shuffle_reduce(seed, *parts):
    table = B.concat(list(parts))
    table = table.take(np.random.default_rng(seed).permutation(table.num_rows))
    return table, B.metadata(table)


_slice_concat_remote = api.remote(num_returns=2)(_slice_concat)
_shuffle_reduce_remote = api.remote(num_returns=2)(_shuffle_reduce)
_shuffle_map_remote = api.remote(_shuffle_map)


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


def random_shuffle(blocks: list, seed: int | None, num_blocks: int | None) -> list:
    """Map tasks permute each block and cut it in ``n`` parts; reduce task
    ``j`` joins every block's part ``j`` and permutes again."""
    if not blocks:
        return []
    n = num_blocks or len(blocks)
    rng = np.random.default_rng(seed)
    map_seeds = rng.integers(0, 2**63, size=len(blocks))
    reduce_seeds = rng.integers(0, 2**63, size=n)
    mapped = [_shuffle_map_remote.options(num_returns=n).remote(int(s), n, ref)
              for s, (ref, _) in zip(map_seeds, blocks)]
    if n == 1:
        mapped = [[m] for m in mapped]
    pairs = [_shuffle_reduce_remote.remote(int(reduce_seeds[j]), *[parts[j] for parts in mapped])
             for j in range(n)]
    del mapped
    metas = api.get([m for _, m in pairs])
    return [(ref, meta) for (ref, _), meta in zip(pairs, metas)]


def num_blocks_for(n_rows: int, override: int | None) -> int:
    if override is not None:
        if not isinstance(override, int) or override < 1:
            raise ValueError(f"override_num_blocks must be an int >= 1, got {override!r}")
        return override
    return max(1, min(DataContext.get_current().default_num_blocks, n_rows))


def split_rows(n_rows: int, n_blocks: int) -> list[tuple[int, int]]:
    bounds = [math.floor(i * n_rows / n_blocks) for i in range(n_blocks + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a] or [(0, 0)]
