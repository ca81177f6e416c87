"""Lineage of one owner: which task re-makes a lost object, and what is kept.

Pure state machine (no I/O, threads, clocks or randomness). The submitter
records each task it submits (``recorded``), with the tasks that made its
owned arguments (``upstream``). A task's lineage (its spec) is kept while

* any object it returned is alive in the ownership table (the table's
  ``ReleaseLineage`` says when none is: ``returns_released``), or
* the lineage of a task that took one of its returns as an argument is kept
  (that task may be re-run, and then needs this one's outputs again), or
* it is being re-run.

When none holds, ``ForgetSpec`` tells the shell to drop the spec, and its
upstream tasks lose one dependent each (which may release them in turn).

Memory is bounded: each entry counts the bytes of its spec, and once the
kept specs exceed ``max_bytes`` the oldest ones not being re-run are
evicted (``ForgetSpec``); an evicted entry stays as a stub (no spec) until
it is released, so that a lost object it made fails saying why.

``object_lost(oid, tid)``: every copy of owned object oid, made by task tid
(None: by ``put``), is gone and someone needs it. The answer is
``Rebuild(tid, attempt)`` (re-run the task; the shell re-makes lost
arguments first, asking again for each), ``None`` (the task is being re-run
already: wait for it) or ``Unrecoverable(oid, reason)``. Each task is re-run
at most ``max_retries`` times (-1: no limit), counted over its whole life.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Union

TaskId = Hashable
ObjectId = Hashable

DEFAULT_MAX_LINEAGE_BYTES = 256 * 1024 * 1024
"""Per owner (Ray's default is 1 GiB); ``gdfut.init(max_lineage_bytes=...)``."""
SPEC_OVERHEAD_BYTES = 200
"""What a kept spec costs beyond its inline argument bytes (ids, lists, options)."""

PUT = "it was made by put()"
UNKNOWN = "its lineage is not kept (results of actor calls and generator tasks are not rebuilt)"


@dataclass(frozen=True)
class Rebuild:
    """Re-run task tid (the ``attempt``-th re-run of it)."""
    tid: TaskId
    attempt: int


@dataclass(frozen=True)
class Unrecoverable:
    """Fail oid with ObjectLostError: it cannot be re-made, because ``reason``."""
    oid: ObjectId
    reason: str


class ForgetSpec(NamedTuple):
    """Drop the kept spec of task tid (released, or evicted). A named tuple,
    not a dataclass: one is made per task, on the hot path."""
    tid: TaskId


Decision = Union[Rebuild, Unrecoverable, None]


# An entry nothing links to and that was never re-run, evicted or released
# (most tasks: they take no owned results of other tasks) is kept as the
# plain tuple (size, max_retries): cheaper to make than an _Entry, and
# untracked by the cyclic GC (it holds only ints), which matters since many
# thousands of them may be alive. ``_full`` turns it into an _Entry the
# first time anything about it changes.


@dataclass(slots=True)
class _Entry:
    upstream: tuple          # tasks that made its owned arguments (linked while kept)
    size: int
    max_retries: int
    rebuilds: int = 0
    returns_alive: bool = True
    dependents: int = 0      # entries whose upstream holds this one
    evicted: bool = False
    rebuilding: bool = False


class Lineage:
    def __init__(self, max_bytes: int = DEFAULT_MAX_LINEAGE_BYTES):
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise ValueError(f"max_lineage_bytes must be an int >= 0, got {max_bytes!r}")
        self.max_bytes = max_bytes
        self._entries: dict[TaskId, _Entry] = {}
        # tids with a spec, oldest first. An OrderedDict: deleting from the front
        # of a plain dict leaves holes that every later scan walks over.
        self._kept: OrderedDict = OrderedDict()
        self._bytes = 0
        self._stats = {"evicted": 0, "rebuilds": 0, "unrecoverable": 0}

    # ---------------------------------------------------------------- events
    def recorded(self, tid: TaskId, upstream: Iterable[TaskId], size: int,
                 max_retries: int) -> list[ForgetSpec]:
        """Task tid was submitted; ``upstream``: the tasks that made the
        arguments it takes that this process owns."""
        entries = self._entries
        if tid in entries:
            raise ValueError(f"lineage of task {tid!r} recorded twice")
        links = ()
        if upstream:       # (most tasks have none: this runs once per task)
            links = tuple(u for u in dict.fromkeys(upstream) if u in entries and u != tid)
            for u in links:
                self._full(u).dependents += 1
        entries[tid] = _Entry(links, size, max_retries) if links else (size, max_retries)
        self._kept[tid] = None
        self._bytes += size
        return self._evict() if self._bytes > self.max_bytes else []

    def returns_released(self, tid: TaskId) -> list[ForgetSpec]:
        """No object task tid returned is alive any more (ReleaseLineage)."""
        e = self._entries.get(tid)
        if e is None:              # not recorded (an actor call, a generator)
            return []
        if type(e) is tuple:       # the common case: nothing else holds it
            del self._entries[tid]
            del self._kept[tid]
            self._bytes -= e[0]
            return [ForgetSpec(tid)]
        e.returns_alive = False
        if not (e.upstream or e.dependents or e.rebuilding or e.evicted):
            del self._entries[tid]             # the common case, without the worklist
            del self._kept[tid]
            self._bytes -= e.size
            return [ForgetSpec(tid)]
        return self._drop_unneeded([tid])

    def object_lost(self, oid: ObjectId, tid: TaskId | None) -> Decision:
        """Every copy of oid (made by tid; None: a put) is gone and it is needed."""
        if tid is None:
            return self._unrecoverable(oid, PUT)
        if tid not in self._entries:
            return self._unrecoverable(oid, UNKNOWN)
        e = self._full(tid)
        if e.evicted:
            return self._unrecoverable(
                oid, f"its lineage was evicted (max_lineage_bytes={self.max_bytes})")
        if e.rebuilding:
            return None
        if e.max_retries != -1 and e.rebuilds >= e.max_retries:
            return self._unrecoverable(
                oid, f"its task was already re-run max_retries={e.max_retries} "
                     f"time{'s' if e.max_retries != 1 else ''}")
        e.rebuilds += 1
        e.rebuilding = True
        e.returns_alive = True     # the shell keeps (or revives) the object it re-makes
        self._stats["rebuilds"] += 1
        return Rebuild(tid, e.rebuilds)

    def rebuilt(self, tid: TaskId) -> list[ForgetSpec]:
        """The re-run of tid ended (with its results or an error)."""
        e = self._entries.get(tid)
        if e is None or type(e) is tuple or not e.rebuilding:
            return []
        e.rebuilding = False
        return self._drop_unneeded([tid]) + self._evict()

    # --------------------------------------------------------------- queries
    def kept(self, tid: TaskId) -> bool:
        """Is the spec of tid still needed (recorded, not evicted, not released)?"""
        e = self._entries.get(tid)
        return e is not None and (type(e) is tuple or not e.evicted)

    def stats(self) -> dict:
        return dict(self._stats, lineages=len(self._entries), kept=len(self._kept),
                    lineage_bytes=self._bytes, max_lineage_bytes=self.max_bytes)

    # --------------------------------------------------------------- helpers
    def _unrecoverable(self, oid, reason) -> Unrecoverable:
        self._stats["unrecoverable"] += 1
        return Unrecoverable(oid, reason)

    def _evict(self) -> list[ForgetSpec]:
        out: list[ForgetSpec] = []
        if self._bytes <= self.max_bytes:
            return out
        victims, freeing = [], 0
        for tid in self._kept:                # oldest first; only the prefix it needs
            if self._bytes - freeing <= self.max_bytes:
                break
            e = self._entries[tid]
            if type(e) is tuple:
                victims.append(tid)
                freeing += e[0]
            elif not e.rebuilding:            # (a spec running again stays)
                victims.append(tid)
                freeing += e.size
        for tid in victims:
            e = self._full(tid)
            e.evicted = True
            del self._kept[tid]
            self._bytes -= e.size
            self._stats["evicted"] += 1
            out.append(ForgetSpec(tid))
            out += self._unlink(e)            # it will never run again: nor its inputs
        return out

    def _unlink(self, e: _Entry) -> list[ForgetSpec]:
        ups, e.upstream = e.upstream, ()
        for u in ups:
            self._entries[u].dependents -= 1
        return self._drop_unneeded(ups)

    def _drop_unneeded(self, tids: Iterable[TaskId]) -> list[ForgetSpec]:
        """Forget each entry nothing needs, and what that releases (a worklist)."""
        out: list[ForgetSpec] = []
        stack = list(tids)
        while stack:
            tid = stack.pop()
            e = self._entries.get(tid)
            if e is None or type(e) is tuple or e.returns_alive or e.dependents \
                    or e.rebuilding:       # (a tuple entry's returns are alive)
                continue
            del self._entries[tid]
            if not e.evicted:
                del self._kept[tid]
                self._bytes -= e.size
                out.append(ForgetSpec(tid))
            for u in e.upstream:
                self._entries[u].dependents -= 1
                stack.append(u)
        return out

    def _full(self, tid: TaskId) -> _Entry:
        e = self._entries[tid]
        if type(e) is tuple:
            e = self._entries[tid] = _Entry((), e[0], e[1])
        return e

    def _size(self, tid: TaskId) -> int:
        e = self._entries[tid]
        return e[0] if type(e) is tuple else e.size

    # ------------------------------------------------------------ invariants
    def validate(self) -> None:
        dependents: dict = {}
        for tid, e in self._entries.items():
            if type(e) is tuple:
                assert len(e) == 2 and e[0] >= 0 and e[1] >= -1, (tid, e)
                assert tid in self._kept, tid
                continue
            for u in e.upstream:
                assert u in self._entries, (tid, u)
                dependents[u] = dependents.get(u, 0) + 1
            assert not (e.evicted and e.upstream), (tid, e)
            assert e.evicted == (tid not in self._kept), (tid, e)
            assert e.returns_alive or e.dependents or e.rebuilding, (tid, e)  # else dropped
            assert e.max_retries == -1 or e.rebuilds <= e.max_retries, (tid, e)
        for tid, e in self._entries.items():
            if type(e) is tuple:
                assert tid not in dependents, tid     # linked ones are _Entry
                continue
            assert e.dependents == dependents.get(tid, 0), (tid, e, dependents.get(tid))
        assert self._kept.keys() <= self._entries.keys()
        assert self._bytes == sum(self._size(t) for t in self._kept), self._bytes
        assert self._bytes <= self.max_bytes or all(
            type(self._entries[t]) is not tuple and self._entries[t].rebuilding
            for t in self._kept), (self._bytes, self.max_bytes)
