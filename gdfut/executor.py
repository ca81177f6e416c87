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
import pickle
import signal
import threading
import time
import traceback

import cloudpickle

from . import protocol as P
from . import serialization as ser
from .exceptions import ObjectStoreFullError, TaskCancelledError, TaskError, GdfutError
from .ids import object_id_for_return, short
from .actor import ActorExitRequest
from .actor_submitter import DONE_ACTOR_EXIT
from .submitter import (DONE_CANCELLED, DONE_ERROR, DONE_NEED_FUNCTION, DONE_OK, DONE_RESCHEDULE,
                        ERROR, INLINE, STORE, cancelled_error)

log = logging.getLogger("gdfut.executor")

MAX_QUEUED_TASKS = 100_000
MAX_LABELS = 10_000          # cached output labels ("fn pid=N"), cleared when full
INTERRUPT_RETRY_S = 0.05     # a cancel's interrupt that found the task in gdfut's code retries

# The task the calling thread (or asyncio task) runs: is_canceled(), and the
# parent of the tasks it submits (a recursive cancel cancels them too).
CURRENT_TASK: contextvars.ContextVar = contextvars.ContextVar("gdfut_current_task",
                                                              default=None)


class Task:
    __slots__ = ("conn", "tid", "fn_id", "fn_bytes", "name", "args", "kwargs", "num_returns",
                 "owner_wid", "owner_addr", "actor_id", "method", "actor_options", "gpu_ids",
                 "started", "cancelled", "interrupted")

    def __init__(self, conn, wire):
        self.conn = conn
        (self.tid, self.fn_id, self.fn_bytes, self.name, self.args, self.kwargs,
         self.num_returns, self.owner_wid, self.owner_addr, self.actor_id, self.method,
         self.actor_options, self.gpu_ids) = wire
        self.started = 0.0
        self.cancelled = False       # its owner cancelled it
        self.interrupted = False     # the cancel's interrupt was raised in it

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
        self.actor_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.actor_loop: asyncio.AbstractEventLoop | None = None
        self.actor_sema: asyncio.Semaphore | None = None
        self.calls: dict[bytes, Task] = {}       # actor calls running on a pool or asyncio
        self.async_tasks: dict[bytes, asyncio.Task] = {}   # tid -> its asyncio task
        self._stop = False
        self.exit_reason: str | None = None     # set once the actor called exit_actor()
        self.exit_replied = threading.Event()
        rt.dispatch[P.PUSH_TASK] = self.on_push_task
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
            returns = self.package_returns(task, result)
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
        self.rt.io.post(self.send_done, task, status, returns)

    def function(self, fn_id):
        fn = self.functions[fn_id]
        if isinstance(fn, bytes):
            fn = self.functions[fn_id] = ser.loads_callable(fn)
        return fn

    def create_actor(self, task: Task):
        cls = self.function(task.fn_id)
        opts = task.actor_options or {}
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
        is_async = any(inspect.iscoroutinefunction(getattr(cls, n, None)) for n in dir(cls)
                       if not n.startswith("__"))
        max_conc = opts.get("max_concurrency") or (1000 if is_async else 1)
        if is_async:
            self.actor_loop = asyncio.new_event_loop()
            threading.Thread(target=self.actor_loop.run_forever, daemon=True,
                             name="gdfut-actor-async").start()
            self.actor_sema = asyncio.Semaphore(max_conc)
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
                returns = self.package_returns(task, result)
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
        args = [self.arg_value(e) for e in task.args]
        kwargs = {k: self.arg_value(e) for k, e in task.kwargs}
        return args, kwargs

    def arg_value(self, entry):
        kind = entry[0]
        if kind == INLINE:
            return ser.loads_inline(entry[1])
        if kind == STORE:
            return self.rt.read_stored(entry[3], entry[1], entry[2])
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
        out = []
        try:
            for oid, value in zip(task.return_ids(), values):
                s = ser.serialize(value, f"the return value of {task.name}")
                entry = self.rt.store_serialized(oid, s, owner=task.owner_wid)
                nested = [[r.id, r.owner_wid, r.owner_addr[0], r.owner_addr[1]] for r in s.nested]
                out.append([oid, entry, nested, s.nested])
        except BaseException:
            # the task fails as a whole: returns already stored would have no owner entry
            stored = [oid for oid, entry, _n, _r in out if entry[0] == STORE]
            if stored:
                self.rt.io.post(self.rt.node_conn.send, [P.STORE_FREE, stored])
            raise
        return out

    def wrap_error(self, task: Task, exc: BaseException) -> BaseException:
        """The error the task's owner gets for ``exc``. Never raises: whatever
        the exception's class, reporting it must not take the worker down."""
        if isinstance(exc, TaskError) or (isinstance(exc, GdfutError) and
                                          not isinstance(exc, ObjectStoreFullError)):
            return exc   # already explains itself (e.g. a failed dependency)
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
            tid, num_returns = wire[0], int(wire[6])
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
        self.rt.finish_task_borrows(task, returns, lambda: self._reply(task, status, returns))

    def _reply(self, task, status, returns):
        wire = [[oid, entry, nested] for oid, entry, nested, _refs in returns]
        busy_s = time.perf_counter() - task.started if task.started else 0.0
        if not task.conn.closed:
            task.conn.send([P.TASK_DONE, task.tid, status, wire, busy_s])
        rt = self.rt
        for oid, _entry, _nested, refs in returns:
            if refs:   # the reply is queued ahead of any Remove we send now
                rt.run_instructions(rt.table.return_sent(oid))


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))
_RUNTIME_DIRS = frozenset(os.path.normpath(os.path.join(_PKG_DIR, d))
                          for d in ("", "transport", "devstore", "sched"))
_CALL_CODE = Executor.call_and_reply.__code__


def in_task_code(frame) -> bool:
    """Is the main thread in a task's own code: below the executor's call of
    the task, with no frame of gdfut's runtime in between? Only there may a
    cancel's KeyboardInterrupt be raised: inside the runtime it could leave
    the runtime's state half changed, and outside the call nothing catches it."""
    if frame is None or frame.f_code is _CALL_CODE:
        return False
    while frame is not None:
        code = frame.f_code
        if code is _CALL_CODE:
            return True
        if os.path.dirname(os.path.abspath(code.co_filename)) in _RUNTIME_DIRS:
            return False
        frame = frame.f_back
    return False
