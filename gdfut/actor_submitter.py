"""Actor calls (caller side): creation, ordered method calls, death.

The creator leases a dedicated worker from its node and pushes the creation
task; method calls follow on the same connection. Calls from one caller run
in submission order: they are sent strictly in that order, each once its
arguments are resolved. Other processes holding a handle ask the actor's
owner (its creator) where the actor lives and then call it directly.

Restarts (``max_restarts``): the owner notices that the actor's worker died
(its connection to it closes), asks the pure ``ActorRestarts`` whether to
restart, and if so leases a new worker and pushes ``__init__`` again with
the original arguments (kept alive for that). Calls in flight then are
retried on the new worker up to ``max_task_retries`` or fail with
ActorDiedError; calls made meanwhile queue. Other callers whose connection
closes ask the owner again where the actor is; the owner answers once the
actor is back (or that it is dead), and only then do their lost calls that
are not retried fail (with that verdict: died while running the call, or
dead and why).

A detached actor with ``max_restarts`` is handed over to the head once its
first ``__init__`` succeeded (``_send_spec``: the spec with its arguments
captured by value); the head restarts it from then on (``head_actors``),
and its creator, like callers that cannot reach the creator, asks the head
where it is (``_head_location``).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import pickle

from . import protocol as P
from .exceptions import ActorDiedError, GdfutError, UnschedulableError
from .ids import new_task_id, short
from .actor_restarts import ActorRestarts, Restart
from .object_ref import ObjectRef
from .submitter import (TaskSpec, DONE_OK, ERROR, INLINE, STORE, generator_options,
                        lease_from_cluster)
from . import serialization as ser
from .transport import tcp

log = logging.getLogger("gdfut.actors")

PENDING, ALIVE, DEAD = "PENDING", "ALIVE", "DEAD"
MAX_QUEUED_CALLS = 1_000_000
KILL_TIMEOUT_S = 10.0       # each step of kill(): free the name, tell the node
MAX_SPEC_BYTES = 32 * 1024 * 1024   # a detached actor's spec (class + arguments) the head keeps
HEAD_ATTEMPTS = 60          # asking the head where an actor is, once a second (head restarts)
HEAD_RETRY_S = 1.0
LOCATE_ATTEMPTS = 5         # locations found dead in a row before the actor counts as dead
NOT_AT_HEAD = "is not a detached actor known to the head"
EXIT_GRACE_S = 10.0         # an actor that called exit_actor() gets this long to exit
# TASK_DONE status from an actor that ended itself with exit_actor() (beside
# submitter's DONE_* codes): the call failed and the actor is gone.
DONE_ACTOR_EXIT = 8


class ActorClient:
    """What this process knows about one actor."""

    def __init__(self, actor_id, owner_wid, owner_addr, class_name, is_creator):
        self.actor_id = actor_id
        self.owner_wid = owner_wid
        self.owner_addr = tuple(owner_addr)
        self.class_name = class_name
        self.is_creator = is_creator
        self.state = PENDING
        self.conn = None
        self.worker_id = None
        self.addr = None
        self.queue: collections.deque = collections.deque()   # in submission order
        self.in_flight: dict[bytes, TaskSpec] = {}
        self.death_reason = ""
        self.killed = False
        self.locating = False
        self.location_waiters: list = []
        self.node_id = None
        self.lease_id = None
        self.out_of_scope = False   # creator only: every handle is gone
        self.gpu_ids: tuple = ()    # creator only: devices its lease holds
        self.named = False          # creator only: registered under a name at the head
        self.exited = False         # it ended itself with exit_actor()
        self.locate_task = None     # the ACTOR_LOCATION question to the owner, if asked
        self.kill_waiting = False   # kill() waits for that answer to kill the worker
        # Restart policy: the owner's counts restarts; another caller's holds the
        # options the owner told it (with the location), for its own lost calls.
        self.restarts = ActorRestarts()
        self.init_spec = None       # creator only: the creation task, run again on a restart
        self.init_held: list = []   # creator only: refs its arguments need for a restart
        self.kill_cause = ""        # why the worker was killed with no_restart=False
        self.detached = False       # creator only: lifetime="detached" (handed over once placed)
        self.handed_over = None     # creator of a detached actor: done once handed over (or dead)
        # creator of a detached actor with max_restarts: its spec is being handed to
        # the head (a future, done when answered), then the head decides restarts
        self.spec_handing = None
        self.head_managed = False
        self.gone_while_handing = None   # the worker died while the spec was on its way
        # Calls in flight when its worker died, not to be retried, whose error
        # waits for the verdict of whoever restarts it (owner or head): the
        # actor is dead (ActorDiedError with its reason: out of restarts...) or
        # was restarted (the call-lost error). [(spec, why)]
        self.lost_waiting: list = []

    def describe(self):
        return f"actor {self.class_name}({short(self.actor_id)})"


class ActorSubmitter:
    def __init__(self, rt):
        self.rt = rt
        self.clients: dict[bytes, ActorClient] = {}
        self.by_conn: dict[object, ActorClient] = {}

    # ------------------------------------------------------ user thread
    def create(self, actor_id, cls_id, cls_bytes, class_name, args, kwargs, options,
               pinned=False, detached=False):
        sub = self.rt.submitter
        a, kw, held, deps, nested = sub.prepare_args(args, kwargs, f"{class_name}.__init__")
        spec = TaskSpec(new_task_id(), cls_id, cls_bytes, f"{class_name}.__init__", a, kw, 1,
                        options["resources"], 0, deps, nested, held, actor_id=actor_id,
                        method="__init__", actor_options=options["actor_options"],
                        strategy=options.get("strategy") or self.rt.captured_strategy())
        restarts = ActorRestarts(options.get("max_restarts", 0),
                                 options.get("max_task_retries", 0))
        self.rt.io.post(self._create_in_loop, spec, class_name, self.rt.call_site(), pinned,
                        restarts, detached)

    def submit(self, handle, method, args, kwargs, num_returns,
               backpressure=None) -> list[ObjectRef]:
        rt = self.rt
        name = f"{handle._class_name}.{method}"
        a, kw, held, deps, nested = rt.submitter.prepare_args(args, kwargs, name)
        n, mode, backpressure = generator_options(num_returns, backpressure)
        spec = TaskSpec(new_task_id(), b"", None, name, a, kw, n, {}, 0, deps, nested,
                        held, actor_id=handle._actor_id, method=method, generator=mode,
                        backpressure=backpressure, parent_tid=rt.submitting_task_id())
        refs = [ObjectRef(oid, rt.wid, rt.addr, rt, _count=False) for oid in spec.return_ids()]
        rt.io.post(self._submit_in_loop, spec, handle._actor_id, handle._owner_wid,
                   handle._owner_addr, handle._class_name, rt.call_site())
        return refs

    # -------------------------------------------------------- io thread
    def _register_task(self, spec, call_site):
        rt = self.rt
        for oid in spec.return_ids():
            rt.table.add_owned(oid, lineage=spec.tid, call_site=call_site)
            rt.table.add_local_ref(oid)
        rt.table.task_submitted(spec.tid, spec.deps + spec.nested)
        rt.submitter.open_stream(spec, call_site)
        rt.submitter.specs[spec.tid] = spec

    def _create_in_loop(self, spec, class_name, call_site, pinned, restarts, detached=False):
        rt = self.rt
        client = ActorClient(spec.actor_id, rt.wid, rt.addr, class_name, is_creator=True)
        client.named = pinned
        client.detached = detached
        if detached:
            client.handed_over = rt.io.loop.create_future()
        client.restarts = restarts
        client.init_spec = spec
        if restarts.max_restarts != 0:     # finish() lets go of them after the first run
            client.init_held = list(spec.held)
        self.clients[spec.actor_id] = client
        # Handles are counted under the actor id like refs to an object we own.
        rt.table.add_owned(spec.actor_id, call_site=call_site, local=1 if pinned else 0)
        for oid in spec.return_ids():
            rt.table.add_owned(oid, lineage=spec.tid, call_site=call_site)
        rt.table.task_submitted(spec.tid, spec.deps + spec.nested)
        rt.submitter.specs[spec.tid] = spec
        client.queue.append(spec)
        rt.submitter.resolve_dependencies(spec, lambda s: self._flush(client))
        rt.io.loop.create_task(self._place(client, spec))

    async def _place(self, client, spec):
        rt = self.rt
        try:
            grant, node_conn = await lease_from_cluster(
                rt, spec.resources, True, client.actor_id, {"strategy": spec.strategy})
        except tcp.RemoteError as exc:
            self._mark_dead(client, f"it cannot be scheduled: {exc}", UnschedulableError)
            return
        except (OSError, tcp.ConnectionLost, asyncio.TimeoutError) as exc:
            self._mark_dead(client, f"its worker could not be reached: {exc}")
            return
        # Known before connecting, so that a failure or a kill from here on
        # returns the lease (and with it the worker).
        client.worker_id = grant["worker_id"]
        client.addr = tuple(grant["addr"])
        client.lease_id = grant["lease_id"]
        client.gpu_ids = tuple(grant.get("gpu_ids") or ())
        client.node_id = grant["node_id"]
        if client.state == DEAD:    # killed while its lease was queued
            self._end_dead_worker(client)
            return
        try:
            conn = await rt.connect_peer(client.addr)
        except (OSError, tcp.ConnectionLost, tcp.RemoteError, asyncio.TimeoutError) as exc:
            self._mark_dead(client, f"its worker could not be reached: {exc}")
            return
        self._connected(client, conn)

    def _connected(self, client, conn):
        if client.state == DEAD:   # killed while being placed or located
            self._end_dead_worker(client)
            return
        client.conn = conn
        client.state = ALIVE
        self.by_conn[conn] = client
        self._fail_lost_calls(client)
        self.rt.conn_wid.setdefault(conn, client.worker_id)   # its close: that worker died
        if client.is_creator and client.detached and not client.head_managed:
            self._hand_over(client)     # (the head hands a restarted one over itself)
        for cb in client.location_waiters:
            cb()
        client.location_waiters.clear()
        self._flush(client)
        self._maybe_retire(client)

    def _hand_over(self, client):
        """A detached actor is placed: its worker holds its own lease (so
        this process's exit does not end it) and answers for it at the head
        (see ``head_state``). Sent before the first call is pushed, so both
        arrive before this process can exit after a call returned."""
        rt = self.rt
        rt.send_to_node(client.node_id, [P.DETACH_LEASE, client.lease_id])

        async def tell_head():
            try:
                head = await rt.head()
                await asyncio.wait_for(head.request(P.HEAD_ACTOR_PLACED, client.actor_id,
                                                    client.worker_id, list(client.addr)),
                                       KILL_TIMEOUT_S)
            except tcp.RemoteError:
                pass     # unnamed, or killed meanwhile: the head has no row for it
            except (OSError, tcp.ConnectionLost, asyncio.TimeoutError, GdfutError) as exc:
                log.warning("could not hand %s over to the head: %s", client.describe(), exc)
            finally:
                _settle(client.handed_over)
        rt.io.loop.create_task(tell_head())

    async def wait_hand_overs(self, timeout: float) -> None:
        """Shutdown: let detached actors still being placed be handed over
        first (else they would die with this process), for at most ``timeout``."""
        pending = [f for c in self.clients.values() for f in (c.handed_over, c.spec_handing)
                   if f is not None and not f.done()]
        if pending:
            log.info("waiting up to %g s for %d detached actor(s) to be placed", timeout,
                     len(pending))
            await asyncio.wait(pending, timeout=timeout)

    def _submit_in_loop(self, spec, actor_id, owner_wid, owner_addr, class_name, call_site):
        rt = self.rt
        self._register_task(spec, call_site)
        client = self.clients.get(actor_id)
        if client is None:
            client = ActorClient(actor_id, owner_wid, owner_addr, class_name, is_creator=False)
            self.clients[actor_id] = client
        if client.state == DEAD:
            self._fail_call(client, spec)
            return
        assert len(client.queue) < MAX_QUEUED_CALLS, "too many queued actor calls"
        client.queue.append(spec)
        rt.submitter.resolve_dependencies(spec, lambda s: self._flush(client))
        if client.state == PENDING and not client.is_creator and not client.locating:
            client.locating = True
            client.locate_task = rt.io.loop.create_task(self._locate(client))

    async def _locate(self, client, dead_worker=None):
        """Ask the owner where the actor runs (``dead_worker``: not there, it
        died; the owner answers once it has restarted the actor). A location
        that cannot be reached is a worker that died before its owner (or the
        head) heard of it: for a restartable actor ask again naming it, so
        the answer waits for the restart instead of failing the calls."""
        rt = self.rt
        try:
            for attempt in range(LOCATE_ATTEMPTS):
                loc = await self._ask_location(client, dead_worker)
                if len(loc) > 3 and isinstance(loc[3], dict):
                    client.restarts = ActorRestarts(int(loc[3].get("max_restarts", 0)),
                                                    int(loc[3].get("max_task_retries", 0)))
                try:
                    conn = await rt.connect_peer(tuple(loc[0]))
                    break
                except (OSError, tcp.ConnectionLost, asyncio.TimeoutError):
                    if client.restarts.max_restarts == 0 or attempt + 1 == LOCATE_ATTEMPTS:
                        raise
                    dead_worker = loc[1]
        except tcp.RemoteError as exc:
            self._mark_dead(client, str(exc))
            return
        except (OSError, tcp.ConnectionLost, asyncio.TimeoutError):
            self._mark_dead(client, "its owner or worker cannot be reached (died?)")
            return
        client.worker_id = loc[1]
        client.addr = tuple(loc[0])
        client.node_id = loc[2]
        client.locating = False
        self._connected(client, conn)

    async def _ask_location(self, client, dead_worker):
        if client.head_managed:
            return await self._head_location(client, dead_worker)
        try:
            return await self._owner_location(client, dead_worker)
        except (OSError, tcp.ConnectionLost, asyncio.TimeoutError, tcp.RemoteError) as exc:
            # its owner is gone or does not know it: the head knows a
            # detached actor it restarts (handles its creator passed out)
            loc = await self._head_location(client, dead_worker, exc)
            client.head_managed = True      # ask the head from now on
            return loc

    async def _owner_location(self, client, dead_worker):
        rt = self.rt
        if client.owner_wid == rt.wid:
            raise tcp.RemoteError("actor unknown to its owner")
        owner = await rt.connect_peer(client.owner_addr)
        question = [P.ACTOR_LOCATION, client.actor_id]
        if dead_worker is not None:
            question.append(dead_worker)
        return await owner.request(*question)

    async def _head_location(self, client, dead_worker, owner_error=None):
        """Ask the head where a detached actor it restarts runs; it answers
        once the actor is back (or that it is dead). ``owner_error``: why its
        owner could not answer, raised again if the head does not know it."""
        for attempt in range(HEAD_ATTEMPTS):
            try:
                head = await self.rt.head()
                return await head.request(P.HEAD_ACTOR_LOCATION, client.actor_id, dead_worker)
            except tcp.RemoteError as exc:
                if owner_error is not None and NOT_AT_HEAD in str(exc):
                    raise owner_error from None
                raise
            except (OSError, tcp.ConnectionLost, asyncio.TimeoutError, GdfutError) as exc:
                if attempt + 1 == HEAD_ATTEMPTS:     # the head is down (restarting?)
                    raise owner_error or tcp.ConnectionLost(str(exc)) from None
                await asyncio.sleep(HEAD_RETRY_S)
        raise AssertionError("unreachable")

    def _hand_spec_over(self, client, spec):
        """A detached actor with max_restarts ran its first __init__: give its
        creation spec to the head, every argument captured by value (so it
        does not depend on objects this process owns: the head restarts the
        actor also after this process exited). Refs nested inside arguments
        stay references (their owners must live for a restart to read them)."""
        client.spec_handing = self.rt.io.loop.create_future()
        self.rt.io.loop.create_task(self._send_spec(client, spec))

    async def _send_spec(self, client, spec):
        rt = self.rt
        try:
            args = [await self._by_value(e) for e in spec.args]
            kwargs = [[k, await self._by_value(e)] for k, e in spec.kwargs]
            size = sum(len(e[1]) for e in args) + sum(len(kv[1][1]) for kv in kwargs) \
                + len(spec.fn_bytes or b"")
            if size > MAX_SPEC_BYTES:
                raise ValueError(f"its class and creation arguments take {size} bytes, more "
                                 f"than the {MAX_SPEC_BYTES} the head keeps")
            opts = dict(spec.actor_options or {})
            blob = {"class_name": client.class_name, "fn_id": spec.fn_id,
                    "fn_bytes": spec.fn_bytes, "name": spec.name, "args": args,
                    "kwargs": kwargs, "resources": dict(spec.resources),
                    "strategy": spec.strategy, "actor_options": opts,
                    "max_restarts": client.restarts.max_restarts,
                    "max_task_retries": client.restarts.max_task_retries,
                    "restarts": client.restarts.restarts, "namespace": opts.get("namespace")}
            head = await rt.head()
            await asyncio.wait_for(head.request(P.HEAD_ACTOR_SPEC, client.actor_id,
                                                client.worker_id, list(client.addr),
                                                client.node_id, blob), KILL_TIMEOUT_S)
            client.head_managed = True
        except tcp.RemoteError as exc:        # its worker died already: we restart it
            log.info("%s not handed over to the head: %s", client.describe(), exc)
        except Exception as exc:
            log.warning("%s could not be handed over to the head (it is restarted only while "
                        "this process lives): %s", client.describe(), exc)
        finally:
            _settle(client.spec_handing)
        reason, client.gone_while_handing = client.gone_while_handing, None
        if reason is not None and client.state != DEAD:
            client.state = ALIVE       # as it was when its connection closed
            client.kill_cause = reason
            self._worker_gone(client)

    async def _by_value(self, entry) -> list:
        """An argument entry as an inline value (a stored one is read here)."""
        if entry[0] == INLINE:
            return entry
        assert entry[0] == STORE, entry[0]
        loop = self.rt.io.loop
        data = await loop.run_in_executor(None, self._read_inline, entry)
        return [INLINE, data]

    def _read_inline(self, entry) -> bytes:
        value = self.rt.read_stored(entry[3], entry[1], entry[2])
        return ser.serialize_inline(value, "a creation argument").pickle_bytes

    def _flush(self, client):
        """Send queued calls in submission order, stopping at an unresolved one."""
        if client.state != ALIVE:
            return
        sub = self.rt.submitter
        if client.queue and client.queue[0].unresolved == 0 and client.conn.peer_closed():
            # its worker is gone and this loop has not read the close yet: the
            # calls are new ones (they queue for a restart), not lost in flight
            self.on_connection_lost(client.conn)
            return
        while client.queue and client.queue[0].unresolved == 0:
            spec = client.queue.popleft()
            if spec.tid not in sub.specs:      # already failed (dependency error)
                continue
            client.in_flight[spec.tid] = spec
            sent = client.conn.peer.setdefault("fns", set())
            include = spec.method == "__init__" and spec.fn_id not in sent
            sent.add(spec.fn_id)
            client.conn.send([P.PUSH_TASK, spec.wire(self.rt, include, client.gpu_ids)])

    def on_task_done(self, conn, m):
        client = self.by_conn.get(conn)
        spec = client.in_flight.pop(m[1], None) if client else None
        if spec is None:
            if client is None or client.state != DEAD:   # else: failed here already
                log.warning("reply for unknown task %s", short(m[1]))
            else:
                self._free_discarded(m[3])
            return
        if self.rt.table.is_dead(client.worker_id):      # its close comes next
            client.in_flight[spec.tid] = spec
            return
        client.restarts.call_done(spec.tid)
        self.rt.submitter.finish(spec, m[3], executor=client.worker_id)
        if (spec.method == "__init__" and m[2] == DONE_OK and client.is_creator
                and client.detached and client.restarts.max_restarts != 0):
            self._hand_spec_over(client, spec)
        if m[2] == DONE_ACTOR_EXIT:
            client.exited = True
            self._mark_dead(client, "it ended itself with exit_actor()")
            return
        self._maybe_retire(client)

    def _free_discarded(self, returns) -> None:
        """The reply of a call failed here already (its actor was killed while
        the call ran): no entry will ever record where its values were
        stored, so they are freed now (else a device copy or a host copy
        stays until this owner exits). A dead actor's call is never run
        again, so no later attempt writes these ids."""
        for oid, entry, _nested in returns:
            if entry[0] == STORE:
                self.rt.send_to_node(entry[1], [P.STORE_FREE, [oid]])

    def cancel(self, spec, recursive):
        """Cancel an actor call this process made (Ray's semantics): a call not
        yet sent is dropped and never runs; a sent one is cancelled by the
        actor's worker (an async method's asyncio task is cancelled; a sync
        method is not interrupted, since the actor has state, but sees
        ``is_canceled()``), and its caller gets TaskCancelledError."""
        client = self.clients.get(spec.actor_id)
        if client is None or spec.method == "__init__":
            return
        spec.cancelled = True
        if spec.tid in client.in_flight:
            if client.conn is not None and not client.conn.closed:
                client.conn.send([P.CANCEL_TASK, spec.tid, False, recursive])
            return
        if spec in client.queue:
            client.queue.remove(spec)
        self.rt.submitter.fail_cancelled(spec)
        self._flush(client)          # calls queued behind it need not wait for it
        self._maybe_retire(client)

    # ------------------------------------------------- handles out of scope
    def handles_gone(self, actor_id):
        """The owner's table freed the actor id: no handle is left anywhere."""
        client = self.clients.get(actor_id)
        if client is None or not client.is_creator:
            return
        client.out_of_scope = True
        self._maybe_retire(client)

    def _maybe_retire(self, client):
        """Stop an out-of-scope actor once the calls already made have run."""
        if not client.out_of_scope or client.state != ALIVE:
            return
        if client.queue or client.in_flight:
            return
        self._kill_worker(client, "all handles to the actor went out of scope")

    def _kill_worker(self, client, reason):
        """Ask the actor's node to kill its worker (the actor must be ALIVE)."""
        client.killed = True
        if client.node_id is None:
            client.node_id = self.rt.node_id
        self.rt.send_to_node(client.node_id, [P.KILL_WORKER, 0, client.worker_id, reason])

    # ------------------------------------------------------ death, kill
    def on_connection_lost(self, conn):
        client = self.by_conn.pop(conn, None)
        if client is None or client.state == DEAD:
            return
        self._worker_gone(client)

    def _worker_gone(self, client):
        """The actor's worker is gone: restart it, or it is dead."""
        if client.out_of_scope:
            reason = "all handles to it went out of scope"
        elif client.killed:
            reason = "it was killed by gdfut.kill()"
        else:
            reason = client.kill_cause or "its worker process died unexpectedly"
            client.kill_cause = ""
            if client.is_creator and client.spec_handing is not None \
                    and not client.spec_handing.done():
                client.gone_while_handing = reason   # the head's answer decides who restarts
                client.state = PENDING
                return
            if client.is_creator and client.head_managed:
                self._relocate(client, reason)        # the head restarts it
                return
            if client.is_creator:
                decision = client.restarts.worker_died(reason)
                if isinstance(decision, Restart):
                    self._restart(client, reason, decision.restarts)
                    return
                reason = decision.reason
            elif client.restarts.max_restarts != 0:
                self._relocate(client, reason)
                return
        self._mark_dead(client, reason)

    def _lost_calls(self, client, reason, await_verdict=False):
        """The actor's worker died: put the calls it was running back at the
        front of the queue (in their order) where they may be retried, fail
        the others (``await_verdict``: once the owner or the head says whether
        the actor was restarted or is dead, see ``lost_waiting``)."""
        lost = list(client.in_flight.values())
        client.in_flight.clear()
        retried = []
        for spec in lost:
            streamed = self.rt.table.stream_received(spec.tid) if spec.generator else 0
            if spec.method == "__init__":     # a new creation task replaces it
                self._fail_call(client, spec, f"it died while starting: {reason}")
            elif not spec.cancelled and client.restarts.call_lost(spec.tid, streamed):
                retried.append(spec)
            else:
                n = client.restarts.max_task_retries
                why = (f"it had already yielded {streamed} items" if streamed else
                       f"max_task_retries={n}" if n == 0 else
                       f"the call was retried {n} times (max_task_retries={n})")
                why = (f"it died while running the call ({reason}); "
                       f"the call is not retried: {why}")
                if await_verdict:
                    client.lost_waiting.append((spec, why))
                else:
                    self._fail_call(client, spec, why)
        client.queue.extendleft(reversed(retried))

    def _fail_lost_calls(self, client):
        """The actor is back: the calls lost at its death fail as lost ones."""
        lost, client.lost_waiting = client.lost_waiting, []
        for spec, why in lost:
            if spec.tid in self.rt.submitter.specs:      # else cancelled meanwhile
                self._fail_call(client, spec, why)

    def _restart(self, client, reason, n):
        """Owner: the actor's worker died and it may restart: lease a new
        worker and run __init__ again, before the calls waiting for it."""
        rt = self.rt
        log.info("restarting %s (restart %d) after %s", client.describe(), n, reason)
        if client.lease_id is not None:
            rt.send_to_node(client.node_id, [P.RETURN_LEASE, client.lease_id, True])
        client.state = PENDING
        client.conn = client.worker_id = client.addr = client.lease_id = None
        self._lost_calls(client, reason)
        spec = dataclasses.replace(client.init_spec, tid=new_task_id(), held=[])
        for oid in spec.return_ids():
            rt.table.add_owned(oid, lineage=spec.tid)
        rt.table.task_submitted(spec.tid, spec.deps + spec.nested)
        rt.submitter.specs[spec.tid] = spec
        client.queue.appendleft(spec)
        rt.io.loop.create_task(self._place(client, spec))

    def _relocate(self, client, reason):
        """Another caller: the actor's worker died and its owner may restart
        it: ask the owner where it is once it is back."""
        dead_worker = client.worker_id
        client.state = PENDING
        client.conn = client.worker_id = client.addr = None
        if client.head_managed:
            client.lease_id = None       # the worker held its own lease
        self._lost_calls(client, reason, await_verdict=True)
        client.locating = True
        client.locate_task = self.rt.io.loop.create_task(self._locate(client, dead_worker))

    def _mark_dead(self, client, reason, err_cls=ActorDiedError):
        """Fail every call made and every later one; release the worker."""
        if client.state == DEAD:
            return
        client.state = DEAD
        client.death_reason = reason
        client.err_cls = err_cls
        calls = list(client.in_flight.values()) + list(client.queue)
        calls += [spec for spec, _ in client.lost_waiting    # else cancelled meanwhile
                  if spec.tid in self.rt.submitter.specs]
        client.in_flight.clear()
        client.queue.clear()
        client.lost_waiting = []
        for spec in calls:
            self._fail_call(client, spec)
        for cb in client.location_waiters:
            cb()
        client.location_waiters.clear()
        client.init_held = []       # no restart will need its arguments now
        _settle(client.handed_over)
        if client.is_creator and client.named and not client.killed:
            self.rt.io.loop.create_task(self._free_name(client.actor_id))   # Ray frees it too
        if client.is_creator and client.worker_id is not None:
            self._end_dead_worker(client)

    def _end_dead_worker(self, client):
        """The actor is dead here; make sure its worker process goes too. The
        creator returns the lease (the node kills the dedicated worker; after
        exit_actor() only if it has not exited within EXIT_GRACE_S); another
        process that killed the actor asks the node to kill the worker."""
        if client.is_creator and client.lease_id is not None:
            message = [P.RETURN_LEASE, client.lease_id, True]
            if client.exited:
                self.rt.io.loop.call_later(EXIT_GRACE_S, self.rt.send_to_node,
                                           client.node_id, message)
            else:
                self.rt.send_to_node(client.node_id, message)
        elif client.killed and not client.is_creator and not client.kill_waiting:
            self._kill_worker(client, "killed by gdfut.kill()")   # located after kill returned

    def _fail_call(self, client, spec, lost_reason=None):
        client.restarts.call_done(spec.tid)
        if lost_reason is not None:
            err = ActorDiedError(f"{client.describe()} failed the call {spec.name}: "
                                 f"{lost_reason}")
        else:
            cls = getattr(client, "err_cls", ActorDiedError)
            err = cls(f"{client.describe()} is dead: {client.death_reason}; "
                      f"the call {spec.name} cannot run")
        self.rt.submitter.finish(spec, [[oid, [ERROR, pickle.dumps(err)], []]
                                        for oid in spec.return_ids()])

    def kill(self, actor_id, owner_wid, owner_addr, class_name, no_restart=True):
        """User thread: kill synchronously (see ``gdfut.kill``)."""
        self.rt.io.run(self._kill(actor_id, owner_wid, owner_addr, class_name, no_restart),
                       timeout=4 * KILL_TIMEOUT_S)

    async def _kill(self, actor_id, owner_wid, owner_addr, class_name, no_restart=True):
        client = self.clients.get(actor_id)
        if client is None:
            client = ActorClient(actor_id, owner_wid, owner_addr, class_name, is_creator=False)
            self.clients[actor_id] = client
        if not client.is_creator and await self._owner_kills(client, no_restart):
            if no_restart:
                client.killed = True
                self._mark_dead(client, "it was killed by gdfut.kill()")
            return
        if not no_restart and client.is_creator:
            await self._kill_for_restart(client)
            return
        # Dead here at once: calls made from now on fail without reaching it.
        client.killed = True
        self._mark_dead(client, "it was killed by gdfut.kill()")
        if client.worker_id is None and not client.is_creator:
            await self._locate_for_kill(client)     # before its name (and record) go
        await self._free_name(actor_id)
        if client.worker_id is not None:
            await self._kill_worker_now(client, "killed by gdfut.kill()")

    async def _owner_kills(self, client, no_restart) -> bool:
        """Ask the actor's owner to kill it (the owner decides restarts, so it
        must know). False when the owner cannot be asked (then it is gone,
        and with it the actor's future: the caller kills the worker itself)."""
        try:
            owner = await self.rt.connect_peer(client.owner_addr)
            await asyncio.wait_for(owner.request(P.KILL_ACTOR, client.actor_id, no_restart),
                                   3 * KILL_TIMEOUT_S)
            return True
        except (OSError, tcp.ConnectionLost, tcp.RemoteError, asyncio.TimeoutError) as exc:
            log.warning("could not ask the owner of %s to kill it: %s", client.describe(), exc)
            return False

    async def _kill_for_restart(self, client):
        """Owner: gdfut.kill(no_restart=False): kill the worker only; its
        death then restarts the actor as any death would."""
        if client.state != ALIVE:
            log.info("kill(no_restart=False) of %s while it is not running: nothing to kill",
                     client.describe())
            return
        conn = client.conn
        client.kill_cause = "it was killed by gdfut.kill(no_restart=False)"
        await self._kill_worker_now(client, "killed by gdfut.kill(no_restart=False)")
        if self.by_conn.get(conn) is client:   # gone now: calls from here on wait for the restart
            del self.by_conn[conn]
            self._worker_gone(client)

    def on_kill_actor(self, conn, m):
        """Owner: another process calls gdfut.kill on an actor we own."""
        _, req_id, actor_id, no_restart = m
        if self.rt.is_detached_actor(actor_id):
            self.rt.io.loop.create_task(self._kill_self(conn, req_id, no_restart))
            return
        client = self.clients.get(actor_id)
        if client is None or not client.is_creator:
            conn.reply_error(req_id, f"actor {short(actor_id)} is not known to its owner")
            return

        async def kill_and_answer():
            await self._kill(actor_id, client.owner_wid, client.owner_addr, client.class_name,
                             no_restart)
            if not conn.closed:
                conn.reply(req_id, None)
        self.rt.io.loop.create_task(kill_and_answer())

    async def _kill_self(self, conn, req_id, no_restart=True):
        """The worker of a handed-over detached actor is killed through a
        handle (it owns itself): free the name (unless ``no_restart`` is
        False: then the head restarts it), answer, then have the node end
        this process (its lease goes with it)."""
        rt = self.rt
        if no_restart:
            await self._free_name(rt.detached_actor_id)
        if not conn.closed:
            conn.reply(req_id, None)
        await asyncio.sleep(0.05)     # let the answer leave first
        rt.node_conn.send([P.KILL_WORKER, 0, rt.wid, "detached actor killed by gdfut.kill()"])

    async def _locate_for_kill(self, client):
        """Ask the owner where the actor runs, waiting a while (it answers once
        the actor is placed); if it takes longer, ``_connected`` kills it later."""
        if not client.locating:
            client.locating = True
            client.locate_task = self.rt.io.loop.create_task(self._locate(client))
        task = client.locate_task
        if task is not None:
            client.kill_waiting = True
            await asyncio.wait([task], timeout=KILL_TIMEOUT_S)
            client.kill_waiting = False

    async def _free_name(self, actor_id):
        """Remove the actor from the head's name table (by id: a new actor
        that took the name since is left alone)."""
        try:
            head = await self.rt.head()
            await asyncio.wait_for(head.request(P.HEAD_REMOVE_ACTOR, actor_id), KILL_TIMEOUT_S)
        except (OSError, tcp.ConnectionLost, tcp.RemoteError, asyncio.TimeoutError,
                GdfutError) as exc:
            log.warning("could not free the name of actor %s at the head: %s",
                        short(actor_id), exc)

    async def _kill_worker_now(self, client, reason):
        """Ask the actor's node to kill its worker and wait for the answer."""
        rt = self.rt
        node_id = client.node_id or rt.node_id
        try:
            conn = rt.node_conn if node_id == rt.node_id else await rt.node_connection(node_id)
            await asyncio.wait_for(conn.request(P.KILL_WORKER, client.worker_id, reason),
                                   KILL_TIMEOUT_S)
        except (OSError, tcp.ConnectionLost, tcp.RemoteError, asyncio.TimeoutError,
                GdfutError) as exc:
            log.warning("could not reach node %s to kill %s: %s", short(node_id),
                        client.describe(), exc)

    # ------------------------------------------------ owner answers "where"
    def on_actor_location(self, conn, m):
        req_id, actor_id = m[1], m[2]
        dead_worker = m[3] if len(m) > 3 else None   # the asker saw this worker die
        rt = self.rt
        if rt.is_detached_actor(actor_id):   # it owns itself: here (the head restarts it)
            if dead_worker == rt.wid:
                conn.reply_error(req_id, "its worker died")
            else:
                conn.reply(req_id, [list(rt.addr), rt.wid, rt.node_id,
                                    dict(rt.detached_options, detached=True)])
            return
        client = self.clients.get(actor_id)
        if client is None or not client.is_creator:
            conn.reply_error(req_id, f"actor {short(actor_id)} is not known to its owner")
            return
        options = {"max_restarts": client.restarts.max_restarts,
                   "max_task_retries": client.restarts.max_task_retries,
                   "detached": client.detached}

        def answer():
            if client.state == ALIVE:
                conn.reply(req_id, [list(client.addr), client.worker_id, client.node_id,
                                    options])
            else:
                conn.reply_error(req_id, client.death_reason)

        stale = client.state == ALIVE and dead_worker is not None and \
            dead_worker == client.worker_id     # we have not seen it die yet
        if client.state == PENDING or stale:
            client.location_waiters.append(answer)
        else:
            answer()


def _settle(fut) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)
