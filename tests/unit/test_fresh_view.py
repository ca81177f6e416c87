"""The node's cluster-view refresh (node.py ``refresh_cluster``/``fresh_view``).

Found by the fuzz test: a lease request arriving in the loop iteration in
which a refresh finished, before that refresh's done callback ran, found the
finished future still recorded as "the refresh in flight"; awaiting a done
future does not yield, so ``fresh_view`` spun on it forever and the node
daemon stopped serving anything (it stopped even sending handshake nonces).
"""
from __future__ import annotations

import asyncio
import threading
import time

from gdfut import protocol as P
from gdfut.node import NodeDaemon


class FakeHead:
    closed = False

    def __init__(self):
        self.asked = []

    def request(self, mtype, *fields):
        self.asked.append(mtype)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result([] if mtype == P.HEAD_LIST_NODES else (0, []))
        return fut


def bare_daemon(head):
    node = NodeDaemon.__new__(NodeDaemon)        # only the view-refresh state
    node.head_conn, node.cluster, node.dead_seq = head, {}, 0
    node.view_time, node._refreshing = float("-inf"), None
    return node


def run_in_thread(coro_fn, timeout=5.0):
    """Run on a fresh event loop in a thread: a loop that spins without
    yielding cannot be timed out from inside."""
    result = {}

    def main():
        result["value"] = asyncio.run(coro_fn())

    t = threading.Thread(target=main, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "fresh_view spun without yielding (the node would wedge)"
    return result.get("value")


def test_fresh_view_does_not_spin_on_a_finished_refresh():
    head = FakeHead()
    node = bare_daemon(head)

    async def scenario():
        asked_before = time.monotonic()
        # a refresh asked before the request, finished, its done callback not yet run
        stale = asyncio.get_running_loop().create_future()
        stale.set_result(None)
        node._refreshing, node.view_time = stale, asked_before
        since = time.monotonic()
        await node.fresh_view(since)
        return node.view_time >= since

    assert run_in_thread(scenario) is True
    assert head.asked == [P.HEAD_LIST_NODES, P.HEAD_DEAD_PROCESSES]


def test_concurrent_callers_share_one_refresh():
    head = FakeHead()
    node = bare_daemon(head)

    async def scenario():
        since = time.monotonic()
        await asyncio.gather(*(node.fresh_view(since) for _ in range(5)))
        await asyncio.sleep(0)                  # done callbacks run
        return node._refreshing

    assert run_in_thread(scenario) is None
    assert head.asked == [P.HEAD_LIST_NODES, P.HEAD_DEAD_PROCESSES]
