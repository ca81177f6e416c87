"""Ownership table: the reference counts and metadata one process keeps.

Pure state machine (no I/O, threads, clocks or randomness). Every driver and
worker keeps one ``ReferenceTable``; its shell calls a method per event and
carries out the returned instructions, in order. Ids are opaque hashables:
``oid`` object, ``tid`` task, ``wid`` process (an owner or a borrower).

Owned objects (this process made them: ``put`` or the return of a task it
submitted) have state, size, locations, lineage and these holders: ``local``
ObjectRefs here, ``submitted`` pending tasks taking the ref as an argument,
``borrowers`` (a count per other process), ``contained_in`` (owned objects
here whose value holds the ref) and ``returning`` (return values this process
is sending that hold it). With none left the object is freed:
``FreeObject``, then the refs it contains lose one holder each.

Borrowed refs (owned by another process) have ``local``, ``submitted``,
``contained_in``, ``returning`` too, and ``registrations``: how many "process
B holds R" registrations for this process the owner has recorded. When the
last holder goes, the borrower sends ``SendRemoveBorrower(n=registrations)``
and forgets the ref.

Borrower protocol (Ownership, NSDI'21 section 4.2, with counted registrations):

* A submitter holding ``submitted`` on every argument keeps it alive while the
  task runs, so the executor needs no registration *during* the task.
* When the executor W finishes a task, ``register_held_refs()`` names every
  borrowed ref W still holds that is not registered; the shell sends those
  ``SendAddBorrower`` messages and waits for every ack (each ack:
  ``borrower_registered``) before replying to the submitter.
* Refs nested in a return value O (owned by submitter S): W calls
  ``returning_refs``. Refs W owns: S is recorded as borrower here. Refs S
  owns: nothing (S counts them in O.contains). Refs owned by a third Q:
  ``SendAddBorrower(Q, oid, borrower=S)``, acked before the reply. W holds
  them all until ``return_sent`` (reply on the wire). S then calls
  ``return_received`` (before ``task_finished``) and counts one
  registration per borrowed nested ref.
* The same pattern covers refs found inside an object read with ``get``: keep
  the outer ref until the acks of ``register_held_refs()`` are back.

Why counts never go below zero at an owner: a borrower counts a registration
only once the matching Add has been *processed* by the owner (own ack, or a
third party's ack that came before the reply). So a Remove(n) always follows
its n Adds. Messages on one pair of processes arrive in order, so when W sends
an Add on behalf of S and later its own Remove, the owner sees the Add first.
A Remove that still arrives early (a shell that skipped an ack) is buffered
per borrower in ``early_removes`` and cancels later Adds; the object is kept
alive while such a debt exists, so it is never freed early and
``borrowers`` never goes negative (see ``borrow_removed``).

Failures: ``process_died`` drops the dead process as borrower everywhere and
fails refs it owned (``OwnerDied``). Messages about a dead borrower, and any
message about a freed or unknown object, are ignored and counted in
``stats()``.

What the shell must do: carry out instructions in the order returned, and
send the ``Send*`` ones to each peer in that order on one ordered connection
(replies travel on it too); ack every Add, even an ignored one; report acks
of its own Adds (``borrower == self``) with ``borrower_registered``; after
``process_died(owner)`` stop waiting for acks from that owner.

Generator streams (Ray's streaming and dynamic generators): a task that
yields sends each item to its owner before it ends. The owner opens a stream
per such task (``stream_opened``); each item (``stream_item``) becomes an
owned object with the task as lineage, held by the stream (one ``local``)
until the caller takes it (``stream_take``: the ObjectRef handed out then
carries that count) or drops the generator (``stream_dropped``: the stream
lets go of what it buffers and of items that arrive later). A dynamic
generator has no consumer: at its end ``stream_collected`` makes the items
the contents of the task's single return. ``stream_ended`` closes a stream,
with an error item when the task failed (the error is stored in the next ref,
as Ray does). Backpressure: with a bound B, the executor stops while B items
it made are not known to be consumed; the table says when to tell it
(``StreamAck``) so that it never waits on consumption it was not told about.

Lineage reconstruction (the decisions are ``gdfut/lineage.py``'s): a READY
object whose last location is removed (``remove_location``: a reader could
not read that copy) yields ``ObjectLost`` with its task; while that task runs
again the object is PENDING (``object_rebuilding``), and an argument of it
that was freed meanwhile gets a fresh entry (``object_revived``), held by the
re-run task's ``task_submitted``. ``ReleaseLineage`` says only that no
result of a task is alive; whether its spec may go is the lineage machine's
call (a kept descendant may still need it).

Registrations made via an executor (closing what was a leak): executor W
registers its submitter S at a third owner Q with ``SendAddBorrower(via=W)``.
Q counts it for S at once and also records it as *provisional* for W. S,
when it accepts W's reply (``return_received(executor=W)``) or gives the
registration back (``return_discarded``), sends ``SendConfirmBorrower`` first:
Q then drops the provisional mark. If W dies before S got its reply, nobody
would ever remove that registration; so Q, at ``process_died(W)`` (or at a
later Add via the dead W), asks S with ``SendSettleBorrower``. S answers
``SendBorrowerSettled`` only once it knows W is dead (``borrow_settle`` waits
for its own ``process_died(W)``): from then on it accepts no reply of W,
and every confirm it sent is ahead of the answer on the same connection.
So at the answer (``borrow_settled``) what is still provisional was never
taken by S, and Q removes it. The extra messages are one confirm per ref of
a third owner nested in a return value, and one settle round per such
registration of a dead executor; the provisional marks are bounded by the
registrations they stand for. Seeded in tests/sim/test_ownership_sim.py (the
executor dies at every step).

Known gaps (failure paths only; nothing is freed early in failure-free runs),
each bounded:

* Reference cycles between objects are never freed (plain counting): bounded
  by the objects in the cycle, freed when the owner dies; ``gdfut memory``
  lists them.
* An executor's hold on arguments rests on the submitter's hold, and refs
  read out of an object rest on that object's owner until their Adds are
  acked. If that process dies first the ref can be freed under the reader;
  the late Add is then ignored as stale and the reader's ``get`` fails
  (FREED or OwnerDied), never reads a wrong value. Bounded by fate sharing
  in the shells: a node kills the workers leased by a dead owner
  (``LeaseManager.client_died``, ``NodeDaemon.cancel_work_of``), so tasks of
  a dead submitter do not run on; what is left is a reader racing the
  death of the object's owner.
"""
from __future__ import annotations

import collections
import enum
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

ObjectId = Hashable
TaskId = Hashable
WorkerId = Hashable

TOMBSTONES = 65536
"""How many freed owned ids are remembered to answer ``status() == FREED``."""


class Marker(enum.Enum):
    INLINE = "inline"


INLINE = Marker.INLINE
"""Location marker: the value lives in the owner's memory (small objects)."""
Location = Union[Marker, tuple]   # INLINE or (node_id, tier)


class ObjState(enum.Enum):
    PENDING = "PENDING"
    READY = "READY"
    FAILED = "FAILED"


class Status(enum.Enum):
    OWNED_PENDING = "OWNED_PENDING"
    OWNED_READY = "OWNED_READY"
    OWNED_FAILED = "OWNED_FAILED"
    BORROWED = "BORROWED"
    OWNER_DIED = "OWNER_DIED"     # borrowed, and its owner is known dead
    FREED = "FREED"               # owned here once, freed (while remembered)
    UNKNOWN = "UNKNOWN"


RefStatus = Status


class OwnershipError(Exception):
    """The shell used the table wrongly (unknown ref, count below zero...)."""


# -- instructions ---------------------------------------------------------------

@dataclass(frozen=True)
class FreeObject:
    """Delete the value from every location (node/tier), or drop it if INLINE."""
    oid: ObjectId
    locations: frozenset = frozenset()
    size: int | None = None


@dataclass(frozen=True)
class ReleaseLineage:
    """No object made by task tid is alive: its spec can be dropped."""
    tid: TaskId


@dataclass(frozen=True)
class SendAddBorrower:
    """Tell ``owner`` that ``borrower`` holds oid (+n); wait for the ack.

    If ``borrower`` is this process, report the ack with ``borrower_registered``.
    ``via``: this process (an executor) registers its submitter ``borrower``
    for a ref nested in a return value; the owner holds that registration
    as provisional until the borrower confirms it (see "Registrations made
    via an executor" in the module doc). None for a process's own Adds.
    """
    owner: WorkerId
    oid: ObjectId
    borrower: WorkerId
    n: int = 1
    via: WorkerId = None


@dataclass(frozen=True)
class SendConfirmBorrower:
    """Tell ``owner`` that this process took over (accepted or gave back)
    the registration executor ``via`` made for it for oid."""
    owner: WorkerId
    oid: ObjectId
    via: WorkerId


@dataclass(frozen=True)
class SendSettleBorrower:
    """Owner side: executor ``via`` died; ask ``borrower`` to answer, once it
    knows ``via`` is dead, with ``SendBorrowerSettled`` (everything it
    confirmed for oid via that executor is then on the wire before it)."""
    borrower: WorkerId
    oid: ObjectId
    via: WorkerId


@dataclass(frozen=True)
class SendBorrowerSettled:
    """Borrower side: answer to SendSettleBorrower; ``via`` is dead here, so
    no more replies of it are accepted and no more confirms will follow."""
    owner: WorkerId
    oid: ObjectId
    via: WorkerId


@dataclass(frozen=True)
class SendRemoveBorrower:
    """Tell ``owner`` that this process (``borrower``) dropped n registrations."""
    owner: WorkerId
    oid: ObjectId
    n: int
    borrower: WorkerId = None


@dataclass(frozen=True)
class ForgetBorrowed:
    """This process holds no ref to borrowed oid any more: drop what it
    cached of the object (its value entry); a later ref fetches it anew."""
    oid: ObjectId


@dataclass(frozen=True)
class OwnerDied:
    """The owner of this borrowed ref died: fail gets with OwnerDiedError."""
    oid: ObjectId
    owner: WorkerId


@dataclass(frozen=True)
class ObjectLost:
    """A READY owned object lost its last copy: rebuild from lineage or fail.
    ``where``: the location that went last."""
    oid: ObjectId
    lineage: TaskId | None
    where: Any = None


@dataclass(frozen=True)
class StreamAck:
    """Tell the executor of generator task tid that ``consumed`` items were
    taken (``UNBOUNDED``: the caller is gone, stop waiting for it)."""
    tid: TaskId
    consumed: int


@dataclass(frozen=True)
class NextRef:
    """Hand the caller of generator tid the ref to oid (it holds the count)."""
    tid: TaskId
    oid: ObjectId


@dataclass(frozen=True)
class StreamEnd:
    """Generator tid has no more items: the caller's next raises StopIteration."""
    tid: TaskId


UNBOUNDED = -1
"""StreamAck.consumed when the executor must not wait for the caller any more."""

Instruction = Union[FreeObject, ReleaseLineage, SendAddBorrower, SendRemoveBorrower,
                    ForgetBorrowed, SendConfirmBorrower, SendSettleBorrower, SendBorrowerSettled,
                    OwnerDied, ObjectLost, StreamAck, NextRef, StreamEnd]


# -- entries --------------------------------------------------------------------

@dataclass
class _Owned:
    lineage: TaskId | None
    call_site: str
    contains: tuple = ()
    state: ObjState = ObjState.PENDING
    size: int | None = None
    locations: set = field(default_factory=set)
    error: Any = None
    local: int = 0
    submitted: int = 0
    returning: int = 0          # return values being sent that hold it (executor side)
    borrowers: dict = field(default_factory=dict)        # wid -> registrations (> 0)
    early_removes: dict = field(default_factory=dict)    # wid -> removes ahead of adds
    contained_in: set = field(default_factory=set)

    def unreferenced(self) -> bool:
        return not (self.local or self.submitted or self.returning or self.borrowers
                    or self.early_removes or self.contained_in)


@dataclass
class _Borrowed:
    owner: WorkerId
    local: int = 0
    submitted: int = 0
    returning: int = 0
    contained_in: set = field(default_factory=set)
    registrations: int = 0     # registrations for this process the owner recorded
    inflight: int = 0          # own Adds sent, ack not yet reported
    owner_dead: bool = False

    def needs_registration(self) -> bool:
        # A ref held only by a return value being sent needs none: see
        # returning_refs.
        return bool(self.local or self.submitted or self.contained_in)

    def held(self) -> bool:
        return self.needs_registration() or self.returning > 0


@dataclass
class _Stream:
    backpressure: int | None   # None: nobody consumes (dynamic) and the executor never waits
    received: int = 0          # items registered, in index order
    consumed: int = 0          # items handed to the caller
    acked: int = 0             # consumption last told to the executor
    buffered: "collections.deque" = field(default_factory=lambda: collections.deque())
    ended: bool = False
    dropped: bool = False
    call_site: str = ""        # of the task call: what its items are listed under


def _unique(items: Iterable) -> list:
    """Items without repeats, first occurrence order (deterministic)."""
    return list(dict.fromkeys(items))


# -- the table ------------------------------------------------------------------

class ReferenceTable:
    """Reference counts and object metadata of one process (see module doc)."""

    def __init__(self, wid: WorkerId, *, tombstones: int = TOMBSTONES):
        self.wid = wid
        self._owned: dict[ObjectId, _Owned] = {}
        self._borrowed: dict[ObjectId, _Borrowed] = {}
        self._unregistered: dict[ObjectId, None] = {}   # borrowed, registrations == 0
        self._tasks: dict[TaskId, tuple] = {}           # submitted tid -> arg oids
        self._returning: dict[ObjectId, tuple] = {}     # return oid -> nested refs
        self._lineage_live: dict[TaskId, int] = {}      # tid -> live owned objects it made
        self._streams: dict[TaskId, _Stream] = {}       # generator tasks we submitted
        self._freed: OrderedDict = OrderedDict()        # bounded tombstones
        self._tombstones = tombstones
        self._dead: set = set()
        self._addrs: dict[WorkerId, Any] = {}
        # owner side: executor -> {(oid, borrower): n} registrations it made
        # for its submitter that the submitter has not confirmed yet
        self._provisional: dict[WorkerId, dict[tuple, int]] = {}
        # borrower side: executor not known dead yet -> [(owner, oid)] settles asked
        self._settles: dict[WorkerId, list] = {}
        self._stats = {"freed": 0, "stale_messages": 0, "dead_borrower_messages": 0,
                       "early_removes": 0, "stale_events": 0, "settled_registrations": 0}

    # ---------------------------------------------------------------- queries
    def status(self, oid: ObjectId) -> Status:
        o = self._owned.get(oid)
        if o is not None:
            return Status["OWNED_" + o.state.value]
        b = self._borrowed.get(oid)
        if b is not None:
            return Status.OWNER_DIED if b.owner_dead else Status.BORROWED
        return Status.FREED if oid in self._freed else Status.UNKNOWN

    def is_dead(self, wid: WorkerId) -> bool:
        """``process_died(wid)`` was called here."""
        return wid in self._dead

    def is_owned(self, oid: ObjectId) -> bool:
        return oid in self._owned

    def owner_of(self, oid: ObjectId) -> WorkerId | None:
        if oid in self._owned:
            return self.wid
        b = self._borrowed.get(oid)
        return None if b is None else b.owner

    def note_owner(self, owner: WorkerId, addr: Any) -> None:
        """Remember how to reach a process (opaque to the table)."""
        if owner != self.wid and owner not in self._dead and addr is not None:
            self._addrs[owner] = addr

    def owner_addr(self, owner: WorkerId) -> Any:
        return self._addrs.get(owner)

    def owner_addr_of_object(self, oid: ObjectId) -> Any:
        b = self._borrowed.get(oid)
        return None if b is None else self._addrs.get(b.owner)

    def lineage_of(self, oid: ObjectId) -> TaskId | None:
        o = self._owned.get(oid)
        return None if o is None else o.lineage

    def locations(self, oid: ObjectId) -> frozenset:
        o = self._owned.get(oid)
        return frozenset() if o is None else frozenset(o.locations)

    def error_of(self, oid: ObjectId) -> Any:
        o = self._owned.get(oid)
        return None if o is None else o.error

    def is_empty(self) -> bool:
        return not (self._owned or self._borrowed or self._tasks or self._returning
                    or self._lineage_live or self._streams or self._provisional
                    or self._settles)

    def stats(self) -> dict:
        return dict(self._stats, owned=len(self._owned), borrowed=len(self._borrowed),
                    tasks=len(self._tasks), lineages=len(self._lineage_live),
                    streams=len(self._streams),
                    provisional=sum(sum(p.values()) for p in self._provisional.values()),
                    settles_waiting=sum(len(v) for v in self._settles.values()))

    # ------------------------------------------------------- owned lifecycle
    def add_owned(self, oid: ObjectId, *, lineage: TaskId | None = None, call_site: str = "",
                  contains: Sequence[ObjectId] = (), size: int | None = None,
                  local: int = 0) -> list[Instruction]:
        """A new object owned here (put, or a return of a task we submit).

        Starts with ``local`` refs (0: the shell adds the first ObjectRef with
        ``add_local_ref``; an entry nobody ever referenced stays until it
        turns READY or FAILED, then it is freed).
        ``contains``: refs nested in the value (put); each must be held here.
        Add every return of a task before dropping any (lineage counting).
        """
        if oid in self._owned or oid in self._borrowed or oid in self._freed:
            raise OwnershipError(f"object {oid!r} already known here")
        nested = self._held_refs(_unique(contains))
        o = _Owned(lineage=lineage, call_site=call_site, contains=tuple(nested), size=size,
                   local=local)
        self._owned[oid] = o
        for c in nested:
            self._entry(c).contained_in.add(oid)
        if lineage is not None:
            self._lineage_live[lineage] = self._lineage_live.get(lineage, 0) + 1
        return []

    def object_ready(self, oid: ObjectId, size: int | None,
                     location: Location) -> list[Instruction]:
        """The value exists at ``location``. For a freed object: delete it there."""
        o = self._owned.get(oid)
        if o is None:
            return self._orphan_value(oid, size, location)
        o.state, o.size, o.error = ObjState.READY, size, None
        o.locations.add(location)
        return self._release([oid])    # an entry nobody ever referenced goes now

    def add_location(self, oid: ObjectId, location: Location) -> list[Instruction]:
        o = self._owned.get(oid)
        if o is None:
            return self._orphan_value(oid, None, location)
        o.locations.add(location)
        return []

    def remove_location(self, oid: ObjectId, location: Location) -> list[Instruction]:
        o = self._owned.get(oid)
        if o is None:
            self._stats["stale_events"] += 1
            return []
        if location not in o.locations:     # removed already (another reader saw it)
            return []
        o.locations.discard(location)
        if o.state is ObjState.READY and not o.locations:
            return [ObjectLost(oid, o.lineage, location)]
        return []

    def object_rebuilding(self, oid: ObjectId) -> list[Instruction]:
        """Lineage reconstruction: the task that made oid runs again, so the
        object is pending until its new value lands (``object_ready``)."""
        o = self._owned.get(oid)
        if o is None:
            self._stats["stale_events"] += 1
            return []
        o.state, o.error = ObjState.PENDING, None
        return []

    def object_revived(self, oid: ObjectId, *, lineage: TaskId | None,
                       call_site: str = "") -> list[Instruction]:
        """Lineage reconstruction: oid was freed, but a task being re-run takes
        it as an argument, so it is made again: a fresh PENDING entry (the
        re-run task's ``task_submitted`` holds it)."""
        self._freed.pop(oid, None)
        return self.add_owned(oid, lineage=lineage, call_site=call_site)

    def object_failed(self, oid: ObjectId, error: Any) -> list[Instruction]:
        o = self._owned.get(oid)
        if o is None:
            self._stats["stale_events"] += 1
            return []
        o.state, o.error = ObjState.FAILED, error
        return self._release([oid])

    def _orphan_value(self, oid, size, location) -> list[Instruction]:
        # The object was freed (every ref dropped) before its value landed:
        # the shell must delete this copy, or it leaks in the store.
        self._stats["stale_events"] += 1
        return [FreeObject(oid, frozenset([location]), size)]

    # ------------------------------------------------------------- local refs
    def add_local_ref(self, oid: ObjectId, owner: WorkerId | None = None,
                      owner_addr: Any = None) -> list[Instruction]:
        """One more ObjectRef here. An unknown borrowed ref needs ``owner``."""
        if owner is not None:
            self.note_owner(owner, owner_addr)
        o = self._owned.get(oid)
        if o is not None:
            o.local += 1
            return []
        b = self._borrowed.get(oid)
        if b is not None:
            if owner is not None and owner != b.owner:
                raise OwnershipError(f"ref {oid!r}: owner {owner!r} != known {b.owner!r}")
            b.local += 1
            return []
        if owner is None or owner == self.wid:
            if oid in self._freed:      # a ref to our own freed object: dangling
                self._stats["stale_events"] += 1
                return []
            raise OwnershipError(f"unknown ref {oid!r} and no owner given")
        b, out = self._new_borrowed(oid, owner)
        b.local = 1
        return out

    def remove_local_ref(self, oid: ObjectId) -> list[Instruction]:
        e = self._owned.get(oid) or self._borrowed.get(oid)
        if e is None:
            if oid in self._freed:      # matches a dangling add_local_ref
                self._stats["stale_events"] += 1
                return []
            raise OwnershipError(f"remove_local_ref of unknown ref {oid!r}")
        if e.local <= 0:
            raise OwnershipError(f"local count of {oid!r} would go below zero")
        e.local -= 1
        return self._release([oid])

    # ------------------------------------------------------------------ tasks
    def task_submitted(self, tid: TaskId, arg_oids: Sequence[ObjectId]) -> list[Instruction]:
        """Task tid takes these refs (top-level and nested, repeats counted)."""
        if tid in self._tasks:
            raise OwnershipError(f"task {tid!r} submitted twice")
        args = tuple(self._held_refs(arg_oids))    # all checked before changing any
        entries = [self._entry(a) for a in args]
        for e in entries:
            e.submitted += 1
        self._tasks[tid] = args
        return []

    def task_finished(self, tid: TaskId) -> list[Instruction]:
        """Task tid finished or failed for good (after ``return_received``)."""
        args = self._tasks.pop(tid, None)
        if args is None:
            raise OwnershipError(f"task {tid!r} is not pending")
        for a in args:
            e = self._entry(a)
            assert e.submitted > 0, (a, e)
            e.submitted -= 1
        return self._release(_unique(args))

    # --------------------------------------------------------- generator streams
    def stream_opened(self, tid: TaskId, backpressure: int | None,
                      call_site: str = "") -> list[Instruction]:
        """Generator task tid was submitted. ``backpressure``: at most that many
        items made and not consumed (None: no consumer, a dynamic generator)."""
        if tid in self._streams:
            raise OwnershipError(f"stream of task {tid!r} opened twice")
        if backpressure is not None and backpressure < 1:
            raise OwnershipError(f"backpressure must be >= 1 or None, got {backpressure!r}")
        self._streams[tid] = _Stream(backpressure, call_site=call_site)
        return []

    def stream_received(self, tid: TaskId) -> int:
        """How many items of generator tid arrived (the next item's index)."""
        s = self._streams.get(tid)
        return 0 if s is None else s.received

    def stream_ready(self, tid: TaskId) -> bool:
        """Would ``stream_take`` answer at once (an item, or the end)?"""
        s = self._streams.get(tid)
        return s is None or bool(s.buffered) or s.ended

    def stream_finished(self, tid: TaskId) -> bool:
        """Was every item taken, and did the task end (or the caller drop it)?"""
        s = self._streams.get(tid)
        return s is None or s.dropped or (s.ended and not s.buffered)

    def stream_item(self, tid: TaskId, index: int, oid: ObjectId, *, size: int | None,
                    location: Location | None, nested: Sequence = (),
                    failed: Any = None, executor: WorkerId = None) -> list[Instruction]:
        """Item ``index`` of generator tid arrived as object oid: at ``location``,
        or failed with ``failed``. ``nested``: refs its value holds, as for
        ``return_received`` (registered for us by the executor). Items arrive in
        index order; any other (a stale or bogus message) is dropped, and a copy
        it left in a store is freed."""
        s = self._streams.get(tid)
        if s is None or s.ended or index != s.received:
            self._stats["stale_events"] += 1
            out = self.return_discarded(nested, executor)
            if location is not None and oid not in self._owned and oid not in self._borrowed:
                out.append(FreeObject(oid, frozenset([location]), size))
            return out
        self.add_owned(oid, lineage=tid, call_site=s.call_site, local=0 if s.dropped else 1)
        s.received += 1
        out = self.return_received(oid, nested, executor) if nested else []
        if failed is not None:
            out += self.object_failed(oid, failed)
        else:
            out += self.object_ready(oid, size, location)
        if not s.dropped:
            s.buffered.append(oid)
        return out + self._stream_ack(tid, s)

    def stream_take(self, tid: TaskId) -> list[Instruction]:
        """The caller asks for the next item: ``NextRef`` (the ref takes over
        the stream's count), ``StreamEnd``, or nothing yet (ask again later)."""
        s = self._streams.get(tid)
        if s is None or s.dropped:
            return [StreamEnd(tid)]
        if s.backpressure is None:
            raise OwnershipError(f"task {tid!r} is a dynamic generator: nothing takes its items")
        if s.buffered:
            s.consumed += 1
            return [NextRef(tid, s.buffered.popleft())] + self._stream_ack(tid, s)
        return [StreamEnd(tid)] if s.ended else []

    def stream_dropped(self, tid: TaskId) -> list[Instruction]:
        """The caller's generator is gone: items not taken are freed, and so
        are items still to come; the executor must not wait for it."""
        s = self._streams.get(tid)
        if s is None or s.dropped:
            self._stats["stale_events"] += 1
            return []
        s.dropped = True
        out = self._release_stream_items(s)
        if s.ended:
            del self._streams[tid]
        elif s.backpressure is not None:
            out.append(StreamAck(tid, UNBOUNDED))
        return out

    def stream_ended(self, tid: TaskId, error_oid: ObjectId | None = None,
                     error: Any = "error") -> list[Instruction]:
        """Generator task tid finished (after its last item). If it failed,
        the error becomes item ``stream_received(tid)`` as ``error_oid``."""
        s = self._streams.get(tid)
        if s is None or s.ended:
            raise OwnershipError(f"stream of task {tid!r} is not open")
        out: list[Instruction] = []
        if error_oid is not None:
            out += self.stream_item(tid, s.received, error_oid, size=None, location=None,
                                    failed=error)
        s.ended = True
        if s.dropped:
            del self._streams[tid]
        return out

    def stream_collected(self, tid: TaskId, return_oid: ObjectId) -> list[Instruction]:
        """Dynamic generator tid ended: its items become the contents of its
        return ``return_oid`` (if that is still alive and ready), and the
        stream lets go of them and closes."""
        s = self._streams.pop(tid, None)
        if s is None:
            raise OwnershipError(f"stream of task {tid!r} is not open")
        o = self._owned.get(return_oid)
        if o is not None and o.state is ObjState.READY and not o.contains:
            items = _unique(s.buffered)
            o.contains = tuple(items)
            for item in items:
                self._owned[item].contained_in.add(return_oid)
        return self._release_stream_items(s)

    def _release_stream_items(self, s: _Stream) -> list[Instruction]:
        items = list(s.buffered)
        s.buffered.clear()
        for oid in items:
            self._owned[oid].local -= 1
        return self._release(items)

    def _stream_ack(self, tid, s: _Stream) -> list[Instruction]:
        """Tell the executor about consumption only when it may be waiting:
        it stops once ``backpressure`` items are not known to be consumed,
        and every item it made reaches us before it can wait."""
        if s.backpressure is None or s.ended or s.dropped or s.consumed <= s.acked:
            return []
        if s.received - s.acked < s.backpressure:
            return []
        s.acked = s.consumed
        return [StreamAck(tid, s.consumed)]

    # ------------------------------------------------------------ borrower side
    def register_held_refs(self) -> list[Instruction]:
        """Adds for every borrowed ref held here and not yet registered.

        Call at the end of executing a task (and after reading refs out of an
        object with get). Wait for all the acks before replying/dropping the
        outer ref. An Add already in flight is sent again: duplicate
        registrations are harmless and each caller waits only for its own.
        """
        out: list[Instruction] = []
        for oid in self._unregistered:
            b = self._borrowed[oid]
            if b.needs_registration():
                b.inflight += 1
                out.append(SendAddBorrower(b.owner, oid, self.wid, 1))
        return out

    def borrower_registered(self, oid: ObjectId) -> list[Instruction]:
        """The owner acked one of our own Adds for oid."""
        b = self._borrowed.get(oid)
        if b is None or b.owner_dead:   # owner died meanwhile: inflight was reset
            self._stats["stale_events"] += 1
            return []
        assert b.inflight > 0, (oid, b)
        b.inflight -= 1
        b.registrations += 1
        self._unregistered.pop(oid, None)
        return self._release([oid])

    def registered_by_other(self, oid: ObjectId, owner: WorkerId, n: int = 1) -> list[Instruction]:
        """Another process registered us as borrower of oid (and it was acked)."""
        assert n > 0
        if owner == self.wid:
            raise OwnershipError("an owner is never its own borrower")
        b = self._borrowed.get(oid)
        if b is None and owner in self._dead:
            return []                    # nothing to give back to a dead owner
        out: list[Instruction] = []
        if b is None:
            b, out = self._new_borrowed(oid, owner)
        if not b.owner_dead:
            b.registrations += n
            self._unregistered.pop(oid, None)
        return out + self._release([oid])   # not held here any more: Remove at once

    def returning_refs(self, return_oid: ObjectId, submitter: WorkerId,
                       nested_oids: Sequence[ObjectId]) -> list[Instruction]:
        """Executor side: the value of ``return_oid`` (owned by ``submitter``)
        holds ``nested_oids``. Send the returned Adds and wait for their acks
        before the reply; call ``return_sent`` once the reply is on the wire.

        Each nested ref is held here until ``return_sent``, so that a Remove
        of ours cannot overtake the reply to the submitter (same connection,
        in order) and free a ref the submitter owns before it learns that
        the return value holds it. Refs owned by a third process are safe on
        their own: the Add for the submitter precedes any Remove of ours on
        our connection to that owner. So the hold needs no registration.
        """
        if return_oid in self._returning:
            raise OwnershipError(f"return {return_oid!r} is already being sent")
        if submitter == self.wid:   # return_received would count Adds never sent
            raise OwnershipError("a process cannot execute its own task here")
        nested = self._held_refs(_unique(nested_oids))
        entries = [self._entry(oid) for oid in nested]
        out: list[Instruction] = []
        for oid, e in zip(nested, entries):
            e.returning += 1
            owner = self.owner_of(oid)
            if owner == submitter or submitter in self._dead:
                continue                 # submitter counts it in O.contains / is gone
            if owner == self.wid:
                out += self._add_borrower(oid, submitter, 1)
            elif not e.owner_dead:
                out.append(SendAddBorrower(owner, oid, submitter, 1, via=self.wid))
        self._returning[return_oid] = tuple(nested)
        return out

    def return_sent(self, return_oid: ObjectId) -> list[Instruction]:
        """The reply carrying ``return_oid`` was sent (or abandoned). Safe to
        call for every return, with or without ``returning_refs`` before."""
        nested = self._returning.pop(return_oid, None)
        if nested is None:
            return []
        for oid in nested:
            e = self._entry(oid)
            assert e.returning > 0, (oid, e)
            e.returning -= 1
        return self._release(nested)

    def return_received(self, return_oid: ObjectId, nested: Sequence,
                        executor: WorkerId = None) -> list[Instruction]:
        """Submitter side: the reply for ``return_oid`` holds refs ``nested``
        (pairs (oid, owner) or triples with the owner's address). Call before
        ``task_finished``. Each borrowed one was registered for us already;
        ``executor`` (the process that sent the reply) made those of third
        owners, and each of them is confirmed to its owner."""
        o = self._owned.get(return_oid)
        if o is None or o.contains:      # freed meanwhile, or a duplicate reply
            self._stats["stale_events"] += 1
            return self.return_discarded(nested, executor)
        if executor is not None and executor in self._dead:
            raise OwnershipError(f"reply of dead executor {executor!r} accepted: its task "
                                 "must have failed when it died (return_discarded)")
        out: list[Instruction] = []
        kept = []
        for oid, owner in self._pairs(nested):
            if owner == self.wid:
                c = self._owned.get(oid)
                if c is None:            # cannot happen while the executor held it
                    self._stats["stale_events"] += 1
                    continue
            else:
                c = self._borrowed.get(oid)
                if c is None:
                    c, died = self._new_borrowed(oid, owner)
                    out += died
                if not c.owner_dead:
                    c.registrations += 1
                    self._unregistered.pop(oid, None)
                    if executor is not None and owner != executor:
                        out.append(SendConfirmBorrower(owner, oid, executor))
            c.contained_in.add(return_oid)
            kept.append(oid)
        o.contains = tuple(kept)
        return out

    def return_discarded(self, nested: Sequence, executor: WorkerId = None) -> list[Instruction]:
        """A reply whose return object is gone (freed, task already failed):
        give back the registrations the executor made for us (confirmed
        first, so the owner does not also drop them as provisional). From an
        executor known dead here: nothing, the owners drop what it made for
        us when we answer their settles."""
        if executor is not None and executor in self._dead:
            return []
        out: list[Instruction] = []
        for oid, owner in self._pairs(nested):
            if owner != self.wid:
                if executor is not None and owner != executor and owner not in self._dead:
                    out.append(SendConfirmBorrower(owner, oid, executor))
                out += self.registered_by_other(oid, owner, 1)
        return out

    # -------------------------------------------------------------- owner side
    def borrow_added(self, oid: ObjectId, borrower: WorkerId, n: int = 1,
                     via: WorkerId = None) -> list[Instruction]:
        """Message: ``borrower`` holds oid (+n). The shell acks it either way.
        ``via``: the executor that sent it for its submitter ``borrower``:
        provisional until confirmed; settled at once if ``via`` is dead."""
        assert n > 0 and borrower != self.wid, (oid, borrower, n)
        if self._ignored(oid, borrower):
            return []
        before = self._owned[oid].borrowers.get(borrower, 0)
        out = self._add_borrower(oid, borrower, n)
        # what cancelled an early-remove debt is not a registration to settle
        added = self._owned[oid].borrowers.get(borrower, 0) - before if oid in self._owned else 0
        if via is not None and via != borrower and added > 0:
            pending = self._provisional.setdefault(via, {})
            pending[(oid, borrower)] = pending.get((oid, borrower), 0) + added
            if via in self._dead:       # a late Add of a dead executor
                out.append(SendSettleBorrower(borrower, oid, via))
        return out

    def borrow_confirmed(self, oid: ObjectId, borrower: WorkerId, via: WorkerId) -> list[Instruction]:
        """Message: ``borrower`` took over one registration ``via`` made for it."""
        pending = self._provisional.get(via)
        key = (oid, borrower)
        if pending is None or key not in pending:
            # S confirms only what W's Add (processed before W's reply) put here,
            # and a settle drops only what S never confirmed: stale means the
            # borrower or the object is gone meanwhile.
            self._stats["stale_messages"] += 1
            return []
        self._take_provisional(via, key, 1)
        return []

    def borrow_settled(self, oid: ObjectId, borrower: WorkerId, via: WorkerId) -> list[Instruction]:
        """Message: ``borrower`` knows ``via`` is dead and confirmed before this
        everything it took over: drop the rest of what ``via`` made for it."""
        pending = self._provisional.get(via)
        key = (oid, borrower)
        left = pending.get(key, 0) if pending is not None else 0
        if not left:
            return []                   # settled by an earlier answer
        self._take_provisional(via, key, left)
        if borrower in self._dead or oid not in self._owned:
            return []
        self._stats["settled_registrations"] += left
        return self.borrow_removed(oid, borrower, left)

    def _take_provisional(self, via, key, n) -> None:
        pending = self._provisional[via]
        left = pending[key] - n
        assert left >= 0, (via, key, n)
        if left:
            pending[key] = left
        else:
            del pending[key]
            if not pending:
                del self._provisional[via]

    def borrow_settle(self, oid: ObjectId, owner: WorkerId, via: WorkerId) -> list[Instruction]:
        """Message from ``owner``: answer once ``via`` is dead here."""
        if owner in self._dead:
            return []
        if via in self._dead:
            return [SendBorrowerSettled(owner, oid, via)]
        self._settles.setdefault(via, []).append((owner, oid))
        return []

    def borrow_removed(self, oid: ObjectId, borrower: WorkerId, n: int = 1) -> list[Instruction]:
        """Message: ``borrower`` dropped n registrations of oid.

        Removes beyond the borrower's count are buffered as a debt, not
        applied as a negative count: the matching Add is still in flight (its
        sender held the ref when it sent it), so the object must not be freed
        before it lands, and the debt cancels it when it does. Every order of
        the same Adds and Removes thus ends with the same count.
        """
        assert n > 0 and borrower != self.wid, (oid, borrower, n)
        if self._ignored(oid, borrower):
            return []
        o = self._owned[oid]
        have = o.borrowers.get(borrower, 0)
        take = min(have, n)
        if take == have:
            o.borrowers.pop(borrower, None)
        else:
            o.borrowers[borrower] = have - take
        if n > take:
            o.early_removes[borrower] = o.early_removes.get(borrower, 0) + n - take
            self._stats["early_removes"] += n - take
        return self._release([oid])

    def _ignored(self, oid, borrower) -> bool:
        if borrower in self._dead:       # late message of a dead process
            self._stats["dead_borrower_messages"] += 1
            return True
        if oid not in self._owned:       # freed (or never ours)
            self._stats["stale_messages"] += 1
            return True
        return False

    def _add_borrower(self, oid, borrower, n) -> list[Instruction]:
        o = self._owned[oid]
        debt = o.early_removes.get(borrower, 0)
        cancel = min(debt, n)
        if cancel:
            if cancel == debt:
                del o.early_removes[borrower]
            else:
                o.early_removes[borrower] = debt - cancel
        if n > cancel:
            o.borrowers[borrower] = o.borrowers.get(borrower, 0) + n - cancel
        return self._release([oid])

    # ---------------------------------------------------------------- failures
    def process_died(self, wid: WorkerId) -> list[Instruction]:
        """``wid`` died: it borrows nothing any more; what it owned is lost."""
        if wid == self.wid:
            raise OwnershipError("process_died for this process itself")
        self._dead.add(wid)
        self._addrs.pop(wid, None)
        out: list[Instruction] = []
        # as borrower: settles that waited for this death, and gone provisional
        # registrations it was given; as executor: ask its submitters to settle
        out += [SendBorrowerSettled(owner, oid, wid) for owner, oid in self._settles.pop(wid, ())
                if owner not in self._dead]
        for via in list(self._provisional):
            pending = self._provisional[via]
            for key in [k for k in pending if k[1] == wid]:
                del pending[key]
            if not pending:
                del self._provisional[via]
        for owner_oids in self._settles.values():
            owner_oids[:] = [(q, oid) for q, oid in owner_oids if q != wid]
        self._settles = {v: l for v, l in self._settles.items() if l}
        for (oid, borrower) in sorted(self._provisional.get(wid, {}), key=repr):
            out.append(SendSettleBorrower(borrower, oid, wid))
        touched = []
        for oid, o in self._owned.items():
            had = o.borrowers.pop(wid, None), o.early_removes.pop(wid, None)
            if any(had):
                touched.append(oid)
        for oid, b in self._borrowed.items():
            if b.owner == wid and not b.owner_dead:
                b.owner_dead, b.inflight = True, 0   # no ack will come
                self._unregistered.pop(oid, None)
                out.append(OwnerDied(oid, wid))
                touched.append(oid)
        return out + self._release(touched)

    # ----------------------------------------------------------------- release
    def _release(self, oids: Sequence[ObjectId]) -> list[Instruction]:
        """Free/forget each of oids with no holder left, and what that frees.

        A worklist, not recursion: nesting chains can be long.
        """
        out: list[Instruction] = []
        stack = list(reversed(oids))
        while stack:
            oid = stack.pop()
            o = self._owned.get(oid)
            if o is not None:
                if o.unreferenced():
                    out += self._free(oid, o)
                    stack.extend(reversed(o.contains))
                continue
            b = self._borrowed.get(oid)
            if b is not None and not b.held() and not b.inflight:
                del self._borrowed[oid]
                self._unregistered.pop(oid, None)
                out.append(ForgetBorrowed(oid))
                if b.registrations and not b.owner_dead:
                    out.append(SendRemoveBorrower(b.owner, oid, b.registrations, self.wid))
        return out

    def _free(self, oid, o: _Owned) -> list[Instruction]:
        del self._owned[oid]
        self._freed[oid] = None
        if len(self._freed) > self._tombstones:
            self._freed.popitem(last=False)
        self._stats["freed"] += 1
        out: list[Instruction] = [FreeObject(oid, frozenset(o.locations), o.size)]
        if o.lineage is not None:
            left = self._lineage_live[o.lineage] - 1
            if left:
                self._lineage_live[o.lineage] = left
            else:
                del self._lineage_live[o.lineage]
                out.append(ReleaseLineage(o.lineage))
        for c in o.contains:   # the caller's worklist visits them next
            self._entry(c).contained_in.discard(oid)
        return out

    # ----------------------------------------------------------------- helpers
    def _entry(self, oid) -> _Owned | _Borrowed:
        e = self._owned.get(oid) or self._borrowed.get(oid)
        if e is None:
            raise OwnershipError(f"ref {oid!r} is not held by this process")
        return e

    def _held_refs(self, oids: Iterable[ObjectId]) -> list:
        """oids, less dangling refs to our own freed objects (counted: the
        shell fails their gets with the FREED status). Unknown: an error."""
        out = []
        for oid in oids:
            if oid in self._owned or oid in self._borrowed:
                out.append(oid)
            elif oid in self._freed:
                self._stats["stale_events"] += 1
            else:
                raise OwnershipError(f"ref {oid!r} is not held by this process")
        return out

    def _new_borrowed(self, oid, owner) -> tuple[_Borrowed, list[Instruction]]:
        if oid in self._owned or owner == self.wid:
            raise OwnershipError(f"ref {oid!r}: borrowed from {owner!r} but owned here")
        b = _Borrowed(owner=owner)
        self._borrowed[oid] = b
        if owner in self._dead:
            b.owner_dead = True
            return b, [OwnerDied(oid, owner)]
        self._unregistered[oid] = None
        return b, []

    def _pairs(self, nested: Sequence) -> list[tuple]:
        """(oid, owner) pairs without repeats; notes addresses of triples."""
        pairs = {}
        for item in nested:
            oid, owner = item[0], item[1]
            if len(item) > 2:
                self.note_owner(owner, item[2])
            pairs.setdefault(oid, owner)
        return list(pairs.items())

    # ------------------------------------------------------------ memory view
    def summary(self) -> list[dict]:
        """One row per owned object and borrowed ref (``gdfut memory``).

        ``submitted`` counts pending task arguments plus return values being
        sent; ``borrowed`` is the number of borrower processes; ``nested`` the
        number of owned objects here whose value holds the ref.
        """
        rows = []
        for oid, o in self._owned.items():
            rows.append({"oid": oid, "owner": self.wid, "owned": True, "state": o.state.value,
                         "size": o.size, "locations": sorted(o.locations, key=repr),
                         "local": o.local, "submitted": o.submitted + o.returning,
                         "borrowed": len(o.borrowers), "nested": len(o.contained_in),
                         "contains": len(o.contains), "call_site": o.call_site})
        for oid, b in self._borrowed.items():
            rows.append({"oid": oid, "owner": b.owner, "owned": False,
                         "state": "OWNER_DIED" if b.owner_dead else "BORROWED",
                         "size": None, "locations": [], "local": b.local,
                         "submitted": b.submitted + b.returning, "borrowed": 0,
                         "nested": len(b.contained_in), "contains": 0,
                         "registrations": b.registrations, "call_site": ""})
        return rows

    # -------------------------------------------------------------- invariants
    def validate(self) -> None:
        """Assert every invariant of the table (cheap enough for tests)."""
        assert not (self._owned.keys() & self._borrowed.keys())
        assert not (self._owned.keys() & self._freed.keys())
        submitted: dict = {}
        for args in self._tasks.values():
            for a in args:
                submitted[a] = submitted.get(a, 0) + 1
        returning: dict = {}
        for nested in self._returning.values():
            for a in nested:
                returning[a] = returning.get(a, 0) + 1
        lineage: dict = {}
        for oid, o in self._owned.items():
            assert o.local >= 0 and o.submitted == submitted.get(oid, 0), (oid, o)
            assert o.returning == returning.get(oid, 0), (oid, o)
            assert all(v > 0 for v in o.borrowers.values()), (oid, o.borrowers)
            assert all(v > 0 for v in o.early_removes.values()), (oid, o.early_removes)
            assert not (o.borrowers.keys() & self._dead), (oid, o.borrowers)
            # Zero holders is allowed only for a fresh entry not yet referenced.
            assert not o.unreferenced() or o.state is ObjState.PENDING, (oid, o)
            assert len(set(o.contains)) == len(o.contains), (oid, o.contains)
            for c in o.contains:
                assert oid in self._entry(c).contained_in, (oid, c)
            for x in o.contained_in:
                assert oid in self._owned[x].contains, (oid, x)
            if o.lineage is not None:
                lineage[o.lineage] = lineage.get(o.lineage, 0) + 1
        assert lineage == self._lineage_live, (lineage, self._lineage_live)
        for oid, b in self._borrowed.items():
            assert b.owner != self.wid, oid
            assert b.local >= 0 and b.submitted == submitted.get(oid, 0), (oid, b)
            assert b.returning == returning.get(oid, 0), (oid, b)
            assert b.registrations >= 0 and b.inflight >= 0, (oid, b)
            assert b.held() or b.inflight > 0, (oid, b)   # else it was forgotten
            assert b.owner_dead == (b.owner in self._dead), (oid, b)
            assert not (b.owner_dead and b.inflight), (oid, b)
            unreg = not b.owner_dead and b.registrations == 0
            assert unreg == (oid in self._unregistered), (oid, b)
            for x in b.contained_in:
                assert oid in self._owned[x].contains, (oid, x)
        assert self._unregistered.keys() <= self._borrowed.keys()
        for via, pending in self._provisional.items():
            for (oid, borrower), n in pending.items():
                assert n > 0 and borrower not in self._dead, (via, oid, borrower, n)
                # a provisional registration is one of the borrower's counted ones
                assert n <= self._owned[oid].borrowers.get(borrower, 0), (via, oid, borrower)
        for via, owner_oids in self._settles.items():
            assert owner_oids and via not in self._dead, (via, owner_oids)
        for tid, st in self._streams.items():
            assert st.acked <= st.consumed <= st.received, (tid, st)
            assert not (st.ended and st.dropped), (tid, st)    # such a stream is forgotten
            if st.dropped:
                assert not st.buffered, (tid, st)
            else:
                assert st.consumed + len(st.buffered) == st.received, (tid, st)
            if st.backpressure is None:
                assert st.consumed == st.acked == 0, (tid, st)
            for oid in st.buffered:
                assert self._owned[oid].local >= 1, (tid, oid)
        for a in list(submitted) + list(returning):
            assert a in self._owned or a in self._borrowed, a


OwnershipTable = ReferenceTable
