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


def strategy_wire(strategy):
    """The msgpack form of a strategy option: None, "SPREAD" or an affinity list."""
    if strategy is None or strategy == "DEFAULT":
        return None
    if strategy == "SPREAD":
        return "SPREAD"
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return strategy.wire()
    raise ValueError(f"unknown scheduling_strategy {strategy!r}: use 'DEFAULT', 'SPREAD' or "
                     f"NodeAffinitySchedulingStrategy(node_id, soft)")
