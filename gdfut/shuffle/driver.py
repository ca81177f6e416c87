"""The shuffle driver: a thin loop that carries out ``ShufflePlanner``'s
instructions with ``remote``/``wait``/``get`` and feeds completions back."""
from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

import gdfut
from gdfut import protocol as P, runtime_context
from gdfut.exceptions import TaskError
from gdfut.scheduling_strategies import NodeAffinitySchedulingStrategy
from gdfut.shuffle import tasks
from gdfut.shuffle.partition import resolve
from gdfut.shuffle.plan import STRATEGIES, ShufflePlanner, SubmitMap, SubmitMerge, SubmitReduce
from gdfut.shuffle.progress import ShuffleProgress

WAIT_S = 0.5            # longest the loop sleeps in wait() before polling stats
STATS_EVERY_S = 1.0     # node stats come with the 1 s heartbeat: no use polling faster
# push on one node: a merge copies blocks the reducer could read in place from
# the same store, so rounds are merged only while a reducer would read more
# blocks than this (per-object costs: a pin and a store entry each)
ONE_NODE_MAX_REDUCER_BLOCKS = 256
ABORT_WAIT_S = 10.0     # a failed shuffle waits this long at most for its cancelled tasks


@dataclass
class ShuffleStats:
    maps: int = 0
    merges: int = 0
    reduces: int = 0
    bytes_shuffled: int = 0
    rows_shuffled: int = 0
    spilled_bytes: int = 0           # spilled during the shuffle, all nodes
    restored_bytes: int = 0
    peak_spill_dir_bytes: int = 0    # largest spill-file bytes seen (nodes' high-waters at the end)
    phase_s: dict = field(default_factory=dict)   # map / merge / reduce: first submit -> last done
    elapsed_s: float = 0.0


class ShuffleOutput(list):
    """The reducers' outputs, one ref per reducer in order (a list), with the
    shuffle's ``stats``."""
    stats: ShuffleStats


class SpillMonitor:
    """Spill figures of all nodes, relative to when the monitor started:
    sampled from the head (``gdfut.nodes()``) while the shuffle runs, asked of
    each node at the start and the end."""

    def __init__(self):
        self.base, self.base_peaks = self._totals(live=True)
        self.spilled = self.restored = self.peak_dir = 0
        self.last = 0.0

    @staticmethod
    def _totals(live: bool = False) -> tuple[tuple[int, int, int], dict]:
        """(spilled, restored, disk bytes) summed over the alive nodes, and
        each node's high-water of disk bytes: from the head (the stats of their
        last heartbeat, up to HEARTBEAT_S old) or, ``live``, asked of each
        node (a shuffle shorter than a heartbeat would otherwise see nothing)."""
        spilled = restored = disk = 0
        peaks = {}
        for n in gdfut.nodes():
            if n.get("state") not in (None, "alive", "ALIVE"):
                continue
            stats = n.get("stats") or {}
            if live:
                stats = runtime_context.require().node_request(P.NODE_STATUS,
                                                               node_id=n["node_id"])
            t = stats.get("tiers") or {}
            spilled += int(t.get("spilled_bytes", 0) or 0)
            restored += int(t.get("restored_bytes", 0) or 0)
            disk += int(t.get("disk_file_bytes", 0) or 0)
            peaks[n["node_id"]] = int(t.get("peak_disk_file_bytes", 0) or 0)
        return (spilled, restored, disk), peaks

    def poll(self, now: float, force: bool = False) -> None:
        if not force and now - self.last < STATS_EVERY_S:
            return
        self.last = now
        (s, r, d), peaks = self._totals(live=force)
        self.spilled = max(self.spilled, s - self.base[0])
        self.restored = max(self.restored, r - self.base[1])
        self.peak_dir = max(self.peak_dir, d)
        if force:
            # a node whose high-water rose during the shuffle reached it then;
            # summed over nodes that is an upper bound of their joint peak
            rose = sum(p for nid, p in peaks.items() if p > self.base_peaks.get(nid, 0))
            self.peak_dir = max(self.peak_dir, rose)


def _alive_nodes() -> list[str]:
    out = []
    for n in gdfut.nodes():
        if n.get("state") not in (None, "alive", "ALIVE"):
            continue
        nid = n.get("node_id")
        out.append(nid.hex() if isinstance(nid, bytes) else str(nid))
    return sorted(out)


def _affinity(node: str | None, spread: bool, soft: bool = True) -> dict:
    if node is None or not spread:
        return {}
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=soft)}


def shuffle(inputs, map_fn, reduce_fn, num_reducers: int, partitioner="range",
            strategy: str = "simple", *, merge_fn=None, map_parallelism: int | None = None,
            merge_factor: int = 4, max_reducer_blocks: int | None = None,
            output_dir: str | None = None, progress: bool | None = None,
            placement: str = "soft", map_options: dict | None = None,
            merge_options: dict | None = None, reduce_options: dict | None = None) -> ShuffleOutput:
    """Shuffle ``inputs`` into ``num_reducers`` partitions and reduce each.

    ``inputs``: one item per map task: an ObjectRef (resolved for the map), a
    callable (called in the map task, e.g. a generator of that partition) or a
    value. ``map_fn(data) -> block`` (None: the data is the block) runs in the
    map task, then ``partitioner(block, num_reducers)`` splits it ('range',
    'hash', KeyRange, Hash or a function returning partition ids).
    ``reduce_fn(blocks, reducer) -> result`` gets the blocks of one reducer
    (for push and riffle, merged by ``merge_fn(blocks) -> block``, default
    concatenation). ``max_reducer_blocks`` (push): rounds are merged only while
    a reducer would otherwise read more blocks than this; default 0 (merge
    every round) on several nodes and ONE_NODE_MAX_REDUCER_BLOCKS on one,
    where merging copies blocks the reducer reads in place anyway, so push
    with fewer maps runs as simple there. ``output_dir``: each reducer's result (an array or bytes)
    is written to ``output_dir/part-RRRRR`` and its ref resolves to that path.
    ``map_parallelism``: maps in flight at once (default: twice the cluster's CPUs).
    ``placement``: how merges (push: on their reducer's node; riffle: on
    their maps' node) and reduces are pinned to their node when the cluster
    has several: ``"soft"`` (default: elsewhere when that node is busy, and
    after it died) or ``"hard"`` (always there; a dead node fails them).
    Returns the reducers' refs, in reducer order, once all are done.
    """
    if isinstance(num_reducers, bool) or not isinstance(num_reducers, int) or num_reducers < 1:
        raise ValueError(f"num_reducers must be an int >= 1, got {num_reducers!r}")
    if placement not in ("soft", "hard"):
        raise ValueError(f"placement must be 'soft' or 'hard', got {placement!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {STRATEGIES}")
    if not callable(reduce_fn):
        raise TypeError("reduce_fn must be callable: reduce_fn(blocks, reducer) -> result")
    if map_fn is not None and not callable(map_fn):
        raise TypeError("map_fn must be callable (or None)")
    if merge_fn is not None and not callable(merge_fn):
        raise TypeError("merge_fn must be callable (or None): merge_fn(blocks) -> block")
    try:
        inputs = list(inputs)
    except TypeError:
        raise TypeError(f"inputs must be an iterable of map inputs (ObjectRefs, callables or "
                        f"values), got {type(inputs).__name__}") from None
    part = resolve(partitioner)
    for name, opts in (("map_options", map_options), ("merge_options", merge_options),
                       ("reduce_options", reduce_options)):
        if opts is not None and (not isinstance(opts, dict) or "num_returns" in opts):
            raise ValueError(f"{name} must be a dict of task options without num_returns (the "
                             f"shuffle sets it), got {opts!r:.100}")
    if map_parallelism is None:
        # two maps per CPU: the next map is queued when one finishes, so no CPU
        # idles while the driver reacts to a completion (double buffering)
        map_parallelism = 2 * max(1, int(gdfut.cluster_resources().get("CPU", 1)))
    if output_dir is not None:
        from gdfut.tier_options import check_writable_dir
        output_dir = check_writable_dir(output_dir, "output_dir")
    nodes = _alive_nodes()
    spread = len(nodes) > 1
    if max_reducer_blocks is None:
        max_reducer_blocks = 0 if spread else ONE_NODE_MAX_REDUCER_BLOCKS
    planner = ShufflePlanner(len(inputs), num_reducers, strategy, map_parallelism=map_parallelism,
                             merge_factor=merge_factor, max_reducer_blocks=max_reducer_blocks,
                             reducer_nodes=[nodes[r % len(nodes)] for r in range(num_reducers)]
                             if strategy == "push" and nodes else [])
    run = _Run(planner, inputs, map_fn, part, merge_fn, reduce_fn, output_dir,
               map_options or {}, merge_options or {}, reduce_options or {}, spread,
               placement == "soft")
    with ShuffleProgress(len(inputs), num_reducers, enabled=progress) as bar:
        return run.loop(bar)


class _Run:
    """The state of one shuffle's driver: refs of submitted tasks."""

    def __init__(self, planner, inputs, map_fn, part, merge_fn, reduce_fn, output_dir,
                 map_options, merge_options, reduce_options, spread, soft=True):
        self.p, self.inputs, self.map_fn, self.part = planner, inputs, map_fn, part
        self.merge_fn, self.reduce_fn, self.output_dir = merge_fn, reduce_fn, output_dir
        self.spread, self.soft = spread, soft
        R = planner.num_reducers
        self.map_remote = gdfut.remote(tasks.map_task).options(num_returns=R + 1, **map_options)
        self.push_remote = gdfut.remote(tasks.push_merge_task).options(num_returns=2,
                                                                       **merge_options)
        self.riffle_remote = gdfut.remote(tasks.riffle_merge_task).options(num_returns=R + 1,
                                                                           **merge_options)
        self.reduce_remote = gdfut.remote(tasks.reduce_task).options(**reduce_options)
        self.map_blocks: dict[int, list] = {}       # map -> its R block refs (None once handed on)
        self.merge_blocks: dict[int, list] = {}     # merge -> its block refs
        self.pending: dict = {}                     # meta/result ref -> (kind, index)
        self.reduce_refs: list = [None] * R
        self.stats = ShuffleStats()
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.monitor = SpillMonitor()

    def loop(self, bar) -> ShuffleOutput:
        try:
            return self._loop(bar)
        except BaseException as exc:
            self.abort()              # a failed (or interrupted) shuffle leaves nothing running
            # the frames the error went through hold refs of this shuffle
            # (the one that failed, a batch from wait): a caller that keeps
            # the error must not keep its objects alive
            traceback.clear_frames(exc.__traceback__)
            raise

    def abort(self) -> None:
        """Cancel every task still running and drop every ref this shuffle
        holds, so its blocks are freed (the error's traceback keeps ``self``
        alive); waits, a bounded time, for the cancelled tasks to end."""
        running = list(self.pending)
        for ref in running:
            try:
                gdfut.cancel(ref)
            except Exception:          # finished meanwhile, or the cluster is going away
                pass
        if running:
            try:
                gdfut.wait(running, num_returns=len(running), timeout=ABORT_WAIT_S,
                           fetch_local=False)
            except Exception:
                pass
        self.pending.clear()
        self.map_blocks.clear()
        self.merge_blocks.clear()
        self.reduce_refs = [None] * len(self.reduce_refs)
        self.inputs = []

    def _loop(self, bar) -> ShuffleOutput:
        t0 = time.perf_counter()
        self.execute(self.p.start())
        while not self.p.done:
            ready, _ = gdfut.wait(list(self.pending), num_returns=1, timeout=WAIT_S,
                                  fetch_local=False)
            for ref in ready:
                self.complete(ref)
            now = time.perf_counter()
            self.monitor.poll(now)
            self.stats.spilled_bytes = self.monitor.spilled
            bar.update(self.stats)
        self.monitor.poll(time.perf_counter(), force=True)
        s = self.stats
        s.spilled_bytes, s.restored_bytes = self.monitor.spilled, self.monitor.restored
        s.peak_spill_dir_bytes = self.monitor.peak_dir
        s.elapsed_s = time.perf_counter() - t0
        s.phase_s = {k: self.last[k] - self.first[k] for k in self.first if k in self.last}
        bar.update(s)
        out = ShuffleOutput(self.reduce_refs)
        out.stats = s
        return out

    def name_failure(self, exc: BaseException, kind: str, i: int) -> None:
        """Say in ``exc`` which of the user's functions failed, in which map,
        merge or reduce: a TaskError's message is rewritten (its class, its
        ``cause`` and the remote traceback stay); others get a note."""
        count = {"map": self.p.num_maps, "reduce": self.p.num_reducers}.get(kind)
        where = f"shuffle {kind} {i}" + (f" of {count}" if count else "")
        fn = getattr(getattr(exc, "cause", None), tasks.FN_ATTR, None)
        if fn is None:
            fn = {"map": f"map_fn {tasks.fn_name(self.map_fn)}" if self.map_fn else "map",
                  "merge": f"merge_fn {tasks.fn_name(self.merge_fn or tasks.concat_blocks)}",
                  "reduce": f"reduce_fn {tasks.fn_name(self.reduce_fn)}"}[kind]
        if isinstance(exc, TaskError):
            role, _, name = fn.partition(" ")
            TaskError.__init__(exc, f"{name} ({role} of {where})", exc.remote_traceback,
                               exc.cause, exc.cause_cls_name, exc.cause_message)
        else:
            exc.add_note(f"in {where} ({fn})")

    def _mark(self, kind: str, first: bool) -> None:
        now = time.perf_counter()
        if first:
            self.first.setdefault(kind, now)
        else:
            self.last[kind] = now

    def complete(self, ref) -> None:
        kind, i = self.pending.pop(ref)
        self._mark(kind, first=False)
        try:
            meta = gdfut.get(ref)   # raises here if the task failed
        except Exception as exc:
            self.name_failure(exc, kind, i)
            raise
        if kind == "reduce":
            self.stats.reduces += 1
            self.execute(self.p.reduce_done(i))
            return
        if kind == "map":
            self.stats.maps += 1
            self.stats.bytes_shuffled += sum(meta["bytes"])
            self.stats.rows_shuffled += sum(meta["rows"])
            self.execute(self.p.map_done(i, meta["node"]))
        else:
            self.stats.merges += 1
            self.execute(self.p.merge_done(i))

    def execute(self, instructions) -> None:
        for ins in instructions:
            if isinstance(ins, SubmitMap):
                self._submit_map(ins)
            elif isinstance(ins, SubmitMerge):
                self._submit_merge(ins)
            elif isinstance(ins, SubmitReduce):
                self._submit_reduce(ins)
            else:
                raise AssertionError(f"unknown instruction {ins!r}")
        if instructions and self.p.reduces and len(self.p.reduces) == self.p.num_reducers:
            self.map_blocks.clear()         # every block is handed on: the tasks hold them now
            self.merge_blocks.clear()

    def _submit_map(self, ins: SubmitMap) -> None:
        self._mark("map", first=True)
        refs = self.map_remote.remote(self.map_fn, self.part, self.p.num_reducers,
                                      self.inputs[ins.map_index])
        *blocks, meta = refs
        self.map_blocks[ins.map_index] = blocks
        self.pending[meta] = ("map", ins.map_index)

    def _submit_merge(self, ins: SubmitMerge) -> None:
        self._mark("merge", first=True)
        opts = _affinity(ins.node, self.spread, self.soft)
        if ins.reducer is not None:
            args = [self.map_blocks[m][ins.reducer] for m in ins.maps]
            refs = self.push_remote.options(**opts).remote(self.merge_fn, *args) if opts \
                else self.push_remote.remote(self.merge_fn, *args)
            for m in ins.maps:
                self.map_blocks[m][ins.reducer] = None      # the merge holds it now
        else:
            args = [b for m in ins.maps for b in self.map_blocks[m]]
            remote = self.riffle_remote.options(**opts) if opts else self.riffle_remote
            refs = remote.remote(self.merge_fn, self.p.num_reducers, *args)
            for m in ins.maps:
                self.map_blocks[m] = [None] * self.p.num_reducers
        *blocks, meta = refs
        self.merge_blocks[ins.merge_id] = blocks
        self.pending[meta] = ("merge", ins.merge_id)

    def _submit_reduce(self, ins: SubmitReduce) -> None:
        self._mark("reduce", first=True)
        r = ins.reducer
        args = [self.map_blocks[m][r] for m in ins.maps]
        for mid in ins.merges:
            blocks = self.merge_blocks[mid]
            args.append(blocks[0] if len(blocks) == 1 and self.p.merges[mid].reducer is not None
                        else blocks[r])
        assert all(a is not None for a in args), f"reducer {r} got a block already handed on"
        opts = _affinity(ins.node, self.spread, self.soft)
        remote = self.reduce_remote.options(**opts) if opts else self.reduce_remote
        ref = remote.remote(self.reduce_fn, r, self.output_dir, *args)
        self.reduce_refs[r] = ref
        self.pending[ref] = ("reduce", r)
