"""A task's return written again on a node that has a copy already (issue 9,
chaos): a retry whose last attempt died after writing it and before its
reply, or a rebuild placed where a reader had pulled a copy of the lost
primary. Found by the chaos map-reduce: such creates failed with "exists
already" (reported as ObjectStoreFullError) and the task failed."""
import os

import pytest

from gdfut import protocol as P, runtime_context
from helpers import node_status
from raw_peer import RawPeer

SIZE = 4096


def token(session_dir):
    with open(os.path.join(session_dir, "token"), "rb") as f:
        return f.read()


@pytest.fixture
def peers(cluster):
    made = []

    def peer():
        p = RawPeer(runtime_context.require().node_addr, token(cluster["session_dir"]))
        assert p.register_client()[0] == P.REPLY
        made.append(p)
        return p
    yield peer
    for p in made:
        p.sock.close()


def owner():
    return runtime_context.require().wid       # the driver: closing peers frees nothing


def create(p, oid, size=SIZE):
    return p.request(P.STORE_CREATE, oid, size, True, owner())


def store_objects():
    return {o["object_id"]: o for o in node_status()["store"].get("objects", [])}


def test_sealed_copy_of_a_dead_attempt_is_used(peers):
    first, retry = peers(), peers()
    oid = os.urandom(20)
    kind, reply = create(first, oid)
    assert kind == P.REPLY and "offset" in reply
    assert first.request(P.STORE_SEAL, oid) == (P.REPLY, True)
    first.sock.close()                              # the attempt died before its reply
    assert create(retry, oid) == (P.REPLY, {"exists": True})
    assert retry.request(P.STORE_PIN, oid)[0] == P.REPLY     # readable where it was
    retry.send([P.STORE_UNPIN, [[oid, 1]]])
    retry.send([P.STORE_FREE, [oid]])


def test_unfinished_copy_of_an_attempt_not_yet_seen_dead_is_dropped(peers):
    first, retry = peers(), peers()
    oid = os.urandom(20)
    assert "offset" in create(first, oid)[1]        # never sealed; its close not seen yet
    kind, reply = create(retry, oid)
    assert kind == P.REPLY and "offset" in reply, reply
    assert retry.request(P.STORE_SEAL, oid) == (P.REPLY, True)
    assert first.request(P.STORE_SEAL, oid) == (P.REPLY, False)   # the old writer's is gone
    retry.send([P.STORE_FREE, [oid]])


def test_copy_of_another_size_is_replaced_unless_pinned(peers):
    first, retry, reader = peers(), peers(), peers()
    oid = os.urandom(20)
    create(first, oid)
    first.request(P.STORE_SEAL, oid)
    assert reader.request(P.STORE_PIN, oid)[0] == P.REPLY
    kind, reply = create(retry, oid, 2 * SIZE)     # pinned: left alone, the create fails
    assert kind == P.REPLY and reply.get("error") == "full" and "exists" in reply["message"]
    reader.send([P.STORE_UNPIN, [[oid, 1]]])
    reader.request(P.NODE_STATUS)                   # the unpin was handled
    kind, reply = create(retry, oid, 2 * SIZE)
    assert kind == P.REPLY and "offset" in reply, reply
    assert retry.request(P.STORE_SEAL, oid) == (P.REPLY, True)
    retry.send([P.STORE_FREE, [oid]])
