"""gdfut: a GPU-aware distributed futures runtime (Ray's API)."""
from .api import (array_module, available_resources, cancel, cluster_resources, get, get_actor,
                  get_gpu_ids, get_runtime_context, init, is_initialized, kill, memory_summary,
                  nodes, put, remote, shutdown, wait)
from .actor import method
from .scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy
from .object_ref import DynamicObjectRefGenerator, ObjectID, ObjectRef, ObjectRefGenerator
from .actor import ActorHandle
from . import exceptions
from . import util          # gdfut.util.ActorPool etc. after a plain ``import gdfut``, as in Ray

__version__ = "0.1.0"

__all__ = ["array_module", "init", "shutdown", "is_initialized", "remote", "method", "get", "put", "wait",
           "cancel", "kill", "get_actor", "get_gpu_ids", "get_runtime_context",
           "cluster_resources", "available_resources", "memory_summary", "nodes",
           "NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy", "ObjectRef",
           "ObjectID", "ObjectRefGenerator", "DynamicObjectRefGenerator", "ActorHandle",
           "exceptions", "util",
           "__version__"]
