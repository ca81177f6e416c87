"""ActorPool: run work over a fixed set of actors (Ray's ``ray.util.ActorPool``).

``fn(actor, value)`` starts one call and returns its ObjectRef; the actor is
busy until the caller takes that result with ``get_next`` (submission order)
or ``get_next_unordered`` (whichever finishes first). Values submitted while
every actor is busy wait in the pool and start, in order, as actors come back.
Everything happens in the caller's thread: the pool is a plain object, not a
remote one, and holds no lock.
"""
from __future__ import annotations

import collections
from typing import Any, Callable

from .. import api
from ..exceptions import ActorDiedError

TIMEOUT_MESSAGE = "Timed out waiting for result"


class ActorPool:
    """A fixed pool of actor handles, lent to one call at a time."""

    def __init__(self, actors: list):
        self._idle_actors = list(actors)
        self._future_to_actor: dict = {}        # ref (tuple of refs) -> (index, actor)
        self._index_to_future: dict = {}        # submission index -> ref
        self._next_task_index = 0
        self._next_return_index = 0
        self._pending_submits: collections.deque = collections.deque()   # (fn, value)

    # ---------------------------------------------------------------- map
    def map(self, fn: Callable[[Any, Any], Any], values):
        """Apply ``fn`` over ``values`` with the pool's actors; an iterator of
        the results in the order of ``values``. Every value is submitted now;
        results left over from earlier submits are dropped first (as Ray)."""
        self._drop_outstanding(ordered=True)
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next)

    def map_unordered(self, fn: Callable[[Any, Any], Any], values):
        """As ``map``, but results come as they finish."""
        self._drop_outstanding(ordered=False)
        for value in values:
            self.submit(fn, value)
        return self._results(self.get_next_unordered)

    def _results(self, take):
        while self.has_next():
            yield take()

    def _drop_outstanding(self, ordered: bool) -> None:
        while self.has_next():
            try:
                if ordered:
                    self.get_next(timeout=0, ignore_if_timedout=True)
                else:
                    self.get_next_unordered(timeout=0, ignore_if_timedout=True)
            except TimeoutError:
                pass

    # ------------------------------------------------------------- submit
    def submit(self, fn: Callable[[Any, Any], Any], value) -> None:
        """Start ``fn(actor, value)`` on an idle actor, or queue it until one is free."""
        if not self._idle_actors:
            self._pending_submits.append((fn, value))
            return
        actor = self._idle_actors.pop()
        future = fn(actor, value)
        self._future_to_actor[_key(future)] = (self._next_task_index, actor)
        self._index_to_future[self._next_task_index] = future
        self._next_task_index += 1

    def has_next(self) -> bool:
        """Whether a started call's result has not been returned yet."""
        return bool(self._future_to_actor)

    # ---------------------------------------------------------------- get
    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False):
        """The next result in submission order.

        ``timeout`` (seconds) raises ``TimeoutError`` if it is not ready; with
        ``ignore_if_timedout=True`` that call is skipped for good (its actor
        returns to the pool) before the error is raised."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        if self._next_return_index >= self._next_task_index:
            raise ValueError("It is not allowed to call get_next() after get_next_unordered().")
        future = self._index_to_future[self._next_return_index]
        timed_out = False
        if timeout is not None:
            ready, _ = api.wait(_refs(future), num_returns=len(_refs(future)), timeout=timeout)
            timed_out = len(ready) < len(_refs(future))
            if timed_out and not ignore_if_timedout:
                raise TimeoutError(TIMEOUT_MESSAGE)
        del self._index_to_future[self._next_return_index]
        self._next_return_index += 1
        _, actor = self._future_to_actor.pop(_key(future))
        if timed_out:
            self._return_actor(actor)
            raise TimeoutError(f"{TIMEOUT_MESSAGE}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def get_next_unordered(self, timeout: float | None = None,
                           ignore_if_timedout: bool = False):
        """Whichever started call finishes first (results may come out of order)."""
        if not self.has_next():
            raise StopIteration("No more results to get")
        by_ref = {}
        for key in self._future_to_actor:
            by_ref[key if not isinstance(key, tuple) else key[0]] = key
        ready, _ = api.wait(list(by_ref), num_returns=1, timeout=timeout)
        if ready:
            key = by_ref[ready[0]]
        elif not ignore_if_timedout:
            raise TimeoutError(TIMEOUT_MESSAGE)
        else:
            key = next(iter(self._future_to_actor))
        index, actor = self._future_to_actor.pop(key)
        future = self._index_to_future.pop(index)
        self._next_return_index = max(self._next_return_index, index + 1)
        if not ready:
            self._return_actor(actor)
            raise TimeoutError(f"{TIMEOUT_MESSAGE}. The task {future} has been ignored.")
        return self._get_result(future, actor)

    def _get_result(self, future, actor):
        """The value; the actor goes back to the pool unless it died."""
        alive = True
        try:
            return api.get(future)
        except ActorDiedError:
            alive = False    # a dead actor in the idle set would take every submit
            raise
        finally:
            self._return_actor(actor, alive)

    def _return_actor(self, actor, alive: bool = True) -> None:
        if alive:
            self._idle_actors.append(actor)
        if self._pending_submits and self._idle_actors:
            self.submit(*self._pending_submits.popleft())

    # ------------------------------------------------------- pool members
    def has_free(self) -> bool:
        """Whether an actor is idle and no submitted value is waiting for one."""
        return bool(self._idle_actors) and not self._pending_submits

    def pop_idle(self):
        """Take an idle actor out of the pool (None when none is free)."""
        return self._idle_actors.pop() if self.has_free() else None

    def push(self, actor) -> None:
        """Add ``actor`` to the pool (it may take a waiting value at once)."""
        busy = [a for _, a in self._future_to_actor.values()]
        if actor in self._idle_actors or actor in busy:
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)


def _key(future):
    """Dictionary key of a call's result: a ref, or a tuple for several refs."""
    return tuple(future) if isinstance(future, list) else future


def _refs(future) -> list:
    return list(future) if isinstance(future, (list, tuple)) else [future]
