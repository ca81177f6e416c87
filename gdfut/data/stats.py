"""``Dataset.stats()``: per operator wall time, rows, rows/s, bytes out and
peak bytes in flight (against its budget), and how long the consumer waited."""
from __future__ import annotations

import contextlib
import time

from .progress import fmt_bytes


class RunStats:
    """Collected while a consumer runs a dataset (mutable; see DatasetStats)."""

    def __init__(self):
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.executors: list = []
        self.barriers: list[dict] = []

    def add_executor(self, executor) -> None:
        self.executors.append(executor)

    @contextlib.contextmanager
    def barrier(self, name: str):
        t0, record = time.perf_counter(), {}

        def done(blocks):
            record.update(rows=sum(m["num_rows"] for _, m in blocks),
                          bytes_out=sum(m["size_bytes"] for _, m in blocks), blocks=len(blocks))
        yield done
        wall = time.perf_counter() - t0
        self.barriers.append({"name": name, "wall_s": wall, "peak_bytes_in_flight": None,
                              "budget_bytes": None, "actors": 0, **record})

    def finish(self) -> None:
        self.ended = time.perf_counter()

    def snapshot(self) -> "DatasetStats":
        ops = list(self.barriers)
        wait = 0.0
        for ex in self.executors:
            wait += ex.consumer_wait_s
            for s in ex.op_stats:
                ops.append({"name": s.name, "wall_s": s.wall_s, "rows": s.rows,
                            "blocks": s.blocks, "bytes_out": s.bytes_out,
                            "peak_bytes_in_flight": s.peak_bytes_in_flight,
                            "budget_bytes": s.budget_bytes, "actors": s.actors})
        for op in ops:
            op["rows_per_s"] = op["rows"] / op["wall_s"] if op.get("wall_s") else 0.0
        wall = (self.ended or time.perf_counter()) - self.started
        return DatasetStats.make(ops, wall, wait)


class DatasetStats(str):
    """The report as text (Ray's ``stats()`` is a str), figures as attributes:
    ``operators`` (list of dicts), ``wall_s``, ``consumer_wait_s``, ``rows_per_s``."""

    operators: list
    wall_s: float
    consumer_wait_s: float
    rows_per_s: float

    @classmethod
    def make(cls, ops: list[dict], wall_s: float, wait_s: float) -> "DatasetStats":
        rows = ops[-1]["rows"] if ops else 0
        lines = [f"Dataset run: {wall_s:.3f} s wall, {rows} rows out "
                 f"({rows / wall_s if wall_s else 0:,.0f} rows/s), consumer waited "
                 f"{wait_s:.3f} s"]
        for i, op in enumerate(ops):
            budget = op.get("budget_bytes")
            peak = op.get("peak_bytes_in_flight")
            flight = "" if peak is None else (f", peak in flight {fmt_bytes(peak)} "
                                              f"of {fmt_bytes(budget)} budget")
            actors = f", {op['actors']} actors" if op.get("actors") else ""
            lines.append(f"Operator {i} {op['name']}: {op.get('blocks', 0)} blocks, "
                         f"{op.get('rows', 0)} rows, {op['wall_s']:.3f} s, "
                         f"{op['rows_per_s']:,.0f} rows/s, "
                         f"{fmt_bytes(op.get('bytes_out', 0))} out{flight}{actors}")
        out = cls("\n".join(lines))
        out.operators, out.wall_s, out.consumer_wait_s = ops, wall_s, wait_s
        out.rows_per_s = rows / wall_s if wall_s else 0.0
        return out

    @classmethod
    def empty(cls) -> "DatasetStats":
        out = cls("Dataset not run yet: stats() reports the last run of a consumer")
        out.operators, out.wall_s, out.consumer_wait_s, out.rows_per_s = [], 0.0, 0.0, 0.0
        return out
