"""The node daemon's part in placement groups.

* Reservation, on the head's word: ``NODE_PREPARE_BUNDLES`` sets bundles'
  resources aside in the lease manager (all of this message's bundles or
  none), ``NODE_COMMIT_BUNDLES`` makes them usable, ``NODE_RETURN_BUNDLES``
  gives them back (a rollback, or the group removed). Only the head may send
  these.
* Lease requests with a ``["PG", group id, bundle index, capture]`` strategy:
  the first node asks the head where the group's bundles are (waiting while
  the group is pending) and sends the request on to a node holding the
  bundle; that node asks its lease manager for the group's renamed resources
  (``bundle_demand``), so the request runs only inside the bundle.
"""
from __future__ import annotations

import asyncio
import logging
import time

from . import protocol as P
from .ids import short
from .sched.placement_groups import bundle_demand, bundle_supply
from .sched.resources import ResourceSet, actor_resources
from .transport import tcp

log = logging.getLogger("gdfut.node.pgs")

LOCATION_TTL_S = 1.0          # a group's bundle locations are re-read after this
MAX_CACHED_LOCATIONS = 10_000


class NodeBundles:
    def __init__(self, node):
        self.node = node
        self.locations: dict[bytes, tuple[float, list]] = {}   # pg id -> (read at, nodes)
        self.background: set = set()

    def handlers(self) -> dict:
        return {P.NODE_PREPARE_BUNDLES: self.on_prepare, P.NODE_COMMIT_BUNDLES: self.on_commit,
                P.NODE_RETURN_BUNDLES: self.on_return}

    # ------------------------------------------------------- reservation
    def _check_head(self, peer):
        if peer.conn is None or peer.conn is not self.node.head_conn:
            raise PermissionError("only the head reserves placement group bundles")

    def on_prepare(self, peer, m):
        _, req_id, group, items = m
        self._check_head(peer)
        leases, done = self.node.leases, []
        for index, resources in items:
            plain = ResourceSet.from_dict(resources)
            if not leases.prepare_bundle((group, int(index)), plain,
                                         bundle_supply(plain, group, int(index))):
                self.node.run_instructions(leases.return_bundles(group, done))
                peer.conn.reply(req_id, False)
                return
            done.append(int(index))
        peer.conn.reply(req_id, True)

    def on_commit(self, peer, m):
        _, req_id, group, indexes = m
        self._check_head(peer)
        for index in indexes:
            self.node.run_instructions(self.node.leases.commit_bundle((group, int(index))))
        peer.conn.reply(req_id, True)

    def on_return(self, peer, m):
        _, req_id, group, indexes = m
        self._check_head(peer)
        self.locations.pop(bytes.fromhex(group), None)
        self.node.run_instructions(self.node.leases.return_bundles(group, indexes))
        peer.conn.reply(req_id, True)

    # ----------------------------------------------------- lease requests
    def on_request_lease(self, peer, m):
        _, req_id, resources, is_actor, actor_id, hints = m
        _, pg_id, index, _capture = hints["strategy"]
        if hints.get("spilled"):
            self.lease_here(peer, req_id, resources, is_actor, pg_id, index)
            return
        task = asyncio.ensure_future(self.route(peer, req_id, resources, is_actor, pg_id, index))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def route(self, peer, req_id, resources, is_actor, pg_id, index):
        try:
            nodes = await self.bundle_nodes(pg_id)
        except (tcp.RemoteError, tcp.ConnectionLost, OSError) as exc:
            peer.conn.reply_error(req_id, f"Unschedulable: {exc}")
            return
        if not -1 <= index < len(nodes):
            peer.conn.reply_error(req_id, f"Unschedulable: placement group {pg_id.hex()} has "
                                          f"{len(nodes)} bundles, no bundle {index}")
            return
        candidates = [n for n in (nodes if index < 0 else [nodes[index]]) if n is not None]
        if not candidates or self.node.node_id in candidates:
            self.lease_here(peer, req_id, resources, is_actor, pg_id, index)
            return
        target = candidates[0]
        if target not in self.node.cluster:
            await self.node.refresh_cluster()
        info = self.node.cluster.get(target)
        if info is None:
            peer.conn.reply_error(req_id, f"Unschedulable: node {short(target)} holding "
                                          f"placement group {pg_id.hex()} is unknown")
            return
        peer.conn.reply(req_id, {"spillback": info["addr"], "node_id": target})

    async def bundle_nodes(self, pg_id) -> list:
        """Where the group's bundles are (once it is created)."""
        cached = self.locations.get(pg_id)
        if cached is not None and time.monotonic() - cached[0] < LOCATION_TTL_S:
            return cached[1]
        head = self.node.head_conn
        if head is None or head.closed:
            raise tcp.ConnectionLost("the head is not reachable")
        located = await head.request(P.HEAD_PG_WAIT, pg_id, None)
        if len(self.locations) >= MAX_CACHED_LOCATIONS:
            self.locations.clear()
        self.locations[pg_id] = (time.monotonic(), located["bundle_nodes"])
        return located["bundle_nodes"]

    def close(self):
        """Node shutdown: stop the requests still waiting for their group."""
        for task in list(self.background):
            task.cancel()

    def lease_here(self, peer, req_id, resources, is_actor, pg_id, index):
        if peer.conn is None or peer.conn.closed:
            return      # the client left while its group was pending: nothing to grant
        group = pg_id.hex()
        held, placement = _plain_demand(resources, is_actor)
        node = self.node
        request_id = next(node.request_ids)
        node.pending_leases[request_id] = (peer, req_id)
        node.run_instructions(node.leases.request_lease(
            request_id, bundle_demand(held, group, index), peer.wid, is_actor=bool(is_actor),
            placement=bundle_demand(placement, group, index), bundle=(group, index)))


def _plain_demand(resources, is_actor) -> tuple[ResourceSet, ResourceSet]:
    """(held, placement) before renaming. An actor that names any resource
    needs no extra CPU to be placed in a group (Ray: the default 1 CPU to
    place applies only to actors that ask for nothing)."""
    if not is_actor:
        held = ResourceSet.from_dict(resources)
        return held, held
    opts = resources or {}
    placement, held = actor_resources(opts.get("CPU"), opts.get("GPU"),
                                      {k: v for k, v in opts.items() if k not in ("CPU", "GPU")})
    return held, (held if opts else placement)
