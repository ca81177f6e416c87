"""The streaming executor: a thin loop over futures around ``planner.Pipeline``.

It runs on a background thread started by a consumer: it carries out the
planner's launches (tasks, actor calls), waits for results with
``gdfut.wait``, feeds completions back, and hands finished blocks to the
consumer through a queue the planner bounds (``prefetch_blocks`` + 1). On an
error, or when the consumer stops early, ``shutdown`` cancels what runs and
kills the stage actors, so nothing is left running.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from .. import api
from ..exceptions import GdfutError, TaskError
from . import planner as P
from .errors import DataError
from .progress import ProgressBars
from .stages import MapWorker, run_block_remote

_END = object()
_POLL_S = 0.05          # how often the loop looks at consumer events while tasks run


@dataclass
class Stage:
    """A physical operator: fused transforms run as tasks or on an actor pool."""
    name: str
    kind: str                          # "task" or "actor"
    chain: list
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: object = None         # int, (min, max) or None
    remote_args: dict = field(default_factory=dict)
    min_rows: int | None = None        # its first transform's batch_size: bundles of k * N rows
    max_bundle_bytes: int | None = None   # input bundles cut at the target max block size


@dataclass
class OpStats:
    name: str
    rows: int = 0
    blocks: int = 0
    bytes_out: int = 0
    peak_bytes_in_flight: int = 0
    budget_bytes: int = 0
    first_start: float | None = None
    last_done: float | None = None
    actors: int = 0

    @property
    def wall_s(self) -> float:
        if self.first_start is None or self.last_done is None:
            return 0.0
        return self.last_done - self.first_start


class StreamingExecutor:
    def __init__(self, items: list, stages: list[Stage], *, budgets: list[int],
                 prefetch_blocks: int, max_tasks: list[int], slots_per_actor: int,
                 progress: bool, actor_restarts: tuple = (0, 0)):
        assert len(stages) == len(budgets) == len(max_tasks) and stages
        self.items, self.stages = items, stages
        self.actor_restarts = actor_restarts       # (max_restarts, max_task_retries)
        specs = [self._spec(s, b, m, slots_per_actor) for s, b, m in
                 zip(stages, budgets, max_tasks)]
        self.machine = P.Pipeline(specs, prefetch_blocks)
        self.op_stats = [OpStats(s.name, budget_bytes=b) for s, b in zip(stages, budgets)]
        self.refs: dict = {}           # (level, seq) -> block ref (or read task); level -1: source
        self.metas: dict = {}          # (level, seq) -> metadata of that block
        self.pending: dict = {}        # meta ref -> (op, seq, block ref)
        self.actors: dict = {}         # (op, actor id) -> handle
        # The planner hands out at most prefetch_blocks + 1 blocks not yet
        # consumed, plus the end (or an error): put() never blocks.
        self.out: queue.Queue = queue.Queue(maxsize=prefetch_blocks + 3)
        self.consumed: queue.SimpleQueue = queue.SimpleQueue()   # as many as were handed out
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = ProgressBars([s.name for s in stages]) if progress else None
        self.started_at = self.ended_at = None
        self.consumer_wait_s = 0.0

    @staticmethod
    def _spec(stage: Stage, budget: int, max_tasks: int, slots: int) -> P.OpSpec:
        bundling = dict(min_rows=stage.min_rows, max_bundle_bytes=stage.max_bundle_bytes)
        if stage.kind == "task":
            return P.OpSpec(stage.name, "task", budget, max_tasks=max_tasks, **bundling)
        lo, hi = stage.concurrency if isinstance(stage.concurrency, tuple) else \
            (stage.concurrency, stage.concurrency)
        return P.OpSpec(stage.name, "actor", budget, min_actors=lo, max_actors=hi,
                        slots_per_actor=slots, **bundling)

    # ------------------------------------------------------------ consumer side
    def blocks(self):
        """(ref, metadata) of each output block, in order. Closing the
        generator (or an error) shuts everything down."""
        self.started_at = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="gdfut-data-executor",
                                        daemon=True)
        self._thread.start()
        try:
            while True:
                t0 = time.perf_counter()
                item = self.out.get()
                self.consumer_wait_s += time.perf_counter() - t0
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                seq, ref, meta = item
                yield ref, meta
                self.consumed.put(seq)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)
        for _, _, block_ref in list(self.pending.values()):
            try:
                api.cancel(block_ref)
            except (GdfutError, ValueError, TypeError):
                pass                   # finished meanwhile, or its actor is going
        for handle in self.actors.values():
            _kill(handle)
        self.pending.clear()
        self.actors.clear()
        self.refs.clear()
        # Blocks handed out but never taken (a consumer that stopped early): the
        # run's stats keep this executor, which must not keep their refs alive.
        while True:
            try:
                self.out.get_nowait()
            except queue.Empty:
                break
        if self._progress is not None:
            self._progress.close()
        self.ended_at = self.ended_at or time.perf_counter()

    # ------------------------------------------------------------ the loop
    def _run(self) -> None:
        try:
            for seq, (item, nbytes, rows) in enumerate(self.items):
                self.refs[(-1, seq)] = item
                self.machine.add_input(seq, nbytes, rows)
            self.machine.inputs_done()
            self.items = None
            while not self._stop.is_set():
                self._take_consumer_events(block=False)
                for ins in self.machine.step():
                    self._carry_out(ins)
                if __debug__:
                    self.machine.validate()
                if self.machine.finished():
                    self.out.put(_END)
                    break
                if self.pending:
                    self._harvest()
                else:
                    self._take_consumer_events(block=True)
                self._update_progress()
        except BaseException as exc:   # handed to the consumer, who raises it
            self.out.put(exc)
        finally:
            self.ended_at = time.perf_counter()
            self._update_progress(force=True)

    def _take_consumer_events(self, block: bool) -> None:
        try:
            seq = self.consumed.get(timeout=_POLL_S) if block else self.consumed.get_nowait()
            while True:
                self._release(seq)
                seq = self.consumed.get_nowait()
        except queue.Empty:
            return

    def _release(self, seq: int) -> None:
        level = len(self.stages) - 1
        self.machine.consumed(seq)
        self.refs.pop((level, seq), None)
        self.metas.pop((level, seq), None)

    def _carry_out(self, ins) -> None:
        if isinstance(ins, P.Launch):
            self._launch(ins)
        elif isinstance(ins, P.StartActor):
            self._start_actor(ins.op, ins.actor)
        elif isinstance(ins, P.StopActor):
            _kill(self.actors.pop((ins.op, ins.actor)))
        elif isinstance(ins, P.Release):
            self.refs.pop((ins.level, ins.seq), None)
            self.metas.pop((ins.level, ins.seq), None)
        elif isinstance(ins, P.Emit):
            level = len(self.stages) - 1
            self.out.put((ins.seq, self.refs[(level, ins.seq)], self.metas[(level, ins.seq)]))
        else:
            raise AssertionError(f"unknown instruction {ins!r}")

    def _launch(self, ins: P.Launch) -> None:
        stage = self.stages[ins.op]
        items = [self.refs[(ins.op - 1, useq)] for useq, _, _ in ins.pieces]
        ranges = None if ins.pieces[0][1] is None else [(a, b) for _, a, b in ins.pieces]
        if stage.kind == "task":
            opts = dict(num_cpus=stage.num_cpus, num_gpus=stage.num_gpus, name=stage.name,
                        **stage.remote_args)
            block_ref, meta_ref = run_block_remote.options(**opts).remote(stage.chain, ranges,
                                                                          *items)
        else:
            block_ref, meta_ref = self.actors[(ins.op, ins.actor)].process.remote(ranges, *items)
        self.pending[meta_ref] = (ins.op, ins.seq, block_ref)
        stats = self.op_stats[ins.op]
        if stats.first_start is None:
            stats.first_start = time.perf_counter()

    def _start_actor(self, op: int, actor: int) -> None:
        stage = self.stages[op]
        # A worker that dies (killed, out of memory) restarts the actor, and the
        # runtime retries the calls it was running: the blocks are redone.
        opts = dict(max_restarts=self.actor_restarts[0], max_task_retries=self.actor_restarts[1])
        opts.update(stage.remote_args)
        cls = api.remote(MapWorker).options(num_cpus=stage.num_cpus, num_gpus=stage.num_gpus,
                                            **opts)
        self.actors[(op, actor)] = cls.remote(stage.chain)
        self.op_stats[op].actors += 1

    def _harvest(self) -> None:
        refs = list(self.pending)
        ready, _ = api.wait(refs, num_returns=1, timeout=_POLL_S)
        if not ready:
            return
        if len(refs) > 1:
            ready, _ = api.wait(refs, num_returns=len(refs), timeout=0)
        for meta_ref in ready:
            op, seq, block_ref = self.pending.pop(meta_ref)
            try:
                meta = api.get(meta_ref)
            except DataError:
                raise                  # names its operator already (raised in the worker)
            except TaskError as exc:
                raise DataError(f"{self.stages[op].name}: {exc.cause_cls_name}: "
                                f"{exc.cause_message}") from exc
            except GdfutError as exc:
                raise DataError(f"{self.stages[op].name}: {type(exc).__name__}: {exc}") from exc
            self.machine.task_done(op, seq, meta["size_bytes"], meta["num_rows"])
            self.refs[(op, seq)] = block_ref
            self.metas[(op, seq)] = meta
            stats = self.op_stats[op]
            stats.rows += meta["num_rows"]
            stats.blocks += 1
            stats.bytes_out += meta["size_bytes"]
            stats.last_done = time.perf_counter()
        for stats, op in zip(self.op_stats, self.machine.ops):
            stats.peak_bytes_in_flight = max(stats.peak_bytes_in_flight, op.peak_held)

    def _update_progress(self, force: bool = False) -> None:
        if self._progress is None:
            return
        held = self.machine.held_bytes()
        self._progress.update([(s.rows, s.blocks, h, s.wall_s) for s, h in
                               zip(self.op_stats, held)], total_blocks=self.machine.inputs_total,
                              force=force)

    def peak_bytes(self) -> list[int]:
        return [op.peak_held for op in self.machine.ops]


def _kill(handle) -> None:
    try:
        api.kill(handle)
    except (GdfutError, ValueError, TypeError):
        pass
