"""Seeded, bounded protocol fuzzing of the head and a node daemon while a
driver runs tasks (issue 7, "Done when").

A few thousand frames: unauthenticated garbage, huge length prefixes,
truncated handshakes, half-open connections, and authenticated sessions
(registered or not) sending valid message types with mutated fields,
truncated and oversized frames. Afterwards every daemon still serves, no
lease or store space is stranded, and daemon memory stayed bounded.
``GDFUT_FUZZ_SEED`` and ``GDFUT_FUZZ_FRAMES`` reproduce or widen a run.
"""
from __future__ import annotations

import copy
import json
import os
import random
import socket
import struct
import time

import msgpack
import psutil

import gdfut
from gdfut import protocol as P, runtime_context, validate
from gdfut.cli import head_request
from gdfut.testing import Cluster
from helpers import wait_until

SEED = int(os.environ.get("GDFUT_FUZZ_SEED", "20260507"))
FRAMES = int(os.environ.get("GDFUT_FUZZ_FRAMES", "3000"))
BATCH_FRAMES = 250                 # driver tasks run between batches
# Fuzzing stops after this long even if FRAMES were not all sent (a run
# takes ~5-30 s here, by load), so a regression shows as a failed check, not a
# pytest timeout; the checks after it still require every daemon to serve.
FUZZ_BUDGET_S = float(os.environ.get("GDFUT_FUZZ_BUDGET_S", "60"))
MIB = 1024 * 1024
MAX_GROWTH = 64 * MIB              # anonymous memory a daemon may gain over the run
ALL_TYPES = [v for k, v in vars(P).items() if k.isupper() and isinstance(v, int)
             and k not in ("NONCE_LEN", "DIGEST_LEN", "HANDSHAKE_MAX_FRAME",
                           "DEFAULT_MAX_FRAME", "MAX_MESSAGES_PER_FRAME")]
FUZZ_RESOURCES = {"fuzz_only": 1}  # what a fuzzed node registration may declare


def anon_bytes(pid):
    mem = psutil.Process(pid).memory_info()
    return mem.rss - mem.shared


class Fuzzer:
    def __init__(self, rng: random.Random, token: bytes):
        self.rng = rng
        self.token = token
        self.frames = 0
        self.half_open: list[socket.socket] = []

    # --- random values ---------------------------------------------------------------
    def value(self, depth=0):
        r = self.rng
        kind = r.randrange(12 if depth < 2 else 9)
        if kind == 0:
            return None
        if kind == 1:
            return r.random() < 0.5
        if kind == 2:
            return r.randint(-3, 70000)
        if kind == 3:
            return r.choice([-2 ** 63, 2 ** 63 - 1, 2 ** 64 - 1, -1, 0, 1 << 40])
        if kind == 4:
            return r.choice([float("nan"), float("inf"), -0.0, 1e-9, 1e300, 0.5])
        if kind == 5:
            return "".join(r.choice("abcCPUGPU_ \u00e9\0") for _ in range(r.choice([0, 3, 40, 3000])))
        if kind in (6, 7, 8):
            return os.urandom(r.choice([0, 1, 16, 20, 16, 20, 100, 70000]))
        if kind in (9, 10):
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice(["CPU", "GPU", "x", "node_id", "addr", "resources", "strategy"]):
                self.value(depth + 1) for _ in range(r.randrange(4))}

    def mutate(self, m: list) -> list:
        r, m = self.rng, copy.deepcopy(m)
        op = r.random()
        if op < 0.35 and len(m) > 1:
            m[r.randrange(1, len(m))] = self.value()
        elif op < 0.45 and len(m) > 1:
            m.pop()
        elif op < 0.55:
            m.append(self.value())
        elif op < 0.65:
            m[0] = r.choice(ALL_TYPES + [-1, 0, 255, 2 ** 40])
        elif op < 0.8:
            containers = [f for f in m[1:] if isinstance(f, (list, dict)) and f]
            if containers:
                c = r.choice(containers)
                key = r.randrange(len(c)) if isinstance(c, list) else r.choice(list(c))
                c[key] = self.value()
        return self.sanitize(m)

    def sanitize(self, m: list) -> list:
        """Keep fuzzing from issuing legitimate commands whose effect is the
        point of the command: stopping the cluster, or registering a node that
        could take the driver's CPU tasks, or store space owned by a stranger."""
        if m[0] == P.HEAD_SHUTDOWN:
            m[0] = P.HEAD_STATUS
        if isinstance(m[0], int) and validate.problem(m) is None:
            if m[0] == P.HEAD_REGISTER_NODE:
                m[2]["resources"] = dict(FUZZ_RESOURCES)
            elif m[0] == P.HEAD_HEARTBEAT:
                for key in ("resources_total", "resources_available"):
                    if key in m[2]:
                        m[2][key] = dict(FUZZ_RESOURCES)
            elif m[0] == P.STORE_CREATE:
                m[5] = self.wid
        return m

    # --- message templates --------------------------------------------------------------
    def node_messages(self, rid):
        r = self.rng
        oid = r.choice(self.oids) if self.oids and r.random() < 0.7 else os.urandom(20)
        new_oid = os.urandom(20)
        self.oids.append(new_oid)
        weighted = [
            (4, [P.REGISTER_CLIENT, rid, self.wid, 4242, ["127.0.0.1", 9], "driver"]),
            (1, [P.REGISTER_WORKER, rid, os.urandom(16), 1, ["127.0.0.1", 9], "worker"]),
            (2, [P.REQUEST_LEASE, rid, {"CPU": r.choice([0.5, 1, 2])}, False, None, {}]),
            (1, [P.REQUEST_LEASE, rid, {"CPU": 1, "fuzz_missing": 1}, False, None, {}]),
            (1, [P.REQUEST_LEASE, rid, {"CPU": 1}, False, None,
                 {"strategy": ["AFFINITY", os.urandom(16), r.random() < 0.5]}]),
            (1, [P.REQUEST_LEASE, rid, {}, True, os.urandom(16), {"strategy": "SPREAD"}]),
            (3, [P.RETURN_LEASE, r.randint(0, 40), r.random() < 0.5]),
            (2, [P.WORKER_BLOCKED]), (2, [P.WORKER_UNBLOCKED]),
            (4, [P.STORE_CREATE, rid, new_oid, r.choice([0, 100, 1 << 20, 8 << 20, 1 << 62]),
                 r.random() < 0.5, self.wid]),
            (3, [P.STORE_SEAL, rid, oid]), (2, [P.STORE_ABORT, oid]),
            (3, [P.STORE_PIN, rid, oid]), (2, [P.STORE_UNPIN, [[oid, r.randint(1, 3)]]]),
            (2, [P.STORE_FREE, [oid]]),
            (2, [P.KILL_WORKER, r.choice([0, rid]), os.urandom(16), "fuzz"]),
            (3, [P.NODE_STATUS, rid]), (1, [P.NODE_MEMORY, rid]), (2, [P.NODE_CLUSTER_VIEW, rid]),
            (1, [P.NODE_PULL, rid, oid, 100, os.urandom(16)]),
            (1, [P.DETACH_LEASE, r.randint(0, 5)]),
            (2, [P.REPLY, rid, None]), (2, [P.ERROR, rid, "fuzz"]),
            (2, [r.randint(-5, 300), rid, self.value()]),
        ]
        return weighted

    def head_messages(self, rid):
        r = self.rng
        info = {"node_id": self.fake_node, "addr": ["127.0.0.1", 9], "resources": FUZZ_RESOURCES,
                "pid": 1, "data_addr": None, "transport": "tcp"}
        name = r.choice(["a", "b", "fuzz-actor", "x" * 2000])
        return [
            (3, [P.HEAD_REGISTER_NODE, rid, info]),
            (4, [P.HEAD_HEARTBEAT, self.fake_node, {"resources_total": FUZZ_RESOURCES,
                                                   "leases": {"queued_requests": 0}}]),
            (3, [P.HEAD_PROCESSES_STARTED, self.fake_node, [os.urandom(16)]]),
            (2, [P.HEAD_PROCESSES_DIED, [os.urandom(16)]]),
            (2, [P.HEAD_DEAD_PROCESSES, rid, r.randint(0, 10)]),
            (3, [P.HEAD_LIST_NODES, rid]), (2, [P.HEAD_STATUS, rid]),
            (2, [P.HEAD_REGISTER_ACTOR, rid, name, r.choice(["ns", "fuzz"]), os.urandom(16),
                 self.wid, ["127.0.0.1", 9], {"class_name": "F"}, r.random() < 0.5]),
            (2, [P.HEAD_LOOKUP_ACTOR, rid, name, "ns"]), (2, [P.HEAD_REMOVE_ACTOR, os.urandom(16)]),
            (1, [P.HEAD_ACTOR_PLACED, rid, os.urandom(16), os.urandom(16), ["127.0.0.1", 9]]),
            (1, [P.HEAD_PROCESSES_STARTED, self.fake_node, [os.urandom(16)], True]),
            (1, [P.HEAD_REGISTER_JOB, rid, {"pid": 1}]),
            (2, [P.REPLY, rid, None]), (2, [r.randint(-5, 300), rid, self.value()]),
        ]

    def pick(self, weighted):
        total = sum(w for w, _ in weighted)
        x = self.rng.uniform(0, total)
        for w, m in weighted:
            x -= w
            if x <= 0:
                return m
        return weighted[-1][1]

    # --- sessions -----------------------------------------------------------------------
    def _connect(self, addr):
        s = socket.create_connection(addr, timeout=5)
        s.settimeout(5)
        return s

    def _nonce(self, s):
        data = b""
        while len(data) < 4 + P.NONCE_LEN:
            chunk = s.recv(4 + P.NONCE_LEN - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data[4:]

    def _send(self, s, data):
        self.frames += 1
        s.sendall(data)

    def unauthenticated(self, addr):
        r = self.rng
        s = self._connect(addr)
        try:
            nonce = self._nonce(s)
            kind = r.randrange(6)
            if kind == 0:
                self._send(s, os.urandom(r.randrange(1, 300)))
            elif kind == 1:
                self._send(s, struct.pack(">I", r.choice([33, 1 << 20, 64 * MIB - 1, 2 ** 32 - 1]))
                           + os.urandom(r.randrange(0, 4096)))
            elif kind == 2:
                self._send(s, P.raw_frame(P.auth_digest(self.token, nonce))[:r.randrange(1, 36)])
            elif kind == 3:
                self._send(s, P.raw_frame(P.auth_digest(b"wrong token", nonce)))
            elif kind == 4:
                self._send(s, P.pack_frame([[P.NODE_STATUS, 1]]))
            else:
                self.frames += 1
                if len(self.half_open) < 60:      # half-open: says nothing, stays
                    self.half_open.append(s)
                    return
        except OSError:
            pass
        s.close()

    def authenticated(self, addr, target: str):
        r = self.rng
        self.wid, self.oids, self.fake_node = os.urandom(16), [], os.urandom(16)
        register = r.random() < 0.6
        s = self._connect(addr)
        try:
            nonce = self._nonce(s)
            self._send(s, P.raw_frame(P.auth_digest(self.token, nonce)))
            rid = 1
            if register and target == "node":
                self._send(s, P.pack_frame([[P.REGISTER_CLIENT, rid, self.wid, 4242,
                                             ["127.0.0.1", 9], "driver"]]))
            for _ in range(r.randrange(3, 30)):
                batch = []
                for _ in range(r.randrange(1, 5)):
                    rid += 1
                    templates = (self.node_messages(rid) if target == "node"
                                 else self.head_messages(rid))
                    m = self.pick(templates)
                    batch.append(self.mutate(m) if r.random() < 0.7 else self.sanitize(m))
                try:
                    frame = P.pack_frame(batch)
                except (TypeError, ValueError, OverflowError):
                    continue
                if r.random() < 0.05:            # not msgpack, or not a list of messages
                    frame = P.raw_frame(r.choice([os.urandom(20), msgpack.packb({"a": 1}),
                                                  msgpack.packb([1, 2]), b"\xc1"]))
                self._send(s, frame)
                self._drain(s)
            end = r.randrange(4)
            if end == 0:                          # truncated frame, then close
                self._send(s, P.pack_frame([[P.NODE_STATUS, 99]])[:-2])
            elif end == 1:                        # over the frame limit
                self._send(s, struct.pack(">I", P.DEFAULT_MAX_FRAME + 1))
        except OSError:
            pass
        s.close()

    @staticmethod
    def _drain(s):
        s.setblocking(False)
        try:
            while s.recv(1 << 20):
                pass
        except (BlockingIOError, OSError):
            pass
        finally:
            s.setblocking(True)
            s.settimeout(5)

    def close(self):
        for s in self.half_open:
            s.close()
        self.half_open.clear()


@gdfut.remote
def square(x):
    return x * x


def run_tasks(n=8):
    assert gdfut.get([square.remote(i) for i in range(n)], timeout=60) == \
        [i * i for i in range(n)]


def node_status():
    return runtime_context.require().node_request(P.NODE_STATUS)


def nothing_held(baseline_used):
    st = node_status()
    return (st["resources_available"].get("CPU") == st["resources_total"]["CPU"]
            and st["leases"]["num_leases"] == 0 and st["leases"]["queued_requests"] == 0
            and st["store"]["used_bytes"] == baseline_used)


def test_fuzz_head_and_node_keep_serving_and_strand_nothing():
    rng = random.Random(SEED)
    with Cluster() as c:
        node = c.add_node(num_cpus=2)
        c.connect()
        head_addr, node_addr = c.head_addr, ("127.0.0.1", node.info["port"])
        with open(os.path.join(c.session_dir, "head.json")) as f:
            head_pid = json.load(f)["pid"]
        run_tasks()
        wait_until(lambda: nothing_held(node_status()["store"]["used_bytes"]), timeout=30,
                   what="the driver's leases to go back before the baseline")
        baseline_used = node_status()["store"]["used_bytes"]
        before = {"head": anon_bytes(head_pid), "node": anon_bytes(node.pid)}
        peak = dict(before)
        fuzz = Fuzzer(rng, c.token)
        t0 = time.monotonic()
        try:
            while fuzz.frames < FRAMES and time.monotonic() - t0 < FUZZ_BUDGET_S:
                target = rng.choice(["head", "node"])
                start = fuzz.frames
                while (fuzz.frames - start < BATCH_FRAMES
                       and time.monotonic() - t0 < FUZZ_BUDGET_S):
                    addr = head_addr if target == "head" else node_addr
                    if rng.random() < 0.35:
                        fuzz.unauthenticated(addr)
                    else:
                        fuzz.authenticated(addr, target)
                run_tasks()                       # the driver is served meanwhile
                for name, pid in (("head", head_pid), ("node", node.pid)):
                    peak[name] = max(peak[name], anon_bytes(pid))
        finally:
            fuzz.close()
        elapsed = time.monotonic() - t0
        print(f"fuzz: seed {SEED}, {fuzz.frames} frames in {elapsed:.1f} s; anon memory "
              f"head {before['head'] / MIB:.0f}->{peak['head'] / MIB:.0f} MiB, "
              f"node {before['node'] / MIB:.0f}->{peak['node'] / MIB:.0f} MiB")

        # every daemon still serves: the same processes, the driver's tasks complete
        assert psutil.pid_exists(head_pid) and node.daemon.popen.poll() is None
        run_tasks(16)
        nodes = head_request(head_addr, c.token, P.HEAD_LIST_NODES)
        real = [n for n in nodes if n["node_id"].hex() == node.node_id]
        assert real and real[0]["state"] == "ALIVE"
        assert all(n["state"] == "DEAD" for n in nodes if n is not real[0]), \
            "a fuzzed node registration outlived its connection"
        # nothing stranded: all CPUs free, no lease or request, store back to baseline
        wait_until(lambda: nothing_held(baseline_used), timeout=30,
                   what="every lease and byte of store space to be released")
        for name in ("head", "node"):
            assert peak[name] - before[name] < MAX_GROWTH, \
                f"{name} grew {(peak[name] - before[name]) / MIB:.0f} MiB"
