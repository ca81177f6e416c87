"""Ray's ``ray.util`` helpers: ActorPool, Queue (``gdfut.util.queue``) and
placement groups."""
from .actor_pool import ActorPool
from . import queue

__all__ = ["ActorPool", "queue"]
