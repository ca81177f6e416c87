"""ObjectRef: the future a remote call returns.

A ref knows its object id and its owner (the process that keeps the object's
metadata). Creating and destroying refs in a process is what the owner's
reference count is made of, so construction and ``__del__`` report to this
process's runtime.
"""
from __future__ import annotations

import asyncio

from . import runtime_context
from .ids import short
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
