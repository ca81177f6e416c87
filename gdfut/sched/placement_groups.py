"""Placement groups: where each bundle of a group goes, and the resource names
a reserved bundle becomes.

Pure: ``place_bundles(bundles, strategy, nodes, placed)`` looks at a snapshot
of the nodes' free resources and returns ``Placement`` (one node per bundle)
or ``NotNow`` (nothing fits as things stand; ``infeasible`` when even the
nodes' *total* resources could never hold it, so waiting for resources to
free up will not help — only a new node would).

Strategies (Ray's):

* ``STRICT_PACK``: every bundle on one node, or nothing.
* ``PACK``: one node if one can hold them all; else as few nodes as the greedy
  fill finds, bundles in order, each on the node already in use when it fits.
* ``STRICT_SPREAD``: every bundle on a different node, or nothing.
* ``SPREAD``: different nodes while there are unused ones that fit; then
  bundles share nodes (the node holding the fewest bundles of the group).

Among candidate nodes the least loaded after placing wins (ties: the given
node order), so groups spread over a cluster rather than pile onto its first
node. The greedy placement can miss an assignment that a full search would
find (e.g. STRICT_SPREAD with very uneven bundles and nodes); it tries the
largest bundles first to make that rare.

``placed`` lists bundles that already hold a node (a group being rescheduled
after a node died): they stay, and count for the strategy.

Reserved bundles become node resources with renamed keys, as in Ray:
bundle ``i`` of group ``g`` holding ``{"CPU": 2}`` adds ``CPU_group_i_g: 2``
and ``CPU_group_g: 2`` to its node. A task placed in the group asks for the
renamed resources instead of the plain ones (``bundle_demand``), so it can
only use what the group reserved, and the node's plain CPUs stay for others.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

from gdfut.sched.policy import NodeId, NodeView, utilisation_after
from gdfut.sched.resources import GPU, UNITS_PER_ONE, ResourceSet

PACK, SPREAD, STRICT_PACK, STRICT_SPREAD = "PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"
STRATEGIES = (PACK, SPREAD, STRICT_PACK, STRICT_SPREAD)
MAX_BUNDLES = 1000
"""Bundles in one group (a bound on every message and search that lists them)."""


@dataclass(frozen=True)
class Placement:
    nodes: tuple  # node id of bundle i, for every bundle


@dataclass(frozen=True)
class NotNow:
    reason: str
    infeasible: bool = False  # no node's totals could hold it: only new nodes help

    def explain(self) -> str:
        return ("infeasible: " if self.infeasible else "waiting: ") + self.reason


Decision = Union[Placement, NotNow]


# -- validation -------------------------------------------------------------------


def check_bundles(bundles: Any) -> list[ResourceSet]:
    """The bundles as ResourceSets; ``ValueError``/``TypeError`` naming what is wrong."""
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError(f"bundles must be a non-empty list of resource dicts, got {bundles!r}")
    if len(bundles) > MAX_BUNDLES:
        raise ValueError(f"a placement group has at most {MAX_BUNDLES} bundles, "
                         f"got {len(bundles)}")
    out = []
    for index, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping):
            raise TypeError(f"bundle {index} must be a dict of resources, got {bundle!r}")
        try:
            resources = ResourceSet(bundle)
        except ValueError as exc:
            raise ValueError(f"bundle {index}: {exc}") from None
        if resources.is_empty():
            raise ValueError(f"bundle {index} is {dict(bundle)!r}: bundles cannot be an "
                             f"empty dictionary or resources with only 0 values")
        gpus = resources.units(GPU)
        if gpus > UNITS_PER_ONE and gpus % UNITS_PER_ONE:
            raise ValueError(f"bundle {index}: GPU must be a fraction below 1 or a whole "
                             f"number, got {bundle[GPU]!r}")
        out.append(resources)
    return out


def check_strategy(strategy: Any) -> str:
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}; "
                         f"use one of {', '.join(STRATEGIES)}")
    return strategy


# -- placement --------------------------------------------------------------------


def place_bundles(
    bundles: Sequence[ResourceSet],
    strategy: str,
    nodes: Sequence[NodeView],
    placed: Mapping[int, NodeId] | None = None,
) -> Decision:
    """A node for every bundle not in ``placed``, given the nodes' free resources."""
    check_strategy(strategy)
    placed = dict(placed or {})
    alive = [n for n in nodes if n.alive]
    decision = _place(bundles, strategy, alive, placed, use_total=False)
    if isinstance(decision, Placement):
        return decision
    if not alive:
        return NotNow("no node is alive", infeasible=True)
    if isinstance(_place(bundles, strategy, alive, placed, use_total=True), NotNow):
        return NotNow(f"{decision.reason}, and no node's total resources could hold it "
                      f"(cluster nodes: {_describe_totals(alive)})", infeasible=True)
    return decision


def _place(bundles, strategy, nodes, placed, use_total: bool) -> Decision:
    free = {n.node_id: (n.total if use_total else n.available) for n in nodes}
    order = {n.node_id: i for i, n in enumerate(nodes)}
    views = {n.node_id: n for n in nodes}
    if any(node not in free for node in placed.values()):
        return NotNow("a bundle is placed on a node that is not alive")
    todo = [i for i in range(len(bundles)) if i not in placed]
    if strategy in (STRICT_PACK, PACK):
        together = _strict_pack(bundles, todo, placed, free, order, views)
        if strategy == STRICT_PACK or isinstance(together, Placement):
            return together
    # Largest first: the big bundles have the fewest homes.
    todo.sort(key=lambda i: (-_size(bundles[i]), i))
    result = dict(placed)
    for index in todo:
        node = _pick(strategy, bundles[index], result, free, order, views)
        if node is None:
            return NotNow(f"{strategy}: no node has {bundles[index].to_dict()} free for "
                          f"bundle {index}" + ("" if strategy in (PACK, SPREAD) else
                                               " on a node the group does not use yet"))
        result[index] = node
        free[node] = free[node].subtract(bundles[index])
    return Placement(tuple(result[i] for i in range(len(bundles))))


def _strict_pack(bundles, todo, placed, free, order, views) -> Decision:
    need = ResourceSet()
    for index in todo:
        need = need.add(bundles[index])
    targets = set(placed.values())
    if len(targets) > 1:
        return NotNow("STRICT_PACK group already spans several nodes")
    candidates = list(targets) if targets else list(free)
    fitting = [node for node in candidates if need.fits_in(free[node])]
    if not fitting:
        return NotNow(f"STRICT_PACK: no node has {need.to_dict()} free for all bundles")
    node = min(fitting, key=lambda n: (_load_after(need, views[n], free[n]), order[n]))
    return Placement(tuple(placed.get(i, node) for i in range(len(bundles))))


def _pick(strategy, bundle, result, free, order, views):
    """The node for one more bundle, given the bundles placed so far (``result``)."""
    fitting = [node for node in free if bundle.fits_in(free[node])]
    used = list(result.values())
    if strategy == STRICT_SPREAD:
        fitting = [node for node in fitting if node not in used]
    elif strategy == PACK and fitting:
        in_use = [node for node in fitting if node in used]
        fitting = in_use or fitting
    if not fitting:
        return None

    def key(node):
        shared = used.count(node) if strategy == SPREAD else 0
        return (shared, _load_after(bundle, views[node], free[node]), order[node])
    return min(fitting, key=key)


def _load_after(needs: ResourceSet, view: NodeView, free: ResourceSet) -> float:
    return utilisation_after(needs, NodeView(view.node_id, view.total, free))


def _size(bundle: ResourceSet) -> int:
    return sum(bundle.units(name) for name in bundle)


def _describe_totals(nodes: Sequence[NodeView]) -> str:
    return "; ".join(f"{n.node_id}: {n.total.to_dict()}" for n in nodes)


# -- renamed resources ------------------------------------------------------------


def group_resource(name: str, group_hex: str, index: int = -1) -> str:
    """Ray's name of a bundle resource: ``CPU_group_<i>_<g>``, or ``CPU_group_<g>``
    (any bundle of the group on that node) for ``index == -1``."""
    return f"{name}_group_{group_hex}" if index < 0 else f"{name}_group_{index}_{group_hex}"


def bundle_supply(bundle: ResourceSet, group_hex: str, index: int) -> ResourceSet:
    """What a reserved bundle adds to its node: each resource under its indexed
    name and under the group-wide name."""
    units: dict[str, int] = {}
    for name in bundle:
        amount = bundle.units(name)
        units[group_resource(name, group_hex, index)] = amount
        units[group_resource(name, group_hex)] = amount
    return ResourceSet.from_units(units)


def bundle_demand(needs: ResourceSet, group_hex: str, index: int) -> ResourceSet:
    """What a task asking for ``needs`` inside the group asks its node for: the
    group-wide names always (so every task counts against the group's total
    on the node) and the indexed names too when it names a bundle."""
    units: dict[str, int] = {}
    for name in needs:
        amount = needs.units(name)
        units[group_resource(name, group_hex)] = amount
        if index >= 0:
            units[group_resource(name, group_hex, index)] = amount
    return ResourceSet.from_units(units)


def demand_fits(needs: ResourceSet, bundles: Sequence[ResourceSet], index: int) -> bool:
    """Whether a task asking for ``needs`` could ever run in bundle ``index``
    (any bundle for -1)."""
    candidates = bundles if index < 0 else [bundles[index]]
    return any(needs.fits_in(b) for b in candidates)
