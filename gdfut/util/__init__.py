"""Ray's ``ray.util`` helpers: ActorPool, Queue (``gdfut.util.queue``) and
placement groups."""
from .actor_pool import ActorPool
from . import queue, scheduling_strategies
from .placement_group import (PlacementGroup, get_current_placement_group, get_placement_group,
                              placement_group, placement_group_table, remove_placement_group)

__all__ = ["ActorPool", "queue", "scheduling_strategies", "PlacementGroup", "placement_group",
           "remove_placement_group", "get_placement_group", "get_current_placement_group",
           "placement_group_table"]
