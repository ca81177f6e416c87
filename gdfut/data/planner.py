"""Scheduling decisions of the streaming executor: a pure state machine.

The executor (``executor.py``) feeds it events — an input block arrived, a
task finished, the consumer is done with a block — and carries out what
``step()`` returns: launch a task on a block, start or stop an actor. No
clocks, threads or runtime calls here, so every decision is unit-tested on
exact event sequences (tests/unit/test_data_planner.py).

Each operator takes its input as *bundles* cut from its upstream's output
blocks, in order (``bundler.py``: ``map_batches(batch_size=N)`` bundles hold
a multiple of N rows, oversized blocks are split at the target max block
size); a task maps one bundle to one output block, numbered by the bundle's
``seq``. The consumer sees the last operator's outputs in ``seq`` order.

Backpressure, per operator ``i``: ``held[i]`` is the bytes of op ``i``'s
outputs still alive (waiting to be bundled, in a bundle not yet processed by
op ``i+1``, waiting in the reorder buffer or at the consumer, prefetched or in
use) plus the estimated output bytes of its running tasks. A task starts only
while ``held[i]`` plus its estimate fits ``budget_bytes``, with one exception
that guarantees progress: the task the consumer's next block waits on (the
head of line: the last op's bundle ``next_emit``, or, while that bundle is
not formed yet, the upstream block its bundler needs next, and so on up) may
always start. Otherwise blocks waiting behind it could fill every budget and
nothing would move. So ``held[i]`` exceeds the budget by at most one block
(or one bundle of ``batch_size`` rows, which must exist to be processed).
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

from .bundler import Bundler


@dataclass(frozen=True)
class OpSpec:
    name: str
    kind: str                    # "task" or "actor"
    budget_bytes: int
    max_tasks: int = 1           # task ops: the most tasks running at once
    min_actors: int = 0          # actor ops: pool size bounds
    max_actors: int = 0
    slots_per_actor: int = 1     # calls queued at one actor at once
    min_rows: int | None = None  # bundles of a multiple of this many rows (batch_size)
    max_bundle_bytes: int | None = None   # bundles of about this many bytes at most

    def __post_init__(self):
        assert self.kind in ("task", "actor"), self.kind
        assert self.budget_bytes > 0 and self.max_tasks >= 1
        if self.kind == "actor":
            assert 1 <= self.min_actors <= self.max_actors and self.slots_per_actor >= 1


@dataclass(frozen=True)
class Launch:
    op: int
    seq: int
    actor: int | None = None
    pieces: tuple = ()           # the bundle: ((upstream seq, start, stop), ...)


@dataclass(frozen=True)
class StartActor:
    op: int
    actor: int


@dataclass(frozen=True)
class StopActor:
    op: int
    actor: int


@dataclass(frozen=True)
class Release:
    level: int                   # op ``level``'s output block ``seq`` (-1: the source's)
    seq: int                     # is in no bundle any more: its ref may go


@dataclass(frozen=True)
class Emit:
    seq: int                     # hand the last op's block ``seq`` to the consumer


@dataclass
class OpState:
    spec: OpSpec
    bundler: Bundler = None
    queue: list = field(default_factory=list)         # heap of (seq, input bytes)
    running: dict = field(default_factory=dict)       # seq -> (estimate, actor)
    in_bytes: dict = field(default_factory=dict)      # seq -> input bytes, queued or running
    outputs: dict = field(default_factory=dict)       # seq -> bytes still alive
    out_rows: dict = field(default_factory=dict)      # seq -> rows, until bundled downstream
    actors: dict = field(default_factory=dict)        # actor id -> calls in flight
    in_bytes_done: int = 0
    out_bytes_done: int = 0
    rows_done: int = 0
    blocks_done: int = 0
    peak_held: int = 0
    actors_started: int = 0

    def held(self) -> int:
        return sum(e for e, _ in self.running.values()) + sum(self.outputs.values())

    def estimate(self, in_bytes: int) -> int:
        """Output bytes a task on ``in_bytes`` of input will likely make."""
        if self.blocks_done == 0:
            return in_bytes
        if self.in_bytes_done > 0 and in_bytes > 0:
            return int(in_bytes * self.out_bytes_done / self.in_bytes_done)
        return self.out_bytes_done // self.blocks_done


class Pipeline:
    """Operators in a chain, the source before op 0, the consumer after the last."""

    def __init__(self, specs: list[OpSpec], prefetch_blocks: int = 1):
        assert specs, "a pipeline needs at least one operator"
        assert prefetch_blocks >= 0
        self.ops = [OpState(s, Bundler(s.min_rows, s.max_bundle_bytes)) for s in specs]
        self.prefetch_blocks = prefetch_blocks
        self.inputs_total = 0
        self.inputs_complete = False
        self.source: dict = {}             # seq -> (bytes, rows or None), until released
        self.next_emit = 0                 # lowest seq not yet handed to the consumer
        self.emitted: set = set()          # handed over, not yet consumed
        self._next_actor = 0
        self._released: list = []          # Release instructions for the next step()
        self._pending: list = [StartActor(i, a) for i, op in enumerate(self.ops)
                               if op.spec.kind == "actor"
                               for a in self._new_actors(op, op.spec.min_actors)]

    # ------------------------------------------------------------ events
    def add_input(self, seq: int, nbytes: int, rows: int | None = None) -> None:
        """Source block ``seq`` (in order): its bytes, and its rows if known
        (a read's are not: it can only be bundled whole)."""
        assert not self.inputs_complete and seq == self.inputs_total, (seq, self.inputs_total)
        self.inputs_total += 1
        self.source[seq] = (max(0, int(nbytes)), rows)

    def inputs_done(self) -> None:
        self.inputs_complete = True

    def task_done(self, op: int, seq: int, out_bytes: int, rows: int) -> None:
        state = self.ops[op]
        assert seq in state.running, (op, seq)
        _, actor = state.running.pop(seq)
        if actor is not None:
            state.actors[actor] -= 1
        state.in_bytes_done += state.in_bytes.pop(seq)
        state.out_bytes_done += out_bytes
        state.rows_done += rows
        state.blocks_done += 1
        state.outputs[seq] = out_bytes
        state.out_rows[seq] = rows
        self._release(op, state.bundler.done(seq))
        state.peak_held = max(state.peak_held, state.held())

    def consumed(self, seq: int) -> None:
        """The consumer is done with block ``seq`` (its bytes may go)."""
        assert seq in self.emitted, seq
        self.emitted.discard(seq)
        del self.ops[-1].outputs[seq]
        del self.ops[-1].out_rows[seq]

    def _release(self, op: int, useqs: list[int]) -> None:
        upstream = self.source if op == 0 else self.ops[op - 1].outputs
        for useq in useqs:
            del upstream[useq]
            self._released.append(Release(op - 1, useq))

    # ------------------------------------------------------------ bundling
    def _feed(self) -> None:
        """Hand each op's bundler the upstream blocks done, in order; flush
        it once its upstream is finished."""
        for i, state in enumerate(self.ops):
            b = state.bundler
            while not b.flushed:
                useq = b.next_up
                if i == 0:
                    if useq not in self.source:
                        break
                    nbytes, rows = self.source[useq]
                else:
                    up = self.ops[i - 1]
                    if useq not in up.out_rows:
                        break
                    nbytes, rows = up.outputs[useq], up.out_rows.pop(useq)
                self._queue(i, *b.take(useq, nbytes, rows))
            if not b.flushed and self._upstream_finished(i) and \
                    b.next_up == self._upstream_count(i):
                self._queue(i, *b.flush())

    def _queue(self, i: int, bundles: list, released: list) -> None:
        state = self.ops[i]
        for seq, nbytes in bundles:
            heapq.heappush(state.queue, (seq, nbytes))
            state.in_bytes[seq] = nbytes
        self._release(i, released)

    def _upstream_finished(self, i: int) -> bool:
        """Op ``i``'s upstream makes no more blocks."""
        if i == 0:
            return self.inputs_complete
        up = self.ops[i - 1]
        return up.bundler.flushed and not up.queue and not up.running

    def _upstream_count(self, i: int) -> int:
        return self.inputs_total if i == 0 else self.ops[i - 1].bundler.formed

    def _head_of_line(self):
        """(op, seq) of the task the consumer's next block waits on, or None."""
        i, want = len(self.ops) - 1, self.next_emit
        while i >= 0:
            state = self.ops[i]
            if want in state.outputs or want in state.running:
                return None
            if want < state.bundler.formed:
                return i, want                  # formed, not started: queued
            want, i = state.bundler.next_up, i - 1
        return None

    # ------------------------------------------------------------ decisions
    def step(self) -> list:
        self._feed()
        head = self._head_of_line()
        out = []
        for i in reversed(range(len(self.ops))):      # downstream first: drain before filling
            out += self._launches(i, head)
            out += self._scale(i)
        # The first actors start after the first task launches: the tasks take
        # the node's idle workers and the actors' processes start meanwhile,
        # instead of the tasks waiting for new workers while idle ones host
        # actors. Calls to those actors (op 0 fed from memory) come after them.
        if self._pending:
            calls = [x for x in out if isinstance(x, Launch) and x.actor is not None]
            out = [x for x in out if x not in calls] + self._pending + calls
            self._pending = []
        out += self._emits()
        out += self._released
        self._released = []
        return out

    def _launches(self, i: int, head) -> list:
        state, out = self.ops[i], []
        while state.queue:
            seq, in_bytes = state.queue[0]
            actor = self._free_slot(state)
            if actor is False:
                break
            estimate = state.estimate(in_bytes)
            head_of_line = (i, seq) == head
            if state.held() and state.held() + estimate > state.spec.budget_bytes \
                    and not head_of_line:
                break
            heapq.heappop(state.queue)
            state.running[seq] = (estimate, actor)
            if actor is not None:
                state.actors[actor] += 1
            state.peak_held = max(state.peak_held, state.held())
            out.append(Launch(i, seq, actor, state.bundler.bundles[seq]))
        return out

    def _free_slot(self, state: OpState):
        """An actor id with a free slot (least loaded), None for a task op
        with room, False when there is none."""
        if state.spec.kind == "task":
            return None if len(state.running) < state.spec.max_tasks else False
        if not state.actors:
            return False
        actor = min(state.actors, key=lambda a: (state.actors[a], a))
        return actor if state.actors[actor] < state.spec.slots_per_actor else False

    def _scale(self, i: int) -> list:
        """Actor ops: grow on queue length up to max at once (no ramp); shrink
        idle actors above min once no more input can come."""
        state, spec = self.ops[i], self.ops[i].spec
        if spec.kind != "actor":
            return []
        free = sum(spec.slots_per_actor - n for n in state.actors.values())
        waiting = len(state.queue)
        if waiting > free and len(state.actors) < spec.max_actors and free == 0:
            want = math.ceil((waiting - free) / spec.slots_per_actor)
            count = min(spec.max_actors - len(state.actors), want)
            return [StartActor(i, a) for a in self._new_actors(state, count)]
        if self.upstream_done(i) and not state.queue:
            idle = sorted(a for a, n in state.actors.items() if n == 0)
            extra = len(state.actors) - spec.min_actors
            stops = idle[:max(0, extra)]
            for a in stops:
                del state.actors[a]
            return [StopActor(i, a) for a in stops]
        return []

    def _new_actors(self, state: OpState, count: int) -> list[int]:
        ids = list(range(self._next_actor, self._next_actor + count))
        self._next_actor += count
        for a in ids:
            state.actors[a] = 0
        state.actors_started += count
        return ids

    def _emits(self) -> list:
        last, out = self.ops[-1], []
        while (self.next_emit in last.outputs and self.next_emit not in self.emitted
               and len(self.emitted) <= self.prefetch_blocks):
            self.emitted.add(self.next_emit)
            out.append(Emit(self.next_emit))
            self.next_emit += 1
        return out

    # ------------------------------------------------------------ queries
    def upstream_done(self, i: int) -> bool:
        """No more input can reach op ``i``: every bundle of it is formed."""
        return self.ops[i].bundler.flushed

    def finished(self) -> bool:
        """Every block went through every op and was handed to the consumer."""
        last = self.ops[-1]
        return (self._upstream_finished(len(self.ops) - 1) and last.bundler.flushed
                and not last.queue and not last.running
                and self.next_emit == last.bundler.formed)

    def held_bytes(self) -> list[int]:
        return [op.held() for op in self.ops]

    def validate(self) -> None:
        for i, op in enumerate(self.ops):
            assert not set(s for s, _ in op.queue) & set(op.running), i
            assert set(op.in_bytes) == set(s for s, _ in op.queue) | set(op.running), i
            assert set(op.bundler.bundles) == set(op.in_bytes), i
            op.bundler.validate()
            if op.spec.kind == "task":
                assert len(op.running) <= op.spec.max_tasks, i
            else:
                assert len(op.actors) <= op.spec.max_actors, i
                assert all(0 <= n <= op.spec.slots_per_actor for n in op.actors.values()), i
                assert sum(op.actors.values()) == len(op.running), i
        assert len(self.emitted) <= self.prefetch_blocks + 1
        assert self.emitted <= set(self.ops[-1].outputs)
