"""Generator streams in the ownership table: exact event -> instruction sequences."""
import pytest

from gdfut.ownership import (INLINE, UNBOUNDED, ForgetBorrowed, FreeObject, NextRef, OwnershipError,
                             ReleaseLineage, SendAddBorrower, SendRemoveBorrower, Status,
                             StreamAck, StreamEnd)
from test_ownership import Table, borrow, free, put

S, W, Q = b"S", b"W", b"Q"
T = b"t"
R0 = b"r0"                       # the task's fixed return (the "completed" ref)
I0, I1, I2, I3 = b"i0", b"i1", b"i2", b"i3"
LOC = (b"n1", "host")


def open_stream(s, backpressure=None):
    assert s.add_owned(R0, lineage=T, call_site="test.py:1") == []
    assert s.add_local_ref(R0) == []
    assert s.task_submitted(T, []) == []
    assert s.stream_opened(T, backpressure) == []


def item(s, index, oid, size=4, location=INLINE, **kw):
    return s.stream_item(T, index, oid, size=size, location=location, **kw)


def finish(s, error_oid=None):
    """The task's reply: R0 ready, the stream ended, the task done."""
    assert s.object_ready(R0, 1, INLINE) == []
    out = s.stream_ended(T, error_oid)
    return out + s.task_finished(T)


def test_items_are_held_until_taken_then_by_the_ref():
    s = Table(S)
    open_stream(s, backpressure=100)
    assert s.stream_take(T) == []                      # nothing yet: the caller waits
    assert not s.stream_ready(T)
    assert item(s, 0, I0) == []
    assert item(s, 1, I1, location=LOC) == []
    assert s.stream_ready(T) and s.stream_received(T) == 2
    assert s.status(I1) is Status.OWNED_READY and s.lineage_of(I1) == T
    assert s.stream_take(T) == [NextRef(T, I0)]
    assert s.remove_local_ref(I0) == [free(I0, 4)]      # the handed-out ref was its only holder
    assert finish(s) == []
    assert s.stream_take(T) == [NextRef(T, I1)]        # still buffered after the end
    assert s.stream_take(T) == [StreamEnd(T)]
    assert s.stream_take(T) == [StreamEnd(T)]
    assert s.remove_local_ref(I1) == [free(I1, 4, [LOC])]
    assert s.remove_local_ref(R0) == [free(R0, 1), ReleaseLineage(T)]
    assert s.stream_dropped(T) == []                   # the generator object goes last
    assert s.is_empty()


def test_dropping_the_generator_frees_untaken_and_later_items():
    s = Table(S)
    open_stream(s, backpressure=2)
    assert item(s, 0, I0) == []
    assert item(s, 1, I1, location=LOC) == []
    assert s.stream_take(T) == [NextRef(T, I0), StreamAck(T, 1)]
    assert s.remove_local_ref(R0) == [FreeObject(R0, frozenset(), None)]   # pending, unheld
    assert s.stream_dropped(T) == [free(I1, 4, [LOC]), StreamAck(T, UNBOUNDED)]
    assert item(s, 2, I2, location=LOC) == [free(I2, 4, [LOC])]   # arrives after: freed at once
    assert s.stream_take(T) == [StreamEnd(T)]
    assert s.object_ready(R0, 1, INLINE) == [free(R0, 1)]
    assert s.stream_ended(T) == []
    assert s.task_finished(T) == []
    assert s.remove_local_ref(I0) == [free(I0, 4), ReleaseLineage(T)]
    assert s.is_empty()


def test_error_is_stored_in_the_next_ref():
    s = Table(S)
    open_stream(s, backpressure=10)
    assert item(s, 0, I0) == []
    assert s.object_failed(R0, "boom") == []
    assert s.stream_ended(T, I1, "boom") == []
    assert s.task_finished(T) == []
    assert s.status(I1) is Status.OWNED_FAILED and s.error_of(I1) == "boom"
    assert s.stream_take(T) == [NextRef(T, I0)]
    assert s.stream_take(T) == [NextRef(T, I1)]
    assert s.stream_take(T) == [StreamEnd(T)]
    for oid in (I0, I1):
        s.remove_local_ref(oid)
    s.remove_local_ref(R0)
    s.stream_dropped(T)
    assert s.is_empty()


def test_backpressure_no_ack_while_the_executor_cannot_be_waiting():
    s = Table(S)
    open_stream(s, backpressure=2)
    assert item(s, 0, I0) == []
    assert s.stream_take(T) == [NextRef(T, I0)]        # 1 made, bound 2: it is not waiting
    assert item(s, 1, I1) == [StreamAck(T, 1)]         # 2 made, 0 known consumed: it may wait
    assert item(s, 2, I2) == []                        # it will know of 1: 3 - 1 >= 2, waits...
    assert s.stream_take(T) == [NextRef(T, I1), StreamAck(T, 2)]   # ...until this ack


def test_dynamic_stream_never_acks():
    s = Table(S)
    open_stream(s, backpressure=None)
    for i, oid in enumerate((I0, I1, I2)):
        assert item(s, i, oid) == []
    assert s.stream_dropped(T) == [free(I0, 4), free(I1, 4), free(I2, 4)]


def test_backpressure_ack_sequence_exact():
    s = Table(S)
    open_stream(s, backpressure=2)
    assert item(s, 0, I0) == []
    assert item(s, 1, I1) == []                        # executor waits: 2 made, 0 known consumed
    assert s.stream_take(T) == [NextRef(T, I0), StreamAck(T, 1)]
    assert item(s, 2, I2) == []                        # 3 made, 1 known: waits again
    assert s.stream_take(T) == [NextRef(T, I1), StreamAck(T, 2)]
    assert s.stream_take(T) == [NextRef(T, I2)]        # 3 received, 2 acked: 1 < 2, not waiting
    assert item(s, 3, I3) == [StreamAck(T, 3)]         # 4 made, 2 known: it waits; 3 consumed
    s.validate()


def test_out_of_order_or_unknown_items_are_dropped_and_their_copies_freed():
    s = Table(S)
    open_stream(s, backpressure=5)
    assert item(s, 1, I1, location=LOC) == [free(I1, 4, [LOC])]   # index 0 expected
    assert item(s, 0, I0) == []
    assert item(s, 0, I0, location=LOC) == []          # a duplicate of an owned item: kept
    assert s.stats()["stale_events"] == 2
    assert s.stream_item(b"other", 0, I2, size=4, location=LOC) == [free(I2, 4, [LOC])]


def test_item_with_nested_ref_of_a_third_owner():
    q, s = Table(Q), Table(S)
    put(q, b"x")
    borrow(q, s, b"x")          # stands in for the executor's Add on our behalf
    open_stream(s, backpressure=5)
    # the executor registered S as borrower of x (+1) before sending the item
    assert item(s, 0, I0, nested=[(b"x", Q)]) == []
    assert s.remove_local_ref(b"x") == []              # I0 still holds x
    assert s.stream_take(T) == [NextRef(T, I0)]
    assert s.remove_local_ref(I0) == [free(I0, 4), ForgetBorrowed(b"x"),
                                     SendRemoveBorrower(Q, b"x", 2, S)]


def test_dynamic_generator_items_become_the_return_contents():
    s = Table(S)
    open_stream(s, backpressure=None)
    assert item(s, 0, I0) == []
    assert item(s, 1, I1, location=LOC) == []
    with pytest.raises(OwnershipError):
        s.stream_take(T)                               # nobody takes from a dynamic stream
    assert s.object_ready(R0, 1, INLINE) == []
    assert s.stream_collected(T, R0) == []
    assert s.task_finished(T) == []
    assert s.summary()[0]["contains"] == 2
    # a reader of R0 rebuilds refs to the items; then everything goes with R0
    assert s.add_local_ref(I0) == []
    assert s.remove_local_ref(R0) == [free(R0, 1), free(I1, 4, [LOC])]
    assert s.remove_local_ref(I0) == [free(I0, 4), ReleaseLineage(T)]
    assert s.is_empty()


def test_dynamic_generator_whose_return_is_gone_frees_its_items():
    s = Table(S)
    open_stream(s, backpressure=None)
    assert item(s, 0, I0, location=LOC) == []
    assert s.remove_local_ref(R0) == [FreeObject(R0, frozenset(), None)]
    assert s.object_ready(R0, 1, INLINE) == [free(R0, 1)]   # orphan value of the freed R0
    assert s.stream_collected(T, R0) == [free(I0, 4, [LOC]), ReleaseLineage(T)]
    assert s.task_finished(T) == []
    assert s.is_empty()


def test_failed_dynamic_generator_frees_what_it_yielded():
    s = Table(S)
    open_stream(s, backpressure=None)
    assert item(s, 0, I0, location=LOC) == []
    assert s.object_failed(R0, "boom") == []
    assert s.stream_collected(T, R0) == [free(I0, 4, [LOC])]
    assert s.task_finished(T) == []
    assert s.remove_local_ref(R0) == [FreeObject(R0, frozenset(), None), ReleaseLineage(T)]
    assert s.is_empty()


def test_misuse_is_an_error():
    s = Table(S)
    open_stream(s, backpressure=1)
    with pytest.raises(OwnershipError):
        s.stream_opened(T, 1)
    with pytest.raises(OwnershipError):
        s.stream_opened(b"t2", 0)
    assert s.stream_ended(T) == []
    with pytest.raises(OwnershipError):
        s.stream_ended(T)
    with pytest.raises(OwnershipError):
        s.stream_collected(b"t3", R0)
    assert s.stream_dropped(T) == []
    assert s.stream_dropped(T) == []                    # twice: stale, counted
    assert s.stats()["stale_events"] == 1
    assert s.stats()["streams"] == 0
