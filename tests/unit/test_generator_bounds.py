"""Pure pieces of generator tasks: retry decision, backpressure window, byte budget."""
import threading

import pytest

from gdfut.executor import ByteBudget, YieldWindow
from gdfut.ids import MAX_GENERATOR_ITEMS, object_id_for_return, object_id_for_yield, task_of
from gdfut.ownership import UNBOUNDED
from gdfut.submitter import (DEFAULT_GENERATOR_BACKPRESSURE, MAX_GENERATOR_BACKPRESSURE,
                             generator_options, parse_wire_returns)
from gdfut.task_manager import Fail, Retry, TaskManager


class Conn:
    closed = False


def test_generator_that_streamed_items_is_not_retried():
    m = TaskManager()
    m.submitted(b"t", 3)
    assert m.worker_failed(b"t", streamed=0) == Retry(2)
    decision = m.worker_failed(b"t", streamed=2)
    assert isinstance(decision, Fail) and "already yielded 2 items" in decision.reason


def test_item_ids_follow_the_fixed_return():
    tid = b"t" * 16
    assert object_id_for_yield(tid, 0) == object_id_for_return(tid, 1)
    assert task_of(object_id_for_yield(tid, 7)) == tid
    with pytest.raises(ValueError):
        object_id_for_yield(tid, MAX_GENERATOR_ITEMS)


def test_wire_form_of_num_returns():
    assert generator_options(2, None) == (2, None, 0)
    assert generator_options("streaming", None) == (1, "streaming", DEFAULT_GENERATOR_BACKPRESSURE)
    assert generator_options("streaming", -1) == (1, "streaming", MAX_GENERATOR_BACKPRESSURE)
    assert generator_options("dynamic", 5) == (1, "dynamic", 0)
    assert parse_wire_returns(3) == (3, None, 0)
    assert parse_wire_returns(["streaming", 4]) == (1, "streaming", 4)
    for bad in (-1, True, "3", ["other", 1], ["streaming", -2], ["streaming"]):
        with pytest.raises(ValueError):
            parse_wire_returns(bad)


def test_window_waits_for_consumption_and_stops_when_owner_gone():
    w = YieldWindow(2)
    conn = Conn()
    assert w.has_room(1) and not w.has_room(2)
    w.acked(1)
    assert w.wait_room(2, conn)
    t = threading.Thread(target=lambda: w.acked(UNBOUNDED))
    t.start()
    assert w.wait_room(10, conn)          # the caller dropped the generator
    t.join()
    w2 = YieldWindow(1)
    conn.closed = True
    assert not w2.wait_room(1, conn)
    assert YieldWindow(0).has_room(10**9)  # dynamic: no bound


def test_byte_budget_blocks_until_released_and_lets_one_big_item_through():
    b = ByteBudget(100)
    assert b.try_acquire(60)
    assert not b.try_acquire(60)
    t = threading.Timer(0.05, b.release, (60,))
    t.start()
    b.acquire(60)                          # waited for the release
    t.join()
    b.release(60)
    assert b.try_acquire(500)             # alone, an item over the budget passes
    b.release(500)
    assert b.used == 0
