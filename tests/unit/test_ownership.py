"""Exact event -> instruction sequences of the ownership table."""
from itertools import permutations

import pytest

from gdfut.ownership import (INLINE, ForgetBorrowed, FreeObject, ObjectLost, OwnerDied,
                             OwnershipError, ReferenceTable, ReleaseLineage, SendAddBorrower,
                             SendBorrowerSettled,
                             SendConfirmBorrower, SendRemoveBorrower, SendSettleBorrower, Status)

S, W, Q, B = b"S", b"W", b"Q", b"B"          # submitter, worker, third owner, borrower
X, Y, R, O, O2, A = b"x", b"y", b"r", b"o", b"o2", b"a"
T1 = b"t1"
LOC = (b"n1", "host")


class Table:
    """A ReferenceTable that validates itself after every call."""

    def __init__(self, wid):
        self.t = ReferenceTable(wid)

    def __getattr__(self, name):
        attr = getattr(self.t, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            self.t.validate()
            return out
        return call


def put(t, oid, contains=(), size=8, location=INLINE):
    assert t.add_owned(oid, call_site="test.py:1", contains=contains) == []
    assert t.add_local_ref(oid) == []
    assert t.object_ready(oid, size, location) == []


def submit(t, tid, args, returns=(O,)):
    for r in returns:
        assert t.add_owned(r, lineage=tid, call_site="test.py:2") == []
        assert t.add_local_ref(r) == []
    assert t.task_submitted(tid, list(args)) == []


def borrow(owner, borrower, oid):
    """borrower gets oid from owner and registers itself (acked)."""
    assert borrower.add_local_ref(oid, owner=owner.wid) == []
    assert borrower.register_held_refs() == [SendAddBorrower(owner.wid, oid, borrower.wid, 1)]
    assert owner.borrow_added(oid, borrower.wid, 1) == []
    assert borrower.borrower_registered(oid) == []


def free(oid, size=8, locations=(INLINE,)):
    return FreeObject(oid, frozenset(locations), size)


# ------------------------------------------------------------------ basics
def test_put_then_drop_frees():
    s = Table(S)
    put(s, X, location=LOC)
    assert s.status(X) is Status.OWNED_READY
    assert s.lineage_of(X) is None
    assert s.remove_local_ref(X) == [free(X, locations=[LOC])]
    assert s.status(X) is Status.FREED
    assert s.status(b"never") is Status.UNKNOWN
    assert s.is_empty() and s.stats()["freed"] == 1


def test_task_arg_kept_alive_until_task_finishes():
    s = Table(S)
    put(s, X)
    submit(s, T1, [X, X])                       # passed twice: counted twice
    assert s.remove_local_ref(X) == []
    assert s.status(X) is Status.OWNED_READY
    assert s.object_ready(O, 3, INLINE) == []
    assert s.task_finished(T1) == [free(X)]
    assert s.lineage_of(O) == T1                # kept for reconstruction while O lives
    assert s.remove_local_ref(O) == [free(O, 3), ReleaseLineage(T1)]
    assert s.is_empty()


def test_nested_ref_lives_until_outer_freed():
    s = Table(S)
    put(s, A)
    put(s, X, contains=[A, A])
    assert s.remove_local_ref(A) == []
    assert s.summary()[0]["nested"] == 1
    assert s.remove_local_ref(X) == [free(X), free(A)]
    assert s.is_empty()


def test_nested_chain_and_borrowed_inner():
    q, s = Table(Q), Table(S)
    put(q, R)
    borrow(q, s, R)
    put(s, A, contains=[R])
    put(s, X, contains=[A])
    assert s.remove_local_ref(R) == []
    assert s.remove_local_ref(A) == []
    assert s.remove_local_ref(X) == [free(X), free(A), ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, S)]
    assert q.borrow_removed(R, S, 1) == []
    assert q.remove_local_ref(R) == [free(R)]
    assert s.is_empty() and q.is_empty()


def test_pending_object_dropped_then_value_lands():
    s = Table(S)
    submit(s, T1, [])
    assert s.remove_local_ref(O) == [FreeObject(O, frozenset(), None), ReleaseLineage(T1)]
    # the value arrives later: the shell must delete that copy
    assert s.object_ready(O, 5, LOC) == [free(O, 5, [LOC])]
    assert s.task_finished(T1) == []
    assert s.is_empty()


def test_unreferenced_entry_freed_when_finished():
    s = Table(S)        # e.g. an actor-creation return nobody holds a ref to
    assert s.add_owned(O, lineage=T1) == []
    assert s.status(O) is Status.OWNED_PENDING
    assert s.object_ready(O, 1, INLINE) == [free(O, 1), ReleaseLineage(T1)]


# --------------------------------------------------------------- borrowers
def test_borrower_keeps_object_after_owner_drops():
    q, b = Table(Q), Table(B)
    put(q, R)
    borrow(q, b, R)
    assert q.remove_local_ref(R) == []
    assert q.status(R) is Status.OWNED_READY
    assert b.status(R) is Status.BORROWED and b.owner_of(R) == Q
    assert b.remove_local_ref(R) == [ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, B)]
    assert q.borrow_removed(R, B, 1) == [free(R)]
    assert q.is_empty() and b.is_empty()


def test_unregistered_borrowed_ref_is_forgotten_silently():
    w = Table(W)
    assert w.add_local_ref(R, owner=Q) == []
    assert w.remove_local_ref(R) == [ForgetBorrowed(R)]
    assert w.is_empty()


def test_drop_while_registration_in_flight():
    w = Table(W)
    assert w.add_local_ref(R, owner=Q) == []
    assert w.register_held_refs() == [SendAddBorrower(Q, R, W, 1)]
    assert w.remove_local_ref(R) == []          # entry kept: the ack is coming
    assert w.status(R) is Status.BORROWED
    assert w.borrower_registered(R) == [ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, W)]
    assert w.is_empty()


def test_borrower_passes_ref_on_then_dies():
    q, b, w = Table(Q), Table(B), Table(W)
    put(q, R)
    borrow(q, b, R)
    submit(b, T1, [R])                          # b passes R to a task on w
    assert w.add_local_ref(R, owner=Q) == []    # w keeps R (actor state)
    assert w.register_held_refs() == [SendAddBorrower(Q, R, W, 1)]
    assert q.borrow_added(R, W, 1) == []
    assert w.borrower_registered(R) == []
    assert w.register_held_refs() == []         # already registered
    assert b.object_ready(O, 1, INLINE) == []
    assert b.task_finished(T1) == []            # b still holds R locally
    assert q.remove_local_ref(R) == []
    assert q.process_died(B) == []              # w still borrows it
    assert q.summary()[0]["borrowed"] == 1
    assert q.borrow_removed(R, B, 1) == []      # late message of the dead: ignored
    assert q.stats()["dead_borrower_messages"] == 1
    assert w.remove_local_ref(R) == [ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, W)]
    assert q.borrow_removed(R, W, 1) == [free(R)]
    assert q.is_empty() and w.is_empty()


def test_borrower_dies_owner_frees():
    q = Table(Q)
    put(q, R)
    assert q.borrow_added(R, B, 2) == []
    assert q.remove_local_ref(R) == []
    assert q.process_died(B) == [free(R)]
    assert q.borrow_added(R, B, 1) == []        # late Add of the dead borrower
    assert q.is_empty()


# ------------------------------------------------------- refs in return values
def test_return_contains_ref_owned_by_worker():
    s, w = Table(S), Table(W)
    submit(s, T1, [])
    put(w, Y)
    assert w.returning_refs(O, S, [Y]) == []    # S recorded as borrower here
    assert w.register_held_refs() == []
    assert w.remove_local_ref(Y) == []          # S keeps it alive
    assert w.return_sent(O) == []               # reply on the wire
    assert s.return_received(O, [(Y, W)]) == []
    assert s.object_ready(O, 4, INLINE) == []
    assert s.task_finished(T1) == []
    assert s.status(Y) is Status.BORROWED
    assert s.remove_local_ref(O) == [free(O, 4), ReleaseLineage(T1),
                                     ForgetBorrowed(Y), SendRemoveBorrower(W, Y, 1, S)]
    assert w.borrow_removed(Y, S, 1) == [free(Y)]
    assert s.is_empty() and w.is_empty()


def test_return_contains_ref_owned_by_submitter():
    s, w = Table(S), Table(W)
    put(s, X)
    submit(s, T1, [X])                          # X passed nested in the args
    assert w.add_local_ref(X, owner=S) == []
    assert w.returning_refs(O, S, [X]) == []
    assert w.remove_local_ref(X) == []          # held by the outgoing reply
    assert w.register_held_refs() == []         # that hold needs no registration
    assert w.return_sent(O) == [ForgetBorrowed(X)]   # never registered: nothing to send
    assert w.return_sent(O) == []               # no-op for a return not being sent
    assert w.is_empty()
    assert s.return_received(O, [(X, S)]) == []  # before task_finished
    assert s.object_ready(O, 4, INLINE) == []
    assert s.task_finished(T1) == []
    assert s.remove_local_ref(X) == []          # inside O now
    assert s.remove_local_ref(O) == [free(O, 4), ReleaseLineage(T1), free(X)]
    assert s.is_empty()


def test_registered_worker_remove_cannot_overtake_reply():
    """W holds X (owned by S) registered, returns it to S and drops it before
    the reply goes out: the Remove must follow the reply on the W->S wire."""
    s, w = Table(S), Table(W)
    put(s, X)
    borrow(s, w, X)
    submit(s, T1, [])
    assert s.remove_local_ref(X) == []          # only W's registration is left
    assert w.returning_refs(O, S, [X]) == []
    assert w.remove_local_ref(X) == []          # not yet: the reply holds it
    assert w.return_sent(O) == [ForgetBorrowed(X), SendRemoveBorrower(S, X, 1, W)]
    assert s.return_received(O, [(X, S)]) == []  # the reply arrives first...
    assert s.borrow_removed(X, W, 1) == []      # ...then the Remove: X lives in O
    assert s.object_ready(O, 4, INLINE) == []
    assert s.task_finished(T1) == []
    assert s.remove_local_ref(O) == [free(O, 4), ReleaseLineage(T1), free(X)]


def test_return_contains_ref_owned_by_third_process():
    q, s, w = Table(Q), Table(S), Table(W)
    put(q, R)
    borrow(q, w, R)
    submit(s, T1, [])
    assert w.returning_refs(O, S, [R]) == [SendAddBorrower(Q, R, S, 1, via=W)]
    assert q.borrow_added(R, S, 1, via=W) == []     # acked before the reply
    assert q.stats()["provisional"] == 1
    assert w.remove_local_ref(R) == []
    assert w.return_sent(O) == [ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, W)]
    assert q.borrow_removed(R, W, 1) == []
    assert q.remove_local_ref(R) == []          # only S holds it now
    assert s.return_received(O, [(R, Q, ("h", 1))], executor=W) == [SendConfirmBorrower(Q, R, W)]
    assert q.borrow_confirmed(R, S, W) == [] and q.stats()["provisional"] == 0
    assert s.owner_addr_of_object(R) == ("h", 1)
    assert s.object_ready(O, 4, INLINE) == []
    assert s.task_finished(T1) == []
    assert s.summary()[1]["registrations"] == 1
    assert s.remove_local_ref(O) == [free(O, 4), ReleaseLineage(T1),
                                     ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, S)]
    assert q.borrow_removed(R, S, 1) == [free(R)]
    assert q.is_empty() and s.is_empty() and w.is_empty()


def test_reply_for_freed_return_gives_registrations_back():
    s = Table(S)
    submit(s, T1, [])
    assert s.remove_local_ref(O) == [FreeObject(O, frozenset(), None), ReleaseLineage(T1)]
    assert s.return_received(O, [(R, Q), (Y, W), (X, S)]) == [
        ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, S), ForgetBorrowed(Y), SendRemoveBorrower(W, Y, 1, S)]
    assert s.task_finished(T1) == []
    assert s.is_empty()


def test_task_fails_after_borrowing():
    q, s, w = Table(Q), Table(S), Table(W)
    put(q, R)
    borrow(q, s, R)
    submit(s, T1, [R])
    assert w.add_local_ref(R, owner=Q) == []    # the task stores R, then raises
    assert w.register_held_refs() == [SendAddBorrower(Q, R, W, 1)]
    assert q.borrow_added(R, W, 1) == []
    assert w.borrower_registered(R) == []       # only now the error reply goes out
    assert s.object_failed(O, "boom") == []
    assert s.status(O) is Status.OWNED_FAILED and s.error_of(O) == "boom"
    assert s.task_finished(T1) == []
    assert s.remove_local_ref(R) == [ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, S)]
    assert s.remove_local_ref(O) == [FreeObject(O, frozenset(), None), ReleaseLineage(T1)]
    assert q.borrow_removed(R, S, 1) == []
    assert q.remove_local_ref(R) == []          # W still holds it
    assert w.remove_local_ref(R) == [ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, W)]
    assert q.borrow_removed(R, W, 1) == [free(R)]


# ----------------------------------------------------------- message order
def test_every_order_of_add_on_behalf_and_removes():
    """B holds R (1 registration); W holds R (1 registration) and returns it to
    B, so W sends Add(R, borrower=B) and later its own Remove on the W->Q
    connection. B drops its old registration (rm1) and, after the reply,
    the new one (rm2) on the B->Q connection. Per-pair FIFO is the only
    ordering assumed (so rm2 may even overtake the Add, which the ack rule
    forbids): every order ends freed exactly once, at the last message, and
    no count goes below zero (validate() after each step)."""
    add_b, rm_w, rm1, rm2 = ("add", B), ("rm", W), ("rm", B), ("rm", B)
    msgs = [add_b, rm_w, rm1, rm2]
    orders = {tuple(p) for p in permutations(range(4))
              if p.index(0) < p.index(1) and p.index(2) < p.index(3)}
    assert len(orders) == 6
    for order in sorted(orders):
        q = Table(Q)
        put(q, R)
        assert q.borrow_added(R, B, 1) == []
        assert q.borrow_added(R, W, 1) == []
        assert q.remove_local_ref(R) == []
        for i, m in enumerate(order):
            kind, who = msgs[m]
            out = q.borrow_added(R, who, 1) if kind == "add" else q.borrow_removed(R, who, 1)
            last = i == len(order) - 1
            assert out == ([free(R)] if last else []), (order, i, out)
        assert q.is_empty() and q.stats()["stale_messages"] == 0


def test_remove_before_add_is_buffered():
    q = Table(Q)
    put(q, R)
    assert q.borrow_added(R, B, 1) == []
    assert q.remove_local_ref(R) == []
    assert q.borrow_removed(R, B, 3) == []      # 2 more than recorded: a debt
    assert q.stats()["early_removes"] == 2
    assert q.summary()[0]["borrowed"] == 0
    assert q.status(R) is Status.OWNED_READY   # not freed while Adds are owed
    assert q.borrow_added(R, B, 1) == []        # still one Add owed
    assert q.borrow_added(R, B, 1) == [free(R)]
    assert q.borrow_removed(R, B, 1) == []      # freed: ignored, counted
    assert q.borrow_added(R, W, 1) == []
    assert q.stats()["stale_messages"] == 2


# ---------------------------------------------------------------- lineage
def test_num_returns_lineage_released_after_all_returns():
    s = Table(S)
    submit(s, T1, [], returns=(O, O2))
    assert s.object_ready(O, 1, INLINE) == []
    assert s.object_ready(O2, 2, LOC) == []
    assert s.task_finished(T1) == []
    assert s.remove_local_ref(O) == [free(O, 1)]
    assert s.lineage_of(O2) == T1
    assert s.remove_location(O2, LOC) == [ObjectLost(O2, T1, LOC)]
    assert s.add_location(O2, LOC) == []
    assert s.remove_local_ref(O2) == [free(O2, 2, [LOC]), ReleaseLineage(T1)]


# --------------------------------------------------------------- failures
def test_owner_died():
    q, b = Table(Q), Table(B)
    put(q, R)
    put(q, X)
    borrow(q, b, R)
    assert b.add_local_ref(X, owner=Q, owner_addr=("h", 2)) == []
    assert b.owner_addr(Q) == ("h", 2)
    assert b.register_held_refs() == [SendAddBorrower(Q, X, B, 1)]   # ack never comes
    assert b.add_local_ref(Y, owner=W) == []
    assert b.process_died(Q) == [OwnerDied(R, Q), OwnerDied(X, Q)]
    assert b.status(R) is Status.OWNER_DIED and b.status(Y) is Status.BORROWED
    assert b.owner_addr(Q) is None
    assert b.remove_local_ref(R) == [ForgetBorrowed(R)]          # nothing to tell a dead owner
    assert b.remove_local_ref(X) == [ForgetBorrowed(X)]          # in-flight Add abandoned
    assert b.add_local_ref(A, owner=Q) == [OwnerDied(A, Q)]
    assert b.remove_local_ref(A) == [ForgetBorrowed(A)]
    assert b.remove_local_ref(Y) == [ForgetBorrowed(Y)]
    assert b.is_empty()


def test_owner_died_frees_nested_borrowed_without_messages():
    s = Table(S)
    assert s.add_local_ref(R, owner=Q) == []
    put(s, X, contains=[R])
    assert s.remove_local_ref(R) == []
    assert s.register_held_refs() == [SendAddBorrower(Q, R, S, 1)]
    assert s.borrower_registered(R) == []
    assert s.process_died(Q) == [OwnerDied(R, Q)]
    assert s.remove_local_ref(X) == [free(X), ForgetBorrowed(R)]
    assert s.is_empty()


# ---------------------------------------------------------------- misuse
def test_misuse_raises():
    s = Table(S)
    with pytest.raises(OwnershipError):
        s.remove_local_ref(X)
    with pytest.raises(OwnershipError):
        s.add_local_ref(X)
    with pytest.raises(OwnershipError):
        s.task_submitted(T1, [X])
    with pytest.raises(OwnershipError):
        s.task_finished(T1)
    put(s, X)
    with pytest.raises(OwnershipError):
        s.add_owned(X)
    assert s.remove_local_ref(X) == [free(X)]
    with pytest.raises(OwnershipError):
        s.add_owned(X)                          # ids are never reused
    assert s.add_local_ref(X) == []             # dangling ref to a freed object
    assert s.task_submitted(T1, [X]) == []      # ignored: the shell fails the task
    assert s.remove_local_ref(X) == []
    assert s.task_finished(T1) == []
    assert s.stats()["stale_events"] == 3 and s.is_empty()


# ---------------------------------------------------------------- summary
def test_summary():
    q, s = Table(Q), Table(S)
    put(q, R)
    borrow(q, s, R)
    put(s, X, contains=[R], size=100, location=LOC)
    submit(s, T1, [X, R])
    rows = {r["oid"]: r for r in s.summary()}
    assert rows[X] == {"oid": X, "owner": S, "owned": True, "state": "READY", "size": 100,
                       "locations": [LOC], "local": 1, "submitted": 1, "borrowed": 0,
                       "nested": 0, "contains": 1, "call_site": "test.py:1"}
    assert rows[O]["state"] == "PENDING" and rows[O]["call_site"] == "test.py:2"
    assert rows[R] == {"oid": R, "owner": Q, "owned": False, "state": "BORROWED",
                       "size": None, "locations": [], "local": 1, "submitted": 1,
                       "borrowed": 0, "nested": 1, "contains": 0, "registrations": 1,
                       "call_site": ""}
    qrow = q.summary()[0]
    assert (qrow["local"], qrow["borrowed"], qrow["state"]) == (1, 1, "READY")


# ------------------------------------------------------ lineage reconstruction
def test_lost_object_rebuilding_then_ready_again():
    s = Table(S)
    submit(s, T1, [])
    assert s.object_ready(O, 8, LOC) == []
    assert s.task_finished(T1) == []
    assert s.remove_location(O, LOC) == [ObjectLost(O, T1, LOC)]
    assert s.remove_location(O, LOC) == []            # a second reader saw it too
    assert s.object_rebuilding(O) == []
    assert s.status(O) is Status.OWNED_PENDING
    assert s.object_ready(O, 8, (b"n2", "host")) == []
    assert s.status(O) is Status.OWNED_READY
    assert s.remove_local_ref(O) == [free(O, 8, [(b"n2", "host")]), ReleaseLineage(T1)]


def test_freed_argument_revived_for_a_rerun_and_freed_again():
    s = Table(S)
    submit(s, T1, [], returns=(A,))
    assert s.object_ready(A, 8, LOC) == []
    assert s.task_finished(T1) == []
    submit(s, b"t2", [A])
    assert s.remove_local_ref(A) == []                # t2 holds it
    assert s.task_finished(b"t2") == [free(A, 8, [LOC]), ReleaseLineage(T1)]
    assert s.status(A) is Status.FREED
    assert s.object_revived(A, lineage=T1) == []      # t2 runs again: a needed again
    assert s.task_submitted(b"t2", [A]) == []
    assert s.status(A) is Status.OWNED_PENDING
    assert s.object_ready(A, 8, LOC) == []
    assert s.task_finished(b"t2") == [free(A, 8, [LOC]), ReleaseLineage(T1)]
    with pytest.raises(OwnershipError):
        s.object_revived(O, lineage=b"t2")            # o is alive: not freed


def _executor_dies_after_its_add(reply_reached_submitter: bool):
    """W registered S at Q for R (nested in O), then died; S got the reply or not."""
    q, s, w = Table(Q), Table(S), Table(W)
    put(q, R)
    borrow(q, w, R)
    submit(s, T1, [])
    assert w.returning_refs(O, S, [R]) == [SendAddBorrower(Q, R, S, 1, via=W)]
    assert q.borrow_added(R, S, 1, via=W) == []
    out_s = []
    if reply_reached_submitter:
        out_s = s.return_received(O, [(R, Q)], executor=W)
        assert out_s == [SendConfirmBorrower(Q, R, W)]
        assert s.object_ready(O, 4, INLINE) == [] and s.task_finished(T1) == []
    assert q.process_died(W) == [SendSettleBorrower(S, R, W)]     # W's own registration gone
    # S has not heard of W's death yet: the settle waits for it
    assert s.borrow_settle(R, Q, W) == []
    assert s.stats()["settles_waiting"] == 1
    assert s.process_died(W) == [SendBorrowerSettled(Q, R, W)]
    if not reply_reached_submitter:
        assert s.object_failed(O, "worker died") == [] and s.task_finished(T1) == []
        # a late reply of the dead executor is discarded without a message
        assert s.return_discarded([(R, Q)], executor=W) == []
    for ins in out_s:                                  # S's confirm precedes its answer
        assert q.borrow_confirmed(ins.oid, S, ins.via) == []
    return q, s


def test_executor_dying_before_its_reply_leaks_no_registration():
    q, s = _executor_dies_after_its_add(reply_reached_submitter=False)
    assert q.remove_local_ref(R) == []                  # S's provisional one still counts
    assert q.borrow_settled(R, S, W) == [free(R)]       # dropped: S never took it
    assert q.is_empty() and q.stats()["settled_registrations"] == 1
    assert s.remove_local_ref(O) == [FreeObject(O, frozenset(), None), ReleaseLineage(T1)]
    assert s.is_empty()


def test_executor_dying_after_its_reply_keeps_the_confirmed_registration():
    q, s = _executor_dies_after_its_add(reply_reached_submitter=True)
    assert q.remove_local_ref(R) == []
    assert q.borrow_settled(R, S, W) == []              # confirmed: S's own now
    assert q.stats()["settled_registrations"] == 0
    assert s.remove_local_ref(O) == [free(O, 4), ReleaseLineage(T1),
                                     ForgetBorrowed(R), SendRemoveBorrower(Q, R, 1, S)]
    assert q.borrow_removed(R, S, 1) == [free(R)]
    assert q.is_empty() and s.is_empty()


def test_late_add_of_a_dead_executor_is_settled_at_once():
    q = Table(Q)
    put(q, R)
    assert q.process_died(W) == []
    assert q.borrow_added(R, S, 1, via=W) == [SendSettleBorrower(S, R, W)]
    assert q.remove_local_ref(R) == []
    assert q.borrow_settled(R, S, W) == [free(R)]
    assert q.borrow_settled(R, S, W) == []              # a second answer: nothing left
    assert q.is_empty()


def test_dead_borrower_drops_its_provisional_registrations():
    q = Table(Q)
    put(q, R)
    assert q.borrow_added(R, S, 1, via=W) == []
    assert q.remove_local_ref(R) == []
    assert q.process_died(S) == [free(R)]
    assert q.is_empty()
    assert q.process_died(W) == []                      # nothing to settle with a dead S
