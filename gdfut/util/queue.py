"""A first-in first-out queue shared by tasks and actors (Ray's ``ray.util.queue``).

The items live in one async actor; a ``Queue`` object is a handle to it, so
it can be passed to tasks and actors like any other argument and every copy
sees the same items. ``maxsize <= 0`` means unbounded. Blocking ``put``/``get``
wait inside the actor (which serves many waiters at once), so a blocked
consumer never stops a producer from getting through.

The actor answers ``[ok, value]`` rather than raising, so callers get a plain
``Empty``/``Full`` (not a remote error wrapping one).
"""
from __future__ import annotations

import asyncio
from collections.abc import Iterable

from .. import api


class Empty(Exception):
    """``get`` found no item (non-blocking, or the timeout passed)."""


class Full(Exception):
    """``put`` found no room (non-blocking, or the timeout passed)."""


class _QueueActor:
    """The state behind a Queue. Runs on the actor's asyncio loop only."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.queue.qsize()

    def empty(self) -> bool:
        return self.queue.empty()

    def full(self) -> bool:
        return self.queue.full()

    async def put(self, item, timeout=None):
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
        except asyncio.TimeoutError:
            return [False, None]
        return [True, None]

    async def get(self, timeout=None):
        try:
            return [True, await asyncio.wait_for(self.queue.get(), timeout)]
        except asyncio.TimeoutError:
            return [False, None]

    def put_nowait(self, item):
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return [False, None]
        return [True, None]

    def put_nowait_batch(self, items):
        room = self.maxsize - self.queue.qsize()
        if self.maxsize > 0 and len(items) > room:
            return [False, f"Cannot add {len(items)} items to queue of size "
                           f"{self.queue.qsize()} and maxsize {self.maxsize}."]
        for item in items:
            self.queue.put_nowait(item)
        return [True, None]

    def get_nowait(self):
        try:
            return [True, self.queue.get_nowait()]
        except asyncio.QueueEmpty:
            return [False, None]

    def get_nowait_batch(self, num_items):
        if num_items > self.queue.qsize():
            return [False, f"Cannot get {num_items} items from queue of size "
                           f"{self.queue.qsize()}."]
        return [True, [self.queue.get_nowait() for _ in range(num_items)]]


class Queue:
    """A queue backed by an actor; pass it to tasks and actors to share it.

    ``actor_options`` go to the actor's ``.options(...)`` (e.g. a name, or
    ``num_cpus``), as in Ray.
    """

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {maxsize!r}")
        self.maxsize = maxsize
        actor_cls = api.remote(_QueueActor)
        if actor_options:
            actor_cls = actor_cls.options(**actor_options)
        self.actor = actor_cls.remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """Number of items in the queue now."""
        return api.get(self._actor().qsize.remote())

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return api.get(self._actor().empty.remote())

    def full(self) -> bool:
        return api.get(self._actor().full.remote())

    # ---------------------------------------------------------------- put
    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``. Blocking: wait for room, at most ``timeout`` seconds
        (then ``Full``). ``block=False``: ``Full`` at once if there is no room."""
        if not block:
            ok, _ = api.get(self._actor().put_nowait.remote(item))
        else:
            _check_timeout(timeout)
            ok, _ = api.get(self._actor().put.remote(item, timeout))
        if not ok:
            raise Full()

    async def put_async(self, item, block: bool = True, timeout: float | None = None) -> None:
        """``put`` for async code: awaits instead of blocking the thread."""
        if not block:
            ok, _ = await self._actor().put_nowait.remote(item)
        else:
            _check_timeout(timeout)
            ok, _ = await self._actor().put.remote(item, timeout)
        if not ok:
            raise Full()

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def put_nowait_batch(self, items) -> None:
        """Add all of ``items`` or none: ``Full`` if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        ok, why = api.get(self._actor().put_nowait_batch.remote(list(items)))
        if not ok:
            raise Full(why)

    # ---------------------------------------------------------------- get
    def get(self, block: bool = True, timeout: float | None = None):
        """Remove and return the oldest item. Blocking: wait for one, at most
        ``timeout`` seconds (then ``Empty``). ``block=False``: ``Empty`` at once."""
        if not block:
            ok, item = api.get(self._actor().get_nowait.remote())
        else:
            _check_timeout(timeout)
            ok, item = api.get(self._actor().get.remote(timeout))
        if not ok:
            raise Empty()
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None):
        """``get`` for async code."""
        if not block:
            ok, item = await self._actor().get_nowait.remote()
        else:
            _check_timeout(timeout)
            ok, item = await self._actor().get.remote(timeout)
        if not ok:
            raise Empty()
        return item

    def get_nowait(self):
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list:
        """Remove and return ``num_items`` items, or none: ``Empty`` if fewer are there."""
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        ok, value = api.get(self._actor().get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(value)
        return value

    # ----------------------------------------------------------- shutdown
    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        """End the queue's actor; its items are gone and calls still waiting
        in it fail with ``ActorDiedError``. (``force`` and ``grace_period_s``
        are Ray's; gdfut always stops the actor at once.)"""
        if self.actor is not None:
            api.kill(self.actor, no_restart=True)
        self.actor = None

    def _actor(self):
        if self.actor is None:
            raise RuntimeError("this Queue was shut down")
        return self.actor


def _check_timeout(timeout) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
