"""Placement strategies for ``.options(scheduling_strategy=...)`` (Ray's names)."""
from __future__ import annotations


class NodeAffinitySchedulingStrategy:
    """Run on ``node_id`` (hex string or bytes). ``soft=True``: prefer it, but
    run elsewhere when it cannot take the task now."""

    def __init__(self, node_id, soft: bool = False):
        if isinstance(node_id, str):
            try:
                node_id = bytes.fromhex(node_id)
            except ValueError:
                raise ValueError(f"node_id {node_id!r} is not a hex node id") from None
        if not isinstance(node_id, bytes):
            raise TypeError(f"node_id must be a hex string or bytes, got {type(node_id).__name__}")
        self.node_id = node_id
        self.soft = bool(soft)

    def wire(self) -> list:
        return ["AFFINITY", self.node_id, self.soft]


class PlacementGroupSchedulingStrategy:
    """Run inside ``placement_group``: in bundle ``placement_group_bundle_index``,
    or any of its bundles for -1. The task or actor uses the resources the
    bundle reserved, never the node's others. With
    ``placement_group_capture_child_tasks=True`` the tasks and actors that the
    task (or actor) submits without a strategy of their own run in the same
    group, in any of its bundles."""

    def __init__(self, placement_group, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None):
        from .util.placement_group import PlacementGroup
        if not isinstance(placement_group, PlacementGroup):
            raise TypeError(f"placement_group must be a PlacementGroup, got "
                            f"{type(placement_group).__name__}")
        index = placement_group_bundle_index
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"placement_group_bundle_index must be an int, got {index!r}")
        if not -1 <= index < placement_group.bundle_count:
            raise ValueError(f"placement_group_bundle_index {index} is out of range: the "
                             f"placement group has {placement_group.bundle_count} bundles "
                             f"(use 0..{placement_group.bundle_count - 1}, or -1 for any)")
        self.placement_group = placement_group
        self.placement_group_bundle_index = index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def wire(self) -> list:
        return ["PG", self.placement_group.id.binary(), self.placement_group_bundle_index,
                bool(self.placement_group_capture_child_tasks)]

    def check_fits(self, resources: dict, what: str) -> None:
        """Ray refuses at the call a task that no bundle it may use could hold."""
        from .sched.placement_groups import demand_fits
        from .sched.resources import ResourceSet
        needs = ResourceSet.from_dict(resources)
        bundles = [ResourceSet(b) for b in self.placement_group.bundle_specs]
        if not demand_fits(needs, bundles, self.placement_group_bundle_index):
            index = self.placement_group_bundle_index
            which = "any bundle" if index < 0 else f"bundle {index}"
            raise ValueError(
                f"Cannot schedule {what} with the placement group because the resource "
                f"request {needs.to_dict()} cannot fit into {which} of the placement group, "
                f"{self.placement_group.bundle_specs}")


def strategy_wire(strategy):
    """The msgpack form of a strategy option: None, "SPREAD", an affinity list
    or a placement group list."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return "SPREAD"
    if isinstance(strategy, (NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy)):
        return strategy.wire()
    raise ValueError(f"unknown scheduling_strategy {strategy!r}: use 'DEFAULT', 'SPREAD', "
                     f"NodeAffinitySchedulingStrategy(node_id, soft) or "
                     f"PlacementGroupSchedulingStrategy(placement_group, bundle_index)")
