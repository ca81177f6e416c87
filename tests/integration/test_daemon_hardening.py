"""Node daemon and head against buggy or hostile peers, and scheduling on a
fresh cluster view (issue 7, points 2-5 and 9)."""
from __future__ import annotations

import json
import os
import re
import select
import socket
import struct
import subprocess
import sys
import time

import psutil
import pytest

import gdfut
from gdfut import protocol as P, runtime_context
from gdfut.cli import head_request
from gdfut.exceptions import UnschedulableError
from gdfut.testing import Cluster
from gdfut.transport import tcp
from helpers import wait_until
from raw_peer import RawPeer

MIB = 1024 * 1024
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _rt():
    return runtime_context.require()


def _token(session_dir):
    with open(os.path.join(session_dir, "token"), "rb") as f:
        return f.read()


def _status():
    return _rt().node_request(P.NODE_STATUS)


def _head_pid(session_dir):
    with open(os.path.join(session_dir, "head.json")) as f:
        return json.load(f)["pid"]


def _rss(pid):
    """Resident anonymous memory (heap, buffers) of ``pid``: the store's
    shared memory, faulted in as the node runs, is not what we measure."""
    mem = psutil.Process(pid).memory_info()
    return mem.rss - mem.shared


def _all_cpus_free():
    st = _status()
    return st["resources_available"].get("CPU") == st["resources_total"]["CPU"] and \
        st["leases"]["num_leases"] == 0


@gdfut.remote
def one():
    return 1


# --- point 2: nothing but the handshake before authentication ---------------------------
def _flood_with_length_prefix(addr, conns=30, per_conn=4 * MIB, chunk=128 * 1024):
    """``conns`` unauthenticated connections each announce a 64 MiB frame
    where the handshake belongs and trickle bytes of it. Returns how many
    the daemon closed."""
    socks = []
    for _ in range(conns):
        s = socket.create_connection(addr, timeout=5)
        s.recv(4 + P.NONCE_LEN)
        s.sendall(struct.pack(">I", 64 * MIB - 1))
        socks.append(s)
    open_socks = list(socks)
    payload = b"\0" * chunk
    for _ in range(per_conn // chunk):
        for s in list(open_socks):
            try:
                s.sendall(payload)
            except OSError:
                open_socks.remove(s)
    time.sleep(0.5)
    closed = 0
    for s in socks:
        s.settimeout(2)
        try:
            closed += s.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except socket.timeout:
            pass
        s.close()
    return closed


@pytest.mark.parametrize("daemon", ["node", "head"])
def test_unauthenticated_length_prefix_cannot_grow_memory(cluster, daemon):
    if daemon == "node":
        addr, pid = tuple(_rt().node_addr), _status()["pid"]
    else:
        addr, pid = tuple(_rt().head_addr), _head_pid(cluster["session_dir"])
    before = _rss(pid)
    closed = _flood_with_length_prefix(addr)
    growth = _rss(pid) - before
    assert growth < 24 * MIB, f"{daemon} grew {growth / MIB:.0f} MiB"
    assert closed == 30                     # refused at the length prefix, not at the timeout
    assert gdfut.get(one.remote()) == 1


def test_data_plane_accepts_only_the_handshake_before_auth(cluster):
    st = _status()
    before = _rss(st["pid"])
    closed = _flood_with_length_prefix(tuple(st["data_addr"]))
    assert _rss(st["pid"]) - before < 24 * MIB
    assert closed == 30


def _closed_within(socks, seconds):
    """How many of ``socks`` the peer closed within ``seconds`` (read all)."""
    open_socks, closed = list(socks), 0
    deadline = time.monotonic() + seconds
    while open_socks and time.monotonic() < deadline:
        readable, _, _ = select.select(open_socks, [], [], 0.05)
        for s in readable:
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                closed += 1
                open_socks.remove(s)
    return closed


def test_pending_handshakes_are_capped(cluster):
    addr = tuple(_rt().node_addr)
    extra = 40
    socks = [socket.create_connection(addr, timeout=5)
             for _ in range(getattr(tcp, "MAX_PENDING_HANDSHAKES", 256) + extra)]
    try:
        # well before the 10 s authentication timeout
        assert _closed_within(socks, 2.0) >= extra
    finally:
        for s in socks:
            s.close()
    assert gdfut.get(one.remote()) == 1     # the cap holds only while they are pending


# --- point 3: a closed connection releases everything it held ---------------------------
def test_lease_request_without_registering_is_refused_and_nothing_is_held(cluster):
    p = RawPeer(_rt().node_addr, _token(cluster["session_dir"]))
    kind, text = p.request(P.REQUEST_LEASE, {"CPU": 1}, False, None, {})
    p.close()
    assert kind == P.ERROR and "not registered" in text
    wait_until(_all_cpus_free, timeout=10, what="all CPUs free")


def test_reregistering_under_another_id_is_refused_and_close_frees_the_lease(cluster):
    p = RawPeer(_rt().node_addr, _token(cluster["session_dir"]))
    assert p.register_client()[0] == P.REPLY
    kind, grant = p.request(P.REQUEST_LEASE, {"CPU": 1}, False, None, {})
    assert kind == P.REPLY and "lease_id" in grant
    kind, text = p.register_client(os.urandom(16))
    assert kind == P.ERROR and "registered" in text
    p.close()
    wait_until(_all_cpus_free, timeout=10, what="the lease to be released")


def test_store_space_of_a_closed_connection_is_released(cluster):
    token = _token(cluster["session_dir"])
    baseline = _status()["store"]["used_bytes"]
    unregistered = RawPeer(_rt().node_addr, token)
    kind, text = unregistered.request(P.STORE_CREATE, os.urandom(20), 8 * MIB, True,
                                      os.urandom(16))
    assert kind == P.ERROR and "not registered" in text
    unregistered.close()
    registered = RawPeer(_rt().node_addr, token)
    registered.register_client()
    kind, reply = registered.request(P.STORE_CREATE, os.urandom(20), 8 * MIB, True, registered.wid)
    assert kind == P.REPLY and "offset" in reply
    assert _status()["store"]["used_bytes"] >= baseline + 8 * MIB
    registered.close()
    wait_until(lambda: _status()["store"]["used_bytes"] == baseline, timeout=10,
               what="store space back to baseline")


def test_returning_another_clients_lease_is_ignored(cluster):
    @gdfut.remote(num_cpus=1)
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    c = Counter.remote()
    assert gdfut.get(c.inc.remote()) == 1
    p = RawPeer(_rt().node_addr, _token(cluster["session_dir"]))
    p.register_client()
    for lease_id in range(1, 200):
        p.send([P.RETURN_LEASE, lease_id, True])
    assert p.request(P.NODE_STATUS)[0] == P.REPLY     # all of them were handled
    p.close()
    assert gdfut.get(c.inc.remote(), timeout=30) == 2


# --- point 4: every message is validated before it touches state ------------------------
def test_malformed_messages_get_error_replies_and_the_connection_lives(cluster):
    p = RawPeer(_rt().node_addr, _token(cluster["session_dir"]))
    p.register_client()
    kind, text = p.request(P.REQUEST_LEASE, {"CPU": "lots"}, False, None, {})
    assert kind == P.ERROR and "resources" in text and "must be a number" in text
    kind, text = p.request(P.STORE_CREATE, "not-bytes", -1, True, p.wid)
    assert kind == P.ERROR and "object_id must be bytes" in text
    kind, text = p.request(P.STORE_PIN)                  # too few fields
    assert kind == P.ERROR and "fields" in text
    p.send([P.REPLY], [P.ERROR, [1], 2], [P.STORE_UNPIN, [[b"x", -5]]], [P.STORE_FREE, "x"])
    kind, st = p.request(P.NODE_STATUS)                  # same connection still served
    assert kind == P.REPLY and st["resources_total"]["CPU"] == 2
    p.close()
    assert gdfut.get(one.remote()) == 1


def _fake_node_info(node_id, resources):
    return {"node_id": node_id, "addr": ["127.0.0.1", 1], "resources": resources,
            "pid": 1, "data_addr": None, "transport": "tcp"}


def _node_state(head_addr, token, node_id):
    for n in head_request(head_addr, token, P.HEAD_LIST_NODES):
        if n["node_id"] == node_id:
            return n["state"]
    return None


def test_bad_frame_does_not_kill_the_heads_failure_detector(monkeypatch):
    monkeypatch.setenv("GDFUT_NODE_DEAD_AFTER_S", "1.5")
    with Cluster() as c:
        x, y = os.urandom(16), os.urandom(16)
        px, py = RawPeer(c.head_addr, c.token), RawPeer(c.head_addr, c.token)
        try:
            assert px.request(P.HEAD_REGISTER_NODE, _fake_node_info(x, {"fake": 1}))[0] == P.REPLY
            # ids of mixed types: once made mark_node raise inside the watcher
            px.send([P.HEAD_PROCESSES_STARTED, x, [1, b"w"]])
            assert py.request(P.HEAD_REGISTER_NODE, _fake_node_info(y, {"fake": 1}))[0] == P.REPLY
            # neither heartbeats: both must be declared dead, x first
            wait_until(lambda: _node_state(c.head_addr, c.token, y) == "DEAD", timeout=10,
                       what="the silent node to be declared dead")
            assert _node_state(c.head_addr, c.token, x) == "DEAD"
        finally:
            px.close()
            py.close()


@pytest.mark.parametrize("resources", [{"CPU": "lots"}, {"CPU": 1e-9}, {"GPU": 1.5},
                                       {"CPU": float("nan")}])
def test_bad_node_registration_is_refused(resources):
    with Cluster() as c:
        c.add_node(num_cpus=1)
        c.connect()
        p = RawPeer(c.head_addr, c.token)
        kind, text = p.request(P.HEAD_REGISTER_NODE, _fake_node_info(os.urandom(16), resources))
        p.close()                       # and the row (if any) is dead from now on
        assert kind == P.ERROR and ("HEAD_REGISTER_NODE" in text or "registration" in text), text
        time.sleep(1.5)                 # the node's next view of the cluster
        assert gdfut.get(one.remote(), timeout=30) == 1


# --- point 9: unschedulable only on a fresh view ------------------------------------
def test_task_for_a_node_that_just_registered_is_scheduled():
    with Cluster() as c:
        c.add_node(num_cpus=1)
        c.connect()
        node_b = c.add_node(num_cpus=1, resources={"nodeB": 1}, wait=False)
        wait_until(lambda: any(n["node_id"].hex() == node_b.node_id for n in c.alive_nodes()),
                   timeout=20, interval=0.005, what="node B to register")

        @gdfut.remote(resources={"nodeB": 1})
        def where():
            return gdfut.get_runtime_context().get_node_id()

        assert gdfut.get(where.remote(), timeout=30) == node_b.node_id


def test_unschedulable_still_fails_fast(cluster):
    from gdfut import node
    time.sleep(getattr(node, "INFEASIBLE_GRACE_S", 3.0))   # past the node's start-up grace

    @gdfut.remote(resources={"no_such_resource": 1})
    def never():
        return 0

    t0 = time.monotonic()
    with pytest.raises(UnschedulableError, match="no_such_resource"):
        gdfut.get(never.remote(), timeout=30)
    assert time.monotonic() - t0 < 5


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gdfut.cli", *args], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=90)


DRIVER = """
import sys, gdfut
gdfut.init(address=sys.argv[1], session_dir=sys.argv[2])
@gdfut.remote(resources={"nodeB": 1})
def f():
    return "ran"
print(gdfut.get(f.remote(), timeout=30))
"""


def test_cli_start_address_returns_once_the_node_is_registered():
    head = _cli("start", "--head", "--num-cpus", "1", "--object-store-memory", str(64 * MIB))
    session = re.search(r"session dir:\s+(\S+)", head.stdout)
    assert head.returncode == 0 and session, head.stdout + head.stderr
    session = session.group(1)
    try:
        address = re.search(r"gdfut head started at (\S+)", head.stdout).group(1)
        joined = _cli("start", "--address", address, "--session-dir", session, "--num-cpus", "1",
                      "--object-store-memory", str(64 * MIB), "--resources", '{"nodeB": 1}')
        assert joined.returncode == 0, joined.stderr
        host, port = address.rsplit(":", 1)
        nodes = head_request((host, int(port)), _token(session), P.HEAD_LIST_NODES)
        assert sum(n["state"] == "ALIVE" for n in nodes) == 2
        driver = subprocess.run([sys.executable, "-c", DRIVER, address, session], cwd=REPO,
                                capture_output=True, text=True, timeout=90)
        assert driver.returncode == 0 and driver.stdout.strip() == "ran", driver.stderr
    finally:
        _cli("stop", "--session-dir", session)


def test_full_lease_queue_is_back_pressure_not_a_task_failure(monkeypatch):
    """A node whose bounded lease queue is full refuses more requests; the
    requester waits and asks again instead of failing its tasks."""
    monkeypatch.setenv("GDFUT_MAX_LEASE_QUEUE", "1")
    with Cluster() as c:
        c.add_node(num_cpus=1)
        c.connect()

        @gdfut.remote
        def slow(i):
            time.sleep(0.2)
            return i

        # several shapes, so the driver has several lease requests out at once
        refs = [slow.options(num_cpus=cpus).remote(i)
                for i, cpus in enumerate([1, 0.5, 0.25, 0.75] * 3)]
        assert gdfut.get(refs, timeout=60) == list(range(12))
