"""ObjectRef: the future a remote call returns.

A ref knows its object id and its owner (the process that keeps the object's
metadata). Creating and destroying refs in a process is what the owner's
reference count is made of, so construction and ``__del__`` report to this
process's runtime.
"""
from __future__ import annotations

import asyncio

from . import runtime_context
from .ids import short, task_of
from .serialization import record_nested


class ObjectRef:
    __slots__ = ("id", "owner_wid", "owner_addr", "_rt", "__weakref__")

    def __init__(self, oid: bytes, owner_wid: bytes, owner_addr: tuple, rt=None,
                 _count: bool = True):
        self.id = oid
        self.owner_wid = owner_wid
        self.owner_addr = tuple(owner_addr)
        self._rt = rt
        if rt is not None and _count:
            rt.add_local_ref(self)

    def __del__(self):
        rt = self._rt
        if rt is not None:
            try:
                rt.remove_local_ref(self.id)
            except Exception:  # interpreter shutdown: nothing to tell anyone
                pass

    def __reduce__(self):
        record_nested(self)
        return (_rebuild_ref, (self.id, self.owner_wid, self.owner_addr))

    def hex(self) -> str:
        return self.id.hex()

    def __repr__(self):
        return f"ObjectRef({short(self.id)})"

    def __eq__(self, other):
        return isinstance(other, ObjectRef) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def future(self):
        """A concurrent.futures.Future resolved with the value (or error)."""
        return runtime_context.require().value_future(self)

    def as_future(self) -> asyncio.Future:
        """An asyncio.Future of the value (Ray's ``as_future``), on the current
        event loop; ``future()`` gives a concurrent.futures.Future."""
        return asyncio.wrap_future(self.future())

    def __await__(self):
        return asyncio.wrap_future(self.future()).__await__()


ObjectID = ObjectRef   # Ray's older name, still accepted


def _rebuild_ref(oid, owner_wid, owner_addr):
    rt = runtime_context.current()
    if rt is not None and owner_wid != rt.wid:
        rt.borrowed_refs_seen += 1   # get() registers them with their owners
    return ObjectRef(oid, owner_wid, owner_addr, rt)


class ObjectRefGenerator:
    """What a generator task returns (Ray's streaming generator): an iterator
    of ObjectRefs, one per value the task yields, each as soon as it is made.

    ``next`` blocks until the task yields its next value (or ends:
    ``StopIteration``); ``async for`` and ``__anext__`` wait without blocking
    a thread. If the task raises after k values, the k+1-th ref holds the
    error. ``completed()`` is a ref that resolves when the task ends. Refs not
    taken are freed when the generator is dropped. Not thread-safe, and not
    serializable (as in Ray): pass the refs it yields instead.
    """

    def __init__(self, completed_ref: ObjectRef, rt):
        self._completed = completed_ref
        self._tid = task_of(completed_ref.id)
        self._rt = rt

    def __iter__(self):
        return self

    def __next__(self) -> ObjectRef:
        oid = self._rt.stream_next_blocking(self._tid)
        if oid is None:
            raise StopIteration
        return self._ref(oid)

    def __aiter__(self):
        return self

    async def __anext__(self) -> ObjectRef:
        fut = self._rt.stream_next(self._tid)
        try:
            oid = await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            # the ref may be handed out after all: drop it so its count goes
            fut.add_done_callback(lambda f: f.cancelled() or f.exception() or
                                  (f.result() is not None and self._ref(f.result())))
            raise
        if oid is None:
            raise StopAsyncIteration
        return self._ref(oid)

    def _ref(self, oid: bytes) -> ObjectRef:
        rt = self._rt
        return ObjectRef(oid, rt.wid, rt.addr, rt, _count=False)   # takes the stream's count

    def completed(self) -> ObjectRef:
        """A ref that resolves (to None, or the task's error) when the task ends."""
        return self._completed

    def next_ready(self) -> bool:
        """True if ``next`` would return at once (an item is ready, or the end)."""
        return self._rt.stream_ready(self._tid)

    def is_finished(self) -> bool:
        """True once every item was taken and the task ended."""
        return self._rt.stream_finished(self._tid)

    def __del__(self):
        rt = self._rt
        if rt is not None:
            try:
                rt.stream_dropped(self._tid)
            except Exception:  # interpreter shutdown: nothing to tell anyone
                pass

    def __reduce__(self):
        raise TypeError("an ObjectRefGenerator cannot be passed to another task or actor "
                        "(as in Ray); pass the ObjectRefs it yields instead")

    def __repr__(self):
        return f"ObjectRefGenerator({short(self._tid)})"


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task's one ref (Ray's name):
    the refs to the values the task yielded, in order; iterable and sized."""

    def __init__(self, refs):
        self._refs = list(refs)

    def __iter__(self):
        return iter(self._refs)

    def __len__(self):
        return len(self._refs)

    def __repr__(self):
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"
