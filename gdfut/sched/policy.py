"""Cluster placement policy: which node should run a task or actor.

Pure function of a snapshot of the cluster: ``choose_node(request, nodes,
spread_counter)`` returns a ``Decision`` — ``Place(node_id)``, ``Wait`` (some
alive node could run it once resources free up) or ``Unschedulable`` (no
alive node could *ever* run it). Callers: an owner picking the node daemon to
ask for a lease, and a node daemon whose lease manager rejected a request as
infeasible there (``choose_for_spillback``).

Strategies, in order of precedence inside ``choose_node``:

* Feasibility first: a node is *feasible* when it is alive and its **total**
  resources fit the request; *available* when its free resources fit now.
  No feasible node -> ``Unschedulable``, with the missing resources named.
* ``NodeAffinity(node_id, soft=False)``: that node or nothing (Place there
  even while it is busy, so the request queues at that node; Wait when that
  node is the local one; Unschedulable when it is dead, unknown or too small).
  ``soft=True``: that node if it is available now, else the DEFAULT policy.
* ``SPREAD``: round-robin over feasible nodes, starting at
  ``spread_counter % len(feasible)`` and taking the first available one. The
  caller bumps the counter after each SPREAD placement. ``nodes`` must come in
  a stable order (e.g. join order) for round-robin to mean anything.
* ``DEFAULT`` (Ray's hybrid policy plus data locality), over available nodes:
    1. Locality: the node holding the most bytes of the task's arguments
       wins, unless its queue is much longer than the shortest one
       (``> LOCALITY_QUEUE_SLACK + 2 * shortest``) — moving the data is
       cheaper than waiting behind a long queue.
    2. Otherwise score each node by its utilisation *after* placing the
       request: the max over the requested resources (and CPU) of
       used/total. Scores at or under ``SPREAD_THRESHOLD`` (0.5) count as 0:
       below half load a node is "not busy", so we pack onto the local node
       (no network hop, warm workers) until it is about half full, and only
       then spread to the least loaded node.
    3. Ties: nodes without GPUs first for tasks that need no GPU (keep GPU
       machines free for GPU work — Ray's ``avoid_gpu_nodes``), then the
       local node, then shorter queue, then the given node order.
  No node available now: if the local node is feasible, ``Wait`` — the
  request queues at the local lease manager and runs when resources free.
  If the local node is *infeasible*, waiting there is pointless (it can
  never run the task), so ``Place`` it on the best feasible node (spillback)
  and let it queue there: most argument bytes, then shortest queue.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from gdfut.sched.resources import CPU, GPU, ResourceSet

NodeId = Hashable

SPREAD_THRESHOLD = 0.5
"""Utilisation at or below which a node counts as idle for the hybrid policy."""

LOCALITY_QUEUE_SLACK = 4
"""Queue entries the locality node may have beyond 2x the shortest queue."""


# -- inputs ---------------------------------------------------------------------


@dataclass(frozen=True)
class NodeView:
    """What the policy knows about one node (a snapshot, maybe slightly stale)."""

    node_id: NodeId
    total: ResourceSet
    available: ResourceSet
    queue_length: int = 0
    alive: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)  # reserved for label selectors

    def is_feasible_for(self, resources: ResourceSet) -> bool:
        return self.alive and resources.fits_in(self.total)

    def is_available_for(self, resources: ResourceSet) -> bool:
        return self.is_feasible_for(resources) and resources.fits_in(self.available)

    def has_gpus(self) -> bool:
        return self.total.units(GPU) > 0


@dataclass(frozen=True)
class DefaultStrategy:
    def __str__(self) -> str:
        return "DEFAULT"


@dataclass(frozen=True)
class SpreadStrategy:
    def __str__(self) -> str:
        return "SPREAD"


@dataclass(frozen=True)
class NodeAffinity:
    node_id: NodeId
    soft: bool = False


DEFAULT = DefaultStrategy()
SPREAD = SpreadStrategy()
Strategy = Union[DefaultStrategy, SpreadStrategy, NodeAffinity]


@dataclass(frozen=True)
class PlacementRequest:
    resources: ResourceSet
    local_node_id: NodeId
    arg_bytes_by_node: Mapping[NodeId, int] = field(default_factory=dict)
    strategy: Strategy = DEFAULT


# -- decisions ------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Run on ``node_id``. ``reason`` is a short code; ``detail`` says why."""

    node_id: NodeId
    reason: str  # affinity | spread | locality | local | hybrid | spillback
    detail: str = ""

    def explain(self) -> str:
        return f"place on {node_name(self.node_id)} ({self.reason}): {self.detail}"


@dataclass(frozen=True)
class Wait:
    """Feasible somewhere, but nowhere suitable has the resources free now."""

    reason: str

    def explain(self) -> str:
        return f"wait: {self.reason}"


@dataclass(frozen=True)
class Unschedulable:
    """No alive node can ever run this request as things stand."""

    missing: dict[str, int | float]
    message: str

    def explain(self) -> str:
        return f"unschedulable: {self.message}"


Decision = Union[Place, Wait, Unschedulable]


# -- entry points ---------------------------------------------------------------


def choose_node(
    request: PlacementRequest, nodes: Sequence[NodeView], spread_counter: int = 0
) -> Decision:
    """Decide where ``request`` should run, given a snapshot of ``nodes``."""
    _check_unique_ids(nodes)
    feasible = [n for n in nodes if n.is_feasible_for(request.resources)]
    strategy = request.strategy
    if isinstance(strategy, NodeAffinity):
        decision = _node_affinity(request, strategy, nodes)
        if decision is not None:
            return decision
    if not feasible:
        return _unschedulable(request.resources, nodes)
    if isinstance(strategy, SpreadStrategy):
        return _spread(request.resources, feasible, spread_counter)
    return _default(request, feasible, exclude=None)


def choose_for_spillback(request: PlacementRequest, nodes: Sequence[NodeView]) -> Decision:
    """Somewhere other than ``request.local_node_id``, if that helps.

    Used by a node daemon whose lease manager rejected a request as
    infeasible there, or that wants to move a long-queued request elsewhere.
    Another node with the resources free -> ``Place`` there (DEFAULT scoring,
    local node excluded). None free: ``Wait`` (stay queued here) if the local
    node can ever run it, else ``Place`` on the best feasible node to queue
    there. A hard affinity request is never spilled.
    """
    _check_unique_ids(nodes)
    if isinstance(request.strategy, NodeAffinity) and not request.strategy.soft:
        return choose_node(request, nodes)
    feasible = [n for n in nodes if n.is_feasible_for(request.resources)]
    if not feasible:
        return _unschedulable(request.resources, nodes)
    return _default(request, feasible, exclude=request.local_node_id)


# -- strategies -----------------------------------------------------------------


def _node_affinity(
    request: PlacementRequest, affinity: NodeAffinity, nodes: Sequence[NodeView]
) -> Decision | None:
    """Decision for an affinity request, or None to fall through to DEFAULT."""
    target = next((n for n in nodes if n.node_id == affinity.node_id), None)
    needs = request.resources
    if target is not None and target.is_available_for(needs):
        return Place(target.node_id, "affinity", "requested node has the resources free")
    if affinity.soft:
        return None
    if target is None or not target.alive:
        state = "unknown" if target is None else "dead"
        return Unschedulable(
            {}, f"hard node affinity to node {node_name(affinity.node_id)}, which is {state}"
        )
    if not target.is_feasible_for(needs):
        missing = needs.missing_from(target.total)
        return Unschedulable(
            missing,
            f"hard node affinity to node {node_name(target.node_id)}, which lacks {missing} "
            f"(needs {needs.to_dict()}, node total {target.total.to_dict()})",
        )
    if target.node_id == request.local_node_id:
        return Wait(f"hard node affinity: node {node_name(target.node_id)} is busy")
    # Only the target may run it: queue there, never at a node that cannot.
    return Place(target.node_id, "affinity", "requested node is busy; queue there")


def _spread(needs: ResourceSet, feasible: list[NodeView], counter: int) -> Decision:
    start = counter % len(feasible)
    for offset in range(len(feasible)):
        slot = (start + offset) % len(feasible)
        node = feasible[slot]
        if needs.fits_in(node.available):
            return Place(node.node_id, "spread", f"round-robin slot {slot} of {len(feasible)}")
    return Wait(f"SPREAD: none of {len(feasible)} feasible nodes has {needs.to_dict()} free")


def _default(
    request: PlacementRequest, feasible: list[NodeView], exclude: NodeId | None
) -> Decision:
    needs = request.resources
    available = [
        n for n in feasible if n.node_id != exclude and needs.fits_in(n.available)
    ]
    if available:
        chosen = _by_locality(request, available)
        if chosen is not None:
            return chosen
        return _hybrid(request, available)
    if any(n.node_id == request.local_node_id for n in feasible):
        # Moving it to another busy node would only add a hop: stay queued here.
        return Wait(
            f"no node has {needs.to_dict()} free; queueing at local node "
            f"{node_name(request.local_node_id)}"
        )
    return _spillback_target(request, feasible)


def _by_locality(request: PlacementRequest, available: list[NodeView]) -> Place | None:
    """The node holding most argument bytes, unless its queue is much longer.

    Equal bytes: the local node, then the shorter queue, then the given order.
    """

    def key(item: tuple[int, NodeView]) -> tuple[int, bool, int, int]:
        index, node = item
        local_bytes = request.arg_bytes_by_node.get(node.node_id, 0)
        return (-local_bytes, node.node_id != request.local_node_id, node.queue_length, index)

    _, best = min(enumerate(available), key=key)
    best_bytes = request.arg_bytes_by_node.get(best.node_id, 0)
    if best_bytes <= 0:
        return None
    shortest = min(n.queue_length for n in available)
    if best.queue_length > LOCALITY_QUEUE_SLACK + 2 * shortest:
        return None
    return Place(
        best.node_id,
        "locality",
        f"{best_bytes} bytes of arguments already there (queue {best.queue_length})",
    )


def _hybrid(request: PlacementRequest, available: list[NodeView]) -> Place:
    """Pack onto the local node while it is under half load, then least loaded."""
    needs = request.resources
    cluster_has_gpus = any(n.has_gpus() for n in available)
    avoid_gpu_nodes = cluster_has_gpus and needs.units(GPU) == 0

    def sort_key(item: tuple[int, NodeView]) -> tuple[Any, ...]:
        index, node = item
        score = utilisation_after(needs, node)
        effective = 0.0 if score <= SPREAD_THRESHOLD else score
        return (
            effective,
            avoid_gpu_nodes and node.has_gpus(),
            node.node_id != request.local_node_id,
            node.queue_length,
            index,
        )

    _, chosen = min(enumerate(available), key=sort_key)
    score = utilisation_after(needs, chosen)
    if chosen.node_id == request.local_node_id and score <= SPREAD_THRESHOLD:
        return Place(chosen.node_id, "local", f"local node at {score:.0%} after placing")
    return Place(chosen.node_id, "hybrid", f"least loaded: {score:.0%} after placing")


def _spillback_target(request: PlacementRequest, candidates: list[NodeView]) -> Place:
    """Where to queue a request the local node can never run: locality, then queue."""

    def sort_key(item: tuple[int, NodeView]) -> tuple[int, int, int]:
        index, node = item
        return (-request.arg_bytes_by_node.get(node.node_id, 0), node.queue_length, index)

    _, chosen = min(enumerate(candidates), key=sort_key)
    return Place(
        chosen.node_id,
        "spillback",
        f"local node {node_name(request.local_node_id)} cannot run "
        f"{request.resources.to_dict()}; queue at {node_name(chosen.node_id)} "
        f"(queue {chosen.queue_length})",
    )


# -- helpers --------------------------------------------------------------------


def utilisation_after(needs: ResourceSet, node: NodeView) -> float:
    """Max over the requested resources (and CPU) of used/total after placing."""
    worst = 0.0
    for name in set(needs) | {CPU}:
        total = node.total.units(name)
        if total == 0:
            continue
        used = total - node.available.units(name) + needs.units(name)
        worst = max(worst, used / total)
    return worst


def node_name(node_id) -> str:
    """A node as users see it elsewhere (``gdfut status``, ``get_node_id()``): hex."""
    return node_id.hex() if isinstance(node_id, (bytes, bytearray)) else str(node_id)


def _unschedulable(needs: ResourceSet, nodes: Sequence[NodeView]) -> Unschedulable:
    """Name what is missing: per resource vs the biggest node, else the closest node."""
    alive = [n for n in nodes if n.alive]
    if not alive:
        return Unschedulable(needs.to_dict(), f"needs {needs.to_dict()} but no node is alive")
    largest = ResourceSet.from_units(
        {name: max(n.total.units(name) for n in alive) for name in needs}
    )
    missing = needs.missing_from(largest)
    totals = _cluster_totals(alive)
    if missing:
        lacking = ", ".join(_describe_shortfall(name, needs, largest) for name in missing)
        return Unschedulable(
            missing,
            f"needs {needs.to_dict()} but no node has {lacking}; "
            f"cluster totals: {totals}",
        )
    # Each resource exists somewhere, but never all together on one node.
    closest = min(alive, key=lambda n: len(needs.missing_from(n.total)))
    missing = needs.missing_from(closest.total)
    return Unschedulable(
        missing,
        f"needs {needs.to_dict()} but no single node has all of it; closest node "
        f"{node_name(closest.node_id)} lacks {missing}; cluster totals: {totals}",
    )


def _describe_shortfall(name: str, needs: ResourceSet, largest: ResourceSet) -> str:
    if largest.units(name) == 0:
        return name
    return f"{needs.quantity(name)} {name} (largest node has {largest.quantity(name)})"


def _cluster_totals(alive: Sequence[NodeView]) -> dict[str, int | float]:
    total = ResourceSet()
    for node in alive:
        total = total.add(node.total)
    return total.to_dict()


def _check_unique_ids(nodes: Sequence[NodeView]) -> None:
    ids = [n.node_id for n in nodes]
    assert len(ids) == len(set(ids)), f"duplicate node ids in cluster view: {ids}"
