"""Ray's ``ray.util.scheduling_strategies``."""
from ..scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                     PlacementGroupSchedulingStrategy)

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]
