"""The head's placement group table and the shell that reserves bundles.

Decisions come from the pure ``sched.placement_groups.place_bundles``; this
module turns them into a two-phase reservation with the node daemons: every
chosen node *prepares* its bundles (sets the resources aside, or says it
cannot), then, only if all did, every one *commits* (the renamed resources
become usable); if any could not, the prepared ones are *returned*. The head
decides on heartbeat views, which may be a second old, so a failed prepare
is normal: the group stays pending and is tried again at the next wake-up
(a group created or removed, a node joining, a heartbeat).

Groups are placed in creation order, one at a time (one loop, so two
groups never race for the same resources). A group whose node dies goes to
RESCHEDULING and its lost bundles are placed again. A group ends when it is
removed, or when the connection that created it closes (its driver or
worker exited), unless it was created with ``lifetime="detached"``.

The table is also written to the head's SQLite (on creation, placement,
rescheduling and removal: never per task), so a restarted head keeps its
groups (``load``): their bundles are still reserved on the nodes. A group a
driver created is removed when that driver is known dead (its process id,
from the job registration on the same connection); one a worker created
outlives its creator after a restart (as if detached).
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging

from . import protocol as P
from .ids import short
from .sched import policy
from .sched.placement_groups import check_bundles, check_strategy, NotNow, place_bundles
from .sched.resources import ResourceSet

log = logging.getLogger("gdfut.head.pgs")

PENDING, CREATED, RESCHEDULING, REMOVED = "PENDING", "CREATED", "RESCHEDULING", "REMOVED"
MAX_GROUPS = 100_000          # live groups; removed ones are kept (for the table) within this
MAX_WAITERS_PER_GROUP = 10_000
NODE_REPLY_TIMEOUT_S = 10.0
RESTART_DELAY_S = 0.5         # after the loop failed unexpectedly


class Group:
    def __init__(self, pg_id, name, bundles, strategy, detached, creator, seq,
                 creator_wid=None):
        self.pg_id = pg_id
        self.name = name
        self.bundle_dicts = [dict(b) for b in bundles]
        self.bundles = check_bundles(bundles)
        self.strategy = check_strategy(strategy)
        self.detached = detached
        self.creator = creator
        self.creator_wid = creator_wid   # the creating driver's process id, if known
        self.seq = seq
        self.state = PENDING
        self.bundle_nodes: list = [None] * len(self.bundles)
        self.waiters: list[asyncio.Future] = []
        self.reason = "not tried yet"
        self.warned_infeasible = False

    @property
    def group(self) -> str:
        return self.pg_id.hex()

    def row(self) -> dict:
        return {"placement_group_id": self.pg_id.hex(), "name": self.name,
                "bundles": dict(enumerate(self.bundle_dicts)),
                "bundles_to_node_id": {i: n.hex() for i, n in enumerate(self.bundle_nodes)
                                       if n is not None},
                "strategy": self.strategy, "state": self.state,
                "stats": {"scheduling_state": self.reason}}

    def located(self) -> dict:
        return {"state": self.state, "bundle_nodes": list(self.bundle_nodes)}


class PlacementGroups:
    def __init__(self, head):
        self.head = head
        self.groups: dict[bytes, Group] = {}      # insertion order = creation order
        self.node_peers: dict[bytes, object] = {}  # node id -> its HeadConn
        self.unreported: dict[bytes, ResourceSet] = {}  # committed since its heartbeat
        self.wake = asyncio.Event()
        self.seq = 0
        self.background: set = set()

    # ---------------------------------------------------------- durability
    SCHEMA = """CREATE TABLE IF NOT EXISTS pgs (pg_id BLOB PRIMARY KEY, name TEXT,
        bundles TEXT, strategy TEXT, detached INTEGER, creator_wid BLOB, state TEXT,
        bundle_nodes TEXT, seq INTEGER);"""

    def load(self) -> None:
        """The groups a previous head of this session had (see module doc)."""
        db = self.head.db
        db.executescript(self.SCHEMA)
        for (pg_id, name, bundles, strategy, detached, creator_wid, state, nodes,
             seq) in db.execute("SELECT * FROM pgs ORDER BY seq"):
            group = Group(pg_id, name, json.loads(bundles), strategy, bool(detached), None,
                          seq, creator_wid)
            group.state = state
            group.bundle_nodes = [bytes.fromhex(n) if n else None for n in json.loads(nodes)]
            group.reason = "restored after a head restart"
            self.groups[pg_id] = group
            self.seq = max(self.seq, seq)
        if self.groups:
            self.wake.set()

    def save(self, group: Group) -> None:
        with self.head.db as db:
            if group.state == REMOVED:
                db.execute("DELETE FROM pgs WHERE pg_id=?", (group.pg_id,))
                return
            db.execute("INSERT OR REPLACE INTO pgs VALUES (?,?,?,?,?,?,?,?,?)",
                       (group.pg_id, group.name, json.dumps(group.bundle_dicts),
                        group.strategy, int(group.detached), group.creator_wid, group.state,
                        json.dumps([n.hex() if n else None for n in group.bundle_nodes]),
                        group.seq))

    def owners_died(self, wids) -> None:
        """Drivers died: the groups they created go, unless detached (after a
        head restart no connection is left to see them go)."""
        dead = set(wids)
        for group in list(self.groups.values()):
            if group.creator_wid in dead and not group.detached and group.state != REMOVED:
                log.info("placement group %s removed: its creator died", group.group)
                self.remove(group)

    def handlers(self) -> dict:
        return {P.HEAD_PG_CREATE: self.on_create, P.HEAD_PG_REMOVE: self.on_remove,
                P.HEAD_PG_WAIT: self.on_wait, P.HEAD_PG_TABLE: self.on_table,
                P.HEAD_PG_LOOKUP: self.on_lookup}

    # ------------------------------------------------------------- requests
    def on_create(self, peer, m):
        _, req_id, pg_id, name, bundles, strategy, detached = m
        if not isinstance(pg_id, bytes) or not isinstance(name, str):
            raise ValueError("placement group id must be bytes and name a string")
        if pg_id in self.groups:
            raise ValueError(f"placement group {short(pg_id)} already exists")
        if name and any(g.name == name and g.state != REMOVED for g in self.groups.values()):
            raise ValueError(f"a placement group named {name!r} already exists")
        self._make_room()
        self.seq += 1
        group = Group(pg_id, name, bundles, strategy, bool(detached), peer, self.seq,
                      getattr(peer, "driver_wid", None))
        self.groups[pg_id] = group
        self.save(group)
        self.wake.set()
        peer.conn.reply(req_id, True)

    def _make_room(self):
        if len(self.groups) < MAX_GROUPS:
            return
        removed = [k for k, g in self.groups.items() if g.state == REMOVED]
        if not removed:
            raise ValueError(f"too many placement groups (limit {MAX_GROUPS})")
        for key in removed[: max(1, len(removed) // 2)]:
            del self.groups[key]

    def on_remove(self, peer, m):
        _, req_id, pg_id = m
        group = self.groups.get(pg_id)
        if group is None:
            raise ValueError(f"no placement group {short(pg_id)}")
        self.remove(group)
        peer.conn.reply(req_id, True)

    def on_wait(self, peer, m):
        _, req_id, pg_id, timeout = m
        group = self._get(pg_id)
        if group.state == CREATED:
            peer.conn.reply(req_id, group.located())
            return
        if len(group.waiters) >= MAX_WAITERS_PER_GROUP:
            raise ValueError(f"too many waiters on placement group {short(pg_id)}")
        waiter = asyncio.get_running_loop().create_future()
        group.waiters.append(waiter)
        self._spawn(self._answer_wait(peer, req_id, group, waiter, timeout))

    async def _answer_wait(self, peer, req_id, group, waiter, timeout):
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            pass
        if waiter in group.waiters:
            group.waiters.remove(waiter)
        if peer.conn.closed:
            return
        if group.state == REMOVED:
            peer.conn.reply_error(req_id, f"placement group {group.group} was removed")
        else:
            peer.conn.reply(req_id, group.located())

    def on_table(self, peer, m):
        _, req_id, pg_id = m
        if pg_id is None:
            groups = list(self.groups.values())
        elif pg_id in self.groups:
            groups = [self.groups[pg_id]]      # a removed one too: its state says so
        else:
            raise ValueError(f"no placement group {pg_id.hex()}")
        peer.conn.reply(req_id, [g.row() for g in groups])

    def on_lookup(self, peer, m):
        _, req_id, name = m
        for group in self.groups.values():
            if group.name == name and group.state != REMOVED:
                peer.conn.reply(req_id, group.row())
                return
        peer.conn.reply_error(req_id, f"Failed to look up placement group with name: {name}")

    def _get(self, pg_id) -> Group:
        group = self.groups.get(pg_id)
        if group is None:
            raise ValueError(f"no placement group {pg_id.hex() if isinstance(pg_id, bytes) else pg_id!r}")
        if group.state == REMOVED:
            raise ValueError(f"placement group {group.group} was removed")
        return group

    # --------------------------------------------------------------- events
    def node_registered(self, peer, node_id):
        self.node_peers[node_id] = peer
        self.wake.set()

    def heartbeat(self, node_id):
        self.unreported.pop(node_id, None)
        if any(g.state in (PENDING, RESCHEDULING) for g in self.groups.values()):
            self.wake.set()

    def node_dead(self, node_id):
        self.node_peers.pop(node_id, None)
        self.unreported.pop(node_id, None)
        for group in self.groups.values():
            if group.state != REMOVED and node_id in group.bundle_nodes:
                group.bundle_nodes = [None if n == node_id else n for n in group.bundle_nodes]
                if group.state == CREATED:
                    group.state = RESCHEDULING
                self.save(group)
                log.info("placement group %s lost bundles on dead node %s", group.group,
                         short(node_id))
                self.wake.set()

    def conn_closed(self, peer):
        for group in list(self.groups.values()):
            if group.creator is peer and not group.detached and group.state != REMOVED:
                log.info("placement group %s removed: its creator disconnected", group.group)
                self.remove(group)

    def remove(self, group: Group):
        if group.state == REMOVED:
            return
        group.state = REMOVED
        group.reason = "removed"
        self.save(group)
        for node_id in set(n for n in group.bundle_nodes if n is not None):
            self._spawn(self._node_request(node_id, P.NODE_RETURN_BUNDLES, group.group, None))
        for waiter in group.waiters:
            if not waiter.done():
                waiter.set_result(None)
        self.wake.set()

    def _spawn(self, coro):
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # ------------------------------------------------------------ placement
    async def run(self):
        """Place pending groups whenever something changed. A failure is
        logged and the loop goes on: a dead loop would leave every later
        group pending forever."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                try:
                    await self.place_pending()
                except Exception:
                    log.exception("placement group scheduling failed; retrying")
                    await asyncio.sleep(RESTART_DELAY_S)
                    self.wake.set()
        finally:
            for task in list(self.background):
                task.cancel()

    async def place_pending(self):
        for group in sorted(self.groups.values(), key=lambda g: g.seq):
            if group.state in (PENDING, RESCHEDULING):
                await self.try_place(group)

    def node_views(self) -> list:
        views = []
        for n in self.head.nodes():
            stats = n.get("stats") or {}
            if n["state"] != "ALIVE" or n["node_id"] not in self.node_peers or not stats:
                continue
            total = ResourceSet.from_dict(stats.get("resources_total") or {})
            free = ResourceSet.from_dict(stats.get("resources_available") or {})
            free, _ = free.subtract_clamped(self.unreported.get(n["node_id"], ResourceSet()))
            views.append(policy.NodeView(n["node_id"], total, free))
        return views

    async def try_place(self, group: Group):
        placed = {i: n for i, n in enumerate(group.bundle_nodes) if n is not None}
        decision = place_bundles(group.bundles, group.strategy, self.node_views(), placed)
        if isinstance(decision, NotNow):
            group.reason = decision.explain()
            if decision.infeasible and not group.warned_infeasible:
                group.warned_infeasible = True
                log.warning("placement group %s cannot be placed on the current nodes (it "
                            "waits for more): %s", group.group, decision.reason)
            return
        new: dict = collections.defaultdict(list)
        for index, node_id in enumerate(decision.nodes):
            if index not in placed:
                new[node_id].append(index)
        nodes = list(new)
        answers = await asyncio.gather(*(
            self._node_request(node_id, P.NODE_PREPARE_BUNDLES, group.group,
                               [[i, group.bundle_dicts[i]] for i in new[node_id]])
            for node_id in nodes))
        prepared = [node_id for node_id, ok in zip(nodes, answers) if ok is True]
        if len(prepared) < len(nodes) or group.state == REMOVED:
            group.reason = "waiting: a node could not set the bundles' resources aside"
            for node_id in prepared:
                await self._node_request(node_id, P.NODE_RETURN_BUNDLES, group.group,
                                         new[node_id])
            return
        await asyncio.gather(*(self._node_request(node_id, P.NODE_COMMIT_BUNDLES, group.group,
                                                  new[node_id]) for node_id in nodes))
        for node_id in nodes:
            reserved = self.unreported.get(node_id, ResourceSet())
            for index in new[node_id]:
                reserved = reserved.add(group.bundles[index])
            self.unreported[node_id] = reserved
        group.bundle_nodes = list(decision.nodes)
        if group.state == REMOVED:       # removed while we waited for the nodes
            for node_id in set(decision.nodes):
                self._spawn(self._node_request(node_id, P.NODE_RETURN_BUNDLES, group.group,
                                               None))
            return
        group.state = CREATED
        group.reason = "created"
        self.save(group)
        log.info("placement group %s created: bundles on %s", group.group,
                 [short(n) for n in group.bundle_nodes])
        for waiter in group.waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _node_request(self, node_id, mtype, *fields):
        """A request to a node daemon; None if it cannot be reached or fails."""
        peer = self.node_peers.get(node_id)
        if peer is None or peer.conn is None or peer.conn.closed:
            return None
        try:
            return await asyncio.wait_for(peer.conn.request(mtype, *fields),
                                          NODE_REPLY_TIMEOUT_S)
        except Exception as exc:     # the node died or refused: the caller decides
            log.warning("node %s: placement group request %s failed: %s", short(node_id),
                        mtype, exc)
            return None
