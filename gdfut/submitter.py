"""Direct task submission (owner side), the shell around the pure task manager.

The owner resolves a task's top-level ref arguments itself (small values are
inlined into the spec, stored ones passed by location), then asks its node
for a worker lease for the task's resource shape and pushes tasks straight to
the leased worker, several in flight, returning the lease once idle. No
message per task goes through the node daemon or the head.
"""
from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import pickle
from dataclasses import dataclass, field

from . import protocol as P
from .exceptions import (TaskCancelledError, UnschedulableError, WorkerCrashedError,
                         ObjectLostError)
from .ids import (MAX_GENERATOR_ITEMS, OBJECT_ID_LEN, is_put_object, new_task_id, object_id_for_return,
                  object_id_for_yield, short, task_of)
from . import lineage as lin
from .object_ref import ObjectRef
from .ownership import INLINE as INLINE_LOCATION, Status
from . import serialization as ser
from .task_manager import TaskManager, Retry, Fail
from .transport import tcp

log = logging.getLogger("gdfut.submitter")

INLINE, ERROR, STORE = 0, 1, 2
ARG_REF = 3                     # [ARG_REF, oid] until resolved by the owner
MAX_IN_FLIGHT_PER_WORKER = 16   # pipelining depth of one lease
PIPELINE_MAX_TASK_S = 0.002     # tasks longer than this go one at a time per lease
EXEC_TIME_WEIGHT = 0.2          # of the newest sample in a shape's moving average
MAX_PENDING_LEASE_REQUESTS = 16  # per resource shape
LEASE_LINGER_S = 0.02           # keep an idle lease this long before returning it

# status field of TASK_DONE
DONE_OK, DONE_ERROR, DONE_CANCELLED, DONE_RESCHEDULE = 0, 1, 2, 3
DONE_NEED_FUNCTION = 4   # the worker does not have the task's function: send it again

# Generator tasks (Ray's num_returns="streaming" and "dynamic")
STREAMING, DYNAMIC = "streaming", "dynamic"
GENERATOR_MODES = (STREAMING, DYNAMIC)
DEFAULT_GENERATOR_BACKPRESSURE = 10_000   # items made and not consumed, per streaming task
MAX_GENERATOR_BACKPRESSURE = 1_000_000    # what Ray's -1 ("no backpressure") means here


@dataclass(slots=True)       # no __dict__: one object less per task for the GC to scan
class TaskSpec:
    tid: bytes
    fn_id: bytes
    fn_bytes: bytes | None
    name: str
    args: list
    kwargs: list
    num_returns: int
    resources: dict
    max_retries: int
    deps: list            # oids of top-level ref args
    nested: list          # oids of refs nested in args
    held: list            # ObjectRefs kept alive while the task is pending (large args put)
    actor_id: bytes | None = None
    method: str | None = None
    actor_options: dict | None = None   # creation task only
    unresolved: int = 0
    cancelled: bool = False
    force_cancel: bool = False
    parent_tid: bytes | None = None    # the task that submitted this one (recursive cancel)

    strategy: object = None       # None | "SPREAD" | ["AFFINITY", node_id, soft]
    generator: str | None = None  # STREAMING | DYNAMIC: one return (index 0), items stream
    backpressure: int = 0         # STREAMING: bound on items made and not consumed
    retry_exceptions: object = False   # True, or names of exception classes (task_manager)
    # lineage (kept to re-run the task when its results are lost)
    orig_args: list | None = None     # args/kwargs before resolution replaced the refs
    orig_kwargs: list | None = None
    owned_deps: tuple = ()            # of deps + nested, those this process owned
    rebuild: bool = False             # this run re-makes lost results

    def return_ids(self) -> list[bytes]:
        return [object_id_for_return(self.tid, i) for i in range(self.num_returns)]

    def wire(self, rt, include_fn: bool, gpu_ids=()) -> list:
        return [self.tid, self.fn_id, self.fn_bytes if include_fn else None, self.name,
                self.args, self.kwargs, self.wire_returns(), rt.wid, list(rt.addr),
                self.actor_id, self.method, self.actor_options, list(gpu_ids),
                self.strategy if is_placement_group(self.strategy) else None, rt.namespace]

    def wire_returns(self):
        """num_returns on the wire: an int, or [mode, backpressure] for a generator."""
        if self.generator is None:
            return self.num_returns
        return [self.generator, self.backpressure]


def is_placement_group(strategy) -> bool:
    """Is this wire strategy ``["PG", group id, bundle index, capture]``?"""
    return isinstance(strategy, list) and bool(strategy) and strategy[0] == "PG"


def parse_wire_returns(value) -> tuple[int, str | None, int]:
    """(num_returns, generator mode, backpressure) of TaskSpec.wire_returns()."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, None, 0
    if (isinstance(value, list) and len(value) == 2 and value[0] in GENERATOR_MODES
            and isinstance(value[1], int) and 0 <= value[1] <= MAX_GENERATOR_BACKPRESSURE):
        return 1, value[0], value[1]
    raise ValueError(f"bad num_returns field {value!r}")


def generator_options(num_returns, backpressure) -> tuple[int, str | None, int]:
    """(returns, mode, backpressure) of a task's num_returns option: an int,
    "streaming" or "dynamic"; backpressure is Ray's
    _generator_backpressure_num_objects (None: the default, -1: no bound)."""
    if num_returns not in GENERATOR_MODES:
        return num_returns, None, 0
    if num_returns == DYNAMIC:
        return 1, DYNAMIC, 0
    if backpressure is None:
        backpressure = DEFAULT_GENERATOR_BACKPRESSURE
    elif backpressure == -1:
        backpressure = MAX_GENERATOR_BACKPRESSURE
    return 1, STREAMING, backpressure


def check_num_returns(value) -> None:
    if value in GENERATOR_MODES:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"num_returns must be an int >= 0, \"streaming\" or \"dynamic\", "
                         f"got {value!r}")


def default_num_returns(fn):
    """Ray's default: a generator function streams its values, others return one."""
    return STREAMING if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn) else 1


def check_backpressure(value) -> None:
    if value is None or value == -1:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not \
            1 <= value <= MAX_GENERATOR_BACKPRESSURE:
        raise ValueError(f"_generator_backpressure_num_objects must be -1 or an int between 1 "
                         f"and {MAX_GENERATOR_BACKPRESSURE}, got {value!r}")


@dataclass
class Lease:
    lease_id: int                     # the granting node's number for it
    worker_id: bytes
    addr: tuple
    key: tuple
    node_conn: object = None          # the node daemon that granted it
    conn: object = None
    in_flight: dict = field(default_factory=dict)   # tid -> spec
    returning: bool = False
    gpu_ids: tuple = ()               # devices the node assigned to this lease
    node_id: bytes = b""

    @property
    def uid(self) -> tuple:
        """Unique in this process: lease numbers are per node."""
        return (self.node_id, self.lease_id)


class ShapeQueue:
    """Ready tasks of one scheduling class (resource shape, strategy, the node
    holding most of their argument bytes) and the leases serving them."""

    def __init__(self, key, resources, strategy, arg_bytes):
        self.key = key
        self.resources = resources
        self.strategy = strategy
        self.arg_bytes = arg_bytes
        self.ready: collections.deque = collections.deque()
        self.leases: dict[tuple, Lease] = {}     # Lease.uid -> lease
        self.pending_requests = 0
        self.avg_exec_s: float | None = None    # moving average, as workers report it

    def note_exec_time(self, seconds) -> None:
        if seconds is None:
            return
        if self.avg_exec_s is None:
            self.avg_exec_s = float(seconds)
        else:
            self.avg_exec_s += EXEC_TIME_WEIGHT * (float(seconds) - self.avg_exec_s)


class TaskSubmitter:
    def __init__(self, rt):
        self.rt = rt
        self.manager = TaskManager()
        self.queues: dict[tuple, ShapeQueue] = {}
        self.specs: dict[bytes, TaskSpec] = {}        # tid -> spec, pending tasks
        self.lease_of_task: dict[bytes, Lease] = {}
        self.lease_of_conn: dict[object, Lease] = {}
        self.lineage: dict[bytes, TaskSpec] = {}     # tid -> spec kept to re-run it
        self.lineages = lin.Lineage(getattr(rt, "max_lineage_bytes",
                                            lin.DEFAULT_MAX_LINEAGE_BYTES))
        self.keep_lineage = True    # off: nothing is re-made (to measure what lineage costs)
        self.stream_conns: dict[bytes, object] = {}   # running generator tid -> its worker
        self._closed = False

    # ------------------------------------------------------- user thread
    def prepare_args(self, args, kwargs, fname):
        """Serialize arguments at the call site; large ones go to the store."""
        held, deps, nested = [], [], []
        out_args = [self._prepare_arg(a, f"argument {i} of {fname}", held, deps, nested)
                    for i, a in enumerate(args)]
        out_kwargs = [[k, self._prepare_arg(v, f"argument '{k}' of {fname}", held, deps, nested)]
                      for k, v in kwargs.items()]
        return out_args, out_kwargs, held, deps, nested

    def _prepare_arg(self, value, what, held, deps, nested):
        if isinstance(value, ObjectRef):
            deps.append(value.id)
            held.append(value)
            return [ARG_REF, value.id]
        s = ser.serialize(value, what)
        held.extend(s.nested)
        nested.extend(r.id for r in s.nested)
        if s.inline:
            return [INLINE, s.pickle_bytes]
        ref = self.rt.put_serialized(s)
        held.append(ref)
        deps.append(ref.id)
        return [ARG_REF, ref.id]

    def submit(self, fn_id, fn_bytes, name, args, kwargs, options) -> list[ObjectRef]:
        rt = self.rt
        a, kw, held, deps, nested = self.prepare_args(args, kwargs, name)
        n, mode, backpressure = generator_options(options["num_returns"],
                                                  options.get("backpressure"))
        spec = TaskSpec(new_task_id(), fn_id, fn_bytes, name, a, kw, n,
                        options["resources"], options["max_retries"], deps, nested, held,
                        strategy=options.get("strategy") or rt.captured_strategy(),
                        generator=mode, retry_exceptions=options.get("retry_exceptions", False),
                        backpressure=backpressure, parent_tid=rt.submitting_task_id())
        refs = [ObjectRef(oid, rt.wid, rt.addr, rt, _count=False) for oid in spec.return_ids()]
        rt.io.post(self.submit_in_loop, spec, rt.call_site())
        return refs

    # --------------------------------------------------------- io thread
    def submit_in_loop(self, spec: TaskSpec, call_site: str):
        rt = self.rt
        for oid in spec.return_ids():
            rt.table.add_owned(oid, lineage=spec.tid, call_site=call_site)
            rt.table.add_local_ref(oid)
        rt.table.task_submitted(spec.tid, spec.deps + spec.nested)
        self.open_stream(spec, call_site)
        self.specs[spec.tid] = spec
        self.manager.submitted(spec.tid, spec.max_retries, spec.retry_exceptions)
        if self.keep_lineage:
            self.record_lineage(spec)
        self.resolve_dependencies(spec, self.enqueue)

    def resolve_dependencies(self, spec: TaskSpec, then):
        refs = [(lst, i) for lst in (spec.args,) for i, e in enumerate(lst) if e[0] == ARG_REF]
        refs += [(pair, 1) for pair in spec.kwargs if pair[1][0] == ARG_REF]
        spec.unresolved = len(refs)
        if not refs:
            then(spec)
            return
        for container, idx in refs:
            oid = container[idx][1]
            self.rt.when_available(oid, lambda entry, c=container, i=idx, o=oid:
                                   self._dep_ready(spec, c, i, o, entry, then))

    def _dep_ready(self, spec, container, idx, oid, entry, then):
        if entry[0] == ERROR:
            container[idx] = entry
        elif entry[0] == STORE:       # a 5th field: made on that GPU (a device object)
            container[idx] = [STORE, entry[1], entry[2], oid, *entry[3:4]]
        else:
            container[idx] = entry
        spec.unresolved -= 1
        if spec.unresolved == 0 and spec.tid in self.specs:   # else cancelled meanwhile
            failed = next((e for e in spec.args + [kv[1] for kv in spec.kwargs]
                           if e[0] == ERROR), None)
            if failed is not None:
                self.finish(spec, [[oid, failed, []] for oid in spec.return_ids()])
            elif spec.cancelled:
                self.fail_cancelled(spec)
            else:
                then(spec)

    def enqueue(self, spec: TaskSpec, front: bool = False):
        arg_bytes = stored_arg_bytes(spec)
        preferred = max(arg_bytes, key=arg_bytes.get) if arg_bytes else None
        strategy_key = spec.strategy if not isinstance(spec.strategy, list) else tuple(spec.strategy)
        key = (tuple(sorted(spec.resources.items())), strategy_key, preferred)
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = ShapeQueue(key, spec.resources, spec.strategy, arg_bytes)
        (q.ready.appendleft if front else q.ready.append)(spec)
        self.dispatch(q)

    def dispatch(self, q: ShapeQueue):
        depth = self.pipeline_depth(q)
        for lease in q.leases.values():
            if not q.ready:
                break
            if lease.conn is None or lease.returning:
                continue
            while q.ready and len(lease.in_flight) < depth:
                self.push(lease, q.ready.popleft())
        wanted = min(len(q.ready), MAX_PENDING_LEASE_REQUESTS)
        while q.pending_requests < wanted and not self._closed:
            q.pending_requests += 1
            self.rt.io.loop.create_task(self.request_lease(q))

    @staticmethod
    def pipeline_depth(q: ShapeQueue) -> int:
        """Tasks one lease may hold in flight.

        Pipelining hides the round trip for tiny tasks, but tasks pushed to a
        worker wait there even when other workers come free, so long tasks
        go one at a time (as in Ray) and so does a shape not yet measured:
        its first reply tells how long its tasks take. Short tasks get a fair
        share of the backlog per lease (granted or still requested), capped,
        so a short backlog still spreads over the leases being requested."""
        if q.avg_exec_s is None or q.avg_exec_s > PIPELINE_MAX_TASK_S:
            return 1
        in_flight = sum(len(lease.in_flight) for lease in q.leases.values())
        slots = len(q.leases) + q.pending_requests
        share = -(-(len(q.ready) + in_flight) // max(slots, 1))
        return max(1, min(MAX_IN_FLIGHT_PER_WORKER, share))

    def push(self, lease: Lease, spec: TaskSpec):
        if spec.cancelled:
            self.fail_cancelled(spec)
            return
        lease.in_flight[spec.tid] = spec
        self.lease_of_task[spec.tid] = lease
        sent = lease.conn.peer.setdefault("fns", set())
        include = spec.fn_id not in sent
        sent.add(spec.fn_id)
        lease.conn.send([P.PUSH_TASK, spec.wire(self.rt, include, lease.gpu_ids)])

    async def request_lease(self, q: ShapeQueue):
        """One lease request. It counts as pending until its lease is usable
        (granted *and* connected), so pipeline_depth keeps a share of the
        backlog for it meanwhile."""
        try:
            lease = await self._acquire_lease(q)
        except Exception:       # a bug must not strand the queue: log, retry soon
            log.exception("lease request failed unexpectedly")
            lease = None
            if not self._closed:
                self.rt.io.loop.call_later(0.1, self.dispatch, q)
        finally:
            q.pending_requests -= 1
        if lease is not None:
            q.leases[lease.uid] = lease
            self.lease_of_conn.setdefault(lease.conn, []).append(lease)
        self.dispatch(q)
        if lease is not None:
            self._maybe_return_later(q, lease)

    async def _acquire_lease(self, q: ShapeQueue) -> Lease | None:
        rt = self.rt
        hints = {"arg_bytes": q.arg_bytes, "strategy": q.strategy}
        try:
            grant, node_conn = await lease_from_cluster(rt, q.resources, False, None, hints)
        except tcp.RemoteError as exc:
            text = str(exc)
            workers_fail = P.WORKERS_FAIL_TO_START in text
            self._fail_queue(q, (WorkerCrashedError if workers_fail else UnschedulableError)(text))
            return None
        except (tcp.ConnectionLost, OSError, asyncio.TimeoutError) as exc:
            if not self._closed:    # shutting down: requests end with the connection
                log.warning("lease request failed: %s", exc)
                if q.ready:
                    rt.io.loop.call_later(0.1, self.dispatch, q)
            return None
        lease = Lease(grant["lease_id"], grant["worker_id"], tuple(grant["addr"]), q.key,
                      node_conn, gpu_ids=tuple(grant.get("gpu_ids") or ()),
                      node_id=grant["node_id"])
        log.debug("lease %s granted: worker %s at %s (%d ready)", lease.lease_id,
                  short(lease.worker_id), lease.addr, len(q.ready))
        if not q.ready or self._closed:
            self._return_lease(lease, worker_died=False)
            return None
        try:
            lease.conn = await rt.connect_peer(lease.addr)
        except (OSError, tcp.ConnectionLost, asyncio.TimeoutError):
            self._return_lease(lease, worker_died=True)
            return None
        rt.conn_wid.setdefault(lease.conn, lease.worker_id)   # its close: that worker died
        return lease

    def _return_lease(self, lease: Lease, worker_died: bool):
        conn = lease.node_conn
        if conn is not None and not conn.closed:
            conn.send([P.RETURN_LEASE, lease.lease_id, worker_died])

    def _maybe_return_later(self, q, lease):
        if not q.ready and not lease.in_flight:
            self.rt.io.loop.call_later(LEASE_LINGER_S, self._return_if_idle, q, lease)

    def _return_if_idle(self, q, lease):
        if lease.uid in q.leases and not q.ready and not lease.in_flight:
            del q.leases[lease.uid]
            leases = self.lease_of_conn.get(lease.conn, [])
            if lease in leases:
                leases.remove(lease)
            self._return_lease(lease, worker_died=False)

    # ------------------------------------------------------ generator items
    def open_stream(self, spec: TaskSpec, call_site: str):
        if spec.generator is not None:
            self.rt.table.stream_opened(
                spec.tid, spec.backpressure if spec.generator == STREAMING else None, call_site)

    def on_task_yield(self, conn, m):
        """A generator task yielded item ``index`` (before its TASK_DONE, in order)."""
        rt = self.rt
        try:
            _, tid, index, entry, nested = m
            spec = self.specs.get(tid)
            if spec is None or spec.generator is None or not self._runs_on(tid, conn):
                log.warning("generator item for a task %r not running there", tid)
                return
            oid = object_id_for_yield(tid, index)        # tid: a task id of ours
            size, location = entry_location(entry)
            pairs = [(row[0], row[1]) for row in nested]
        except (TypeError, ValueError, IndexError) as exc:
            log.warning("malformed generator item from %s: %s", conn.peer, exc)
            return
        executor = self.executor_of(tid, conn)
        if executor is not None and rt.table.is_dead(executor):
            return          # its death is being handled: the task fails or runs again
        self.stream_conns[tid] = conn
        rt.note_owners(nested)
        rt.run_instructions(rt.table.stream_item(
            tid, index, oid, size=size, location=location, nested=pairs,
            failed="error" if entry[0] == ERROR else None, executor=executor))
        if rt.table.is_owned(oid):
            rt.set_value(oid, entry)
        rt.wake_stream(tid)

    def executor_of(self, tid: bytes, conn):
        """The worker id of the process running task tid (on ``conn``)."""
        lease = self.lease_of_task.get(tid)
        if lease is not None:
            return lease.worker_id
        client = self.rt.actors.by_conn.get(conn)
        return client.worker_id if client is not None else None

    def _runs_on(self, tid: bytes, conn) -> bool:
        lease = self.lease_of_task.get(tid)
        if lease is not None:
            return lease.conn is conn
        client = self.rt.actors.by_conn.get(conn)
        return client is not None and tid in client.in_flight

    def send_stream_ack(self, tid: bytes, consumed: int):
        conn = self.stream_conns.get(tid)
        if conn is not None and not conn.closed:
            conn.send([P.GENERATOR_ACK, tid, consumed])

    def _end_stream(self, spec: TaskSpec, returns: list):
        """The generator task ended: a streaming one's error (if any) becomes
        its next item; a dynamic one's items become its return's contents."""
        rt = self.rt
        self.stream_conns.pop(spec.tid, None)
        oid, entry = returns[0][0], returns[0][1]
        if spec.generator == DYNAMIC:
            rt.run_instructions(rt.table.stream_collected(spec.tid, oid))
            return
        error_oid = None
        index = rt.table.stream_received(spec.tid)
        if entry[0] == ERROR and index < MAX_GENERATOR_ITEMS:
            error_oid = object_id_for_yield(spec.tid, index)
        rt.run_instructions(rt.table.stream_ended(spec.tid, error_oid))
        if error_oid is not None and rt.table.is_owned(error_oid):
            rt.set_value(error_oid, entry)
        rt.wake_stream(spec.tid)

    # ----------------------------------------------------------- replies
    def on_task_done(self, conn, m):
        tid, status, returns = m[1], m[2], m[3]
        lease = self.lease_of_task.get(tid)
        if lease is None:
            self.rt.actors.on_task_done(conn, m)
            return
        if self.rt.table.is_dead(lease.worker_id):
            # Seen dead on another connection first: the lease's own close
            # comes next and retries or fails the task. Accepting the reply
            # now would take over registrations its owners may drop.
            log.info("reply of task %s from dead worker %s ignored", short(tid),
                     short(lease.worker_id))
            return
        del self.lease_of_task[tid]
        spec = lease.in_flight.pop(tid)
        q = self.queues[lease.key]
        if status == DONE_RESCHEDULE:
            self.enqueue(spec, front=True)   # the worker blocked; run it elsewhere
        elif status == DONE_NEED_FUNCTION:   # its first push never arrived whole
            lease.conn.peer.get("fns", set()).discard(spec.fn_id)
            self.enqueue(spec, front=True)
        elif status == DONE_ERROR and self._retry_raised(spec, returns, m):
            self.enqueue(spec, front=True)
        else:
            q.note_exec_time(m[4] if len(m) > 4 else None)
            self.finish(spec, returns, executor=lease.worker_id)
        self.dispatch(q)
        self._maybe_return_later(q, lease)

    def _retry_raised(self, spec: TaskSpec, returns: list, m: list) -> bool:
        """The task raised: is it run again (``retry_exceptions``)? Only when
        every return holds the error (a partial result would be stored twice)."""
        if (not spec.retry_exceptions or spec.cancelled
                or any(r[1][0] != ERROR for r in returns)):
            return False
        named = m[5] if len(m) > 5 and isinstance(m[5], list) else []
        classes = [c for c in named if isinstance(c, str)]
        streamed = self.rt.table.stream_received(spec.tid) if spec.generator else 0
        decision = self.manager.task_raised(spec.tid, classes, streamed)
        if isinstance(decision, Fail):
            return False
        log.info("retrying task %s (attempt %d) after it raised %s", spec.name,
                 decision.attempt, classes[0] if classes else "an exception")
        return True

    def finish(self, spec: TaskSpec, returns: list, executor: bytes | None = None):
        """Record a task's results (values, locations or errors); ``executor``:
        the worker that sent them (it registered us for their nested refs)."""
        rt = self.rt
        for oid, entry, nested in returns:
            if nested:
                rt.note_owners(nested)
                rt.run_instructions(rt.table.return_received(
                    oid, [(n[0], n[1]) for n in nested], executor))
            size, loc = entry_location(entry)
            if entry[0] == ERROR:
                rt.run_instructions(rt.table.object_failed(oid, "error"))
            else:
                rt.run_instructions(rt.table.object_ready(oid, size, loc))
            if rt.table.is_owned(oid):    # else freed already; the table freed its copy
                rt.set_value(oid, entry)
        if spec.generator is not None and returns:
            self._end_stream(spec, returns)
        self.specs.pop(spec.tid, None)
        self.manager.finished(spec.tid)
        spec.held = ()
        if spec.tid in self.lineage:
            shrink_kept_spec(spec)
        rt.run_instructions(rt.table.task_finished(spec.tid))
        if spec.rebuild:
            spec.rebuild = False
            self._forget(self.lineages.rebuilt(spec.tid))

    def _fail(self, spec: TaskSpec, err: BaseException):
        entry = [ERROR, pickle.dumps(err)]
        self.finish(spec, [[oid, entry, []] for oid in spec.return_ids()])

    def _fail_queue(self, q: ShapeQueue, err):
        while q.ready:
            self._fail(q.ready.popleft(), err)

    def on_connection_lost(self, conn):
        for lease in self.lease_of_conn.pop(conn, []):
            q = self.queues[lease.key]
            q.leases.pop(lease.uid, None)
            self._return_lease(lease, worker_died=True)
            for tid, spec in list(lease.in_flight.items()):
                self.lease_of_task.pop(tid, None)
                self._worker_lost(spec, lease)
            lease.in_flight.clear()
            self.dispatch(q)

    def _worker_lost(self, spec: TaskSpec, lease: Lease):
        if spec.cancelled:
            self.fail_cancelled(spec, killed=spec.force_cancel)
            return
        streamed = self.rt.table.stream_received(spec.tid) if spec.generator else 0
        decision = self.manager.worker_failed(spec.tid, streamed)
        if isinstance(decision, Retry):
            log.info("retrying task %s (attempt %d) after its worker died", spec.name,
                     decision.attempt)
            self.enqueue(spec, front=True)
        else:
            assert isinstance(decision, Fail)
            self._fail(spec, WorkerCrashedError(
                f"the worker running task {spec.name} (worker {short(lease.worker_id)}) died "
                f"unexpectedly; {decision.reason}"))

    # ------------------------------------------------------------ cancel
    def cancel(self, tid: bytes, force: bool, recursive: bool) -> str | None:
        """Cancel a task this process owns, as Ray does: one not yet pushed
        is dropped (it never runs); a running one is interrupted by its
        worker (``force``: the worker is killed), which with ``recursive``
        also cancels the tasks it submitted. Returns why the cancel is
        refused (the caller raises ValueError), or None. A finished or
        unknown task: nothing happens."""
        spec = self.specs.get(tid)
        if spec is None:
            return None
        if spec.actor_id is not None:
            if force:
                return (f"force=True is not supported for actor tasks ({spec.name}): an "
                        f"actor's state would be lost; use gdfut.kill() to stop the actor")
            self.rt.actors.cancel(spec, recursive)
            return None
        spec.cancelled = True
        spec.force_cancel = force
        lease = self.lease_of_task.get(tid)
        if lease is not None:     # pushed: its worker cancels it (a lost worker fails it)
            if not lease.conn.closed:
                lease.conn.send([P.CANCEL_TASK, tid, force, recursive])
            return None
        for q in self.queues.values():
            if spec in q.ready:
                q.ready.remove(spec)
                break
        self.fail_cancelled(spec)      # queued, or waiting for its arguments
        return None

    def fail_cancelled(self, spec: TaskSpec, killed: bool = False) -> None:
        self._fail(spec, cancelled_error(spec.name, spec.tid, killed))

    def cancel_children(self, parent_tid: bytes, force: bool) -> None:
        """Recursive cancel: the tasks and actor calls the cancelled task
        submitted (this process owns them). As in Ray, force does not apply
        to actor calls."""
        children = [s for s in self.specs.values() if s.parent_tid == parent_tid]
        for spec in children:
            self.cancel(spec.tid, force and spec.actor_id is None, True)

    # ------------------------------------------------ lineage reconstruction
    # Decisions are the pure lin.Lineage's; this section carries them out.
    def record_lineage(self, spec: TaskSpec):
        """Keep what a re-run of the task needs (not for generators: a re-run
        would yield their items again)."""
        if spec.generator is not None:
            return
        upstream = ()
        if spec.deps:      # resolution replaces ref entries in place: keep the originals
            spec.orig_args = list(spec.args)
            spec.orig_kwargs = [list(kv) for kv in spec.kwargs]
        else:
            spec.orig_args, spec.orig_kwargs = spec.args, spec.kwargs
        if spec.deps or spec.nested:
            is_owned = self.rt.table.is_owned
            spec.owned_deps = tuple(o for o in dict.fromkeys(spec.deps + spec.nested)
                                    if len(o) == OBJECT_ID_LEN and is_owned(o))  # not actors
            upstream = [task_of(o) for o in spec.owned_deps if not is_put_object(o)]
        self.lineage[spec.tid] = spec
        forget = self.lineages.recorded(spec.tid, upstream, lineage_bytes(spec),
                                        spec.max_retries)
        if forget:
            self._forget(forget)

    def release_lineage(self, tid: bytes):
        """The ownership table's ReleaseLineage: no result of tid is alive."""
        self._forget(self.lineages.returns_released(tid))

    def _forget(self, instructions):
        for ins in instructions:
            self.lineage.pop(ins.tid, None)

    def object_lost(self, oid: bytes, tid: bytes | None, where) -> None:
        """Every copy of owned oid is gone (``where``: the last location) and a
        reader needs it: re-run the task that made it, or fail it saying why."""
        rt = self.rt
        rt.values.pop(oid, None)            # its entry names a copy that is gone
        rt.run_instructions(rt.table.object_rebuilding(oid))
        decision = self.lineages.object_lost(oid, tid)
        if isinstance(decision, lin.Rebuild):
            log.info("object %s lost %s: re-running task %s (re-run %d)", short(oid),
                     lost_where(where), self.lineage[decision.tid].name, decision.attempt)
            self._rebuild(self.lineage[decision.tid])
        elif isinstance(decision, lin.Unrecoverable):
            self._fail_lost(oid, lost_error(oid, decision.reason, lost_where(where)))

    def _fail_lost(self, oid: bytes, err: BaseException):
        rt = self.rt
        rt.run_instructions(rt.table.object_failed(oid, "lost"))
        if rt.table.is_owned(oid):
            rt.set_value(oid, [ERROR, pickle.dumps(err)])

    def _rebuild(self, spec: TaskSpec):
        """Run a finished task again. Its arguments this process owned and
        freed meanwhile are re-made first (each asks the lineage again);
        one that is alive but lost is found lost by the worker reading it,
        which asks us for it (``CoreWorker.recover``)."""
        rt = self.rt
        table = rt.table
        gone = [d for d in spec.deps + spec.nested
                if d not in spec.owned_deps and table.status(d) not in
                (Status.BORROWED, Status.OWNER_DIED)]
        if gone:
            self._forget(self.lineages.rebuilt(spec.tid))
            why = (f"its task {spec.name} needs object {short(gone[0])}, borrowed from another "
                   f"process and no longer held here")
            for oid in spec.return_ids():
                if table.is_owned(oid) and oid not in rt.values:
                    self._fail_lost(oid, lost_error(oid, why, "(it was needed again)"))
            return
        revived = [d for d in spec.owned_deps if not table.is_owned(d)]
        for dep in revived:       # freed meanwhile: an entry again, held by this task
            table.object_revived(dep, lineage=None if is_put_object(dep) else task_of(dep))
        spec.args = list(spec.orig_args)
        spec.kwargs = [list(kv) for kv in spec.orig_kwargs]
        spec.cancelled = spec.force_cancel = False
        spec.rebuild = True
        table.task_submitted(spec.tid, spec.deps + spec.nested)
        self.specs[spec.tid] = spec
        self.manager.submitted(spec.tid, spec.max_retries)
        for dep in revived:
            self._remake(dep)
        self.resolve_dependencies(spec, self.enqueue)

    def _remake(self, oid: bytes):
        """A freed argument of a task being re-run, revived: run its task again."""
        tid = None if is_put_object(oid) else task_of(oid)
        decision = self.lineages.object_lost(oid, tid)
        if isinstance(decision, lin.Rebuild):
            self._rebuild(self.lineage[decision.tid])
        elif isinstance(decision, lin.Unrecoverable):
            self._fail_lost(oid, lost_error(oid, decision.reason,
                                            "(it was freed, and a re-run task needs it)"))

    def lineage_stats(self) -> dict:
        return dict(self.lineages.stats(), specs=len(self.lineage))

    def close(self):
        self._closed = True


def cancelled_error(name: str, tid: bytes, force: bool = False) -> TaskCancelledError:
    """What the caller's get raises for a cancelled task: which task it was."""
    how = " (force=True: its worker was killed)" if force else ""
    return TaskCancelledError(f"task {name} (task id {short(tid)}) was cancelled{how}")


def shrink_kept_spec(spec: TaskSpec) -> None:
    """A finished task's spec kept as lineage: its empty lists become the
    empty tuple (no object of their own for the cyclic GC to scan; with
    thousands of kept specs, W1's, that was most of what keeping lineage
    cost). A re-run copies the arguments into lists again (``_rebuild``)."""
    if not spec.args:
        spec.args = spec.orig_args = ()
    if not spec.kwargs:
        spec.kwargs = spec.orig_kwargs = ()
    if not spec.deps and not spec.nested:    # (deps + nested: both of one kind)
        spec.deps = spec.nested = ()


def lineage_bytes(spec: TaskSpec) -> int:
    """What keeping the spec costs: its inline argument bytes and an overhead."""
    n = lin.SPEC_OVERHEAD_BYTES
    for e in spec.args:
        if e[0] == INLINE:
            n += len(e[1])
    for kv in spec.kwargs:
        if kv[1][0] == INLINE:
            n += len(kv[1][1])
    return n


def lost_where(where) -> str:
    if isinstance(where, tuple):
        return f"with node {short(where[0])} (the node died or its store dropped it)"
    return "from its store"


def lost_error(oid: bytes, reason: str, where: str) -> ObjectLostError:
    """The error of a lost object that cannot be re-made, saying why."""
    if reason == lin.PUT:
        return ObjectLostError(f"object {short(oid)} was made by put() and its only copy was "
                               f"lost {where}; it cannot be rebuilt")
    return ObjectLostError(f"object {short(oid)} lost its only copy {where} and cannot be "
                           f"rebuilt: {reason}")


def entry_location(entry) -> tuple:
    """(size, location) of a value entry (location None for an error)."""
    if entry[0] == STORE:     # a 4th field: made on that GPU, in its device tier
        return entry[2], (entry[1], "device" if len(entry) > 3 else "host")
    if entry[0] == INLINE:
        return len(entry[1]), INLINE_LOCATION
    if entry[0] == ERROR:
        return len(entry[1]), None
    raise ValueError(f"bad value entry kind {entry[0]!r}")


def stored_arg_bytes(spec: TaskSpec) -> dict:
    """Bytes of the task's stored (not inline) arguments, by node."""
    out: dict = {}
    for e in spec.args + [kv[1] for kv in spec.kwargs]:
        if e[0] == STORE:
            out[e[1]] = out.get(e[1], 0) + e[2]
    return out


MAX_SPILLBACKS = 4
QUEUE_FULL_BACKOFF_S = (0.05, 1.0)   # first and longest wait after "lease queue full"


async def lease_from_cluster(rt, resources, is_actor, actor_id, hints):
    """Ask our node for a lease; follow spillback replies to other nodes.
    Returns (grant, node connection that granted it)."""
    conn = rt.node_conn
    hints = dict(hints)
    spillbacks, backoff = 0, QUEUE_FULL_BACKOFF_S[0]
    while spillbacks < MAX_SPILLBACKS:
        try:
            reply = await conn.request(P.REQUEST_LEASE, resources, is_actor, actor_id, hints)
        except tcp.RemoteError as exc:
            if P.LEASE_QUEUE_FULL not in str(exc):
                raise
            # back-pressure from a node whose queue is full: wait, ask again
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, QUEUE_FULL_BACKOFF_S[1])
            continue
        spillbacks += 1
        if "spillback" not in reply:
            return reply, conn
        rt.node_addrs[reply["node_id"]] = tuple(reply["spillback"])
        conn = await rt.node_connection(reply["node_id"])
        hints["spilled"] = True     # the target queues it; no ping-pong
    raise tcp.ConnectionLost("too many spillbacks")
