"""Task execution inside a worker process (the worker side of a push).

Tasks arrive on the I/O thread and run on the worker's main thread (so a task
may call ``gdfut.get`` and block without stopping the I/O thread). An actor's
calls run on the same thread in arrival order, or on a thread pool
(``max_concurrency > 1``), or on an asyncio loop for ``async def`` methods.
"""
from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures
import contextvars
import inspect
import logging
import os
import signal
import threading
import time
import traceback

import cloudpickle

from . import protocol as P
from . import serialization as ser
from .exceptions import ObjectStoreFullError, TaskCancelledError, TaskError, GdfutError
from .ids import MAX_GENERATOR_ITEMS, object_id_for_return, object_id_for_yield, short
from .actor import ActorExitRequest
from .actor_submitter import DONE_ACTOR_EXIT
from .object_ref import DynamicObjectRefGenerator, ObjectRef
from .ownership import UNBOUNDED
from .task_manager import class_names
from .submitter import (DONE_CANCELLED, DONE_ERROR, DONE_NEED_FUNCTION, DONE_OK, DONE_RESCHEDULE,
                        DYNAMIC, ERROR, INLINE, STORE, cancelled_error, parse_wire_returns)

log = logging.getLogger("gdfut.executor")

MAX_QUEUED_TASKS = 100_000
MAX_LABELS = 10_000          # cached output labels ("fn pid=N"), cleared when full
INTERRUPT_RETRY_S = 0.05     # a cancel's interrupt that found the task in gdfut's code retries

# The task the calling thread (or asyncio task) runs: is_canceled(), and the
# parent of the tasks it submits (a recursive cancel cancels them too).
CURRENT_TASK: contextvars.ContextVar = contextvars.ContextVar("gdfut_current_task",
                                                              default=None)
# Yielded items handed to the I/O thread but not yet written to the socket, in
# bytes, for all generator tasks of this worker together: the I/O thread batches
# what is queued into one frame, and a frame has a size limit.
MAX_UNSENT_YIELD_BYTES = 16 * 1024 * 1024
MIN_ITEM_BYTES = 1024        # what a tiny item counts for (bounds the item count too)


class Task:
    __slots__ = ("conn", "tid", "fn_id", "fn_bytes", "name", "args", "kwargs", "num_returns",
                 "owner_wid", "owner_addr", "actor_id", "method", "actor_options", "gpu_ids",
                 "started", "cancelled", "interrupted", "generator", "backpressure", "outbox",
                 "placement_group", "error_classes", "namespace")

    def __init__(self, conn, wire):
        self.conn = conn
        (self.tid, self.fn_id, self.fn_bytes, self.name, self.args, self.kwargs,
         returns, self.owner_wid, self.owner_addr, self.actor_id, self.method,
         self.actor_options, self.gpu_ids) = wire[:13]
        # ["PG", group id, bundle index, capture child tasks] when it runs in a group
        self.placement_group = wire[13] if len(wire) > 13 else None
        # the submitting job's namespace (get_actor and named actors in the task)
        self.namespace = wire[14] if len(wire) > 14 and isinstance(wire[14], str) else None
        self.num_returns, self.generator, self.backpressure = parse_wire_returns(returns)
        # generator tasks: messages to the owner not sent yet, in order (io thread)
        self.outbox = collections.deque() if self.generator is not None else None
        self.started = 0.0
        self.cancelled = False       # its owner cancelled it
        self.interrupted = False     # the cancel's interrupt was raised in it
        # The raised exception's class and bases, named for the owner's
        # retry_exceptions decision (it need not unpickle the error for it).
        self.error_classes: tuple = ()

    def return_ids(self):
        return [object_id_for_return(self.tid, i) for i in range(self.num_returns)]


class Executor:
    def __init__(self, rt):
        self.rt = rt
        self.functions: dict[bytes, object] = {}
        self.labels: dict[tuple, str] = {}
        self.queue: collections.deque[Task] = collections.deque()
        self.cond = threading.Condition()
        self.running: Task | None = None
        self.main_thread_id = threading.get_ident()
        self.actor = None
        self.actor_init_error: list | None = None
        self.actor_placement_group: list | None = None   # the group the actor was created in
        self.actor_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self.actor_sema: asyncio.Semaphore | None = None
        self.calls: dict[bytes, Task] = {}       # actor calls running on a pool or asyncio
        self.async_tasks: dict[bytes, asyncio.Task] = {}   # tid -> its asyncio task
        self.windows: dict[bytes, YieldWindow] = {}     # running streaming tasks
        self.unsent = ByteBudget(MAX_UNSENT_YIELD_BYTES)
        self._stop = False
        self.exit_reason: str | None = None     # set once the actor called exit_actor()
        self.exit_replied = threading.Event()
        rt.dispatch[P.PUSH_TASK] = self.on_push_task
        rt.dispatch[P.GENERATOR_ACK] = self.on_generator_ack
        rt.dispatch[P.CANCEL_TASK] = self.on_cancel
        rt.dispatch[P.EXIT_WORKER] = lambda conn, m: self.stop()

    # ------------------------------------------------------------ io thread
    def on_push_task(self, conn, m):
        try:
            task = Task(conn, m[1])
        except (TypeError, ValueError) as exc:
            self.refuse_malformed(conn, m[1], exc)
            return
        if self.exit_reason is not None:   # the actor ended itself: refuse at once
            self._reply(task, DONE_ACTOR_EXIT, self.error_returns(task, self.exit_error(task)))
            return
        if task.fn_bytes is not None and task.fn_id not in self.functions:
            self.functions[task.fn_id] = task.fn_bytes   # unpickled lazily, on the main thread
        if task.actor_id is not None and task.method != "__init__" and self.actor_concurrent():
            self.run_concurrent_actor_call(task)
            return
        with self.cond:
            assert len(self.queue) < MAX_QUEUED_TASKS, "task queue overflow"
            self.queue.append(task)
            self.cond.notify()

    def on_cancel(self, conn, m):
        """The owner cancels a task it pushed here (Ray's semantics): a queued
        one never runs; a running task gets KeyboardInterrupt (``force``: the
        worker exits); an async actor method's asyncio task is cancelled; a
        sync actor method is not interrupted (the actor has state) but sees
        ``is_canceled()``. ``recursive``: the tasks it submitted go too."""
        tid, force = m[1], bool(m[2])
        recursive = bool(m[3]) if len(m) > 3 else True
        with self.cond:
            queued = next((t for t in self.queue if t.tid == tid), None)
            if queued is not None:
                self.queue.remove(queued)
            running = self.running if self.running is not None and self.running.tid == tid \
                else self.calls.get(tid)
            if running is not None:
                running.cancelled = True
        if queued is not None:
            self.reply_error(queued, cancelled_error(queued.name, tid), DONE_CANCELLED)
            return
        if running is None:
            return                  # finished already: nothing happens
        if recursive:
            self.rt.submitter.cancel_children(tid, force)
        if running.actor_id is not None:
            if self.actor_loop is not None:
                self.actor_loop.call_soon_threadsafe(self.cancel_async_call, tid)
        elif force:
            log.info("force-cancel of running task %s: exiting", short(tid))
            self.rt.io.loop.call_soon(os._exit, 1)   # after the children's cancels are sent
        else:
            self.interrupt(running)

    def interrupt(self, task: Task):
        """io thread: raise KeyboardInterrupt in the running task, as Ray does
        (a get or wait it is blocked in raises TaskCancelledError instead).
        The signal handler raises only in the task's own code, never inside
        gdfut's, so this retries until it lands or the task ends."""
        with self.cond:
            if self.running is not task or task.interrupted:
                return
            if self.rt.interrupt_blocked(self.main_thread_id,
                                         cancelled_error(task.name, task.tid)):
                task.interrupted = True
                return
            signal.pthread_kill(self.main_thread_id, signal.SIGINT)
        self.rt.io.loop.call_later(INTERRUPT_RETRY_S, self.interrupt, task)

    def on_interrupt_signal(self, signum, frame):
        """Main thread, SIGINT: the interrupt of a cancelled task. Anything
        else (a Ctrl-C meant for the driver, a signal that came after its
        task ended) is ignored: a worker is stopped by its node, not by it."""
        task = self.running
        if task is None or not task.cancelled or task.interrupted or task.actor_id is not None:
            return
        if not in_task_code(frame):
            return                  # inside gdfut's own code: interrupt() tries again
        task.interrupted = True
        raise KeyboardInterrupt(f"task {task.name} was cancelled")

    def cancel_async_call(self, tid: bytes):
        """actor loop: cancel an async actor method's asyncio task."""
        atask = self.async_tasks.get(tid)
        if atask is not None:
            atask.cancel()

    def current_placement_group(self) -> list | None:
        """The placement group strategy the calling task runs under (an actor's
        calls: the group the actor was created in), or None."""
        task = CURRENT_TASK.get()
        if task is not None and task.placement_group is not None:
            return task.placement_group
        return self.actor_placement_group

    def current_task_id(self) -> bytes | None:
        task = CURRENT_TASK.get()
        return None if task is None else task.tid

    def current_task_cancelled(self) -> bool:
        """Ray's ``get_runtime_context().is_canceled()``."""
        task = CURRENT_TASK.get()
        if task is None:
            raise RuntimeError("is_canceled() can only be called from a task or actor method")
        if self.actor_loop is not None:
            raise RuntimeError("is_canceled() is not available in an async actor: a cancel "
                               "raises asyncio.CancelledError in its method")
        return task.cancelled

    def reject_queued(self):
        """The running task blocked in get: hand queued tasks back to owners."""
        if self.actor is not None or self.actor_init_error is not None:
            return
        with self.cond:
            rejected = [t for t in self.queue if t.actor_id is None]
            self.queue = collections.deque(t for t in self.queue if t.actor_id is not None)
        for t in rejected:
            t.conn.send([P.TASK_DONE, t.tid, DONE_RESCHEDULE, []])

    # ------------------------------------------------------------ main thread
    def run_forever(self):
        signal.signal(signal.SIGINT, self.on_interrupt_signal)
        while True:
            with self.cond:
                while not self.queue and not self._stop:
                    self.cond.wait()
                if self._stop:
                    break
                task = self.queue.popleft()
                self.running = task
            try:
                self.execute(task)
            finally:
                with self.cond:      # interrupt() checks the running task under it
                    self.running = None
        if self.exit_reason is not None:
            self.finish_exit()

    def stop(self):
        with self.cond:
            self._stop = True
            self.cond.notify_all()

    def execute(self, task: Task):
        self.note_running_task(task)
        if task.actor_id is None or task.method == "__init__":
            self.assign_gpus(task.gpu_ids)
        if task.actor_id is not None:
            if task.method == "__init__":
                self.create_actor(task)
                return
            if self.actor_init_error is not None:
                self.rt.io.post(self.send_done, task, DONE_ERROR,
                                [[oid, self.actor_init_error, [], []] for oid in task.return_ids()])
                return
            if self.actor_concurrent():   # queued before the actor was set up
                self.run_concurrent_actor_call(task)
                return
            fn = getattr(self.actor, task.method)
        else:
            if task.fn_id not in self.functions:   # owner thinks we have it: ask again
                self.rt.io.post(self.send_done, task, DONE_NEED_FUNCTION, [])
                return
            try:
                fn = self.function(task.fn_id)
            except BaseException as exc:   # e.g. its module is not importable here
                self.reply_error(task, self.wrap_error(task, exc), DONE_ERROR)
                return
        self.call_and_reply(task, fn)

    def note_running_task(self, task: Task):
        """Remember the task for get_runtime_context(); lines printed from now
        on go to its owner, labelled Ray's way: "(fn pid=N)" for a function,
        "(Class pid=N)" for an actor."""
        rt = self.rt
        task.started = time.perf_counter()
        rt.output_conn = task.conn
        rt.current_task_id = task.tid
        rt.current_actor_id = task.actor_id
        if task.actor_id is None:        # an actor keeps the namespace it was created in
            rt.namespace = task.namespace
        key = (task.name, task.actor_id is not None)
        label = self.labels.get(key)
        if label is None:
            what = task.name.rsplit(".", 1)[0 if key[1] else -1]
            if len(self.labels) >= MAX_LABELS:
                self.labels.clear()
            label = self.labels[key] = f"{what} pid={rt.pid}"
        rt.output_label = label

    def assign_gpus(self, gpu_ids):
        """Show the task only the devices its lease holds, as Ray does: CUDA
        libraries read CUDA_VISIBLE_DEVICES when they first initialise."""
        gpu_ids = tuple(gpu_ids or ())
        if gpu_ids == self.rt.gpu_ids:
            return
        self.rt.gpu_ids = gpu_ids
        if gpu_ids:
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        elif self.rt.inherited_cuda_devices is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = self.rt.inherited_cuda_devices

    def call_and_reply(self, task, fn):
        if task.cancelled:          # cancelled while it waited for a thread of the pool
            self.reply_error(task, cancelled_error(task.name, task.tid), DONE_CANCELLED)
            return
        current = CURRENT_TASK.set(task)
        try:
            args, kwargs = self.resolve_args(task)
            result = fn(*args, **kwargs)
            del args, kwargs
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
            if task.cancelled:      # it ran to its end anyway: the caller asked it cancelled
                raise cancelled_error(task.name, task.tid)
            returns = self.returns_of(task, result)
            status = DONE_OK
        except TaskCancelledError as exc:
            returns = self.error_returns(task, exc)
            status = DONE_CANCELLED
        except BaseException as exc:  # the task's own error, reported to its owner
            if isinstance(exc, ActorExitRequest):
                self.exit_actor(task)
                return
            if task.cancelled:      # the cancel's KeyboardInterrupt, or what the task raised then
                exc = cancelled_error(task.name, task.tid)
                self.rt.io.post(self.send_done, task, DONE_CANCELLED,
                                self.error_returns(task, exc))
                return
            if isinstance(exc, SystemExit):
                os._exit(exc.code if isinstance(exc.code, int) else 1)
            returns = self.error_returns(task, self.wrap_error(task, exc))
            status = DONE_ERROR
        finally:
            CURRENT_TASK.reset(current)
            self.rt.device.release_task(task.tid)
        self.rt.io.post(self.send_done, task, status, returns)

    def function(self, fn_id):
        fn = self.functions[fn_id]
        if isinstance(fn, bytes):
            fn = self.functions[fn_id] = ser.loads_callable(fn)
        return fn

    def create_actor(self, task: Task):
        cls = self.function(task.fn_id)
        opts = task.actor_options or {}
        self.actor_placement_group = task.placement_group
        self.rt.namespace = opts.get("namespace") or task.namespace
        if opts.get("detached"):
            self.rt.become_detached_actor(task.actor_id, opts)
        try:
            args, kwargs = self.resolve_args(task)
            self.actor = cls(*args, **kwargs)
            returns = self.package_returns(task, None)
            status = DONE_OK
        except ActorExitRequest:
            self.exit_actor(task)
            return
        except BaseException as exc:
            err = self.wrap_error(task, exc)
            self.actor_init_error = [ERROR, self.pickle_error(err)]
            returns = self.error_returns(task, err)
            status = DONE_ERROR
        if self.actor is not None:
            self.setup_concurrency(cls, opts)
        self.rt.io.post(self.send_done, task, status, returns)

    # ------------------------------------------------------- concurrency
    def setup_concurrency(self, cls, opts):
        is_async = any(inspect.iscoroutinefunction(getattr(cls, n, None)) or
                       inspect.isasyncgenfunction(getattr(cls, n, None)) for n in dir(cls)
                       if not n.startswith("__"))
        max_conc = opts.get("max_concurrency") or (1000 if is_async else 1)
        if is_async:
            # actor_loop last: a call arriving meanwhile (io thread) takes the
            # concurrent path as soon as it is set, and needs the semaphore
            self.actor_sema = asyncio.Semaphore(max_conc)
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True,
                             name="gdfut-actor-async").start()
            self.actor_loop = loop
        elif max_conc > 1:
            self.actor_pool = concurrent.futures.ThreadPoolExecutor(
                max_conc, thread_name_prefix="gdfut-actor")

    def actor_concurrent(self) -> bool:
        return self.actor_pool is not None or self.actor_loop is not None

    def run_concurrent_actor_call(self, task: Task):
        self.note_running_task(task)
        self.calls[task.tid] = task
        if self.actor_loop is not None:
            asyncio.run_coroutine_threadsafe(self.async_call(task), self.actor_loop)
        else:
            self.actor_pool.submit(self.call_and_reply, task, getattr(self.actor, task.method))

    async def async_call(self, task: Task):
        self.async_tasks[task.tid] = asyncio.current_task()   # cancel_async_call cancels it
        CURRENT_TASK.set(task)
        try:
            if task.cancelled:
                raise asyncio.CancelledError
            async with self.actor_sema:
                args, kwargs = await asyncio.to_thread(self.resolve_args, task)
                result = getattr(self.actor, task.method)(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                if task.cancelled:      # it swallowed the CancelledError: still cancelled
                    raise asyncio.CancelledError
                returns = await self.returns_of_async(task, result)
                status = DONE_OK
        except ActorExitRequest:
            self.exit_actor(task)
            return
        except BaseException as exc:
            if task.cancelled:
                returns = self.error_returns(task, cancelled_error(task.name, task.tid))
                status = DONE_CANCELLED
            else:
                returns = self.error_returns(task, self.wrap_error(task, exc))
                status = DONE_ERROR
        finally:
            self.async_tasks.pop(task.tid, None)
            self.rt.device.release_task(task.tid)
        self.rt.io.post(self.send_done, task, status, returns)

    # -------------------------------------------------------- exit_actor
    def exit_actor(self, task: Task):
        """``task`` called exit_actor() (any thread). Fail it and every queued
        call with ActorDiedError, flagged DONE_ACTOR_EXIT so that callers mark
        the actor dead; stop the main loop, which then runs the atexit
        handlers (``finish_exit``) and lets the worker exit with status 0."""
        with self.cond:
            if self.exit_reason is None:
                self.exit_reason = (f"actor {task.name.split('.')[0]}({short(task.actor_id)}) "
                                    f"is dead: it ended itself with exit_actor() in {task.name}")
            failed = [task] + list(self.queue)
            self.queue.clear()
            self._stop = True
            self.cond.notify_all()
        replies = [(t, self.error_returns(t, self.exit_error(t, t is task))) for t in failed]

        def reply_all():   # io thread
            for t, returns in replies:
                self._reply(t, DONE_ACTOR_EXIT, returns)
            self.exit_replied.set()
        self.rt.io.post(reply_all)

    def exit_error(self, task: Task, ended_it: bool = False) -> BaseException:
        from .exceptions import ActorDiedError
        if ended_it:
            return ActorDiedError(self.exit_reason)
        return ActorDiedError(f"{self.exit_reason}; the call {task.name} cannot run")

    def finish_exit(self):
        """Main thread, after exit_actor(): the callers have their answers
        queued; run the actor's atexit handlers as a normal exit would."""
        self.exit_replied.wait(5.0)
        try:
            atexit._run_exitfuncs()
        except Exception:   # it prints its own handlers' tracebacks; exit anyway
            log.exception("atexit handlers failed")

    # --------------------------------------------------------- arguments
    def resolve_args(self, task: Task):
        entries = list(task.args) + [e for _, e in task.kwargs]
        pins = self.prefetch(entries)
        try:
            args = [self.arg_value(e, pins) for e in task.args]
            kwargs = {k: self.arg_value(e, pins) for k, e in task.kwargs}
        except BaseException:
            for reply_list in pins.values():        # pinned, never materialized
                for oid, reply in reply_list:
                    if not isinstance(reply, BaseException):
                        self.rt.unpin_reply(oid, reply)
            raise
        return args, kwargs

    def prefetch(self, entries) -> dict:
        """Pin a task's stored arguments with the requests in flight together
        (CoreWorker.pin_many) when it has several: a reducer's M blocks cost
        one round trip, not M, and spilled ones are restored concurrently.
        Returns oid -> [(oid, pin reply or exception)], one per occurrence."""
        stored = [e for e in entries if e[0] == STORE]
        if len(stored) < 2:
            return {}
        replies = self.rt.pin_many([(e[3], e[1], e[2], e[4] if len(e) > 4 else None)
                                    for e in stored])
        pins: dict = {}
        for e, reply in zip(stored, replies):
            pins.setdefault(e[3], []).append((e[3], reply))
        return pins

    def arg_value(self, entry, pins=None):
        kind = entry[0]
        if kind == INLINE:
            return ser.loads_inline(entry[1])
        if kind == STORE and pins and pins.get(entry[3]):
            oid, reply = pins[entry[3]].pop()
            if not isinstance(reply, BaseException):
                return self.rt.materialize_pinned(oid, reply)
            # lost (or failed): the one-at-a-time path below re-makes it
        if kind == STORE:     # a lost copy is re-made by asking the task's submitter
            task = CURRENT_TASK.get(None)
            return self.rt.read_stored(entry[3], entry[1], entry[2],
                                       task.owner_addr if task is not None else None,
                                       entry[4] if len(entry) > 4 else None)
        raise AssertionError(f"unexpected argument entry kind {kind}")

    # ----------------------------------------------------------- returns
    def package_returns(self, task: Task, result) -> list:
        n = task.num_returns
        if n == 1:
            values = [result]
        else:
            if not isinstance(result, (tuple, list)) or len(result) != n:
                raise ValueError(f"task {task.name} declared num_returns={n} but returned "
                                 f"{type(result).__name__}"
                                 f"{' of length %d' % len(result) if hasattr(result, '__len__') else ''}")
            values = list(result)
        if len(values) > 1 and task.generator != DYNAMIC:
            return self.package_many(task, values)
        out = []
        try:
            for oid, value in zip(task.return_ids(), values):
                out.append(self.package_value(task, oid, value))
        except BaseException:
            # the task fails as a whole: returns already stored would have no owner entry
            self.free_stored(out)
            raise
        return out

    def package_many(self, task: Task, values: list) -> list:
        """package_value for every return at once: the store writes are
        pipelined (CoreWorker.store_serialized_many); on failure nothing is
        left stored (the task fails as a whole). A task holding a GPU keeps
        its device values (e.g. a data stage's block beside its metadata) in
        the device tier, as with one return."""
        oids = task.return_ids()
        out: list = [None] * len(values)
        try:
            if task.generator is None and self.rt.gpu_ids:
                for i, (oid, v) in enumerate(zip(oids, values)):
                    entry = self.rt.device.store(oid, v, task.owner_wid)
                    if entry is not None:
                        out[i] = [oid, entry, [], []]
            rest = [i for i, row in enumerate(out) if row is None]
            sers = [ser.serialize(values[i], f"the return value of {task.name}") for i in rest]
            entries = self.rt.store_serialized_many([(oids[i], s) for i, s in zip(rest, sers)],
                                                    owner=task.owner_wid)
        except BaseException:
            self.free_stored([row for row in out if row is not None])
            raise
        for i, s, entry in zip(rest, sers, entries):
            nested = [[r.id, r.owner_wid, r.owner_addr[0], r.owner_addr[1]] for r in s.nested]
            out[i] = [oids[i], entry, nested, s.nested]
        return out

    def package_value(self, task: Task, oid: bytes, value) -> list:
        """A return row [oid, entry, nested rows, nested refs]: small values
        inline, others written into the store (owned by the task's owner)."""
        if task.generator is None:     # device tier: kept in this worker if it holds a GPU
            entry = self.rt.device.store(oid, value, task.owner_wid)
            if entry is not None:
                return [oid, entry, [], []]
        s = ser.serialize(value, f"the return value of {task.name}")
        entry = self.rt.store_serialized(oid, s, owner=task.owner_wid)
        if task.generator == DYNAMIC:   # refs to its items: the owner has them already
            return [oid, entry, [], []]
        nested = [[r.id, r.owner_wid, r.owner_addr[0], r.owner_addr[1]] for r in s.nested]
        return [oid, entry, nested, s.nested]

    # -------------------------------------------------------- generators
    def returns_of(self, task: Task, result) -> list:
        """The task's return rows. A generator task streams its items first;
        a generator under num_returns=N gives the N values it yields."""
        if inspect.isasyncgen(result):     # not in an async actor: run it to its end here
            return asyncio.run(self.returns_of_async(task, result))
        if task.generator is not None:
            if not inspect.isgenerator(result):
                raise self.not_a_generator(task, result)
            return self.package_returns(task, self.stream_items(task, result))
        if inspect.isgenerator(result):
            return self.static_generator_returns(task, result)
        return self.package_returns(task, result)

    async def returns_of_async(self, task: Task, result) -> list:
        """returns_of for async actors, whose methods may be async generators."""
        if not inspect.isasyncgen(result):
            return self.returns_of(task, result)
        if task.generator is not None:
            return self.package_returns(task, await self.stream_items_async(task, result))
        values, error = [], None
        try:
            async for value in result:
                values.append(value)
                if len(values) > task.num_returns:
                    break
        except Exception as exc:    # stored in the refs after the values, as in Ray
            error = exc
        return self.static_generator_returns(task, iter(values), error)

    @staticmethod
    def not_a_generator(task: Task, result) -> TypeError:
        return TypeError(f"{task.name} was called with num_returns={task.generator!r}, which "
                         f"needs a generator function, but it returned "
                         f"{type(result).__name__}")

    def static_generator_returns(self, task: Task, gen, error=None) -> list:
        """num_returns=N and a generator (Ray): each value is stored as it is
        yielded; if the generator raises or stops early, the refs left hold
        the error; if it yields more than N, every ref holds the error."""
        n = task.num_returns
        oids = task.return_ids()
        out: list = []
        try:
            for value in gen:
                if len(out) == n:
                    self.free_stored(out)
                    out.clear()
                    raise ValueError(f"task {task.name} declared num_returns={n} but its "
                                     f"generator yielded more than {n} values")
                out.append(self.package_value(task, oids[len(out)], value))
            if error is not None:
                raise error
            if len(out) < n:
                raise ValueError(f"task {task.name} declared num_returns={n} but its "
                                 f"generator yielded only {len(out)} value(s)")
        except Exception as exc:
            entry = [ERROR, self.pickle_error(self.wrap_error(task, exc))]
            out += [[oid, entry, [], []] for oid in oids[len(out):]]
        except BaseException:          # cancelled: the task's error replaces these
            self.free_stored(out)
            raise
        return out

    def free_stored(self, rows: list):
        """Delete stored copies of return rows that will never be sent (so
        their owner never learns of them)."""
        oids = [row[0] for row in rows if row[1][0] == STORE]
        if oids:
            self.rt.io.post(self.rt.node_conn.send, [P.STORE_FREE, oids])

    def stream_items(self, task: Task, gen):
        """Send each value the generator yields to the owner as it is made
        (TASK_YIELD), pausing while the owner's backpressure bound is reached.
        Returns the value of the task's one return."""
        window = self.open_window(task)
        made = 0
        try:
            try:
                for value in gen:
                    item, nbytes = self.package_item(task, made, value)
                    self.unsent.acquire(nbytes)
                    self.rt.io.post(self.send_item, task, made, item, nbytes)
                    made += 1
                    if not window.wait_room(made, task.conn):
                        break         # the owner is gone: nobody wants the rest
            except Exception as exc:
                if task.generator != DYNAMIC:
                    raise             # the owner stores it in the next ref
                self.post_error_item(task, made, exc)
                made += 1
            return self.generator_value(task, made)
        finally:
            gen.close()          # runs its finally blocks if we stopped it early
            self.windows.pop(task.tid, None)

    async def stream_items_async(self, task: Task, agen):
        window = self.open_window(task)
        made = 0
        try:
            try:
                async for value in agen:
                    item, nbytes = self.package_item(task, made, value)
                    if not self.unsent.try_acquire(nbytes):
                        await asyncio.to_thread(self.unsent.acquire, nbytes)
                    self.rt.io.post(self.send_item, task, made, item, nbytes)
                    made += 1
                    if not window.has_room(made) and \
                            not await asyncio.to_thread(window.wait_room, made, task.conn):
                        break
            except Exception as exc:
                if task.generator != DYNAMIC:
                    raise
                self.post_error_item(task, made, exc)
                made += 1
            return self.generator_value(task, made)
        finally:
            await agen.aclose()
            self.windows.pop(task.tid, None)

    def open_window(self, task: Task) -> "YieldWindow":
        window = self.windows[task.tid] = YieldWindow(task.backpressure)
        return window

    def package_item(self, task: Task, index: int, value) -> tuple[list, int]:
        """Item ``index`` (small: inline, else into the store, owned by the
        task's owner) as a return row, and what it counts for in bytes."""
        if index >= MAX_GENERATOR_ITEMS:
            raise ValueError(f"{task.name} yielded more than {MAX_GENERATOR_ITEMS} items")
        oid = object_id_for_yield(task.tid, index)
        s = ser.serialize(value, f"item {index} yielded by {task.name}")
        entry = self.rt.store_serialized(oid, s, owner=task.owner_wid)
        nested = [[r.id, r.owner_wid, r.owner_addr[0], r.owner_addr[1]] for r in s.nested]
        nbytes = max(MIN_ITEM_BYTES, len(entry[1]) if entry[0] == INLINE else 0)
        return [oid, entry, nested, s.nested], nbytes

    def post_error_item(self, task: Task, index: int, exc: BaseException):
        """A dynamic generator raised: the error is its final item (as Ray)."""
        if index >= MAX_GENERATOR_ITEMS:
            raise exc
        entry = [ERROR, self.pickle_error(self.wrap_error(task, exc))]
        self.unsent.acquire(len(entry[1]))
        self.rt.io.post(self.send_item, task, index,
                        [object_id_for_yield(task.tid, index), entry, [], []], len(entry[1]))

    def generator_value(self, task: Task, made: int):
        if task.generator != DYNAMIC:
            return None          # a streaming task's return only says it ended
        return DynamicObjectRefGenerator(
            ObjectRef(object_id_for_yield(task.tid, i), task.owner_wid, task.owner_addr)
            for i in range(made))

    def on_generator_ack(self, conn, m):
        """io thread: the owner says how many items its caller took."""
        _, tid, consumed = m        # checked by validate (GENERATOR_ACK)
        window = self.windows.get(tid)
        if window is not None:
            window.acked(consumed)

    def send_item(self, task: Task, index: int, item: list, nbytes: int):
        """io thread: send one yielded item, after the task's earlier messages."""
        def send():
            oid, entry, nested, refs = item
            if not task.conn.closed:
                task.conn.send([P.TASK_YIELD, task.tid, index, entry, nested])
            # the frame with it is written in this loop iteration, after this
            self.rt.io.loop.call_soon(self.unsent.release, nbytes)
            if refs:
                self.rt.run_instructions(self.rt.table.return_sent(oid))
        self.send_in_order(task, [item], send)

    def send_in_order(self, task: Task, returns: list, send):
        """io thread: register the borrows of ``returns``, then ``send`` — after
        every message of the task queued before (registrations may wait)."""
        task.outbox.append((returns, send))
        if len(task.outbox) == 1:
            self._send_outbox(task)

    def _send_outbox(self, task: Task):
        outbox = task.outbox
        while outbox:
            returns, send = outbox[0]
            state = {"inline": True, "sent": False}

            def then(send=send, state=state):
                send()
                outbox.popleft()
                state["sent"] = True
                if not state["inline"]:      # resumed later: carry on with the rest
                    self._send_outbox(task)
            self.rt.finish_task_borrows(task, returns, then)
            state["inline"] = False
            if not state["sent"]:
                return

    def wrap_error(self, task: Task, exc: BaseException) -> BaseException:
        """The error the task's owner gets for ``exc``. Never raises: whatever
        the exception's class, reporting it must not take the worker down."""
        if isinstance(exc, TaskError) or (isinstance(exc, GdfutError) and
                                          not isinstance(exc, ObjectStoreFullError)):
            task.error_classes = class_names(type(exc).__mro__)
            return exc   # already explains itself (e.g. a failed dependency)
        task.error_classes = class_names(type(exc).__mro__)
        try:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:   # a broken __str__ or traceback: still report the class
            tb = f"<traceback of {type(exc).__name__} could not be formatted>"
        err = TaskError(task.name, tb, exc, type(exc).__name__)
        try:
            return err.as_instanceof_cause()
        except Exception:
            log.exception("as_instanceof_cause failed for %s", type(exc).__name__)
            return err

    def pickle_error(self, err: BaseException) -> bytes:
        try:
            return cloudpickle.dumps(err)
        except Exception:   # a non-TaskError that does not pickle: keep its class name and text
            cause = getattr(err, "cause", None) or err
            fallback = TaskError(getattr(err, "function", "?"),
                                 getattr(err, "remote_traceback", ""), None,
                                 type(cause).__name__, repr(cause))
            return cloudpickle.dumps(fallback)

    def error_returns(self, task: Task, err: BaseException) -> list:
        entry = [ERROR, self.pickle_error(err)]
        return [[oid, entry, [], []] for oid in task.return_ids()]

    def refuse_malformed(self, conn, wire, exc):
        """A task message we cannot read (a gdfut of another version sent it?):
        fail the task at its owner rather than leave it waiting forever."""
        log.error("malformed task message (%s): %r", exc, str(wire)[:200])
        try:
            tid, num_returns = wire[0], parse_wire_returns(wire[6])[0]
        except (TypeError, ValueError, IndexError):
            return          # not even its id: nothing to answer
        err = GdfutError(f"worker {short(self.rt.wid)} could not read the task message "
                         f"({exc}); are the driver and the cluster the same gdfut version?")
        entry = [ERROR, self.pickle_error(err)]
        returns = [[object_id_for_return(tid, i), entry, []] for i in range(num_returns)]
        conn.send([P.TASK_DONE, tid, DONE_ERROR, returns, 0.0])

    def reply_error(self, task: Task, err: BaseException, status: int):
        self.rt.io.post(self.send_done, task, status, self.error_returns(task, err))

    def send_done(self, task: Task, status: int, returns: list):
        """io thread: register borrows, then reply to the task's owner."""
        self.calls.pop(task.tid, None)
        if task.outbox is not None:        # a generator task: after all its items
            self.send_in_order(task, returns, lambda: self._reply(task, status, returns))
            return
        self.rt.finish_task_borrows(task, returns, lambda: self._reply(task, status, returns))

    def _reply(self, task, status, returns):
        wire = [[oid, entry, nested] for oid, entry, nested, _refs in returns]
        busy_s = time.perf_counter() - task.started if task.started else 0.0
        if not task.conn.closed:
            message = [P.TASK_DONE, task.tid, status, wire, busy_s]
            if status == DONE_ERROR:
                message.append(list(task.error_classes))
            task.conn.send(message)
        rt = self.rt
        for oid, _entry, _nested, refs in returns:
            if refs:   # the reply is queued ahead of any Remove we send now
                rt.run_instructions(rt.table.return_sent(oid))


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_RUNTIME_DIRS = frozenset(os.path.normpath(os.path.join(_PKG_DIR, d))
                          for d in ("", "transport", "devstore", "sched"))
# importlib's own frames: a KeyboardInterrupt raised between its taking and
# its try of the global import lock leaves the lock held, and every later
# import in the worker (its device-export threads) then waits forever.
_IMPORT_MACHINERY = ("<frozen importlib", "<frozen zipimport")
# Where the executor calls into the task's own code: the task function, and
# the loops that pull values out of a generator task.
_CALL_CODES = frozenset(f.__code__ for f in (Executor.call_and_reply, Executor.stream_items,
                                             Executor.static_generator_returns))


def in_task_code(frame) -> bool:
    """Is the main thread in a task's own code: below the executor's call of
    the task, with no frame of gdfut's runtime in between? Only there may a
    cancel's KeyboardInterrupt be raised: inside the runtime it could leave
    the runtime's state half changed, and outside the call nothing catches it."""
    if frame is None or frame.f_code in _CALL_CODES:
        return False
    while frame is not None:
        code = frame.f_code
        if code in _CALL_CODES:
            return True
        if code.co_filename.startswith(_IMPORT_MACHINERY):
            return False       # an exception there can leak the interpreter's import lock
        if os.path.dirname(os.path.abspath(code.co_filename)) in _RUNTIME_DIRS:
            return False
        frame = frame.f_back
    return False


class YieldWindow:
    """Executor side of a streaming task's backpressure: it may have at most
    ``bound`` items made and not consumed, as far as the owner last said
    (GENERATOR_ACK). Bound 0: no limit (a dynamic generator)."""

    def __init__(self, bound: int):
        self.bound = bound
        self.consumed = 0
        self.cond = threading.Condition()

    def acked(self, consumed: int):
        with self.cond:
            if consumed == UNBOUNDED:
                self.bound = 0
            else:
                self.consumed = max(self.consumed, consumed)
            self.cond.notify_all()

    def has_room(self, made: int) -> bool:
        return self.bound == 0 or made - self.consumed < self.bound

    def wait_room(self, made: int, conn) -> bool:
        """Block until the next item may be made; False if the owner is gone.
        Short waits, so that a cancel (an async exception) lands promptly."""
        with self.cond:
            while not self.has_room(made):
                if conn.closed:
                    return False
                self.cond.wait(0.1)
        return not conn.closed


class ByteBudget:
    """Bytes in flight between threads, bounded: ``acquire`` blocks while
    the budget is used up (one item larger than the budget passes alone)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    def try_acquire(self, n: int) -> bool:
        with self.cond:
            if self.used and self.used + n > self.limit:
                return False
            self.used += n
            return True

    def acquire(self, n: int):
        with self.cond:
            while self.used and self.used + n > self.limit:
                self.cond.wait(0.1)
            self.used += n

    def release(self, n: int):
        with self.cond:
            self.used -= n
            assert self.used >= 0, self.used
            self.cond.notify_all()
