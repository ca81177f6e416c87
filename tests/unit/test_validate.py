"""Message schemas, the handshake-sized decoder, the handshake gate, the
supervisor of background tasks, and the node's reading of the head's rows."""
import asyncio
import logging

import pytest

from gdfut import protocol as P, validate
from gdfut.exceptions import ProtocolError
from gdfut.head import Head, registration_problem
from gdfut.head_pgs import PlacementGroups
from gdfut.node_pgs import NodeBundles
from gdfut.node import NodeDaemon, _node_view
from gdfut.supervise import Supervisor
from gdfut.transport.tcp import HandshakeGate
from gdfut.head_actors import DetachedActors

WID = b"w" * 16
OID = b"o" * 20


def _handled_types(cls):
    """Message types a daemon's dispatch table handles (read from its source,
    so the test needs no running daemon)."""
    import inspect
    import re
    src = inspect.getsource(cls.__init__)
    table = src[src.index("self.dispatch = {"):]
    table = table[:table.index("}")]
    handled = {getattr(P, name) for name in re.findall(r"P\.([A-Z_]+):", table)}
    # tables merged in from helpers (placement groups: head_pgs, node_pgs)
    for helper in re.findall(r"self\.dispatch\.update\(self\.(\w+)\.handlers\(\)\)", src):
        helper_cls = {"pgs": PlacementGroups, "bundles": NodeBundles,
                      "detached": DetachedActors}[helper]
        body = inspect.getsource(helper_cls.handlers)
        handled |= {getattr(P, name) for name in re.findall(r"P\.([A-Z_]+):", body)}
    return handled


@pytest.mark.parametrize("cls", [NodeDaemon, Head])
def test_every_message_a_daemon_handles_has_a_schema(cls):
    missing = {t for t in _handled_types(cls) if t not in validate.SCHEMAS}
    assert not missing, f"no schema for message types {missing}"


def test_valid_messages_pass():
    ok = [
        [P.REGISTER_CLIENT, 1, WID, 123, ["127.0.0.1", 5000], "driver"],
        [P.REQUEST_LEASE, 2, {"CPU": 1, "GPU": 0.5}, False, None,
         {"arg_bytes": {b"n" * 16: 100}, "strategy": ["AFFINITY", b"n" * 16, True]}],
        [P.REQUEST_LEASE, 3, {"CPU": 0}, True, WID, {"strategy": "SPREAD", "spilled": True}],
        [P.STORE_CREATE, 4, OID, 0, True, WID],
        [P.STORE_UNPIN, [[OID, 2]]],
        [P.KILL_WORKER, 0, WID, "actor killed"],
        [P.HEAD_HEARTBEAT, WID, {"resources_total": {"CPU": 2}, "leases": {"queued_requests": 0},
                                 "store": {"used_bytes": 0}}],
        [P.HEAD_PROCESSES_STARTED, WID, [WID, b"x" * 16]],
        [P.TASK_DONE, b"t" * 16, 0, [], 0.5],            # trailing field allowed
    ]
    for m in ok:
        assert validate.problem(m) is None, m


@pytest.mark.parametrize("message, expect", [
    ([P.REQUEST_LEASE, 1, {"CPU": "lots"}, False, None, {}], "must be a number"),
    ([P.REQUEST_LEASE, 1, {"CPU": float("inf")}, False, None, {}], "finite"),
    ([P.REQUEST_LEASE, 1, {"CPU": -1}, False, None, {}], "must be in"),
    ([P.REQUEST_LEASE, 1, {"CPU": 1}, False, None, []], "hints must be a map"),
    ([P.STORE_CREATE, 1, OID, -5, True, WID], "size must be in"),
    ([P.STORE_CREATE, 1, b"x" * 1000, 5, True, WID], "object_id must be 1-64 bytes"),
    ([P.STORE_PIN, 1], "1 fields, expected 2"),
    ([P.STORE_UNPIN, [[OID, 0]]], "item 0 item 1"),
    ([P.HEAD_PROCESSES_STARTED, WID, [1, b"w"]], "worker_ids item 0 must be bytes"),
    ([P.HEAD_PROCESSES_STARTED, [1], []], "node_id must be bytes"),
    ([P.HEAD_REGISTER_NODE, 1, {"node_id": WID, "addr": ["h", 70000], "resources": {}}],
     "addr"),
    ([P.REGISTER_WORKER, True, WID, 1, ["h", 1], "worker"], "req_id must be an integer"),
    ([P.REPLY, 1, 2, 3], None),           # envelopes are the transport's (resolve_reply)
])
def test_bad_messages_are_named(message, expect):
    text = validate.problem(message)
    if expect is None:
        assert text is None
    else:
        assert text is not None and expect in text, text


def test_request_id_only_from_requests():
    assert validate.request_id([P.STORE_PIN, 7, "junk"]) == 7
    assert validate.request_id([P.STORE_PIN, "7"]) is None
    assert validate.request_id([P.KILL_WORKER, 0, WID, "r"]) is None   # 0: no reply wanted
    assert validate.request_id([P.STORE_FREE, 7]) is None              # one-way message


class _Conn:
    peer = {}

    def __init__(self):
        self.errors = []

    def reply_error(self, req_id, text):
        self.errors.append((req_id, text))


def test_admit_answers_requests_and_drops_one_way_messages():
    conn, log = _Conn(), logging.getLogger("test")
    assert not validate.admit(conn, [P.STORE_PIN, 9, 5], log)
    assert not validate.admit(conn, [P.STORE_FREE, 5], log)
    assert validate.admit(conn, [P.STORE_FREE, [OID]], log)
    assert [rid for rid, _ in conn.errors] == [9]


def test_registration_resources_must_parse():
    info = {"node_id": WID, "addr": ["h", 1], "resources": {"CPU": 2}}
    assert registration_problem(info) is None
    assert "resolution" in registration_problem({**info, "resources": {"CPU": 1e-9}})
    assert "whole GPUs" in registration_problem({**info, "resources": {"GPU": 1.5}})


# --- frame decoder before and after the handshake ---------------------------------------
def test_decoder_refuses_a_big_frame_at_its_length_prefix():
    d = P.FrameDecoder(P.HANDSHAKE_MAX_FRAME)
    d.append(P.HEADER.pack(64 * 1024 * 1024 - 1))
    with pytest.raises(ProtocolError, match="exceeds limit 32"):
        d.next_frame()


def test_decoder_limit_changes_between_frames():
    digest, big = b"d" * 32, b"m" * 1000
    d = P.FrameDecoder(P.HANDSHAKE_MAX_FRAME)
    d.append(P.raw_frame(digest) + P.raw_frame(big)[:500])   # auth, then the first batch
    assert d.next_frame() == digest
    d.max_frame = P.DEFAULT_MAX_FRAME                         # authenticated now
    assert d.next_frame() is None
    assert d.buffered == 500
    d.append(P.raw_frame(big)[500:])
    assert d.next_frame() == big and d.buffered == 0


def test_decoder_feed_still_splits_many_frames():
    d = P.FrameDecoder()
    data = b"".join(P.raw_frame(bytes([i]) * i) for i in range(50))
    frames = []
    for i in range(0, len(data), 7):
        frames += d.feed(data[i:i + 7])
    assert frames == [bytes([i]) * i for i in range(50)]


def test_handshake_gate_bounds_pending():
    g = HandshakeGate(limit=2)
    assert g.enter() and g.enter() and not g.enter()
    g.leave()
    assert g.enter() and g.refused == 1


# --- supervisor ---------------------------------------------------------------------------
def test_supervisor_restarts_a_failing_loop_and_gives_up_loudly():
    async def main():
        fatal = []
        sup = Supervisor(logging.getLogger("test"), fatal.append, restart_delay_s=0.001,
                         max_failures=3)
        runs = []

        async def flaky():
            runs.append(1)
            if len(runs) < 3:
                raise ValueError("bad frame")
            await asyncio.sleep(10)

        sup.keep_running("flaky", flaky)
        await asyncio.sleep(0.1)
        assert len(runs) == 3 and sup.restarts["flaky"] == 2 and not fatal

        async def broken():
            raise RuntimeError("always")

        sup.keep_running("broken", broken)
        await asyncio.sleep(0.1)
        assert fatal == ["background task broken keeps failing"]
        await sup.cancel_all()
        assert not sup.tasks

    asyncio.run(main())


def test_supervisor_logs_a_failed_one_shot_task(caplog):
    async def main():
        sup = Supervisor(logging.getLogger("test.sup"), lambda why: None)

        async def boom():
            raise KeyError("x")

        sup.spawn("one-shot", boom())
        await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="test.sup"):
        asyncio.run(main())
    assert "task one-shot failed" in caplog.text


# --- the node's view of the head's rows ---------------------------------------------------
def test_dead_and_unreadable_nodes_never_feed_placement():
    dead = _node_view(b"d", {"state": "DEAD", "resources": {"CPU": "lots"}})
    assert dead is not None and not dead.alive and dead.total.is_empty()
    assert _node_view(b"b", {"state": "ALIVE", "resources": {"CPU": "lots"}}) is None
    alive = _node_view(b"a", {"state": "ALIVE", "resources": {"CPU": 2},
                              "stats": {"resources_available": {"CPU": 1}}})
    assert alive.alive and alive.total.quantity("CPU") == 2


def test_owner_plane_generator_ack_and_cancel_are_checked():
    tid = b"t" * 16
    assert validate.problem([P.GENERATOR_ACK, tid, 3]) is None
    assert validate.problem([P.GENERATOR_ACK, tid, -1]) is None        # stop waiting
    assert "consumed" in validate.problem([P.GENERATOR_ACK, tid, "3"])
    assert "consumed" in validate.problem([P.GENERATOR_ACK, tid, -2])
    assert validate.problem([P.CANCEL_OWNED_TASK, 1, tid, False, True]) is None
    assert "force" in validate.problem([P.CANCEL_OWNED_TASK, 1, tid, "yes", True])
    assert "fields" in validate.problem([P.CANCEL_OWNED_TASK, 1, tid, False])


def test_message_types_are_unique():
    """Two message types with one number: the second handler registered wins
    in every dispatch table, silently (DEVICE_DELETE and CONFIRM_BORROWER
    were both 55: holders never dropped their moved-down device copies)."""
    import re
    seen: dict = {}
    with open(P.__file__) as f:
        for line in f:
            m = re.match(r"^([A-Z_]+) = (\d+)\b", line)
            if m and int(m.group(2)) in validate.SCHEMAS or (m and m.group(1).startswith(
                    ("DEVICE_", "STORE_", "NODE_", "HEAD_"))):
                seen.setdefault(int(m.group(2)), []).append(m.group(1))
    clashes = {n: names for n, names in seen.items()
               if len([x for x in names if not x.endswith("_LEN")
                       and not x.startswith(("DEFAULT_", "MAX_"))]) > 1}
    assert not clashes, clashes


def test_every_message_type_has_a_handler():
    """A message type nobody handles is dead protocol (CANCEL_LEASE_REQUEST
    was defined, never sent and never handled): each type in protocol.py is
    in some dispatch table (``P.X: handler`` or ``dispatch[P.X] = ...``)."""
    import pathlib
    import re
    root = pathlib.Path(P.__file__).parent
    src = "\n".join(p.read_text() for p in root.rglob("*.py"))
    handled = (set(re.findall(r"P\.([A-Z_]+)\s*:", src))
               | set(re.findall(r"(?:dispatch|\bd)\[P\.([A-Z_]+)\]\s*=", src)))
    with open(P.__file__) as f:
        types = [m.group(1) for m in re.finditer(r"^([A-Z_]+) = \d+\b", f.read(), re.M)]
    types = [t for t in types if not t.endswith("_LEN") and t not in ("REPLY", "ERROR")
             and not t.startswith(("DEFAULT_", "MAX_", "HANDSHAKE_"))]
    assert len(types) > 50, types
    assert not [t for t in types if t not in handled]
