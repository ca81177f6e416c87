"""The head's detached actors: it holds their creation specs and restarts them.

A detached actor with ``max_restarts`` is handed over to the head once its
first ``__init__`` succeeded: its creator sends the creation spec with every
argument captured by value (``HEAD_ACTOR_SPEC``; ``ActorSubmitter``), the
head writes it to SQLite (table ``detached_actors``) and from then on
decides its restarts with the pure ``head_state.DetachedActor`` (which asks
``ActorRestarts``), whether its creator still lives or not, as Ray's GCS
does. A head restarted on the session reads the records back.

When a node reports the actor's worker dead (or the node dies, or the
worker died while the head was down), the head leases a new worker as a
client of the node daemons (``lease_from_cluster``, with spillback: any
node that fits), detaches the lease (the worker holds it, as for any
detached actor), connects to the worker and pushes the creation task
itself; the worker's ``TASK_DONE`` makes the actor ALIVE again and its
name points at the new worker. Callers whose connection to the actor
closed, or who cannot reach its creator, ask the head where it is
(``HEAD_ACTOR_LOCATION``): the head answers once it is back, or that it is
dead and why (out of restarts, unschedulable, ``__init__`` raised). It also
answers for a detached actor it does not restart (no spec), from the worker
recorded at its hand-over (``HEAD_ACTOR_PLACED``, table ``detached_placed``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import pickle

import msgpack

from . import protocol as P
from .actor_restarts import ActorRestarts, Restart
from .head_state import ALIVE, DEAD, RESTARTING, DetachedActor
from .ids import new_id, new_task_id, short
from .submitter import DONE_OK, lease_from_cluster
from .transport import tcp

log = logging.getLogger("gdfut.head.actors")

SCHEMA = """
CREATE TABLE IF NOT EXISTS detached_actors (actor_id BLOB PRIMARY KEY, spec BLOB,
                                            restarts INTEGER, state TEXT, worker_wid BLOB,
                                            worker_addr TEXT, node_id BLOB, reason TEXT);
CREATE TABLE IF NOT EXISTS detached_placed (actor_id BLOB PRIMARY KEY, worker_wid BLOB,
                                            worker_addr TEXT);
"""
MAX_WAITERS = 10_000            # callers waiting for one actor's restart
STALE_ANSWER_S = 15.0           # a caller saw a worker die the head never heard of
PLACE_ATTEMPTS = 30             # a restart that cannot reach any node gives up after these
PLACE_RETRY_S = 1.0
INIT_TIMEOUT_S = 600.0          # a restarted __init__ that takes longer counts as failed
NODE_TIMEOUT_S = 30.0


class DetachedActors:
    def __init__(self, head):
        self.head = head
        self.db = head.db
        self.db.executescript(SCHEMA)
        self.records: dict[bytes, DetachedActor] = {}
        self.waiters: dict[bytes, list] = {}          # actor id -> [(peer, req_id, dead)]
        self.running: set = set()                     # restart tasks
        # Every handed-over detached actor's worker (``HEAD_ACTOR_PLACED``),
        # named or not, with a spec or not: callers holding a handle whose
        # owner (its creator) exited ask the head where it is.
        self.placed: dict[bytes, tuple] = {
            aid: (wid, tuple(json.loads(addr))) for aid, wid, addr in self.db.execute(
                "SELECT * FROM detached_placed")}
        for aid, spec, restarts, state, wid, addr, node_id, reason in self.db.execute(
                "SELECT * FROM detached_actors"):
            spec = msgpack.unpackb(spec, raw=False)
            rec = DetachedActor(aid, spec, ActorRestarts(spec["max_restarts"],
                                                         spec["max_task_retries"], restarts),
                                state, wid, tuple(json.loads(addr)) if addr else None,
                                node_id, reason or "")
            rec.validate()
            self.records[aid] = rec

    def handlers(self) -> dict:
        return {P.HEAD_ACTOR_SPEC: self.on_actor_spec,
                P.HEAD_ACTOR_LOCATION: self.on_actor_location}

    def start(self) -> None:
        """After a head restart: restarts that were under way go on."""
        for rec in self.records.values():
            if rec.state == RESTARTING:
                self._spawn_restart(rec)

    async def stop(self) -> None:
        for task in list(self.running):
            task.cancel()
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)

    def managed(self) -> set:
        """Actors whose names and lives the head decides (not dead)."""
        return {a for a, r in self.records.items() if r.state != DEAD}

    # ------------------------------------------------------------ messages
    def on_actor_spec(self, peer, m):
        _, req_id, actor_id, wid, addr, node_id, spec = m
        if wid in self.head.dead.known:
            peer.conn.reply_error(req_id, f"the worker of actor {short(actor_id)} died already")
            return
        restarts = ActorRestarts(int(spec["max_restarts"]), int(spec["max_task_retries"]),
                                 int(spec.get("restarts", 0)))
        rec = DetachedActor(actor_id, spec, restarts)
        rec.placed(wid, addr, node_id)
        rec.validate()
        self.records[actor_id] = rec
        self._save(rec, spec=True)
        log.info("detached actor %s (%s) handed over: the head restarts it (max_restarts=%d)",
                 short(actor_id), spec.get("class_name"), restarts.max_restarts)
        peer.conn.reply(req_id, True)

    def on_actor_location(self, peer, m):
        _, req_id, actor_id, dead_worker = m
        rec = self.records.get(actor_id)
        if rec is None:
            self._answer_placed(peer, req_id, actor_id, dead_worker)
            return
        if rec.location(dead_worker) == "wait":
            waiting = self.waiters.setdefault(actor_id, [])
            if len(waiting) >= MAX_WAITERS:
                peer.conn.reply_error(req_id, "too many callers wait for this actor's restart")
                return
            waiting.append((peer, req_id))
            if rec.state == ALIVE:     # the head has not heard of that death (yet)
                asyncio.get_running_loop().call_later(STALE_ANSWER_S, self._answer, actor_id)
            return
        self._answer_one(rec, peer, req_id)

    def _answer_placed(self, peer, req_id, actor_id, dead_worker):
        """A detached actor the head does not restart: where its worker is."""
        wid, addr = self.placed.get(actor_id, (None, None))
        if wid is None or wid == dead_worker or wid in self.head.dead.known:
            peer.conn.reply_error(req_id, f"actor {short(actor_id)} is not a detached actor "
                                          f"known to the head")
            return
        peer.conn.reply(req_id, [list(addr), wid, self.head.node_of(wid),
                                 {"max_restarts": 0, "max_task_retries": 0, "detached": True}])

    def actor_placed(self, actor_id, wid, addr) -> None:
        self.placed[actor_id] = (wid, tuple(addr))
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO detached_placed VALUES (?,?,?)",
                            (actor_id, wid, json.dumps(list(addr))))

    def _forget_placed(self, actor_ids) -> None:
        for a in actor_ids:
            self.placed.pop(a, None)
        with self.db:
            self.db.executemany("DELETE FROM detached_placed WHERE actor_id=?",
                                [(a,) for a in actor_ids])

    def _answer_one(self, rec, peer, req_id):
        if peer.conn is None or peer.conn.closed:
            return
        if rec.state == DEAD:
            peer.conn.reply_error(req_id, rec.reason)
        else:
            peer.conn.reply(req_id, [list(rec.worker_addr), rec.worker_wid, rec.node_id,
                                     rec.options()])

    def _answer(self, actor_id):
        rec = self.records.get(actor_id)
        waiting = self.waiters.pop(actor_id, [])
        if rec is None:
            for peer, req_id in waiting:
                if peer.conn is not None and not peer.conn.closed:
                    peer.conn.reply_error(req_id, "it was killed by gdfut.kill()")
            return
        if rec.state == RESTARTING:
            self.waiters[actor_id] = waiting
            return
        for peer, req_id in waiting:
            self._answer_one(rec, peer, req_id)

    # -------------------------------------------------------------- events
    def removed(self, actor_id) -> None:
        """gdfut.kill (or its creator saw it dead): no restart any more."""
        if actor_id in self.placed:
            self._forget_placed([actor_id])
        rec = self.records.pop(actor_id, None)
        if rec is None:
            return
        with self.db:
            self.db.execute("DELETE FROM detached_actors WHERE actor_id=?", (actor_id,))
        self._answer(actor_id)

    def processes_died(self, wids) -> None:
        dead = set(wids)
        gone = [a for a, (wid, _) in self.placed.items() if wid in dead]
        if gone:
            self._forget_placed(gone)
        for rec in list(self.records.values()):
            if rec.worker_wid not in dead:
                continue
            decision = rec.worker_died(rec.worker_wid, "its worker process died")
            if isinstance(decision, Restart):
                log.info("detached actor %s: its worker died; restart %d", short(rec.actor_id),
                         decision.restarts)
                self._save(rec)
                self._spawn_restart(rec)
            elif decision is not None:
                self._dead(rec, decision.reason)

    def _dead(self, rec, reason) -> None:
        if rec.state != DEAD:
            rec.died(reason)
        log.info("detached actor %s is dead: %s", short(rec.actor_id), rec.reason)
        self._save(rec)
        with self.db:      # its name is free, as when any actor dies for good
            self.db.execute("DELETE FROM actors WHERE actor_id=?", (rec.actor_id,))
        self._answer(rec.actor_id)

    def _save(self, rec, spec: bool = False) -> None:
        addr = json.dumps(list(rec.worker_addr)) if rec.worker_addr else None
        with self.db:
            if spec:
                self.db.execute("INSERT OR REPLACE INTO detached_actors VALUES (?,?,?,?,?,?,?,?)",
                                (rec.actor_id, msgpack.packb(rec.spec, use_bin_type=True),
                                 rec.restarts.restarts, rec.state, rec.worker_wid, addr,
                                 rec.node_id, rec.reason))
            else:
                self.db.execute("UPDATE detached_actors SET restarts=?, state=?, worker_wid=?, "
                                "worker_addr=?, node_id=?, reason=? WHERE actor_id=?",
                                (rec.restarts.restarts, rec.state, rec.worker_wid, addr,
                                 rec.node_id, rec.reason, rec.actor_id))
            if rec.state == ALIVE:    # get_actor hands out handles owned by its worker
                self.db.execute("UPDATE actors SET owner_wid=?, owner_addr=? WHERE actor_id=?",
                                (rec.worker_wid, addr, rec.actor_id))

    # ------------------------------------------------------------- restart
    def _spawn_restart(self, rec) -> None:
        task = asyncio.get_running_loop().create_task(self._restart(rec))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _restart(self, rec) -> None:
        """Place the actor on a new worker and run its __init__ there."""
        attempts = 0
        while self.records.get(rec.actor_id) is rec and rec.state == RESTARTING:
            attempts += 1
            try:
                outcome = await self._place_once(rec)
            except tcp.RemoteError as exc:
                outcome = f"it cannot be scheduled: {exc}"
            except (OSError, tcp.ConnectionLost, asyncio.TimeoutError) as exc:
                if attempts >= PLACE_ATTEMPTS:
                    outcome = f"no node could be reached to restart it: {exc}"
                else:
                    log.info("restart of actor %s: %s; trying again", short(rec.actor_id), exc)
                    await asyncio.sleep(PLACE_RETRY_S)
                    continue
            except Exception as exc:      # a bug: the actor fails, the head goes on
                log.exception("restart of actor %s failed", short(rec.actor_id))
                outcome = f"its restart failed: {type(exc).__name__}: {exc}"
            if self.records.get(rec.actor_id) is not rec or rec.state != RESTARTING:
                return                # killed meanwhile
            if outcome is None:
                return                # placed, or died again and decided again
            self._dead(rec, outcome)
            return

    def _alive_nodes(self) -> list:
        out = []
        for node in self.head.nodes():
            if node["state"] == "ALIVE" and node.get("addr"):
                out.append(node)
        out.sort(key=lambda n: not n.get("stats"))     # nodes heard from first
        return out

    async def _place_once(self, rec) -> str | None:
        """One try: None when done (ALIVE, or it died again and the head
        decided again), else why the actor is dead."""
        nodes = self._alive_nodes()
        if not nodes:
            raise tcp.ConnectionLost("no live node")
        spec = rec.spec
        leaser = _Leaser(self.head, nodes[0])
        worker = None
        try:
            leaser.node_conn = await leaser.open(nodes[0]["node_id"])
            grant, node_conn = await lease_from_cluster(
                leaser, spec["resources"], True, rec.actor_id, {"strategy": spec["strategy"]})
            node_conn.send([P.DETACH_LEASE, grant["lease_id"]])   # the worker holds it
            replies = _WorkerReplies()
            worker = await asyncio.wait_for(
                tcp.connect(*grant["addr"], replies, self.head.token), NODE_TIMEOUT_S)
            tid = new_task_id()
            strategy = spec["strategy"]
            worker.send([P.PUSH_TASK, [
                tid, spec["fn_id"], spec["fn_bytes"], spec["name"], spec["args"],
                spec["kwargs"], 1, leaser.wid, list(self.head.addr), rec.actor_id,
                "__init__", spec["actor_options"], list(grant.get("gpu_ids") or ()),
                strategy if isinstance(strategy, list) and strategy[:1] == ["PG"] else None,
                spec.get("namespace")]])
            done = await replies.wait(tid, INIT_TIMEOUT_S)
        finally:
            await leaser.close()
            if worker is not None:
                worker.close()
        if self.records.get(rec.actor_id) is not rec or rec.state != RESTARTING:
            return None
        wid = grant["worker_id"]
        if done is None or wid in self.head.dead.known:    # it died while starting
            decision = rec.restarts.worker_died("its worker process died while restarting")
            if isinstance(decision, Restart):
                self._save(rec)
                raise tcp.ConnectionLost("the new worker died while starting")
            return decision.reason
        status, returns = done
        if status != DONE_OK:
            return f"its __init__ raised when it was restarted: {_error_text(returns)}"
        rec.placed(wid, grant["addr"], grant["node_id"])
        self._save(rec)
        log.info("detached actor %s restarted on worker %s (restart %d)", short(rec.actor_id),
                 short(wid), rec.restarts.restarts)
        self._answer(rec.actor_id)
        return None


class _Leaser:
    """What ``lease_from_cluster`` needs of a runtime, for the head: a
    client connection per node (registered as a remote client under an id of
    its own, so its exit releases nothing but what it holds)."""

    def __init__(self, head, node):
        self.head = head
        self.wid = new_id()
        self.node_addrs = {node["node_id"]: tuple(node["addr"])}
        self.conns: dict = {}
        self.node_conn = None

    async def open(self, node_id):
        conn = self.conns.get(node_id)
        if conn is not None and not conn.closed:
            return conn
        addr = self.node_addrs[node_id]
        conn = await asyncio.wait_for(tcp.connect(addr[0], addr[1], _WorkerReplies(),
                                                  self.head.token), NODE_TIMEOUT_S)
        self.conns[node_id] = conn
        await asyncio.wait_for(conn.request(P.REGISTER_CLIENT, self.wid, os.getpid(),
                                            list(self.head.addr), "remote-client"),
                               NODE_TIMEOUT_S)
        return conn

    async def node_connection(self, node_id):
        return await self.open(node_id)

    async def close(self):
        for conn in self.conns.values():
            conn.close()
        await asyncio.sleep(0)


class _WorkerReplies:
    """Handler of the head's client connections: replies, and the worker's
    TASK_DONE of the creation task; anything else (its printed lines) is
    dropped."""

    def __init__(self):
        self.done: dict[bytes, asyncio.Future] = {}
        self.closed = asyncio.Event()

    def on_messages(self, conn, messages):
        for m in messages:
            if conn.resolve_reply(m):
                continue
            if m and m[0] == P.TASK_DONE and len(m) > 3:
                fut = self.done.get(m[1])
                if fut is not None and not fut.done():
                    fut.set_result((m[2], m[3]))

    def on_closed(self, conn, exc):
        self.closed.set()

    async def wait(self, tid, timeout):
        """(status, returns) of task tid, or None if the connection closed first."""
        fut = self.done[tid] = asyncio.get_running_loop().create_future()
        closed = asyncio.ensure_future(self.closed.wait())
        try:
            await asyncio.wait([fut, closed], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        return fut.result() if fut.done() else None


def _error_text(returns) -> str:
    try:
        entry = returns[0][1]
        return str(pickle.loads(entry[1]))
    except Exception:       # the error's class may not unpickle here
        return "(the error could not be read by the head)"
