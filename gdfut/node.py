"""Node daemon: one per machine (or per emulated node in tests).

Owns the node's resources and worker pool (leases decided by the pure
``LeaseManager``), the host tier of the object store (``HostStoreState`` over
one pre-faulted ``SharedArena``), and reports to the head. Run as
``python -m gdfut.node``; prints one JSON line ``{"port": ...}`` when ready.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time

from . import cluster
from . import protocol as P
from . import validate
from .devstore.arena import SharedArena
from .devstore.disk_store import DiskStore
from .devstore.host_store import CREATED, SEALED, HostStoreState
from .head_state import reconnect_delay
from .ids import new_id, short
from .sched.lease_queue import (GrantLease, KillWorker, LeaseLost, LeaseManager, QueueFull,
                                Reject, RequestCancelled, StartWorker)
from .node_pgs import NodeBundles
from .node_device import DeviceTier, default_device_memory
from .node_tiers import TieredStore, log_totals
from .object_transfer import ObjectTransfer, TransferError
from .sched import policy
from .sched.resources import GPU_MEMORY, MEMORY, ResourceSet, actor_resources
from .supervise import Supervisor
from .transport import tcp
from .transport.base import default_backend_name

log = logging.getLogger("gdfut.node")

HEARTBEAT_S = 1.0
# Reconnecting to an unreachable head: the wait doubles from HEARTBEAT_S up to
# this, so a restarted head is found again within this long.
HEAD_RETRY_MAX_S = 2.0
# A node that cannot reach its head for this long stops (as Ray's raylet does
# after its GCS reconnect timeout), so nodes of a cluster whose head is gone
# for good do not run forever. GDFUT_HEAD_RECONNECT_TIMEOUT_S: tests, operators.
HEAD_RECONNECT_TIMEOUT_S = float(os.environ.get("GDFUT_HEAD_RECONNECT_TIMEOUT_S", "120"))
MAX_UNSENT_DEATHS = 100_000  # deaths kept for the head while it is unreachable
MEMORY_QUERY_TIMEOUT_S = 5.0
WORKER_KILL_GRACE_S = 2.0
MAX_START_FAILURES = 5      # worker starts failing in a row before queued requests fail
START_BACKOFF_S = 0.2       # first retry after a failed start; doubles, at most 5 s
# A request no node in the cluster view can run is failed only on a view
# fresher than the request (the head is asked again first). While this node
# has been part of the cluster for less than this, such a request waits
# instead (logged), re-decided on every refresh: nodes started together join
# within a few heartbeats of each other.
INFEASIBLE_GRACE_S = 3 * HEARTBEAT_S
# Messages a connection may send before it registers its process: all others
# (leases, store space) are held by a process and released when it goes.
_BEFORE_REGISTER = {P.REGISTER_WORKER, P.REGISTER_CLIENT, P.NODE_STATUS, P.NODE_MEMORY,
                    P.NODE_CLUSTER_VIEW}
# Requests the head makes on the node's own connection to it (which registers
# no process): allowed there only.
_FROM_HEAD = {P.NODE_PREPARE_BUNDLES, P.NODE_COMMIT_BUNDLES, P.NODE_RETURN_BUNDLES}


class Conn:
    """Per-connection state: who is on the other end, and what it holds.

    Leases, queued lease requests, store writes and pins are all held under
    the process id the connection registered (one per connection, never
    changed), so closing the connection releases every one of them."""

    def __init__(self, node: "NodeDaemon"):
        self.node = node
        self.conn = None
        self.wid: bytes | None = None
        self.kind = None
        self.closed = False
        self.requests: set[int] = set()     # this connection's entries in pending_leases
        self.device_addr = None             # its ucx device listener (DEVICE_SERVE)

    def on_messages(self, conn, messages):
        self.conn = conn
        for m in messages:
            if not validate.admit(conn, m, log) or conn.resolve_reply(m):
                continue
            handler = self.node.dispatch.get(m[0])
            if handler is None:
                log.warning("unknown message type %s", m[0])
                continue
            if (self.wid is None and m[0] not in _BEFORE_REGISTER
                    and not (m[0] in _FROM_HEAD and conn is self.node.head_conn)):
                self.refuse(m, "this connection has not registered its process "
                               "(REGISTER_WORKER or REGISTER_CLIENT first)")
                continue
            try:
                handler(self, m)
            except Exception as exc:
                log.exception("message %s failed", m[0])
                self.refuse(m, f"{type(exc).__name__}: {exc}")

    def refuse(self, m, text: str) -> None:
        """Answer a request with an error; a one-way message is only logged."""
        req_id = validate.request_id(m)
        if req_id is not None:
            self.conn.reply_error(req_id, text)
        else:
            log.warning("dropping message %s from %s: %s", m[0], short(self.wid), text)

    def on_closed(self, conn, exc):
        self.closed = True
        self.node.on_peer_closed(self)


class WorkerProc:
    def __init__(self, wid, popen):
        self.wid = wid
        self.popen = popen
        self.peer: Conn | None = None
        self.addr = None


class NodeDaemon:
    def __init__(self, args):
        self.args = args
        self.node_id = new_id()
        self.session_dir = args.session_dir
        self.token = open(os.path.join(self.session_dir, "token"), "rb").read()
        self.total = ResourceSet.from_options(args.num_cpus, args.num_gpus,
                                              json.loads(args.resources or "{}"))
        self.leases = LeaseManager(self.node_id, self.total, max_queue=max_lease_queue(),
                                   max_workers=max(1, int(args.num_cpus)),
                                   max_starting=max_concurrent_starts())
        self.capacity = args.object_store_memory
        self.store = HostStoreState(self.capacity)
        self.arena_name = f"gdfut-{os.path.basename(self.session_dir)}-{self.node_id[:4].hex()}"
        self.spill_dir = args.spill_dir or os.path.join(self.session_dir, "spill")
        self.tiers = TieredStore(self, self.store, DiskStore(self.spill_dir, self.arena_name[6:]))
        device_memory = getattr(args, "device_store_memory", None)
        if device_memory is None:
            device_memory = default_device_memory(
                args.num_gpus, self.total.to_dict().get(GPU_MEMORY, 0), self.capacity)
        self.device = DeviceTier(self, args.num_gpus, device_memory)
        self.tiers.device = self.device
        self.arena = None
        self.workers: dict[bytes, WorkerProc] = {}
        self.peers: dict[bytes, Conn] = {}            # wid -> connection of that process
        self.pending_leases: dict = {}                # request id -> (Conn, req_id)
        self.object_owner: dict[bytes, bytes] = {}    # oid -> owner wid
        self.objects_of_owner: dict[bytes, set] = {}  # owner wid -> oids here
        self.dead_seq = 0                             # head's dead-process log read so far
        self.start_failures = 0                       # worker starts failed in a row
        self.request_ids = itertools.count(1)
        self.head_conn = None
        self.unsent_deaths: list = []                 # deaths seen while the head was away
        self.head_addr = tuple(args.head_addr.split(":")) if args.head_addr else None
        if self.head_addr:
            self.head_addr = (self.head_addr[0], int(self.head_addr[1]))
        self.server = None
        # the address others use to reach this node (and its workers)
        self.node_ip = args.node_ip or (args.bind if args.bind not in ("0.0.0.0", "", "::")
                                        else "127.0.0.1")
        self.clock = itertools.count(1)
        self.cluster: dict[bytes, dict] = {}          # node_id -> head's view of that node
        self.spread_counter = 0
        self.transfer = ObjectTransfer(self, args.transport or default_backend_name())
        self.transfer_holder = ("transfer", "pull")
        self.data_addr = None
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.tasks: Supervisor | None = None
        self.joined_at: float | None = None            # first registration with the head
        self.view_time = float("-inf")                 # when the current cluster view was asked
        self._refreshing: asyncio.Future | None = None  # the refresh in flight, shared
        self.dispatch = {
            P.REGISTER_WORKER: self.on_register, P.REGISTER_CLIENT: self.on_register,
            P.REQUEST_LEASE: self.on_request_lease, P.RETURN_LEASE: self.on_return_lease,
            P.WORKER_BLOCKED: self.on_blocked, P.WORKER_UNBLOCKED: self.on_unblocked,
            P.STORE_CREATE: self.on_store_create, P.STORE_SEAL: self.on_store_seal,
            P.STORE_ABORT: self.on_store_abort, P.STORE_PIN: self.on_store_pin,
            P.STORE_UNPIN: self.on_store_unpin, P.STORE_FREE: self.on_store_free,
            P.KILL_WORKER: self.on_kill_worker, P.NODE_STATUS: self.on_status,
            P.NODE_MEMORY: self.on_memory, P.NODE_PULL: self.on_pull,
            P.NODE_CLUSTER_VIEW: self.on_cluster_view,
            P.DETACH_LEASE: self.on_detach_lease,
            P.DEVICE_CREATE: self.on_device_create, P.DEVICE_PIN: self.on_device_pin,
            P.DEVICE_UNPIN: self.on_device_unpin, P.DEVICE_EVACUATE: self.on_device_evacuate,
            P.DEVICE_SERVE: self.on_device_serve, P.NODE_DEVICE_SOURCE: self.on_device_source,
        }
        self.bundles = NodeBundles(self)
        self.dispatch.update(self.bundles.handlers())

    # ------------------------------------------------------------ lifecycle
    async def run(self):
        self.arena = SharedArena.create(self.arena_name, self.capacity, prefault=True)
        self.server = await tcp.listen(self.args.bind, self.args.port, lambda: Conn(self),
                                       self.token)
        self.port = self.server.sockets[0].getsockname()[1]
        self.data_addr = await self.transfer.start(self.args.bind)
        self.data_addr = (self.node_ip, self.data_addr[1]) if self.transfer.backend_name != "inproc" \
            else self.data_addr
        self.run_instructions(self.leases.prestart(int(self.args.num_cpus)))   # one per CPU, warm
        print(json.dumps({"port": self.port, "node_id": self.node_id.hex(), "pid": os.getpid(),
                          "arena": self.arena_name, "resources": self.total.to_dict(),
                          "transport": self.transfer.backend_name}), flush=True)
        self.tasks = Supervisor(log, self.fatal)
        self.tasks.keep_running("head_loop", self.head_loop)
        self.tasks.keep_running("reap_loop", self.reap_loop)
        await self.stopping.wait()
        await self.tasks.cancel_all()
        await self.shutdown()

    def fatal(self, why: str) -> None:
        """A background task keeps failing: stop loudly rather than limp on."""
        log.critical("node stopping: %s", why)
        self.exit_code = 1
        self.stopping.set()

    async def shutdown(self):
        self.bundles.close()
        self.server.close()
        await self.transfer.close()
        procs = [w.popen for w in self.workers.values()]
        for p in procs:
            _signal(p, signal.SIGTERM)
        deadline = time.monotonic() + WORKER_KILL_GRACE_S
        for p in procs:
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if p.poll() is None:
                _signal(p, signal.SIGKILL)
                p.wait()
        log_totals(self.tiers)
        self.device.close()
        self.tiers.close()
        self.arena.close()
        self.arena.unlink()

    def tick(self) -> int:
        """The store's logical clock (last access, for least-recently-used)."""
        return next(self.clock)

    def start_workers(self, count: int):
        for _ in range(count):
            wid = new_id()
            log_path = os.path.join(self.session_dir, "logs", f"worker-{wid[:6].hex()}.log")
            cmd = [sys.executable, "-m", "gdfut.worker_main", "--node", f"{self.node_ip}:{self.port}",
                   "--session-dir", self.session_dir, "--worker-id", wid.hex()]
            if self.head_addr:
                cmd += ["--head", f"{self.head_addr[0]}:{self.head_addr[1]}"]
            with open(log_path, "ab") as out:
                popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=_worker_env())
            self.workers[wid] = WorkerProc(wid, popen)

    def worker_start_failed(self, w):
        """A worker died before registering: retry after a back-off; after
        MAX_START_FAILURES in a row, answer the queued requests with the cause
        instead of letting their callers wait for a worker that never comes."""
        log_path = os.path.join(self.session_dir, "logs", f"worker-{w.wid[:6].hex()}.log")
        if w.popen.returncode is not None and w.popen.returncode < 0:
            # Killed from outside (a signal: the OOM killer, an operator, a
            # chaos test) says nothing about whether workers can start here:
            # start another, without counting towards failing the queue.
            log.warning("worker %s was killed by signal %d before registering; starting "
                        "another", short(w.wid), -w.popen.returncode)
            self.run_instructions(self.leases.worker_start_failed(1))
            asyncio.get_running_loop().call_later(
                START_BACKOFF_S, lambda: self.run_instructions(self.leases.dispatch()))
            return
        self.start_failures += 1
        log.warning("worker %s exited with %s before registering (%d in a row); see %s",
                    short(w.wid), w.popen.returncode, self.start_failures, log_path)
        self.run_instructions(self.leases.worker_start_failed(1))
        if self.start_failures >= MAX_START_FAILURES:
            self.start_failures = 0
            self.run_instructions(self.leases.reject_queued(
                f"{P.WORKERS_FAIL_TO_START} on node {short(self.node_id)} "
                f"({MAX_START_FAILURES} in a row); see {log_path}"))
            return
        backoff = min(START_BACKOFF_S * 2 ** (self.start_failures - 1), 5.0)
        asyncio.get_running_loop().call_later(
            backoff, lambda: self.run_instructions(self.leases.dispatch()))

    async def reap_loop(self):
        """Notice workers that exit without ever registering (or crash)."""
        while True:
            await asyncio.sleep(0.1)
            for w in list(self.workers.values()):
                if w.popen.poll() is not None and w.peer is None:
                    del self.workers[w.wid]
                    self.worker_start_failed(w)
            if os.getppid() == 1 and self.args.embedded:
                log.info("parent driver exited; stopping")
                self.stopping.set()

    async def head_loop(self):
        while not self.head_addr:     # embedded start: the head starts beside us
            self.head_addr = read_head_addr(self.session_dir)
            if not self.head_addr:
                await asyncio.sleep(0.02)
        failures = 0
        unreachable_since = None
        while True:
            try:
                if self.head_conn is None or self.head_conn.closed:
                    await self.register_with_head()
                self.tell_head([P.HEAD_HEARTBEAT, self.node_id, self.stats()])
                await self.refresh_cluster()
                failures, unreachable_since = 0, None
            except (OSError, tcp.ConnectionLost, tcp.RemoteError, asyncio.TimeoutError) as exc:
                if failures == 0:
                    log.warning("head not reachable: %s", exc)
                    unreachable_since = time.monotonic()
                failures += 1
                if time.monotonic() - unreachable_since > HEAD_RECONNECT_TIMEOUT_S:
                    self.fatal(f"the head at {self.head_addr[0]}:{self.head_addr[1]} was "
                               f"unreachable for {HEAD_RECONNECT_TIMEOUT_S:g} s "
                               f"(GDFUT_HEAD_RECONNECT_TIMEOUT_S): {exc}")
                    return
            await asyncio.sleep(HEARTBEAT_S if failures == 0 else
                                reconnect_delay(failures - 1, HEARTBEAT_S / 4, HEAD_RETRY_MAX_S))

    async def register_with_head(self):
        """(Re-)register: this node, then the full list of its live processes
        (a head that restarted learns from it which of its recorded processes
        died meanwhile), then the deaths it saw while the head was away."""
        self.head_conn = await tcp.connect(*self.head_addr, Conn(self), self.token,
                                           timeout=5.0)
        try:
            await asyncio.wait_for(
                self.head_conn.request(P.HEAD_REGISTER_NODE, self.node_info()), 10)
        except BaseException:
            self.head_conn.close()    # unregistered: register again next time
            raise
        again = self.joined_at is not None
        if not again:
            self.joined_at = time.monotonic()
        else:
            log.info("registered with the head again")
        local = [wid for wid, p in self.peers.items() if p.kind != "remote-client"]
        self.tell_head([P.HEAD_PROCESSES_STARTED, self.node_id, local, True])
        if self.unsent_deaths:
            self.tell_head([P.HEAD_PROCESSES_DIED, list(self.unsent_deaths)])
            self.unsent_deaths.clear()

    def tell_head(self, message: list) -> None:
        """A one-way message to the head; dropped while it is unreachable
        (``head_loop`` reconnects, then registers the node and its live
        processes again), except deaths, kept (bounded) to tell it then."""
        if self.head_conn is not None and not self.head_conn.closed:
            self.head_conn.send(message)
        elif message[0] == P.HEAD_PROCESSES_DIED:
            room = MAX_UNSENT_DEATHS - len(self.unsent_deaths)
            self.unsent_deaths.extend(message[1][:max(0, room)])

    async def refresh_cluster(self):
        """Fetch the head's view; concurrent callers share one request.
        A refresh that has finished is never shared, even before its done
        callback has run: awaiting a done future does not yield, so a caller
        looping until the view is fresh would spin forever on it."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh_cluster())
            self._refreshing.add_done_callback(self._refresh_done)
        await asyncio.shield(self._refreshing)

    def _refresh_done(self, fut):
        if self._refreshing is fut:
            self._refreshing = None
        if not fut.cancelled():
            fut.exception()        # retrieved: the awaiting callers re-raise it

    async def fresh_view(self, since: float) -> None:
        """Make the cluster view one asked for at or after ``since``."""
        while self.view_time < since:
            if self.head_conn is None or self.head_conn.closed:
                raise tcp.ConnectionLost("the head is not reachable")
            await self.refresh_cluster()

    async def _refresh_cluster(self):
        asked = time.monotonic()
        if self.head_conn is None or self.head_conn.closed:
            raise tcp.ConnectionLost("the head is not reachable")
        nodes = await asyncio.wait_for(self.head_conn.request(P.HEAD_LIST_NODES), 10)
        self.cluster = {n["node_id"]: n for n in nodes
                        if isinstance(n, dict) and isinstance(n.get("node_id"), bytes)}
        self.view_time = asked
        seq, dead = await asyncio.wait_for(
            self.head_conn.request(P.HEAD_DEAD_PROCESSES, self.dead_seq), 10)
        self.dead_seq = seq
        for wid in dead:
            self.free_objects_of(wid)
            self.cancel_work_of(wid)

    def free_objects_of(self, owner_wid):
        """Fate sharing: what a dead owner owned can never be reached again."""
        if owner_wid in self.peers:       # still connected here: not dead after all
            return
        for oid in list(self.objects_of_owner.get(owner_wid, ())):
            self.delete_object(oid)

    def cancel_work_of(self, owner_wid):
        """Fate sharing for tasks: the head declared ``owner_wid`` dead (its
        node died or stopped answering), so the workers it leased here run
        work nobody will collect, and its queued requests wait for nobody.
        Usually its connection closed already and ``on_peer_closed`` did
        this; a connection still open (the owner's host froze or is cut
        off) is closed now, which releases the same way."""
        peer = self.peers.get(owner_wid)
        if peer is not None:
            if peer.kind == "remote-client":       # a local one is judged by its own close
                log.info("closing the connection of %s: the head declared it dead",
                         short(owner_wid))
                peer.conn.close()
            return
        self.run_instructions(self.leases.client_died(owner_wid))

    def node_views(self) -> list:
        """Placement-policy snapshot: this node exact, the others as last heard.
        A dead node is listed (affinity to it says "dead") with nothing to
        offer; a row whose resources do not parse is left out and logged."""
        views = []
        for node_id, n in self.cluster.items():
            if node_id == self.node_id:
                continue
            view = _node_view(node_id, n)
            if view is not None:
                views.append(view)
        views.append(policy.NodeView(self.node_id, self.total, self.leases.available,
                                     self.leases.queue_length, True))
        views.sort(key=lambda v: v.node_id)
        return views

    def node_info(self):
        return {"node_id": self.node_id, "addr": [self.node_ip, self.port],
                "resources": self.total.to_dict(), "pid": os.getpid(),
                "session_dir": self.session_dir, "arena": self.arena_name,
                "object_store_memory": self.capacity,
                "data_addr": list(self.data_addr) if self.data_addr else None,
                "transport": self.transfer.backend_name}

    def stats(self):
        lease = self.leases.stats()
        return {"resources_total": lease["total"], "resources_available": lease["available"],
                "leases": lease, "store": self.store.stats(), "tiers": self.tiers.stats(),
                "transfer": self.transfer.stats,
                "workers": len(self.workers), "prefaulted_bytes": self.arena.prefaulted_bytes}

    # ---------------------------------------------------------- instructions
    def run_instructions(self, instructions):
        for ins in instructions:
            kind = type(ins)
            if kind is GrantLease:
                self.grant(ins)
            elif kind is StartWorker:
                self.start_workers(ins.count)
            elif kind is Reject or kind is QueueFull:
                conn, req_id = self.pop_pending(ins.request_id)
                text = ins.message if kind is Reject else f"{P.LEASE_QUEUE_FULL} ({ins.max_queue})"
                conn.conn.reply_error(req_id, text)
            elif kind is KillWorker:
                self.kill_worker(ins.worker_id, ins.reason)
            elif kind is LeaseLost or kind is RequestCancelled:
                if getattr(ins, "request_id", None) in self.pending_leases:
                    self.pop_pending(ins.request_id)
            else:
                raise AssertionError(f"unknown instruction {ins!r}")

    def pop_pending(self, request_id):
        peer, req_id = self.pending_leases.pop(request_id)
        peer.requests.discard(request_id)
        return peer, req_id

    def grant(self, ins: GrantLease):
        peer, req_id = self.pop_pending(ins.request_id)
        worker = self.workers[ins.worker_id]
        peer.conn.reply(req_id, {"lease_id": ins.lease_id, "worker_id": ins.worker_id,
                                 "addr": worker.addr, "gpu_ids": list(ins.gpu_ids),
                                 "node_id": self.node_id})

    def kill_worker(self, wid, reason):
        w = self.workers.get(wid)
        if w is None:
            return
        if self.device.policy.objects_of(wid):    # its device objects go to host first
            self.tasks.spawn("evacuate", self._evacuate_then_kill(w, reason))
            return
        log.info("killing worker %s: %s", short(wid), reason)
        _signal(w.popen, signal.SIGKILL)

    async def _evacuate_then_kill(self, w, reason):
        await self.device.evacuate(w.wid)
        log.info("killing worker %s: %s", short(w.wid), reason)
        _signal(w.popen, signal.SIGKILL)

    # ------------------------------------------------------------- handlers
    def registration_problem(self, peer: Conn, m) -> str | None:
        """Why this registration is refused, or None. One process id per
        connection and one live connection per process id: what a connection
        holds is released under that id when it closes."""
        _, _, wid, _, _, kind = m
        if peer.wid is not None:
            return None if peer.wid == wid else (
                f"this connection registered process {short(peer.wid)} already")
        if kind not in ("worker", "driver", "remote-client"):
            return f"unknown process kind {kind!r}"
        if (m[0] == P.REGISTER_WORKER) != (kind == "worker"):
            return f"kind {kind!r} does not match the message"
        if wid in self.peers:
            return f"process {short(wid)} is registered on another connection"
        if m[0] == P.REGISTER_WORKER:
            w = self.workers.get(wid)
            if w is None or w.peer is not None:
                return f"worker {short(wid)} was not started by this node or registered already"
        return None

    def on_register(self, peer: Conn, m):
        _, req_id, wid, pid, addr, kind = m
        problem = self.registration_problem(peer, m)
        if problem is not None:
            log.warning("refusing registration of %s: %s", short(wid), problem)
            peer.conn.reply_error(req_id, f"registration refused: {problem}")
            return
        if peer.wid == wid:        # the same registration again: answer it again
            peer.conn.reply(req_id, self.register_reply())
            return
        peer.wid, peer.kind = wid, kind
        self.peers[wid] = peer
        peer.conn.reply(req_id, self.register_reply())
        if kind != "remote-client":   # so the head can declare it dead if this node dies
            self.tell_head([P.HEAD_PROCESSES_STARTED, self.node_id, [wid]])
        if m[0] == P.REGISTER_WORKER:
            w = self.workers[wid]
            w.peer, w.addr = peer, addr
            self.start_failures = 0
            self.run_instructions(self.leases.worker_started(wid))

    def register_reply(self) -> dict:
        return {"node_id": self.node_id, "arena_name": self.arena_name,
                "head_addr": list(self.head_addr) if self.head_addr else None,
                "resources": self.total.to_dict(), "transport": self.transfer.backend_name}

    def on_request_lease(self, peer: Conn, m):
        _, req_id, resources, is_actor, actor_id, hints = m
        kind = hints.get("strategy")
        if isinstance(kind, list) and kind and kind[0] == "PG":
            self.bundles.on_request_lease(peer, m)
            return
        if is_actor:
            opts = resources or {}
            placement, held = actor_resources(opts.get("CPU"), opts.get("GPU"),
                                              {k: v for k, v in opts.items()
                                               if k not in ("CPU", "GPU")})
        else:
            held = placement = ResourceSet.from_dict(resources or {})
        shape = (placement, held, bool(is_actor))
        if hints.get("spilled"):
            self.queue_lease(peer, req_id, shape)
            return
        decision = self.place(placement, hints)
        if isinstance(decision, policy.Unschedulable):
            # our view may be a heartbeat old: decide again on a fresh one
            self.tasks.spawn("placement on a fresh view", self.answer_on_fresh_view(
                peer, req_id, shape, hints, time.monotonic()))
            return
        self.carry_out_placement(peer, req_id, shape, decision)

    def carry_out_placement(self, peer: Conn, req_id, shape, decision):
        if isinstance(decision, policy.Unschedulable):
            peer.conn.reply_error(req_id, f"Unschedulable: {decision.message}")
        elif isinstance(decision, policy.Place) and decision.node_id != self.node_id:
            target = self.cluster[decision.node_id]
            self.note_remote_placement(target, shape[0])
            peer.conn.reply(req_id, {"spillback": target["addr"], "node_id": decision.node_id})
        else:
            self.queue_lease(peer, req_id, shape)

    def queue_lease(self, peer: Conn, req_id, shape):
        placement, held, is_actor = shape
        request_id = next(self.request_ids)
        self.pending_leases[request_id] = (peer, req_id)
        peer.requests.add(request_id)
        self.run_instructions(self.leases.request_lease(request_id, held, peer.wid,
                                                        is_actor=is_actor, placement=placement))

    async def answer_on_fresh_view(self, peer: Conn, req_id, shape, hints, asked: float):
        try:
            await self.place_on_fresh_view(peer, req_id, shape, hints, asked)
        except Exception as exc:      # the request is answered whatever happens
            log.exception("placing a lease request failed")
            if not peer.closed:
                peer.conn.reply_error(req_id, f"{type(exc).__name__}: {exc}")

    async def place_on_fresh_view(self, peer: Conn, req_id, shape, hints, asked: float):
        """A request found unschedulable is failed only on a view of the
        cluster asked for after it arrived; while this node is new to the
        cluster (``INFEASIBLE_GRACE_S``) it waits for nodes still joining."""
        warned = False
        while True:
            try:
                await self.fresh_view(asked)
            except (OSError, tcp.ConnectionLost, tcp.RemoteError, asyncio.TimeoutError) as exc:
                log.warning("cluster view not refreshed: %s", exc)
            if peer.closed:
                return
            decision = self.place(shape[0], hints)
            now = time.monotonic()
            grace_end = (self.joined_at if self.joined_at is not None else asked) \
                + INFEASIBLE_GRACE_S
            if not isinstance(decision, policy.Unschedulable) or now >= grace_end:
                break
            if not warned:
                warned = True
                log.warning("a request for %s is infeasible on every known node; waiting up "
                            "to %.1f s for nodes still joining: %s", shape[0].to_dict(),
                            grace_end - now, decision.message)
            await asyncio.sleep(min(HEARTBEAT_S, grace_end - now))
            asked = time.monotonic()
        if not peer.closed:
            self.carry_out_placement(peer, req_id, shape, decision)

    @staticmethod
    def note_remote_placement(target: dict, needs: ResourceSet) -> None:
        """Count a request sent to another node against our view of its free
        resources until its next heartbeat, so that a burst of requests
        spreads instead of all chasing one stale snapshot (Ray does the same)."""
        stats = target.get("stats")
        if not stats or stats.get("resources_available") is None:
            return
        free = ResourceSet.from_dict(stats["resources_available"])
        if needs.fits_in(free):
            stats["resources_available"] = free.subtract(needs).to_dict()

    def place(self, needs: ResourceSet, hints: dict):
        strategy = policy.DEFAULT
        kind = hints.get("strategy")
        if kind == "SPREAD":
            strategy = policy.SPREAD
        elif isinstance(kind, list) and kind[0] == "AFFINITY":
            strategy = policy.NodeAffinity(kind[1], soft=bool(kind[2]))
        request = policy.PlacementRequest(needs, self.node_id,
                                          dict(hints.get("arg_bytes") or {}), strategy)
        decision = policy.choose_node(request, self.node_views(), self.spread_counter)
        if strategy is policy.SPREAD and isinstance(decision, policy.Place):
            self.spread_counter += 1
        log.debug("placement: %s", decision.explain())
        return decision

    def on_return_lease(self, peer, m):
        _, lease_id, worker_died = m
        holder = self.leases.client_of(lease_id)
        if holder != peer.wid:
            if holder is not None:
                log.warning("process %s returned lease %s held by %s; ignored",
                            short(peer.wid), lease_id, short(holder))
            return
        self.run_instructions(self.leases.return_lease(lease_id, worker_reusable=not worker_died))

    def on_detach_lease(self, peer, m):
        """A detached actor's creator hands the lease on its worker to the
        worker itself (``LeaseManager.detach``)."""
        if not self.leases.detach(m[1], peer.wid):
            log.warning("process %s cannot detach lease %s (not its actor lease)",
                        short(peer.wid), m[1])

    def on_blocked(self, peer, m):
        self.run_instructions(self.leases.worker_blocked(peer.wid))

    def on_unblocked(self, peer, m):
        self.run_instructions(self.leases.worker_unblocked(peer.wid))

    def on_store_create(self, peer, m):
        """A slot for a new object; when the host tier is full the answer
        comes once spilling made room (or says why it never can)."""
        _, req_id, oid, size, primary, owner = m
        if primary and self.copy_for_rewrite(oid, size, peer.wid):
            self.note_owner(oid, owner)
            peer.conn.reply(req_id, {"exists": True})
            return

        def done(offset, message):
            if peer.closed:
                return
            if message is not None:
                space = self.store.stats()
                peer.conn.reply(req_id, {"error": "full", "message": message, "needed": size,
                                         "capacity": space["capacity"],
                                         "used": space["used_bytes"],
                                         "largest_free": space["largest_free"]})
                return
            self.note_owner(oid, owner)
            if isinstance(offset, tuple):    # larger than the host tier: into a file
                peer.conn.reply(req_id, {"file": offset[0], "file_offset": offset[1]})
                return
            peer.conn.reply(req_id, {"offset": offset})
        self.tiers.create(oid, size, primary, peer.wid, done)

    def note_owner(self, oid, owner):
        """Fate sharing: ``oid`` is freed here when ``owner`` dies."""
        self.object_owner[oid] = owner
        self.objects_of_owner.setdefault(owner, set()).add(oid)

    # device tier: device objects live in the worker that made them
    def on_device_create(self, peer, m):
        _, req_id, oid, size, host_size, gpu, owner = m[:7]
        self.device.create(peer, req_id, oid, size, host_size, gpu, owner,
                           restored=bool(m[7]) if len(m) > 7 else False)

    def on_device_pin(self, peer, m):
        _, req_id, oid = m
        peer.conn.reply(req_id, self.device.pin(oid, peer.wid))

    def on_device_serve(self, peer, m):
        peer.device_addr = list(m[1])

    def on_device_source(self, peer, m):
        """Where the holder of a device object on ``source_node`` serves
        device pulls (``device_transfer``): asked of that node's data plane."""
        async def ask():
            _, req_id, oid, source_node = m
            addr = None
            try:
                if source_node == self.node_id:
                    addr = self.device.source(oid)
                else:
                    source = self.cluster.get(source_node)
                    if source is None or not source.get("data_addr"):
                        await self.refresh_cluster()
                        source = self.cluster.get(source_node)
                    if source is not None and source.get("data_addr"):
                        addr = await self.transfer.device_source(oid, tuple(source["data_addr"]))
            except Exception as exc:   # any failure: the reader takes the host path
                log.info("no device source for %s: %s: %s", short(oid), type(exc).__name__, exc)
            if not peer.closed:
                peer.conn.reply(req_id, addr)
        self.tasks.spawn("device source", ask())

    def on_device_unpin(self, peer, m):
        self.device.unpin(m[1], peer.wid)

    def on_device_evacuate(self, peer, m):
        async def evacuate():
            await self.device.evacuate(peer.wid)
            if not peer.closed:
                peer.conn.reply(m[1], True)
        self.tasks.spawn("evacuate", evacuate())

    def copy_for_rewrite(self, oid, size, writer) -> bool:
        """A task's return is written again here (a retry: the last attempt
        died after writing it and before its reply reached the owner; or a
        rebuild: the owner found every copy it knew of lost) while this node
        has a copy: one left by that attempt, or a secondary a reader pulled
        before the primary was lost. A sealed copy of the same size is a value
        of that task: it becomes the primary and the writer is told to use it
        (True). A copy the earlier attempt left unfinished, or of another
        size and unpinned, is dropped so that the write can go ahead."""
        stale = self.store.get(oid)
        tier = self.tiers.policy.tier_of(oid)
        if tier is None and stale is None:
            return False                      # nothing here: the usual case
        sealed_size = stale.size if stale is not None else self.tiers.policy.size_of(oid)
        sealed = tier is not None and (stale is None or stale.state == SEALED)
        if sealed and sealed_size == size and not (stale is not None and stale.delete_pending):
            log.info("object %s written again by %s: using the copy here", short(oid),
                     short(writer))
            self.tiers.make_primary(oid)
            return True
        readers = stale is not None and any(h != stale.creator for h in stale.pins)
        if readers or (stale is not None and stale.creator == writer):
            return False                      # in use: the create fails, saying it exists
        log.info("object %s written again by %s: dropping the earlier copy", short(oid),
                 short(writer))
        if stale is not None and stale.state == CREATED:
            self.tiers.abort(oid, stale.creator)
            self.forget_owner(oid)
        else:
            self.delete_object(oid)
        return False

    async def create_secondary(self, oid, size) -> int:
        """A slot for a copy pulled from another node (evicted, not spilled,
        when room is needed later)."""
        fut = asyncio.get_running_loop().create_future()

        def done(offset, message):
            if not fut.done():
                fut.set_result((offset, message))
        key = self.tiers.create(oid, size, False, self.transfer_holder, done)
        try:
            offset, message = await fut
        except BaseException:           # the pull was cancelled while it waited
            granted = fut.done() and not fut.cancelled() and fut.result()[0] is not None
            if granted:
                self.tiers.abort(oid, self.transfer_holder)
            else:
                self.tiers.cancel_create(key)
            raise
        if message is not None:
            raise TransferError(f"no room for a copy of object {short(oid)} ({size} bytes) on "
                                f"node {short(self.node_id)}: {message}")
        return offset

    def on_pull(self, peer, m):
        self.tasks.spawn("pull", self._pull_for(peer, m))

    async def _pull_for(self, peer, m):
        _, req_id, oid, size, source_node = m
        try:
            if not self.store.contains(oid):
                source = self.cluster.get(source_node)
                if source is None or not source.get("data_addr"):
                    await self.refresh_cluster()
                    source = self.cluster.get(source_node)
                if source is None or source.get("state") != "ALIVE":
                    raise TransferError(f"node {short(source_node)} holding object "
                                        f"{short(oid)} is not alive")
                await self.transfer.pull(oid, size, tuple(source["data_addr"]))
        except (TransferError, OSError, ConnectionError, asyncio.TimeoutError) as exc:
            peer.conn.reply_error(req_id, f"{type(exc).__name__}: {exc}")
            return
        if peer.closed:            # it went while we pulled: nobody to hold the pin
            return
        loc = self.tiers.pin(oid, peer.wid)
        peer.conn.reply(req_id, list(loc) if loc is not None else None)

    def on_cluster_view(self, peer, m):
        peer.conn.reply(m[1], [{"node_id": n["node_id"], "addr": n["addr"],
                                "data_addr": n.get("data_addr"), "state": n.get("state"),
                                "resources": n.get("resources"),
                                # None until this view holds a heartbeat of that node
                                # (placement counts it as having nothing free till then)
                                "available": (n.get("stats") or {}).get("resources_available")}
                               for n in self.cluster.values()])

    def on_store_seal(self, peer, m):
        _, req_id, oid = m
        peer.conn.reply(req_id, self.tiers.seal(oid, peer.wid))

    def on_store_abort(self, peer, m):
        self.tiers.abort(m[1], peer.wid)
        self.forget_owner(m[1])

    def forget_owner(self, oid):
        owner = self.object_owner.pop(oid, None)
        if owner is not None:
            oids = self.objects_of_owner.get(owner)
            if oids is not None:
                oids.discard(oid)
                if not oids:
                    del self.objects_of_owner[owner]

    def delete_object(self, oid):
        self.tiers.free(oid)
        self.forget_owner(oid)

    def on_store_pin(self, peer, m):
        """Pin for a reader; a spilled object is restored first (answered then).
        A reader that names its GPUs (it read a device object) maps the
        device copy where it is on one of them (``{"device": export}``), else
        gets the host copy and whether to restore it onto its device."""
        req_id, oid = m[1], m[2]
        gpus = m[3] if len(m) > 3 else None
        if gpus and self.device.importable(oid, gpus, peer.wid):
            self.tasks.spawn("device import", self._import_for(peer, req_id, oid, gpus))
            return

        def done(loc):
            if peer.closed:
                return
            loc = list(loc) if loc is not None else None
            if gpus:         # the device copy is on another GPU (it stays there), or gone
                loc = {"host": loc, "to_device": not self.device.policy.holds(oid)}
            peer.conn.reply(req_id, loc)
        self.tiers.pin_or_restore(oid, peer.wid, lambda: not peer.closed, done)

    async def _import_for(self, peer, req_id, oid, gpus):
        export = await self.device.import_for(oid, peer.wid)
        if peer.closed:
            if export is not None:
                self.device.release_pins(peer.wid)
            return
        if export is not None:
            peer.conn.reply(req_id, {"device": export})
        else:                   # the host path, as for any other reader
            self.on_store_pin(peer, [P.STORE_PIN, req_id, oid, [-1]])

    def on_store_unpin(self, peer, m):
        for oid, count in m[1]:
            self.tiers.unpin(oid, peer.wid, count)

    def on_store_free(self, peer, m):
        for oid in m[1]:
            self.delete_object(oid)

    def on_kill_worker(self, peer, m):
        _, req_id, wid, reason = m
        self.kill_worker(wid, reason)
        if req_id:
            peer.conn.reply(req_id, True)

    def on_status(self, peer, m):
        peer.conn.reply(m[1], {**self.node_info(), **self.stats()})

    def on_memory(self, peer, m):
        self.tasks.spawn("memory listing", self._memory(peer, m[1]))

    async def _memory(self, peer, req_id):
        owners = [p for p in self.peers.values() if p.conn is not None and not p.conn.closed
                  and p is not peer]
        rows = []
        results = await asyncio.gather(
            *(asyncio.wait_for(p.conn.request(P.OWNER_MEMORY), MEMORY_QUERY_TIMEOUT_S)
              for p in owners), return_exceptions=True)
        for r in results:
            if isinstance(r, list):
                rows.extend(r)
        store = [{"object_id": o.object_id, "size": o.size, "state": o.state,
                  "pins": sum(o.pins.values()), "primary": o.primary, "tier": "host"}
                 for o in self.store.objects()]
        store += [{"object_id": oid, "size": where.size, "state": "SEALED",
                   "pins": self.tiers.disk_pins(oid), "primary": True, "tier": "disk"}
                  for oid, where in self.tiers.disk.layout.places.items()
                  if self.tiers.policy.tier_of(oid) == "disk"]
        store += self.device.rows()
        peer.conn.reply(req_id, {"owners": rows, "store": store, "node_id": self.node_id,
                                 "tiers": self.tiers.stats()})

    def on_peer_closed(self, peer: Conn):
        """Release everything the connection held: its queued lease requests
        and (under its process id) its leases, store writes and pins."""
        for request_id in list(peer.requests):
            self.pending_leases.pop(request_id, None)
        peer.requests.clear()
        if peer.wid is None:     # unregistered: it could hold nothing else
            return
        if self.peers.get(peer.wid) is peer:
            del self.peers[peer.wid]
        self.tiers.release_holder(peer.wid)
        self.device.holder_gone(peer.wid)
        self.free_objects_of(peer.wid)
        if peer.kind != "remote-client":
            self.tell_head([P.HEAD_PROCESSES_DIED, [peer.wid]])   # tell the other nodes
        if peer.wid in self.workers:
            w = self.workers.pop(peer.wid)
            self.run_instructions(self.leases.worker_died(peer.wid))
            if w.popen.poll() is None:
                _signal(w.popen, signal.SIGKILL)
            asyncio.get_running_loop().run_in_executor(None, w.popen.wait)
        # a worker is a client too (leases for the tasks it submitted)
        self.run_instructions(self.leases.client_died(peer.wid))


def _node_view(node_id, n: dict):
    """The policy's view of another node from the head's row, or None when
    the row cannot be read (logged). A dead node offers nothing."""
    alive = n.get("state") == "ALIVE"
    if not alive:
        return policy.NodeView(node_id, ResourceSet(), ResourceSet(), 0, False)
    try:
        st = n.get("stats") or {}
        total = ResourceSet.from_dict(st.get("resources_total") or n.get("resources") or {})
        avail = ResourceSet.from_dict(st.get("resources_available") or {})
        queued = (st.get("leases") or {}).get("queued_requests", 0)
        return policy.NodeView(node_id, total, avail, int(queued), True)
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("ignoring node %s in placement: unreadable view (%s)", short(node_id), exc)
        return None


def detect_gpus() -> tuple[int, int]:
    """(number of NVIDIA GPUs, their total memory in bytes) from nvidia-ml-py;
    (0, 0) when there is no package, no driver or no device."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:   # no package, or NVMLError_LibraryNotFound: CPU mode
        return 0, 0
    try:
        count = pynvml.nvmlDeviceGetCount()
        memory = sum(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
                     for i in range(count))
        return count, memory
    except Exception as exc:
        log.warning("NVML present but the GPUs could not be listed: %s", exc)
        return 0, 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def declared_resources(num_gpus, resources_json: str | None) -> tuple[float, dict]:
    """GPUs and custom resources of this node: the flags, else what NVML finds.
    Found GPUs also declare their memory as the ``GPU_memory`` resource; the
    ``memory`` resource (bytes, what ``memory=`` asks for) is the machine's
    total memory unless declared (as Ray)."""
    resources = json.loads(resources_json or "{}")
    if isinstance(resources, dict) and MEMORY not in resources:
        import psutil
        resources[MEMORY] = psutil.virtual_memory().total
    if num_gpus is None:
        num_gpus, memory = detect_gpus()
        if num_gpus and memory and GPU_MEMORY not in resources:
            resources[GPU_MEMORY] = memory
    return num_gpus, resources


def max_lease_queue() -> int:
    """Bound on lease requests waiting at this node (``GDFUT_MAX_LEASE_QUEUE``);
    a request beyond it is refused with ``LEASE_QUEUE_FULL`` and its sender
    backs off and asks again."""
    raw = os.environ.get("GDFUT_MAX_LEASE_QUEUE", "100000")
    try:
        value = int(raw)
    except ValueError:
        raise SystemExit(f"GDFUT_MAX_LEASE_QUEUE must be an integer, got {raw!r}") from None
    if value < 1:
        raise SystemExit(f"GDFUT_MAX_LEASE_QUEUE must be >= 1, got {value}")
    return value


def max_concurrent_starts() -> int:
    """How many worker processes may start at once: one per core of this host
    (what their imports compete for), as Ray's maximum_startup_concurrency.
    More at once only makes each start slower, until they miss the start-up
    deadline together."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores)


def read_head_addr(session_dir):
    info = cluster.read_head_info(session_dir)
    try:
        return (info["host"], info["port"]) if info is not None else None
    except KeyError:
        return None


def _signal(popen, sig):
    try:
        popen.send_signal(sig)
    except ProcessLookupError:
        pass


def _worker_env():
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _check_tiers(args) -> None:
    """The node started by hand (or by an old driver) checks its store
    options too: one line on stderr, which the starter shows, and exit 2."""
    from .tier_options import TierOptionError, check_cli_args
    try:
        check_cli_args(args)
    except TierOptionError as exc:
        print(f"gdfut.node: error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="gdfut.node")
    ap.add_argument("--session-dir", required=True)
    ap.add_argument("--head-addr", default=None)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--node-ip", default=None,
                    help="address other nodes use to reach this one (default: --bind)")
    ap.add_argument("--num-cpus", type=float, default=os.cpu_count())
    ap.add_argument("--num-gpus", type=float, default=None,
                    help="GPUs to declare (default: count them with NVML; without a GPU, "
                         "N declares emulated GPUs for CPU mode)")
    ap.add_argument("--resources", default="{}")
    ap.add_argument("--object-store-memory", type=int, default=2 * 1024**3)
    ap.add_argument("--spill-dir", default=None,
                    help="directory for spill files (default: <session-dir>/spill)")
    ap.add_argument("--device-store-memory", type=int, default=None,
                    help="device tier bytes per GPU (default: half of each GPU's memory; "
                         "emulated GPUs in CPU mode: 1 GiB or half the store, the smaller)")
    ap.add_argument("--embedded", action="store_true")
    ap.add_argument("--transport", default=None, help="data plane: tcp (default) or ucx")
    args = ap.parse_args(argv)
    _check_tiers(args)
    args.num_gpus, resources = declared_resources(args.num_gpus, args.resources)
    args.resources = json.dumps(resources)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        filename=os.path.join(args.session_dir, "logs", f"node-{os.getpid()}.log"))
    daemon = NodeDaemon(args)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    try:
        loop.run_until_complete(daemon.run())
    finally:
        if daemon.arena is not None:
            daemon.arena.unlink()
        daemon.tiers.close()
    sys.exit(daemon.exit_code)


if __name__ == "__main__":
    main()
