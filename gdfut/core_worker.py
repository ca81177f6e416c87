"""The per-process runtime shell: every driver and worker runs one.

It owns what its process creates (metadata in the pure ``ReferenceTable``),
submits tasks straight to leased workers (``submitter``), serves other
processes asking about objects it owns, and gives the user's thread
``put/get/wait``.

Threads: the user's code runs on its own thread(s); all runtime state lives on
one I/O thread running an asyncio loop. User threads hand work over with
``post`` (a deque drained once per loop wake-up, so bursts of ``.remote()``
calls cost one wake-up) and wait on concurrent futures.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import pickle
import sys
import threading
import time

from . import protocol as P
from .exceptions import (GetTimeoutError, ObjectLostError, ObjectStoreFullError, OwnerDiedError,
                         GdfutError, ClusterConnectionError, load_error)
from .ids import new_id, object_id_for_put, short, task_of
from .object_ref import ObjectRef, ObjectRefGenerator
from . import ownership as own
from . import parallel_copy
from . import serialization as ser
from . import worker_output
from . import validate
from .transport import tcp

log = logging.getLogger("gdfut.core")

# Value entries, as kept in ``values`` and sent on the wire.
INLINE = 0      # [INLINE, pickled value]
ERROR = 1       # [ERROR, pickled exception]
STORE = 2       # [STORE, node_id, size]

MAX_INBOX = 1_000_000
CANCEL_TIMEOUT_S = 30        # for the owner's answer to a cancel


# Fault injection for tests (tests/integration/test_owner_death.py): a worker
# with this set dies after its registrations for a submitter's nested refs
# were acked and before the reply that carries them.
FAULT_EXIT_BEFORE_REPLY = os.environ.get("GDFUT_FAULT_EXIT_BEFORE_REPLY") == "1"

class IoThread:
    """An asyncio loop on a daemon thread with a cheap cross-thread inbox."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self._inbox: collections.deque = collections.deque()
        self._wakeup_pending = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def post(self, fn, *args) -> None:
        """Run fn(*args) on the loop soon. Callable from any thread."""
        assert len(self._inbox) < MAX_INBOX, "runtime inbox overflow"
        self._inbox.append((fn, args))
        if not self._wakeup_pending:
            self._wakeup_pending = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:   # loop closed at shutdown
                pass

    def _drain(self):
        self._wakeup_pending = False
        inbox = self._inbox
        while inbox:
            fn, args = inbox.popleft()
            try:
                fn(*args)
            except Exception:
                log.exception("runtime callback %s failed", getattr(fn, "__name__", fn))

    def run(self, coro, timeout=None):
        """Run a coroutine on the loop and wait for it from another thread."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def stop(self):
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class PeerHandler:
    """Dispatches messages of one connection to the runtime."""

    def __init__(self, rt: "CoreWorker"):
        self.rt = rt

    def on_messages(self, conn, messages):
        rt = self.rt
        for m in messages:
            if not validate.admit(conn, m, log) or conn.resolve_reply(m):
                continue
            handler = rt.dispatch.get(m[0])
            if handler is None:
                log.warning("unexpected message type %s from %s", m[0], conn.peer)
                continue
            try:
                handler(conn, m)
            except Exception:
                log.exception("handling message %s failed", m[0])

    def on_closed(self, conn, exc):
        self.rt.on_connection_closed(conn)


class CoreWorker:
    """Runtime of one driver or worker process."""

    INLINE_LOCATION = own.INLINE

    def __init__(self, *, mode: str, node_host: str, node_port: int, token: bytes,
                 session_dir: str, head_addr: tuple | None, listen_host: str | None = None,
                 worker_id: bytes | None = None, max_lineage_bytes: int | None = None):
        assert mode in ("driver", "worker")
        self.mode = mode
        from .lineage import DEFAULT_MAX_LINEAGE_BYTES
        self.max_lineage_bytes = (DEFAULT_MAX_LINEAGE_BYTES if max_lineage_bytes is None
                                  else max_lineage_bytes)
        self.wid = worker_id or new_id()
        self.token = token
        self.session_dir = session_dir
        self.head_addr = tuple(head_addr) if head_addr else None
        self.node_addr = (node_host, node_port)
        self.listen_host = listen_host
        self.io = IoThread(f"gdfut-io-{mode}")
        self.table = own.ReferenceTable(self.wid)
        self.values: dict[bytes, list] = {}                  # ready objects we know
        self.waiters: dict[bytes, list] = collections.defaultdict(list)
        self.peers: dict[tuple, asyncio.Future] = {}         # addr -> connection future
        self.conn_wid: dict = {}                             # connection -> peer worker id
        self.dispatch: dict = {}
        self.arena = None
        self.node_id: bytes | None = None
        self.node_conn = None
        self.head_conn = None
        self.addr: tuple | None = None
        self._server = None
        self._closed = False
        self._call_sites = True
        self.owner_addrs: dict[bytes, tuple] = {}           # owner wid -> listen address
        self.borrowed_refs_seen = 0
        self.gpu_ids: tuple = ()            # devices of the task running now (workers)
        self.pid = os.getpid()
        self.output_conn = None             # where printed lines go: the running task's owner
        self.current_task_id: bytes | None = None
        self.job_id: int | None = None      # drivers: the head's job number, once registered
        self.current_actor_id: bytes | None = None
        # named actors' namespace: the job's (drivers: init(namespace=), else an
        # anonymous one); workers take the running task's or actor's
        self.namespace: str | None = None
        self.detached_actor_id: bytes | None = None   # worker of a detached actor: it owns it
        self.detached_options: dict = {}    # its restart options (callers are told them)
        self.output_label = ""              # "(fn pid=N)" prefix of those lines
        self.log_to_driver = True
        self.inherited_cuda_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.node_addrs: dict[bytes, tuple] = {}            # node id -> daemon address
        # user thread id -> how to wake its blocked get/wait (a cancel interrupts them)
        self.blocked_waits: dict[int, object] = {}
        # generator task id -> futures of the caller's pending next() calls
        self.stream_waiters: dict[bytes, collections.deque] = {}
        self.stream_watchers: dict[bytes, list] = {}   # tid -> callbacks of wait() calls
        from .submitter import TaskSubmitter
        from .actor_submitter import ActorSubmitter
        self.submitter = TaskSubmitter(self)
        self.actors = ActorSubmitter(self)
        from .device_objects import DeviceObjects
        self.device = DeviceObjects(self)       # device objects this worker made
        self._register_handlers()

    # ------------------------------------------------------------------ start
    def start(self, kind: str = None, pid: int | None = None, timeout: float = 15.0):
        self.io.run(self._start(kind or self.mode, pid or os.getpid()), timeout)

    async def _start(self, kind: str, pid: int):
        # listen where our node is reachable: owners on other nodes push to us
        host = self.listen_host or self.node_addr[0]
        self._server = await tcp.listen(host, 0, lambda: PeerHandler(self), self.token)
        self.addr = self._server.sockets[0].getsockname()[:2]
        self.node_conn = await tcp.connect(*self.node_addr, PeerHandler(self), self.token)
        self.node_conn.peer = {"role": "node"}
        mtype = P.REGISTER_WORKER if kind == "worker" else P.REGISTER_CLIENT
        info = await self.node_conn.request(mtype, self.wid, pid, list(self.addr), kind)
        self.node_id = info["node_id"]
        self.node_info = info
        if self.head_addr is None and info.get("head_addr"):
            self.head_addr = tuple(info["head_addr"])
        from .devstore.arena import SharedArena
        self.arena = SharedArena.attach(info["arena_name"])
        if kind == "driver":   # before init returns: get_job_id() is set from the start
            self._job_task = self.io.loop.create_task(self._register_job(pid))
            await asyncio.shield(self._job_task)

    async def _register_job(self, pid):
        """Record this driver in the head's job table (control plane, once per driver)."""
        for _ in range(100):
            try:
                head = await self.head()
                self.job_id = await head.request(P.HEAD_REGISTER_JOB, {
                    "driver_wid": self.wid, "pid": pid, "addr": list(self.addr),
                    "namespace": self.namespace})
                return
            except (GdfutError, OSError, tcp.ConnectionLost, asyncio.TimeoutError):
                await asyncio.sleep(0.05)

    def become_detached_actor(self, actor_id: bytes, options: dict | None = None) -> None:
        """This worker runs a detached actor and owns it once its creator
        hands it over: handles' borrower registrations come here (the id is
        pinned: a detached actor ends only with kill), and so do
        ACTOR_LOCATION and KILL_ACTOR (``ActorSubmitter``); ``options``: its
        creation options (callers learn its restart options from it)."""
        self.detached_actor_id = actor_id
        self.detached_options = {k: int((options or {}).get(k) or 0)
                                 for k in ("max_restarts", "max_task_retries")}
        self.io.post(lambda: self.table.add_owned(actor_id, local=1))

    def is_detached_actor(self, actor_id: bytes) -> bool:
        return actor_id is not None and actor_id == self.detached_actor_id

    async def head(self):
        if self.head_conn is None or self.head_conn.closed:
            if self.head_addr is None:
                from .node import read_head_addr
                self.head_addr = read_head_addr(self.session_dir)
            if self.head_addr is None:
                raise ClusterConnectionError(f"no head address known (session "
                                             f"{self.session_dir} names no running head)")
            try:
                self.head_conn = await tcp.connect(*self.head_addr, PeerHandler(self),
                                                   self.token)
            except (OSError, asyncio.TimeoutError) as exc:
                raise self._head_gone(exc) from None
            self.head_conn.peer = {"role": "head"}
        return self.head_conn

    def _head_gone(self, exc: BaseException) -> ClusterConnectionError:
        if isinstance(exc, asyncio.TimeoutError):
            reason = "no answer"
        elif isinstance(exc, ConnectionRefusedError):
            reason = "connection refused"
        else:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ClusterConnectionError(
            "the gdfut head at {}:{} cannot be reached ({}): it died or was stopped? "
            "(`gdfut status` shows the cluster)".format(*self.head_addr, reason))

    def head_request(self, mtype, *fields, timeout: float = 30):
        """A request to the head from a user thread (blocks until the reply);
        ClusterConnectionError when the head is gone."""
        async def ask():
            head = await self.head()
            try:
                return await head.request(mtype, *fields)
            except tcp.ConnectionLost as exc:
                raise self._head_gone(exc) from None

        fut = asyncio.run_coroutine_threadsafe(ask(), self.io.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise self._head_gone(asyncio.TimeoutError()) from None

    def _register_handlers(self):
        d = self.dispatch
        d[P.GET_OBJECT] = self._on_get_object
        d[P.ADD_BORROWER] = self._on_add_borrower
        d[P.REMOVE_BORROWER] = self._on_remove_borrower
        d[P.CONFIRM_BORROWER] = self._on_confirm_borrower
        d[P.SETTLE_BORROWER] = self._on_settle_borrower
        d[P.BORROWER_SETTLED] = self._on_borrower_settled
        d[P.OWNER_MEMORY] = self._on_owner_memory
        d[P.TASK_DONE] = self.submitter.on_task_done
        d[P.TASK_YIELD] = self.submitter.on_task_yield
        d[P.ACTOR_LOCATION] = self.actors.on_actor_location
        d[P.KILL_ACTOR] = self.actors.on_kill_actor
        d[P.ADD_LOCATION] = self._on_add_location
        d[P.WORKER_OUTPUT] = lambda conn, m: worker_output.on_worker_output(self, conn, m)
        d[P.CANCEL_OWNED_TASK] = self._on_cancel_owned

    # ------------------------------------------------------------ connections
    async def connect_peer(self, addr) -> tcp.FramedConnection:
        addr = tuple(addr)
        fut = self.peers.get(addr)
        if fut is None or (fut.done() and (fut.exception() is not None or fut.result().closed)):
            fut = self.io.loop.create_task(self._open_peer(addr))
            self.peers[addr] = fut
        return await asyncio.shield(fut)

    async def _open_peer(self, addr):
        conn = await tcp.connect(addr[0], addr[1], PeerHandler(self), self.token)
        conn.peer = {"addr": addr}
        return conn

    def on_connection_closed(self, conn):
        if self._closed:
            return
        if conn is self.node_conn:
            log.error("lost connection to the node daemon; exiting" if self.mode == "worker"
                      else "lost connection to the node daemon")
            if self.mode == "worker":
                os._exit(1)
        addr = conn.peer.get("addr")
        if addr is not None and self.peers.get(addr) is not None:
            fut = self.peers[addr]
            if fut.done() and fut.exception() is None and fut.result() is conn:
                del self.peers[addr]
        self.submitter.on_connection_lost(conn)
        self.actors.on_connection_lost(conn)
        dead = set()
        wid = self.conn_wid.pop(conn, None)
        if wid is not None:
            dead.add(wid)
        if addr is not None:
            dead.update(w for w, a in self.owner_addrs.items() if a == addr)
        for wid in dead:
            self.run_instructions(self.table.process_died(wid))

    def finish_task_borrows(self, task, returns, then):
        """Worker side, end of a task: register refs we keep or hand back
        (borrower protocol), wait for the owners' acks, then call ``then``."""
        self.owner_addrs.setdefault(task.owner_wid, tuple(task.owner_addr))
        instrs = self.table.register_held_refs()
        for oid, _entry, _nested, refs in returns:
            if refs:
                instrs += self.table.returning_refs(oid, task.owner_wid, [r.id for r in refs])
        adds = [i for i in instrs if type(i) is own.SendAddBorrower]
        self.run_instructions([i for i in instrs if type(i) is not own.SendAddBorrower])
        if not adds:
            then()
            return

        async def register_then_reply():
            await asyncio.gather(*(self.register_borrow(i) for i in adds))
            if FAULT_EXIT_BEFORE_REPLY and any(i.via is not None for i in adds):
                os._exit(1)     # fault injection (tests): die between registrations and reply
            then()
        self.io.loop.create_task(register_then_reply())

    # ------------------------------------------------------------- ref counts
    def add_local_ref(self, ref: ObjectRef):
        owner = None if ref.owner_wid == self.wid else (ref.owner_wid, ref.owner_addr)
        self.io.post(self._add_local_ref, ref.id, owner)

    def _add_local_ref(self, oid, owner):
        if owner is None:
            self.table.add_local_ref(oid)
        else:
            self.owner_addrs.setdefault(owner[0], tuple(owner[1]))
            self.table.add_local_ref(oid, owner=owner[0])

    def note_owners(self, nested: list):
        """Learn owner addresses from [oid, owner_wid, host, port] rows."""
        for row in nested:
            if row[1] != self.wid:
                self.owner_addrs.setdefault(row[1], (row[2], row[3]))

    def owner_addr_of(self, oid: bytes):
        owner = self.table.owner_of(oid)
        return None if owner is None else self.owner_addrs.get(owner)

    def remove_local_ref(self, oid: bytes):
        if not self._closed:
            self.io.post(self._remove_local_ref, oid)

    def _remove_local_ref(self, oid):
        self.run_instructions(self.table.remove_local_ref(oid))

    def run_instructions(self, instructions):
        for ins in instructions:
            kind = type(ins)
            if kind is own.FreeObject:
                self._free_object(ins)
            elif kind is own.SendRemoveBorrower:
                self._send_to_owner(ins.owner, [P.REMOVE_BORROWER, ins.oid, self.wid, ins.n])
            elif kind is own.ForgetBorrowed:
                self.values.pop(ins.oid, None)   # the cache of a borrowed value is bounded by refs
            elif kind is own.SendAddBorrower:
                self.io.loop.create_task(self._add_borrower_for(ins))
            elif kind is own.SendConfirmBorrower:
                self._send_to_owner(ins.owner, [P.CONFIRM_BORROWER, ins.oid, self.wid, ins.via])
            elif kind is own.SendSettleBorrower:     # the borrower's address came with the Add
                self._send_to_owner(ins.borrower, [P.SETTLE_BORROWER, ins.oid, self.wid, ins.via])
            elif kind is own.SendBorrowerSettled:
                self._send_to_owner(ins.owner, [P.BORROWER_SETTLED, ins.oid, self.wid, ins.via])
            elif kind is own.OwnerDied:
                self._owner_died(ins.oid, ins.owner)
            elif kind is own.ReleaseLineage:
                self.submitter.release_lineage(ins.tid)
            elif kind is own.ObjectLost:
                self.submitter.object_lost(ins.oid, ins.lineage, ins.where)
            elif kind is own.StreamAck:
                self.submitter.send_stream_ack(ins.tid, ins.consumed)
            else:
                raise AssertionError(f"unknown instruction {ins!r}")

    def _free_object(self, ins):
        if ins.oid in self.actors.clients:      # an actor id: its last handle is gone
            self.actors.handles_gone(ins.oid)
            return
        self.values.pop(ins.oid, None)
        for loc in ins.locations:
            if isinstance(loc, tuple):
                self.send_to_node(loc[0], [P.STORE_FREE, [ins.oid]])

    def send_to_node(self, node_id: bytes, message: list) -> None:
        """Send a one-way message to a node daemon (ours or another)."""
        if node_id == self.node_id:
            if self.node_conn is not None and not self.node_conn.closed:
                self.node_conn.send(message)
            return
        self.io.loop.create_task(self._send_to_remote_node(node_id, message))

    async def _send_to_remote_node(self, node_id, message):
        try:
            conn = await self.node_connection(node_id)
            conn.send(message)
        except (OSError, tcp.ConnectionLost, asyncio.TimeoutError, GdfutError) as exc:
            log.info("node %s unreachable: %s", short(node_id), exc)

    async def node_address(self, node_id: bytes) -> tuple:
        addr = self.node_addrs.get(node_id)
        if addr is None:
            view = await self.node_conn.request(P.NODE_CLUSTER_VIEW)
            for n in view:
                self.node_addrs[n["node_id"]] = tuple(n["addr"])
            addr = self.node_addrs.get(node_id)
        if addr is None:
            raise GdfutError(f"node {short(node_id)} is unknown to the cluster")
        return addr

    async def node_connection(self, node_id: bytes):
        """An (authenticated, registered) connection to a node daemon."""
        if node_id == self.node_id:
            return self.node_conn
        addr = await self.node_address(node_id)
        conn = await self.connect_peer(addr)
        if not conn.peer.get("registered"):
            conn.peer["registered"] = True
            await conn.request(P.REGISTER_CLIENT, self.wid, os.getpid(), list(self.addr),
                               "remote-client")
        return conn

    def _send_to_owner(self, owner_wid, message):
        addr = self.owner_addrs.get(owner_wid)
        if addr is None:
            return
        self.io.loop.create_task(self._send_when_connected(addr, message))

    async def _send_when_connected(self, addr, message):
        try:
            conn = await self.connect_peer(addr)
            conn.send(message)
        except (OSError, tcp.ConnectionLost, asyncio.TimeoutError):
            pass   # owner gone: nothing left to release

    async def register_borrow(self, ins) -> None:
        """Register ins.borrower with the owner and wait for the ack."""
        addr = self.owner_addrs.get(ins.owner)
        try:
            conn = await self.connect_peer(addr)
            if ins.via is None:
                await conn.request(P.ADD_BORROWER, ins.oid, ins.borrower, ins.n)
            else:       # for our submitter: the owner may have to ask it to settle
                where = self.owner_addrs.get(ins.borrower)
                await conn.request(P.ADD_BORROWER, ins.oid, ins.borrower, ins.n, ins.via,
                                   *(list(where) if where else []))
        except (OSError, tcp.ConnectionLost, tcp.RemoteError, asyncio.TimeoutError) as exc:
            log.info("could not register borrower of %s: %s", short(ins.oid), exc)
            return
        if ins.borrower == self.wid:
            self.run_instructions(self.table.borrower_registered(ins.oid))

    async def _add_borrower_for(self, ins):
        await self.register_borrow(ins)

    def _on_add_borrower(self, conn, m):
        _, req_id, oid, borrower, n = m[:5]
        via = m[5] if len(m) > 5 else None
        sender = borrower if via is None else via     # who is on the other end
        self.conn_wid.setdefault(conn, sender)
        if via is not None and len(m) > 7:
            self.owner_addrs.setdefault(borrower, (m[6], m[7]))
        self.run_instructions(self.table.borrow_added(oid, borrower, n, via=via))
        conn.reply(req_id, True)

    def _on_remove_borrower(self, conn, m):
        _, oid, borrower, n = m
        self.run_instructions(self.table.borrow_removed(oid, borrower, n))

    def _on_confirm_borrower(self, conn, m):
        _, oid, borrower, via = m
        self.run_instructions(self.table.borrow_confirmed(oid, borrower, via))

    def _on_settle_borrower(self, conn, m):
        _, oid, owner, via = m
        self.run_instructions(self.table.borrow_settle(oid, owner, via))

    def _on_borrower_settled(self, conn, m):
        _, oid, borrower, via = m
        self.run_instructions(self.table.borrow_settled(oid, borrower, via))

    def _owner_died(self, oid, owner):
        err = OwnerDiedError(f"the owner {short(owner)} of object {short(oid)} died, "
                             f"so the object is lost")
        self.set_value(oid, [ERROR, pickle.dumps(err)])

    # ---------------------------------------------------------- object values
    def set_value(self, oid: bytes, entry: list):
        """An object became available (or failed): record it and wake waiters."""
        self.values[oid] = entry
        for cb in self.waiters.pop(oid, ()):
            cb(entry)

    def when_available(self, oid: bytes, cb, lost: bytes | None = None) -> None:
        """Call cb(entry) once the object's value entry is known (io thread).
        ``lost``: a node whose copy could not be read, told to the owner."""
        entry = self.values.get(oid)
        if entry is not None:
            cb(entry)
            return
        first = not self.waiters.get(oid)
        self.waiters[oid].append(cb)
        if first and not self.table.is_owned(oid):
            self.io.loop.create_task(self._fetch_from_owner(oid, lost))

    async def _fetch_from_owner(self, oid: bytes, lost: bytes | None = None):
        addr = self.owner_addr_of(oid)
        if addr is None:
            err = ObjectLostError(f"object {short(oid)} is unknown to this process (freed?)")
            self.set_value(oid, [ERROR, pickle.dumps(err)])
            return
        try:
            conn = await self.connect_peer(addr)
            entry = await (conn.request(P.GET_OBJECT, oid) if lost is None else
                           conn.request(P.GET_OBJECT, oid, lost))
        except (OSError, tcp.ConnectionLost, asyncio.TimeoutError):
            owner = self.table.owner_of(oid)
            err = OwnerDiedError(f"the owner {short(owner)} (at {addr[0]}:{addr[1]}) of object "
                                 f"{short(oid)} died or cannot be reached")
            entry = [ERROR, pickle.dumps(err)]
        if self.table.status(oid) in (own.Status.FREED, own.Status.UNKNOWN):
            for cb in self.waiters.pop(oid, ()):
                cb(entry)
        else:
            self.set_value(oid, entry)

    def _on_get_object(self, conn, m):
        req_id, oid = m[1], m[2]
        lost = m[3] if len(m) > 3 else None   # a node whose copy the asker could not read
        if isinstance(lost, bytes):
            self.copy_unreadable(oid, lost)
        if self.table.is_owned(oid) or oid in self.values or (
                isinstance(lost, bytes) and self.table.status(oid) is own.Status.BORROWED):
            self.when_available(oid, lambda entry: conn.reply(req_id, entry),
                                lost if isinstance(lost, bytes) else None)
            return
        err = ObjectLostError(f"object {short(oid)} was freed by its owner (all references "
                              f"were dropped) and cannot be rebuilt")
        conn.reply(req_id, [ERROR, pickle.dumps(err)])

    # ---------------------------------------------------- generator streams
    def stream_next(self, tid: bytes) -> concurrent.futures.Future:
        """The next item of generator task tid: a future of its object id,
        or of None at the end (user thread)."""
        if self._closed:
            raise GdfutError("the gdfut runtime was shut down")
        fut = concurrent.futures.Future()
        self.io.post(self._stream_next, tid, fut)
        return fut

    def stream_next_blocking(self, tid: bytes):
        """The next item's object id (None at the end), waiting for it. A
        worker waiting here gives up its CPU meanwhile, as in a blocked get."""
        fut = self.stream_next(tid)
        if self.mode != "worker" or fut.done():
            return fut.result()
        self.io.post(self._notify_blocked, True)
        try:
            return fut.result()
        finally:
            self.io.post(self._notify_blocked, False)

    def _stream_next(self, tid, fut):
        waiters = self.stream_waiters.get(tid)
        if waiters is None:
            waiters = self.stream_waiters[tid] = collections.deque()
        waiters.append(fut)
        self.wake_stream(tid)

    def watch_stream(self, tid: bytes, cb, token=None):
        """io thread: call cb() once generator tid's next item (or end) is
        ready; ``unwatch_streams`` with the same token forgets it."""
        if self.table.stream_ready(tid):
            cb()
        else:
            self.stream_watchers.setdefault(tid, []).append((cb, token))

    def unwatch_streams(self, tids, token):
        for tid in tids:
            left = [w for w in self.stream_watchers.get(tid, ()) if w[1] is not token]
            if left:
                self.stream_watchers[tid] = left
            else:
                self.stream_watchers.pop(tid, None)

    def wake_stream(self, tid: bytes):
        """io thread: hand out items (or the end) to waiting next() calls, in
        order; then tell wait() calls if an item is still ready."""
        self._hand_out(tid)
        if tid in self.stream_watchers and self.table.stream_ready(tid):
            for cb, _token in self.stream_watchers.pop(tid):
                cb()

    def _hand_out(self, tid: bytes):
        waiters = self.stream_waiters.get(tid)
        while waiters and self.table.stream_ready(tid):
            fut = waiters.popleft()
            if not fut.set_running_or_notify_cancel():
                continue              # cancelled while waiting: it takes nothing
            result = None
            for ins in self.table.stream_take(tid):
                if type(ins) is own.NextRef:
                    result = ins.oid
                elif type(ins) is not own.StreamEnd:
                    self.run_instructions([ins])
            fut.set_result(result)
        if waiters is not None and not waiters:
            del self.stream_waiters[tid]

    def stream_ready(self, tid: bytes) -> bool:
        return self.io.run(self._stream_query(self.table.stream_ready, tid), timeout=30)

    def stream_finished(self, tid: bytes) -> bool:
        return self.io.run(self._stream_query(self.table.stream_finished, tid), timeout=30)

    async def _stream_query(self, query, tid):
        await asyncio.sleep(0)   # after next() calls posted before this one
        return query(tid)

    def stream_dropped(self, tid: bytes):
        """The caller's ObjectRefGenerator is gone (any thread)."""
        if not self._closed:
            self.io.post(self._stream_dropped, tid)

    def _stream_dropped(self, tid):
        self.stream_waiters.pop(tid, None)
        self.stream_watchers.pop(tid, None)
        self.run_instructions(self.table.stream_dropped(tid))

    # ------------------------------------------------------------------ put
    def put(self, value) -> ObjectRef:
        if isinstance(value, ObjectRef):
            raise TypeError("put() of an ObjectRef is not allowed; pass the ref itself")
        return self.put_serialized(ser.serialize(value, "the value passed to put"))

    def _put_done(self, oid, entry, nested, call_site, size):
        self.table.add_owned(oid, lineage=None, call_site=call_site, contains=nested)
        self.table.add_local_ref(oid)
        location = (self.node_id, "host") if entry[0] == STORE else own.INLINE
        self.run_instructions(self.table.object_ready(oid, size, location))
        self.set_value(oid, entry)

    def node_request(self, mtype, *fields, timeout=60, node_id: bytes | None = None):
        """A request to our node (or to node ``node_id``) from a user thread
        (blocks until the reply)."""
        async def ask():
            conn = self.node_conn if node_id is None else await self.node_connection(node_id)
            return await conn.request(mtype, *fields)
        return self.io.run(ask(), timeout)

    def call_site(self) -> str:
        return _call_site() if self._call_sites else ""

    def put_serialized(self, s: ser.Serialized) -> ObjectRef:
        """Put an already serialized value (large task arguments)."""
        oid = object_id_for_put()
        entry = self.store_serialized(oid, s)
        size = entry[2] if entry[0] == STORE else len(entry[1])
        ref = ObjectRef(oid, self.wid, self.addr, self, _count=False)
        self.io.post(self._put_done, oid, entry, [r.id for r in s.nested], self.call_site(), size)
        return ref

    def read_stored(self, oid: bytes, node_id: bytes, size: int, ask=None, gpu=None):
        """Pin a stored object (pulled to this node if needed) and rebuild it
        without copying. Any user thread. A lost copy is re-made first (see
        ``pin_or_recover``; ``ask``: the submitter of the running task),
        while this worker lends its CPU as in a blocking get. A device
        object this worker holds is the value itself (pinned for the task);
        ``gpu``: it was made on that GPU (a device object), so a reader
        holding a GPU maps it where it is on the same GPU or else restores it
        onto its own device (``pin_local_copy``)."""
        if self.device.held:
            found, value = self.device.local_value(oid, self.submitting_task_id())
            if found:
                return value
        try:
            reply = self.io.run(self.pin_local_copy(oid, node_id, size, gpu))
            entry = _pinned_entry(reply)
        except ObjectLostError:
            if self.mode == "worker":
                self.io.post(self._notify_blocked, True)
            try:
                entry = self.io.run(self.pin_or_recover(oid, node_id, size, ask, gpu))
            finally:
                if self.mode == "worker":
                    self.io.post(self._notify_blocked, False)
        return self._materialize(oid, entry)

    def pin_many(self, items: list) -> list:
        """Pin several stored objects ((oid, node_id, size) each) with their
        requests in flight together; per item the (offset, size) reply or the
        exception (an ObjectLostError is left to ``read_stored``'s recovery)."""
        async def pin_all():
            return await asyncio.gather(*(self.pin_local_copy(*item) for item in items),
                                        return_exceptions=True)
        return self.io.run(pin_all())

    def materialize_pinned(self, oid: bytes, reply):
        """The value of an object ``pin_many`` pinned (unpinned when it goes)."""
        return self._materialize(oid, _pinned_entry(reply))

    def unpin_reply(self, oid: bytes, reply) -> None:
        """Drop the pin a ``pin_local_copy`` reply holds (never materialized)."""
        self.io.post(self._drop_pin, oid, _pinned_entry(reply))

    def store_serialized(self, oid: bytes, s: ser.Serialized, owner: bytes | None = None) -> list:
        """Inline entry for small values, else write into the local store.
        ``owner``: the process that owns the object (default: this one); the
        node frees it if that owner dies (fate sharing)."""
        if s.inline:
            return [INLINE, s.pickle_bytes]
        layout = s.store_layout()
        total = layout[2]
        reply = self.node_request(P.STORE_CREATE, oid, total, True, owner or self.wid)
        if not _slot_to_fill(oid, total, reply):
            return [STORE, self.node_id, total]
        try:
            self._fill_slot(reply, total, s, layout)
        except BaseException:
            self.io.post(self.node_conn.send, [P.STORE_ABORT, oid])
            raise
        self.node_request(P.STORE_SEAL, oid)
        return [STORE, self.node_id, total]

    def _fill_slot(self, reply: dict, total: int, s: ser.Serialized, layout) -> None:
        """Write a value into the slot a STORE_CREATE reply gave."""
        if "file" in reply:     # larger than the host tier: into its spill file
            _write_file(reply["file"], reply["file_offset"], total, s, layout)
        else:
            ser.write_into(self.arena.view(reply["offset"], total), s, layout)

    def store_serialized_many(self, items: list, owner: bytes | None = None) -> list:
        """``store_serialized`` for several values (a task's many returns) with
        the node round trips pipelined: every STORE_CREATE is sent up front,
        each value is written and its STORE_SEAL sent as its slot arrives, and
        the seals are awaited together at the end. Two sequential round trips
        per value (about 1-2 ms each on a loaded 2-core host) were most of the
        cost of a shuffle map's 16-64 returns. Slots are filled in order, so a
        create that waits for room still sees the earlier values sealed (and
        spillable), as with one value at a time. Returns one entry per item."""
        entries: list = [None] * len(items)
        stored = []
        for i, (oid, s) in enumerate(items):
            if s.inline:
                entries[i] = [INLINE, s.pickle_bytes]
            else:
                stored.append((i, oid, s, s.store_layout()))
        if not stored:
            return entries
        loop, conn, holder = self.io.loop, self.node_conn, owner or self.wid

        async def ask(*fields):
            return await conn.request(*fields)
        creates = [asyncio.run_coroutine_threadsafe(
            ask(P.STORE_CREATE, oid, layout[2], True, holder), loop)
            for _, oid, _, layout in stored]
        answered, seals, written = 0, [], []
        try:
            for (i, oid, s, layout), fut in zip(stored, creates):
                reply = fut.result(60)
                answered += 1
                if _slot_to_fill(oid, layout[2], reply):
                    written.append(oid)
                    self._fill_slot(reply, layout[2], s, layout)
                    seals.append(asyncio.run_coroutine_threadsafe(ask(P.STORE_SEAL, oid), loop))
                entries[i] = [STORE, self.node_id, layout[2]]
            for fut in seals:
                fut.result(60)
        except BaseException:
            # slots not yet sealed are aborted, sealed ones freed; creates still in
            # flight are aborted once answered
            for (_, oid, _, _), fut in zip(stored[answered:], creates[answered:]):
                fut.add_done_callback(lambda f, oid=oid: f.cancelled() or f.exception() or
                                      self.io.post(conn.send, [P.STORE_ABORT, oid]))
            sealed = written[:len(seals)]
            for oid in written[len(seals):]:
                self.io.post(conn.send, [P.STORE_ABORT, oid])
            if sealed:
                self.io.post(conn.send, [P.STORE_FREE, sealed])
            raise
        return entries

    # ------------------------------------------------------------------ get
    def get(self, refs, timeout: float | None = None, device: str | None = None):
        single = isinstance(refs, ObjectRef)
        if not single and not isinstance(refs, (list, tuple)):
            raise TypeError(f"get() takes an ObjectRef or a list of ObjectRefs, "
                            f"got {type(refs).__name__}")
        ref_list = [refs] if single else list(refs)
        for r in ref_list:
            if not isinstance(r, ObjectRef):
                raise TypeError(f"get() takes ObjectRefs or a list of them, got {type(r).__name__}")
        entries = self._entries(ref_list, timeout)
        seen = self.borrowed_refs_seen
        values = [self._materialize(r.id, e) for r, e in zip(ref_list, entries)]
        if device != "cpu" and self.mode == "driver":
            values = self._on_device(ref_list, values)
        if self.borrowed_refs_seen != seen:
            # refs read out of objects: register with their owners before the
            # outer refs can go (the outer object is what keeps them alive now)
            self.io.run(self._register_held())
        return values[0] if single else values

    def _on_device(self, refs, values):
        """Device objects (made on a GPU) as cupy arrays in the driver, where
        a real GPU is usable; numpy in CPU mode."""
        from .device_objects import real_gpu, to_device
        made_on_gpu = [len(self.values.get(r.id) or ()) > 3 for r in refs]
        if not any(made_on_gpu) or not real_gpu():
            return values
        return [to_device(v) if gpu else v for v, gpu in zip(values, made_on_gpu)]

    async def _register_held(self):
        await asyncio.sleep(0)   # let the posted add_local_ref calls run first
        adds = self.table.register_held_refs()
        if adds:
            await asyncio.gather(*(self.register_borrow(i) for i in adds))

    def _entries(self, refs, timeout):
        """Value entries for refs, waiting for them if needed (user thread)."""
        values = self.values
        entries = [values.get(r.id) for r in refs]
        missing = [i for i, e in enumerate(entries) if e is None or e[0] == STORE]
        if not missing:
            return entries
        fut = concurrent.futures.Future()
        oids = [refs[i].id for i in missing]
        self.io.post(self._resolve_many, oids, fut)
        blocked = self.mode == "worker" and any(entries[i] is None for i in missing)
        if blocked:
            self.io.post(self._notify_blocked, True)
        thread = threading.get_ident()
        if self.mode == "worker":        # a cancel of the running task interrupts it
            self.blocked_waits[thread] = lambda exc: _set_exception(fut, exc)
        resolved = None
        try:
            resolved = fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise GetTimeoutError(f"get timed out after {timeout} s waiting for "
                                  f"{len(missing)} object(s)") from None
        finally:
            self.blocked_waits.pop(thread, None)
            if blocked:
                self.io.post(self._notify_blocked, False)
            if resolved is None:        # gave up (timeout, cancel, Ctrl-C): unpin for it
                fut.cancel()
                self.io.post(self._release_pins, fut)
        for i, entry in zip(missing, resolved):
            entries[i] = entry
        return entries

    def _notify_blocked(self, blocked: bool):
        executor = getattr(self, "executor", None)
        if blocked and executor is not None:
            executor.reject_queued()
        if self.node_conn is not None and not self.node_conn.closed:
            self.node_conn.send([P.WORKER_BLOCKED if blocked else P.WORKER_UNBLOCKED])

    def _resolve_many(self, oids, fut: concurrent.futures.Future):
        """io thread: gather entries; pin store objects for the reader."""
        results = [None] * len(oids)
        remaining = [len(oids)]
        fut.gdfut_pins = (oids, results)    # for _release_pins, if the reader gives up

        def done(i, entry):
            if fut.done():   # the reader gave up (timeout, cancel): release its pin
                self._drop_pin(oids[i], entry)
                return
            results[i] = entry
            remaining[0] -= 1
            if remaining[0] == 0 and not fut.done():
                fut.set_result(results)

        for i, oid in enumerate(oids):
            self.when_available(oid, lambda e, i=i, oid=oid: self._pin_if_stored(oid, e, i, done))

    def _release_pins(self, fut):
        """io thread: a get gave up: unpin what was pinned for it so far
        (what comes later is unpinned as it comes, in _resolve_many)."""
        oids, results = getattr(fut, "gdfut_pins", ((), ()))
        for i, entry in enumerate(results):
            if entry is not None and entry[0] in PINNED + ("device", "restore"):
                results[i] = None
                self._drop_pin(oids[i], entry)

    def _pin_if_stored(self, oid, entry, i, done):
        if entry[0] != STORE:
            done(i, entry)
            return
        self.io.loop.create_task(self._pin(oid, entry, i, done))

    async def _pin(self, oid, entry, i, done):
        gpu = entry[3] if len(entry) > 3 else None
        done(i, await self.pin_or_recover(oid, entry[1], entry[2], gpu=gpu))

    async def pin_or_recover(self, oid: bytes, node_id: bytes, size: int, ask=None,
                             gpu=None) -> list:
        """Pin a stored copy: ``["pinned", offset, size]``. A copy that cannot
        be read (its node died, or its store dropped it) is reported to the
        owner, which re-makes the object from its lineage or names another
        copy; then this reads that one. Returns an INLINE or ERROR entry
        when that is what the owner answers. ``ask``: where to report it if
        this process does not know the owner (a worker reading an argument
        asks the task's submitter, which forwards)."""
        err = None
        for _ in range(MAX_RECOVERIES):
            try:
                reply = await self.pin_local_copy(oid, node_id, size, gpu)
                return _pinned_entry(reply)
            except ObjectLostError as exc:
                err = exc
            entry = await self.recover(oid, node_id, ask)
            if entry is None:
                break
            if entry[0] != STORE:
                return entry
            node_id, size = entry[1], entry[2]
            gpu = entry[3] if len(entry) > 3 else None
        return [ERROR, pickle.dumps(err)]

    async def recover(self, oid: bytes, node_id: bytes, ask=None) -> list | None:
        """The copy of oid at node_id cannot be read: tell its owner, and
        return the entry it answers with (None: nobody to ask)."""
        if self.table.is_owned(oid):
            self.copy_unreadable(oid, node_id)
            fut = self.io.loop.create_future()
            self.when_available(oid, lambda e: fut.done() or fut.set_result(e))
            return await fut
        addr = self.owner_addr_of(oid) or (tuple(ask) if ask else None)
        if addr is None:
            return None
        if self.values.get(oid, [None, None])[1:2] == [node_id]:
            self.values.pop(oid, None)       # a cached entry naming the lost copy
        try:
            conn = await self.connect_peer(addr)
            return await conn.request(P.GET_OBJECT, oid, node_id)
        except (OSError, tcp.ConnectionLost, tcp.RemoteError, asyncio.TimeoutError):
            return None

    def copy_unreadable(self, oid: bytes, node_id: bytes) -> None:
        """A reader could not read oid's copy on node_id. Owned: drop that
        location (the last one gone: ObjectLost, which re-runs its task);
        borrowed: forget the cached entry, so the next read asks the owner."""
        entry = self.values.get(oid)
        stale = entry is not None and entry[0] == STORE and entry[1] == node_id
        if not self.table.is_owned(oid):
            if stale:
                self.values.pop(oid, None)
            return
        if stale:
            left = [loc for loc in self.table.locations(oid)
                    if isinstance(loc, tuple) and loc[0] != node_id]
            if left:
                self.values[oid] = [STORE, left[0][0], entry[2]]
        for tier in ("device", "host"):
            self.run_instructions(self.table.remove_location(oid, (node_id, tier)))

    async def pin_local_copy(self, oid: bytes, node_id: bytes, size: int, gpu=None):
        """Pin a copy in this node's store, pulling it from ``node_id`` first
        when it lives elsewhere. Returns (offset, size). A device object
        (``gpu``: made on that GPU) read by a process holding GPUs: the
        node's ``{"device": export}`` where its device copy is on one of them
        (mapped, zero-copy), else ``{"host": (offset, size), "to_device":
        bool}`` (restore it onto this worker's device once read)."""
        gpus = list(self.gpu_ids) if gpu is not None and self.gpu_ids else None
        if node_id == self.node_id:
            if gpus:
                reply = await self.node_conn.request(P.STORE_PIN, oid, gpus)
                if reply.get("host", True) is None:
                    reply = None
            else:
                reply = await self.node_conn.request(P.STORE_PIN, oid)
        else:
            if gpus:           # made on another node, maybe restored onto a device here
                reply = await self.node_conn.request(P.STORE_PIN, oid, gpus)
                if "device" in reply or reply.get("host") is not None:
                    return reply
            if gpu is not None:  # GPU to GPU over ucx where possible (device_transfer)
                from . import device_transfer
                value = await device_transfer.fetch(self, oid, node_id)
                if value is not None:
                    return {"received": value}
            try:
                reply = await self.node_conn.request(P.NODE_PULL, oid, size, node_id)
            except tcp.RemoteError as exc:
                raise ObjectLostError(f"object {short(oid)} could not be fetched from node "
                                      f"{short(node_id)}: {exc}") from None
            if reply is not None:
                self._tell_owner_location(oid)
                if gpus:       # a device object from another node: onto this device
                    reply = {"host": reply, "to_device": True}
        if reply is None:
            raise ObjectLostError(f"object {short(oid)} is not in the object store of node "
                                  f"{short(node_id)} (it was freed)")
        return reply

    def _tell_owner_location(self, oid):
        """A secondary copy now exists here: the owner must free it too."""
        if self.table.is_owned(oid):
            self.run_instructions(self.table.add_location(oid, (self.node_id, "host")))
            return
        owner = self.table.owner_of(oid)
        if owner is not None:
            self._send_to_owner(owner, [P.ADD_LOCATION, oid, self.node_id])

    def _on_add_location(self, conn, m):
        _, oid, node_id = m
        self.run_instructions(self.table.add_location(oid, (node_id, "host")))

    def _materialize(self, oid, entry):
        kind = entry[0]
        if kind == INLINE:
            return ser.loads_inline(entry[1])
        if kind == ERROR:
            raise load_error(entry[1])
        if kind == "pinned":
            region = self.arena.readonly_pinned(entry[1], entry[2], _Unpin(self, oid))
            return ser.loads_from_store(region)
        if kind == "mapped":         # lives in a spill file (larger than the host tier)
            from .devstore.arena import map_file_readonly
            region = map_file_readonly(entry[1], entry[2], entry[3], _Unpin(self, oid))
            return ser.loads_from_store(region)
        if kind == "received":       # a device object received from another node's GPU
            return entry[1]
        if kind == "device":         # another process's device copy on our GPU, mapped
            return self._import_device(oid, entry[1])
        if kind == "restore":        # a device object read through host memory
            value = self._materialize(oid, entry[1])
            if self.io.in_loop_thread():    # (a future's callback) cannot wait for the node
                return value
            return self.device.restore(oid, value, _entry_size(entry[1]),
                                       self.table.owner_of(oid), self.submitting_task_id())
        raise AssertionError(f"bad entry {entry!r}")

    def _import_device(self, oid, export):
        from . import device_ipc
        unpin = _DeviceUnpin(self, oid)
        try:
            if "shm" in export:
                return device_ipc.shm_import(export, unpin)
            return device_ipc.cuda_import(export, self.gpu_ids.index(export["gpu"]), unpin)
        except (OSError, RuntimeError, ValueError) as exc:
            # gone before we mapped it (its holder died): the host tier serves
            self.device_unpin(oid)
            if self.io.in_loop_thread():
                raise ObjectLostError(f"device object {short(oid)} could not be mapped: "
                                      f"{exc}") from None
            log.warning("device object %s could not be mapped (%s): reading its host copy",
                        short(oid), exc)
            reply = self.io.run(self.node_conn.request(P.STORE_PIN, oid))
            if reply is None:
                raise ObjectLostError(f"object {short(oid)} is not in the object store of "
                                      f"this node") from None
            return self._materialize(oid, _pinned_entry(reply))

    def unpin(self, oid: bytes):
        if not self._closed:
            self.io.post(self._send_unpin, oid)

    def device_unpin(self, oid: bytes):
        if not self._closed:
            self.io.post(self._send_device_unpin, oid)

    def _send_device_unpin(self, oid):
        if self.node_conn is not None and not self.node_conn.closed:
            self.node_conn.send([P.DEVICE_UNPIN, [[oid, 1]]])

    def _drop_pin(self, oid, entry):
        """io thread: release the pin an entry holds (one never materialized)."""
        if entry[0] == "restore":
            entry = entry[1]
        if entry[0] == "device":
            self._send_device_unpin(oid)
        elif entry[0] in PINNED:
            self._send_unpin(oid)

    def _send_unpin(self, oid):
        if self.node_conn is not None and not self.node_conn.closed:
            self.node_conn.send([P.STORE_UNPIN, [[oid, 1]]])

    def value_future(self, ref: ObjectRef) -> concurrent.futures.Future:
        out = concurrent.futures.Future()
        inner = concurrent.futures.Future()

        def finish(f):
            try:
                entry = f.result()[0]
                out.set_result(self._materialize(ref.id, entry))
            except BaseException as exc:
                out.set_exception(exc)

        inner.add_done_callback(finish)
        self.io.post(self._resolve_many, [ref.id], inner)
        out._gdfut_ref = ref   # keep the ref alive while someone awaits it
        return out

    # ----------------------------------------------------------------- wait
    def wait(self, refs, num_returns: int = 1, timeout: float | None = None,
             fetch_local: bool = True):
        if isinstance(refs, (ObjectRef, ObjectRefGenerator)):
            raise TypeError("wait() expected a list of ObjectRefs, got a single "
                            f"{type(refs).__name__}; use wait([ref])")
        try:
            refs = list(refs)
        except TypeError:
            raise TypeError(f"wait() expected a list of ObjectRefs, got "
                            f"{type(refs).__name__}") from None
        if not all(isinstance(r, (ObjectRef, ObjectRefGenerator)) for r in refs):
            raise TypeError("wait() takes a list of ObjectRefs (or ObjectRefGenerators)")
        if not refs:
            return [], []           # as Ray: nothing to wait for
        # a generator is ready when its next item is (or its end), as in Ray
        keys = [r.id if isinstance(r, ObjectRef) else ("next", r._tid) for r in refs]
        if len(set(keys)) != len(refs):
            raise ValueError("wait() got duplicate ObjectRefs")
        if not 0 <= num_returns <= len(refs):
            raise ValueError(f"num_returns={num_returns} must be between 0 and {len(refs)}")
        done_ids: set = set()
        cond = threading.Condition()

        def on_ready(oid):
            with cond:
                done_ids.add(oid)
                cond.notify_all()

        interrupted: list = []
        waiting = [True]

        def interrupt(exc) -> bool:
            with cond:
                if waiting[0]:
                    interrupted.append(exc)
                    cond.notify_all()
                return waiting[0]

        self.io.post(self._watch, keys, on_ready)
        deadline = None if timeout is None else time.monotonic() + timeout
        thread = threading.get_ident()
        if self.mode == "worker":        # a cancel of the running task interrupts it
            self.blocked_waits[thread] = interrupt
        try:
            with cond:
                while len(done_ids) < num_returns and not interrupted:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    cond.wait(left)
                waiting[0] = False
                snapshot = set(done_ids)
        finally:
            self.blocked_waits.pop(thread, None)
            streams = [k[1] for k in keys if isinstance(k, tuple)]
            if streams:      # this call's watchers go now (a timed-out wait leaves none)
                self.io.post(self.unwatch_streams, streams, on_ready)
        if interrupted:
            raise interrupted[0]
        picked = [i for i, k in enumerate(keys) if k in snapshot][:num_returns]
        chosen = set(picked)
        return [refs[i] for i in picked], [r for i, r in enumerate(refs) if i not in chosen]

    def _watch(self, keys, on_ready):
        for key in keys:
            if isinstance(key, tuple):
                self.watch_stream(key[1], lambda key=key: on_ready(key), on_ready)
            else:
                self.when_available(key, lambda _e, oid=key: on_ready(oid))

    # --------------------------------------------------------------- cancel
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None:
        """User thread: cancel the task that makes ``ref``. Its owner decides
        (a ref we borrowed: the cancel is forwarded to its owner)."""
        tid = task_of(ref.id)
        if ref.owner_wid == self.wid:
            async def here():
                return self.submitter.cancel(tid, force, recursive)
            refused = self.io.run(here())
        else:
            refused = self.io.run(self._cancel_at_owner(ref, tid, force, recursive))
        if refused:
            raise ValueError(refused)

    async def _cancel_at_owner(self, ref, tid, force, recursive):
        addr = ref.owner_addr
        try:
            conn = await asyncio.wait_for(self.connect_peer(addr), CANCEL_TIMEOUT_S)
            return await asyncio.wait_for(
                conn.request(P.CANCEL_OWNED_TASK, tid, force, recursive), CANCEL_TIMEOUT_S)
        except (OSError, tcp.ConnectionLost) as exc:
            # the owner is gone, and with it every task it owned (fate sharing)
            log.info("cancel of %s: its owner cannot be reached (%s)", short(tid), exc)
            return None
        except (asyncio.TimeoutError, tcp.RemoteError) as exc:
            raise GdfutError(f"cancel of task {short(tid)}: its owner {short(ref.owner_wid)} "
                             f"at {addr[0]}:{addr[1]} did not take the cancel "
                             f"({exc or 'no answer in %d s' % CANCEL_TIMEOUT_S})") from None

    def _on_cancel_owned(self, conn, m):
        _, req_id, tid, force, recursive = m       # checked by validate (CANCEL_OWNED_TASK)
        conn.reply(req_id, self.submitter.cancel(tid, bool(force), bool(recursive)))

    def interrupt_blocked(self, thread_id: int, exc: BaseException) -> bool:
        """Make a get/wait that ``thread_id`` is blocked in raise ``exc``
        (a non-force cancel of the task that thread runs). Any thread.
        False if it is blocked in none (or the one it was in just ended)."""
        wake = self.blocked_waits.get(thread_id)
        return wake is not None and wake(exc)

    def current_placement_group(self) -> list | None:
        """The placement group strategy of the calling task or actor (None in
        a driver, or outside any group)."""
        executor = getattr(self, "executor", None)
        return None if executor is None else executor.current_placement_group()

    def captured_strategy(self) -> list | None:
        """The strategy a task or actor submitted with none of its own gets:
        its parent's placement group (any bundle) when the parent was started
        with ``placement_group_capture_child_tasks=True``, as in Ray."""
        pg = self.current_placement_group()
        if pg is None or not pg[3]:
            return None
        return ["PG", pg[1], -1, True]

    def submitting_task_id(self) -> bytes | None:
        """The task of the calling thread (None in a driver): the parent of the
        tasks it submits, which a recursive cancel of it cancels too."""
        executor = getattr(self, "executor", None)
        return None if executor is None else executor.current_task_id()

    # --------------------------------------------------------------- memory
    def _on_owner_memory(self, conn, m):
        conn.reply(m[1], self.memory_rows())

    def memory_rows(self) -> list:
        rows = [r for r in self.table.summary() if r["oid"] not in self.actors.clients]
        for row in rows:
            row["owner_addr"] = list(self.addr)
            row["owner_mode"] = self.mode
            row["locations"] = [_location_text(loc) for loc in row.get("locations", ())]
            row["state"] = str(row.get("state"))
        return rows

    # ------------------------------------------------------------ shutdown
    def shutdown(self):
        if self._closed:
            return
        try:
            self.io.run(self.actors.wait_hand_overs(HAND_OVER_WAIT_S),
                        timeout=HAND_OVER_WAIT_S + 1)
        except Exception:
            pass
        try:
            self.io.run(self._close(), timeout=5)
        except Exception:
            pass
        self._closed = True
        self.io.stop()
        parallel_copy.shutdown()   # the store-copy helper threads (started on demand)

    async def _close(self):
        self._closed = True
        self.submitter.close()
        job_task = getattr(self, "_job_task", None)
        if job_task is not None and not job_task.done():
            job_task.cancel()
            await asyncio.gather(job_task, return_exceptions=True)
        if self._server is not None:
            self._server.close()
        await self.device.server.close()
        await self.device.pulls.close()
        for fut in list(self.peers.values()):
            if fut.done() and fut.exception() is None:
                fut.result().close()
            else:
                fut.cancel()
        for conn in (self.node_conn, self.head_conn):
            if conn is not None:
                conn.close()
        await asyncio.sleep(0)


MAX_RECOVERIES = 8
HAND_OVER_WAIT_S = 30.0
"""How long shutdown waits for detached actors still being placed."""
"""How many times one read reports a lost copy to the owner and tries again."""


PINNED = ("pinned", "mapped")


def _pinned_entry(reply) -> list:
    """The entry of a node's pin reply: ``["pinned", offset, size]`` in the
    arena, or ``["mapped", path, offset, size]`` for an object that lives in
    a spill file of its own (larger than the host tier); for a GPU reader of
    a device object ``["device", export]`` (its device copy, mapped) or
    ``["restore", host entry]`` (read from host, then onto the device)."""
    if isinstance(reply, dict):
        if "device" in reply:
            return ["device", reply["device"]]
        if "received" in reply:     # moved GPU to GPU from another node: the task's own copy
            return ["received", reply["received"]]
        inner = _pinned_entry(reply["host"])
        return ["restore", inner] if reply.get("to_device") else inner
    if len(reply) == 3:
        return ["mapped", reply[0], reply[1], reply[2]]
    return ["pinned", reply[0], reply[1]]



def _slot_to_fill(oid: bytes, total: int, reply: dict) -> bool:
    """What a STORE_CREATE reply asks of the writer: fill the slot (True), or
    nothing (False: written again, by a retry or a rebuild, where a sealed
    copy of this task's output of the same size is; the node made that copy
    the primary). A refusal raises ObjectStoreFullError naming the sizes."""
    if reply.get("exists"):
        return False
    if reply.get("error"):
        raise ObjectStoreFullError(
            f"object {short(oid)} of {total} bytes does not fit in the object store "
            f"(capacity {reply['capacity']} bytes, {reply['used']} in use, largest free "
            f"block {reply['largest_free']} bytes): {reply.get('message', '')}")
    return True

def _write_file(path: str, offset: int, total: int, s, layout) -> None:
    """Write a serialized value into the spill file its node made for it."""
    import mmap
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, total, offset=offset)
    finally:
        os.close(fd)
    try:
        with memoryview(mm) as view:
            ser.write_into(view, s, layout)
    finally:
        mm.close()


def _location_text(loc) -> list:
    """Wire form of a location: ["inline"] or [node_id, tier]."""
    if loc == own.INLINE:
        return ["inline"]
    return list(loc)


def _set_exception(fut: concurrent.futures.Future, exc: BaseException) -> bool:
    try:
        fut.set_exception(exc)
        return True
    except concurrent.futures.InvalidStateError:   # resolved meanwhile: the get returns
        return False


def _entry_size(entry) -> int:
    return entry[3] if entry[0] == "mapped" else entry[2]


class _DeviceUnpin:
    """Called when the last view of a mapped device copy dies."""
    __slots__ = ("rt", "oid")

    def __init__(self, rt, oid):
        self.rt = rt
        self.oid = oid

    def __call__(self):
        self.rt.device_unpin(self.oid)


class _Unpin:
    """Called when the last view of a pinned store object dies."""
    __slots__ = ("rt", "oid")

    def __init__(self, rt, oid):
        self.rt = rt
        self.oid = oid

    def __call__(self):
        self.rt.unpin(self.oid)


_PKG_DIR = os.path.dirname(os.path.abspath(__file__))


def _call_site() -> str:
    """file:line of the first frame outside gdfut (who created the object)."""
    frame = sys._getframe(1)
    for _ in range(16):
        if frame is None:
            break
        if not frame.f_code.co_filename.startswith(_PKG_DIR):
            return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"
        frame = frame.f_back
    return ""
