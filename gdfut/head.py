"""Head: cluster directory (nodes, named actors, jobs), durable in SQLite.

Control plane only: nothing per task comes here. Run as ``python -m
gdfut.head``; prints one JSON line ``{"port": ...}`` when ready. Started
again on the same session directory it reads its state back and waits for
the nodes to register again (decisions in ``head_state``).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import sqlite3
import sys
import time

from . import protocol as P
from . import validate
from .head_state import (ActorRow, NodeRecovery, actors_after_deaths, check_namespace,
                         dead_seq_to_serve)
from .head_pgs import PlacementGroups
from .head_actors import DetachedActors
from .ids import short
from .sched.resources import ResourceSet
from .supervise import Supervisor
from .transport import tcp

log = logging.getLogger("gdfut.head")

# A node not heard from for this long is dead (GDFUT_NODE_DEAD_AFTER_S: tests).
NODE_DEAD_AFTER_S = float(os.environ.get("GDFUT_NODE_DEAD_AFTER_S", "10"))
# A restarted head waits this long for each node that was alive to register
# again before declaring it dead (GDFUT_NODE_REREGISTER_S: tests).
NODE_REREGISTER_S = float(os.environ.get("GDFUT_NODE_REREGISTER_S", "30"))

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (node_id BLOB PRIMARY KEY, info TEXT, state TEXT,
                                  registered REAL);
CREATE TABLE IF NOT EXISTS actors (namespace TEXT, name TEXT, actor_id BLOB UNIQUE,
                                   owner_wid BLOB, owner_addr TEXT, meta TEXT,
                                   detached INTEGER, creator_wid BLOB,
                                   PRIMARY KEY (namespace, name));
CREATE TABLE IF NOT EXISTS jobs (job_id INTEGER PRIMARY KEY AUTOINCREMENT, info TEXT,
                                 started REAL);
CREATE TABLE IF NOT EXISTS processes (wid BLOB PRIMARY KEY, node_id BLOB);
CREATE TABLE IF NOT EXISTS dead (seq INTEGER PRIMARY KEY, wid BLOB);
"""


class HeadConn:
    def __init__(self, head):
        self.head = head
        self.conn = None
        self.node_id: bytes | None = None     # the node that registered on this connection
        self.owned_actor_names: dict[tuple, bytes] = {}   # (namespace, name) -> actor id
        self.driver_wid: bytes | None = None   # the driver that registered its job here

    def on_messages(self, conn, messages):
        self.conn = conn
        for m in messages:
            if not validate.admit(conn, m, log) or conn.resolve_reply(m):
                continue
            handler = self.head.dispatch.get(m[0])
            if handler is None:
                log.warning("unknown message %s", m[0])
                continue
            try:
                handler(self, m)
            except Exception as exc:
                log.exception("message %s failed", m[0])
                req_id = validate.request_id(m)
                if req_id is not None:
                    conn.reply_error(req_id, f"{type(exc).__name__}: {exc}")

    def on_closed(self, conn, exc):
        self.head.on_closed(self)


class DeadProcessLog:
    """Drivers and workers known dead, in the order heard, so every node can
    free objects those owners had there (fate sharing) even if the owner never
    connected to it. Bounded: a node that falls further behind than
    ``limit`` entries gets the whole retained log again (repeats are harmless)."""

    def __init__(self, limit: int = 100_000, entries=()):
        assert limit > 0
        self.limit = limit
        self.entries: collections.deque = collections.deque()   # (seq, wid)
        self.known: set = set()
        self.seq = 0
        for seq, wid in entries:          # read back after a restart, in seq order
            assert seq > self.seq
            self.seq = seq
            self._append(seq, wid)

    def add(self, wids) -> list:
        """Record deaths; returns the new (seq, wid) entries (to persist)."""
        added = []
        for wid in wids:
            if wid in self.known:
                continue
            self.seq += 1
            self._append(self.seq, wid)
            added.append((self.seq, wid))
        return added

    def _append(self, seq, wid) -> None:
        self.entries.append((seq, wid))
        self.known.add(wid)
        if len(self.entries) > self.limit:
            self.known.discard(self.entries.popleft()[1])

    @property
    def oldest_seq(self) -> int:
        return self.entries[0][0] if self.entries else self.seq + 1

    def since(self, seq: int) -> tuple[int, list]:
        seq = dead_seq_to_serve(seq, self.seq)
        return self.seq, [wid for s, wid in self.entries if s > seq]


class Head:
    def __init__(self, args):
        self.args = args
        self.session_dir = args.session_dir
        self.token = open(os.path.join(self.session_dir, "token"), "rb").read()
        self.db = sqlite3.connect(os.path.join(self.session_dir, "head.sqlite"))
        # WAL without an fsync per commit: the state must survive the head's
        # process dying (SIGKILL), not the machine; the loop must not stall.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(actors)")}
        if "creator_wid" not in columns:
            raise SystemExit(f"head.sqlite in {self.session_dir} was written by an older "
                             f"gdfut (no namespaces); this head cannot restart on it: start "
                             f"a new session")
        self.stats: dict[bytes, dict] = {}
        self.last_seen: dict[bytes, float] = {}
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.tasks: Supervisor | None = None
        self.dispatch = {
            P.HEAD_REGISTER_NODE: self.on_register_node, P.HEAD_HEARTBEAT: self.on_heartbeat,
            P.HEAD_LIST_NODES: self.on_list_nodes, P.HEAD_REGISTER_ACTOR: self.on_register_actor,
            P.HEAD_LOOKUP_ACTOR: self.on_lookup_actor, P.HEAD_REMOVE_ACTOR: self.on_remove_actor,
            P.HEAD_ACTOR_PLACED: self.on_actor_placed,
            P.HEAD_STATUS: self.on_status, P.HEAD_REGISTER_JOB: self.on_register_job,
            P.HEAD_SHUTDOWN: self.on_shutdown,
            P.HEAD_PROCESSES_DIED: self.on_processes_died,
            P.HEAD_DEAD_PROCESSES: self.on_dead_processes,
            P.HEAD_PROCESSES_STARTED: self.on_processes_started,
        }
        self.pgs = PlacementGroups(self)
        self.dispatch.update(self.pgs.handlers())
        self.detached = DetachedActors(self)
        self.dispatch.update(self.detached.handlers())
        self.addr: tuple = (args.bind, args.port)
        self.restarted = False
        self.driver_conns: dict[bytes, HeadConn] = {}   # driver wid -> its open connection
        self.load()

    def load(self) -> None:
        """State of a previous head of this session (empty on a new session)."""
        db = self.db
        self.dead = DeadProcessLog(entries=db.execute(
            "SELECT seq, wid FROM dead ORDER BY seq").fetchall())
        self.processes_of_node: dict[bytes, set] = {}   # live drivers/workers by node
        for wid, node_id in db.execute("SELECT wid, node_id FROM processes"):
            self.processes_of_node.setdefault(node_id, set()).add(wid)
        self.pgs.load()
        states = dict(db.execute("SELECT node_id, state FROM nodes").fetchall())
        self.restarted = bool(states)
        self.recovery = NodeRecovery.after_restart(states, time.monotonic(), NODE_REREGISTER_S)
        if self.restarted:
            log.info("head restarted on session %s: %d node(s) awaited, %d named actor(s), "
                     "%d process(es) recorded", self.session_dir, len(self.recovery.awaited),
                     self.db.execute("SELECT COUNT(*) FROM actors").fetchone()[0],
                     sum(map(len, self.processes_of_node.values())))

    async def run(self):
        server = await tcp.listen(self.args.bind, self.args.port, lambda: HeadConn(self),
                                  self.token)
        port = server.sockets[0].getsockname()[1]
        self.addr = (self.args.bind, port)
        info = {"port": port, "pid": os.getpid(), "host": self.args.bind}
        tmp = os.path.join(self.session_dir, "head.json.tmp")
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, os.path.join(self.session_dir, "head.json"))   # atomic for readers
        print(json.dumps(info), flush=True)
        self.tasks = Supervisor(log, self.fatal)
        self.tasks.keep_running("watch", self.watch)
        self.tasks.keep_running("placement_groups", self.pgs.run)
        self.detached.start()
        await self.stopping.wait()
        await self.detached.stop()
        await self.tasks.cancel_all()
        server.close()
        self.db.close()

    def fatal(self, why: str) -> None:
        """A background task keeps failing: stop loudly rather than limp on."""
        log.critical("head stopping: %s", why)
        self.exit_code = 1
        self.stopping.set()

    async def watch(self):
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for node_id, seen in list(self.last_seen.items()):
                if now - seen > NODE_DEAD_AFTER_S:
                    self.mark_node(node_id, "DEAD")
                    del self.last_seen[node_id]
            for node_id in self.recovery.expired(now):
                log.warning("node %s did not register again within %g s of the head's "
                            "restart: dead", short(node_id), NODE_REREGISTER_S)
                self.mark_node(node_id, "DEAD")
            if self.args.embedded and os.getppid() == 1:
                self.stopping.set()

    def mark_node(self, node_id, state):
        if state == "DEAD":       # its drivers and workers died with it
            self.processes_died(sorted(self.processes_of_node.pop(node_id, ())))
            self.pgs.node_dead(node_id)
        with self.db:
            self.db.execute("UPDATE nodes SET state=? WHERE node_id=?", (state, node_id))

    def processes_died(self, wids) -> None:
        """Drivers or workers are dead: every node frees what they owned (the
        dead-process log), the names of actors they owned go."""
        wids = list(wids)
        if not wids:
            return
        added = self.dead.add(wids)
        for live in self.processes_of_node.values():
            live.difference_update(wids)
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO dead VALUES (?,?)", added)
            self.db.execute("DELETE FROM dead WHERE seq < ?", (self.dead.oldest_seq,))
            self.db.executemany("DELETE FROM processes WHERE wid=?", [(w,) for w in wids])
        self.detached.processes_died(wids)       # restarts the head decides
        # A driver still connected here is alive (its node may have died under
        # it): what it owns stays until its connection closes (``on_closed``).
        self.owners_died([w for w in wids if w not in self.driver_conns])

    def owners_died(self, owners) -> None:
        """Names and placement groups of dead owners go (``head_state``);
        those of detached actors the head restarts stay (``head_actors``)."""
        if not owners:
            return
        managed = self.detached.managed()
        gone, creator_gone = actors_after_deaths(
            [r for r in self.actor_rows() if r.actor_id not in managed], owners)
        with self.db:
            self.db.executemany("DELETE FROM actors WHERE actor_id=?", [(a,) for a in gone])
            self.db.executemany("UPDATE actors SET creator_wid=NULL WHERE actor_id=?",
                                [(a,) for a in creator_gone])
        for actor_id in gone:
            log.info("actor %s: its owner died; its name is free", short(actor_id))
        self.pgs.owners_died(owners)

    # --------------------------------------------------------------- nodes
    def on_register_node(self, peer, m):
        _, req_id, info = m
        problem = registration_problem(info)
        if peer.node_id is not None and peer.node_id != info["node_id"]:
            problem = (f"this connection registered node {short(peer.node_id)} already; "
                       f"it cannot register {short(info['node_id'])} too")
        if problem is not None:
            log.warning("refusing registration from %s: %s", peer.conn.peer, problem)
            peer.conn.reply_error(req_id, f"node registration refused: {problem}")
            return
        peer.node_id = info["node_id"]
        again = self.recovery.node_back(info["node_id"])
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO nodes VALUES (?,?,?,?)",
                            (info["node_id"], json.dumps(_jsonable(info)), "ALIVE", time.time()))
        self.last_seen[info["node_id"]] = time.monotonic()
        self.pgs.node_registered(peer, info["node_id"])
        log.info("node %s %sregistered at %s", short(info["node_id"]),
                 "re-" if again else "", info["addr"])
        peer.conn.reply(req_id, True)

    def on_heartbeat(self, peer, m):
        _, node_id, stats = m
        if node_id != peer.node_id:
            log.warning("dropping heartbeat for node %s from a connection registered as %s",
                        short(node_id), short(peer.node_id))
            return
        problem = stats_problem(stats)
        if problem is not None:
            log.warning("dropping heartbeat of node %s: %s", short(node_id), problem)
            return
        self.stats[node_id] = stats
        self.last_seen[node_id] = time.monotonic()
        self.pgs.heartbeat(node_id)

    def nodes(self):
        rows = self.db.execute("SELECT node_id, info, state FROM nodes").fetchall()
        out = []
        for node_id, info, state in rows:
            d = json.loads(info)
            d["node_id"] = node_id
            d["state"] = state
            d["stats"] = self.stats.get(node_id, {})
            out.append(d)
        return out

    def on_processes_started(self, peer, m):
        """``snapshot`` (sent right after a registration): the node's full
        list of live processes; recorded ones missing from it died unseen
        (while the head was down)."""
        node_id, wids = m[1], m[2]
        snapshot = len(m) > 3 and m[3]
        if node_id != peer.node_id:
            log.warning("dropping processes of node %s from a connection registered as %s",
                        short(node_id), short(peer.node_id))
            return
        recorded = self.processes_of_node.setdefault(node_id, set())
        died = self.recovery.registered(node_id, recorded, wids) if snapshot else set()
        new = set(wids) - recorded
        recorded.update(wids)
        if new:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO processes VALUES (?,?)",
                                    [(w, node_id) for w in new])
        if died:
            log.info("node %s: %d process(es) died while unseen", short(node_id), len(died))
            self.processes_died(sorted(died))

    def on_processes_died(self, peer, m):
        self.processes_died(m[1])

    def on_dead_processes(self, peer, m):
        seq, wids = self.dead.since(m[2])
        peer.conn.reply(m[1], [seq, wids])

    def on_list_nodes(self, peer, m):
        peer.conn.reply(m[1], self.nodes())

    def on_status(self, peer, m):
        nodes = self.nodes()
        actors = self.db.execute("SELECT COUNT(*) FROM actors").fetchone()[0]
        jobs = self.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        peer.conn.reply(m[1], {"nodes": nodes, "named_actors": actors, "jobs": jobs,
                               "session_dir": self.session_dir,
                               "awaited_nodes": len(self.recovery.awaited)})

    def on_closed(self, peer):
        if peer.driver_wid is not None and self.driver_conns.get(peer.driver_wid) is peer:
            del self.driver_conns[peer.driver_wid]
            if peer.driver_wid in self.dead.known:   # its death was reported while connected
                self.owners_died([peer.driver_wid])
        self.pgs.conn_closed(peer)
        node_id = peer.node_id
        if node_id is not None:
            self.mark_node(node_id, "DEAD")
            self.last_seen.pop(node_id, None)
            self.stats.pop(node_id, None)
        if peer.owned_actor_names:
            with self.db:   # only its own actors: a name may have been taken again since
                for (namespace, name), actor_id in peer.owned_actor_names.items():
                    self.db.execute("DELETE FROM actors WHERE namespace=? AND name=? AND "
                                    "actor_id=? AND detached=0",
                                    (namespace, name, actor_id))

    # -------------------------------------------------------------- actors
    def actor_rows(self) -> list[ActorRow]:
        return [ActorRow(ns, name, aid, creator, owner, bool(det))
                for ns, name, aid, creator, owner, det in
                self.db.execute("SELECT namespace, name, actor_id, creator_wid, owner_wid, "
                                "detached FROM actors")]

    def on_register_actor(self, peer, m):
        _, req_id, name, namespace, actor_id, owner_wid, owner_addr, meta, detached = m
        check_namespace(namespace)
        row = self.db.execute("SELECT actor_id FROM actors WHERE namespace=? AND name=?",
                              (namespace, name)).fetchone()
        if row is not None:
            peer.conn.reply_error(req_id, f"an actor named {name!r} already exists in "
                                          f"namespace {namespace!r}")
            return
        with self.db:
            self.db.execute("INSERT INTO actors VALUES (?,?,?,?,?,?,?,?)",
                            (namespace, name, actor_id, owner_wid, json.dumps(owner_addr),
                             json.dumps(meta), int(bool(detached)), owner_wid))
        if not detached:      # a detached actor's name outlives this connection
            peer.owned_actor_names[(namespace, name)] = actor_id
        peer.conn.reply(req_id, True)

    def on_actor_placed(self, peer, m):
        """A detached actor's creator hands it over: its own worker owns it
        from now on (see ``head_state``), so the creator may exit."""
        _, req_id, actor_id, worker_wid, worker_addr = m
        if worker_wid in self.dead.known:
            peer.conn.reply_error(req_id, f"the worker of actor {short(actor_id)} died already")
            return
        self.detached.actor_placed(actor_id, worker_wid, worker_addr)   # named or not
        with self.db:
            self.db.execute("UPDATE actors SET owner_wid=?, owner_addr=? WHERE "
                            "actor_id=? AND detached=1",
                            (worker_wid, json.dumps(worker_addr), actor_id))
        peer.conn.reply(req_id, True)

    def node_of(self, wid):
        """The node a live driver or worker runs on (None if unknown)."""
        for node_id, wids in self.processes_of_node.items():
            if wid in wids:
                return node_id
        return None

    def on_lookup_actor(self, peer, m):
        _, req_id, name, namespace = m
        row = self.db.execute("SELECT actor_id, owner_wid, owner_addr, meta FROM actors "
                              "WHERE namespace=? AND name=?", (namespace, name)).fetchone()
        if row is None:
            peer.conn.reply_error(req_id, f"no actor named {name!r} in namespace "
                                          f"{namespace!r}")
            return
        peer.conn.reply(req_id, [row[0], row[1], json.loads(row[2]), json.loads(row[3])])

    def on_remove_actor(self, peer, m):
        """The actor died or was killed: its name is free (answered, so that
        ``kill`` returns only once the name can be taken again)."""
        _, req_id, actor_id = m
        with self.db:
            self.db.execute("DELETE FROM actors WHERE actor_id=?", (actor_id,))
        self.detached.removed(actor_id)     # killed: no restart
        peer.conn.reply(req_id, True)

    # ---------------------------------------------------------------- jobs
    def on_register_job(self, peer, m):
        _, req_id, info = m
        if isinstance(info.get("driver_wid"), bytes) and peer.driver_wid is None:
            peer.driver_wid = info["driver_wid"]
            self.driver_conns[peer.driver_wid] = peer
        with self.db:
            cur = self.db.execute("INSERT INTO jobs (info, started) VALUES (?, ?)",
                                  (json.dumps(_jsonable(info)), time.time()))
        peer.conn.reply(req_id, cur.lastrowid)

    def on_shutdown(self, peer, m):
        peer.conn.reply(m[1], True)
        self.stopping.set()


def registration_problem(info: dict) -> str | None:
    """Why a (schema-checked) node registration cannot be used, or None:
    its resources must make a valid ``ResourceSet`` with whole GPUs, so that
    placement on every node can read them."""
    try:
        total = ResourceSet.from_dict(info["resources"])
    except ValueError as exc:
        return str(exc)
    gpus = total.quantity("GPU")
    if gpus != int(gpus):
        return f"a node has whole GPUs, got GPU={gpus}"
    return None


def stats_problem(stats: dict) -> str | None:
    for key in ("resources_total", "resources_available"):
        if key in stats:
            try:
                ResourceSet.from_dict(stats[key])
            except ValueError as exc:
                return f"{key}: {exc}"
    return None


def _jsonable(d):
    return {k: (v.hex() if isinstance(v, bytes) else v) for k, v in d.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="gdfut.head")
    ap.add_argument("--session-dir", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--embedded", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        filename=os.path.join(args.session_dir, "logs", "head.log"))
    head = Head(args)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, head.stopping.set)
    loop.run_until_complete(head.run())
    sys.exit(head.exit_code)


if __name__ == "__main__":
    main()
