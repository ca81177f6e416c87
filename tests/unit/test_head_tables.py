"""The head's tables driven message by message, without sockets: names in
namespaces, detached hand-over, owners' deaths, and a second Head reading
the same session back (a restart)."""
from __future__ import annotations

import argparse
import asyncio
import os

import pytest

from gdfut import protocol as P
from gdfut.head import Head, HeadConn


class FakeConn:
    peer = "fake"

    def __init__(self):
        self.replies: dict = {}
        self.errors: dict = {}
        self.sent: list = []
        self.closed = False

    def reply(self, req_id, value):
        self.replies[req_id] = value

    def reply_error(self, req_id, text):
        self.errors[req_id] = text

    def send(self, message):
        self.sent.append(message)

    def resolve_reply(self, m):
        return False


@pytest.fixture
def session(tmp_path):
    os.makedirs(tmp_path / "logs")
    (tmp_path / "token").write_bytes(b"t" * 32)
    return str(tmp_path)


def new_head(session):
    asyncio.set_event_loop(asyncio.new_event_loop())
    args = argparse.Namespace(session_dir=session, port=0, bind="127.0.0.1", embedded=False)
    return Head(args)


def peer(head):
    p = HeadConn(head)
    p.conn = FakeConn()
    return p


def send(head, p, *m):
    head.dispatch[m[0]](p, list(m))
    req = m[1] if len(m) > 1 and isinstance(m[1], int) else None
    if req in p.conn.errors:
        return ("error", p.conn.errors[req])
    return p.conn.replies.get(req)


NODE = b"n" * 16
INFO = {"node_id": NODE, "addr": ["127.0.0.1", 9], "resources": {"CPU": 1}, "pid": 1}
DRIVER, OTHER, WORKER = b"d" * 16, b"o" * 16, b"w" * 16
ADDR = ["127.0.0.1", 1]


def register_actor(head, p, req, name, ns, actor_id, owner, detached=False):
    return send(head, p, P.HEAD_REGISTER_ACTOR, req, name, ns, actor_id, owner, ADDR,
                {"class_name": "C", "methods": {}}, detached)


def lookup(head, p, req, name, ns):
    return send(head, p, P.HEAD_LOOKUP_ACTOR, req, name, ns)


def test_names_are_per_namespace(session):
    head = new_head(session)
    d = peer(head)
    assert register_actor(head, d, 1, "a", "ns1", b"A" * 16, DRIVER) is True
    assert register_actor(head, d, 2, "a", "ns2", b"B" * 16, DRIVER) is True
    taken = register_actor(head, d, 3, "a", "ns1", b"C" * 16, DRIVER)
    assert taken[0] == "error" and "already exists in namespace 'ns1'" in taken[1]
    assert lookup(head, d, 4, "a", "ns1")[0] == b"A" * 16
    assert lookup(head, d, 5, "a", "ns2")[0] == b"B" * 16
    assert lookup(head, d, 6, "a", "ns3")[0] == "error"


def test_a_plain_name_goes_with_its_drivers_connection_a_detached_one_stays(session):
    head = new_head(session)
    d = peer(head)
    send(head, d, P.HEAD_REGISTER_JOB, 1, {"driver_wid": DRIVER})
    register_actor(head, d, 2, "plain", "ns", b"P" * 16, DRIVER)
    register_actor(head, d, 3, "kept", "ns", b"K" * 16, DRIVER, detached=True)
    assert send(head, d, P.HEAD_ACTOR_PLACED, 4, b"K" * 16, WORKER, ["127.0.0.1", 2]) is True
    send(head, d, P.HEAD_PROCESSES_DIED, [DRIVER])    # reported while still connected
    other = peer(head)
    assert lookup(head, other, 5, "plain", "ns")[0] == b"P" * 16   # still connected: alive
    head.on_closed(d)
    assert lookup(head, other, 6, "plain", "ns")[0] == "error"
    kept = lookup(head, other, 7, "kept", "ns")
    assert kept[1] == WORKER and kept[2] == ["127.0.0.1", 2]      # its worker owns it now
    send(head, other, P.HEAD_PROCESSES_DIED, [WORKER])             # creator gone, worker too
    assert lookup(head, other, 8, "kept", "ns")[0] == "error"


def test_a_restarted_head_keeps_names_and_learns_what_died(session):
    head = new_head(session)
    n, d = peer(head), peer(head)
    assert send(head, n, P.HEAD_REGISTER_NODE, 1, INFO) is True
    send(head, n, P.HEAD_PROCESSES_STARTED, NODE, [DRIVER, OTHER])
    register_actor(head, d, 2, "mine", "ns", b"M" * 16, DRIVER)
    register_actor(head, d, 3, "theirs", "ns", b"T" * 16, OTHER)
    send(head, n, P.HEAD_PROCESSES_DIED, [b"x" * 16])
    seq_before = send(head, n, P.HEAD_DEAD_PROCESSES, 4, 0)[0]
    head.db.close()                                   # SIGKILL: nothing else runs

    again = new_head(session)
    assert set(again.recovery.awaited) == {NODE}
    n2, d2 = peer(again), peer(again)
    assert lookup(again, d2, 1, "mine", "ns")[0] == b"M" * 16
    assert send(again, n2, P.HEAD_REGISTER_NODE, 2, INFO) is True
    assert again.recovery.awaited == {}
    send(again, n2, P.HEAD_PROCESSES_STARTED, NODE, [DRIVER], True)   # OTHER died unseen
    assert lookup(again, d2, 3, "theirs", "ns")[0] == "error"
    assert lookup(again, d2, 4, "mine", "ns")[0] == b"M" * 16
    seq, dead = send(again, n2, P.HEAD_DEAD_PROCESSES, 5, seq_before)
    assert dead == [OTHER] and seq == seq_before + 1  # the log goes on where it was
    again.db.close()


def test_a_node_that_does_not_come_back_is_dead(session, monkeypatch):
    head = new_head(session)
    n = peer(head)
    send(head, n, P.HEAD_REGISTER_NODE, 1, INFO)
    send(head, n, P.HEAD_PROCESSES_STARTED, NODE, [DRIVER])
    register_actor(head, peer(head), 2, "mine", "ns", b"M" * 16, DRIVER)
    head.db.close()
    again = new_head(session)
    for node_id in again.recovery.expired(float("inf")):
        again.mark_node(node_id, "DEAD")
    assert [x["state"] for x in again.nodes()] == ["DEAD"]
    assert lookup(again, peer(again), 3, "mine", "ns")[0] == "error"   # its driver died with it
    assert send(again, peer(again), P.HEAD_DEAD_PROCESSES, 4, 0)[1] == [DRIVER]
    again.db.close()
