"""Wire protocol of the task and control planes (no I/O here).

A frame is a 4-byte big-endian length and a payload. The first two frames of
every connection are the authentication handshake (raw bytes, never decoded
as msgpack or pickle): the server sends a random nonce, the client answers
HMAC-SHA256(cluster token, nonce). After that every frame is a msgpack list
of messages, so that many small messages queued in one event-loop iteration
travel in one write (batching). A message is a list ``[type, *fields]``;
requests carry a request id as their first field and are answered with
``[REPLY, req_id, payload]`` or ``[ERROR, req_id, text]``.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import struct

import msgpack

from .exceptions import ProtocolError

HEADER = struct.Struct(">I")
NONCE_LEN = 32
DIGEST_LEN = 32                        # HMAC-SHA256
# Before authentication a connection may send only the handshake: the nonce
# or the digest, both this small. A peer that announces more is refused at
# once, so an unauthenticated peer can never make us buffer more than this.
HANDSHAKE_MAX_FRAME = max(NONCE_LEN, DIGEST_LEN)
DEFAULT_MAX_FRAME = 64 * 1024 * 1024   # every frame has a size limit
MAX_MESSAGES_PER_FRAME = 4096          # bound on a batch

# --- message types -----------------------------------------------------------
REPLY = 1
ERROR = 2
# process <-> node daemon
REGISTER_WORKER = 10      # req: worker_id, pid, listen_addr, kind
REGISTER_CLIENT = 11      # req: worker_id, pid, listen_addr -> node info
REQUEST_LEASE = 12        # req: resources, is_actor, actor_id -> grant
RETURN_LEASE = 13         # lease_id, worker_died(bool)
WORKER_BLOCKED = 14       # (no reply)
WORKER_UNBLOCKED = 15
STORE_CREATE = 16         # req: oid, size, primary -> offset | error
STORE_SEAL = 17           # req: oid
STORE_ABORT = 18          # oid
STORE_PIN = 19            # req: oid[, reader's GPUs] -> (offset, size) | None; with GPUs:
#                           {"device": export} | {"host": (offset, size) | None, "to_device"}
STORE_UNPIN = 20          # [(oid, count)...]
STORE_FREE = 21           # [oid...]
KILL_WORKER = 22          # req: worker_id, reason
NODE_STATUS = 23          # req -> status dict
NODE_MEMORY = 24          # req -> memory listing of every owner on this node
NODE_PULL = 26            # req: oid, size, source node_id -> pinned (offset, size)
NODE_CLUSTER_VIEW = 27    # req -> [{node_id, addr, data_addr, state, resources, available}]
DETACH_LEASE = 28         # lease_id: a detached actor's worker holds its own lease from now on
# device tier: worker <-> node (device objects live in the worker that made them)
DEVICE_CREATE = 50        # req: oid, device bytes, host bytes, gpu, owner[, restored]
#                           -> {"ok"} | {"fallback": why}
DEVICE_PIN = 51           # req: oid -> True (the caller's device copy is pinned) | False
DEVICE_UNPIN = 52         # [(oid, count)...]
DEVICE_EVACUATE = 53      # req: move every device object of the caller to host -> True
DEVICE_SPILL = 54         # node -> holder, req: oid: write a host copy -> {"ok"} | {"error"}
DEVICE_DELETE = 58        # node -> holder: [oid...]: drop these device copies
DEVICE_EXPORT = 59        # node -> holder, req: oid, shm name: share the device copy with a
#                           reader on the same GPU -> {"shm", "size"} | {"ipc": [...]} | {"error"}
DEVICE_SERVE = 47         # holder -> node: [host, port] of its ucx device listener
#                           (device_transfer.DeviceServer: real GPU, ucx with CUDA)
NODE_DEVICE_SOURCE = 48   # req: oid, node_id holding it -> [host, port] of the holder's
#                           device listener | None (the host path then)
# owner <-> worker (direct task push)
PUSH_TASK = 30            # spec
TASK_DONE = 31            # task_id, status, returns[, seconds the worker spent on it]
CANCEL_TASK = 32          # task_id, force, recursive
EXIT_WORKER = 33          # reason
TASK_YIELD = 34           # task_id, index, entry, nested: a generator task yielded item index
GENERATOR_ACK = 35        # task_id, consumed: the caller took that many items (-1: stop waiting)
# any process <-> owner
CANCEL_OWNED_TASK = 39    # req: task_id, force, recursive -> None | why the cancel is refused
GET_OBJECT = 40           # req: oid, wait -> object status/value/location
ADD_BORROWER = 41         # req: oid, borrower_wid, n[, via_wid, borrower host, port] -> ack
REMOVE_BORROWER = 42      # oid, borrower_wid, n
ACTOR_LOCATION = 43       # req: actor_id[, dead worker_id] -> (addr, worker_id, node_id, restart options) | error
OWNER_MEMORY = 44         # req -> ownership summary of this process
ADD_LOCATION = 45         # oid, node_id (a node pulled a secondary copy)
KILL_ACTOR = 49           # req: actor_id, no_restart -> None once the owner killed it
WORKER_OUTPUT = 46        # [[label, stream, line], ...]: what a task printed
# registrations an executor made for its submitter (ownership.py, "made via an executor")
CONFIRM_BORROWER = 55     # oid, borrower_wid, via_wid: the borrower took it over
SETTLE_BORROWER = 56      # oid, owner_wid, via_wid: via died; answer once you know it
BORROWER_SETTLED = 57     # oid, borrower_wid, via_wid: the answer
# node / driver <-> head (control plane)
HEAD_REGISTER_NODE = 60   # req: node info
HEAD_HEARTBEAT = 61       # node_id, stats
HEAD_LIST_NODES = 62      # req
HEAD_REGISTER_ACTOR = 63  # req: name, namespace, actor_id, owner_wid, owner_addr, meta, detached
HEAD_LOOKUP_ACTOR = 64    # req: name, namespace
HEAD_REMOVE_ACTOR = 65    # req: actor_id (frees its name)
HEAD_STATUS = 66          # req -> cluster status
HEAD_REGISTER_JOB = 67    # req: driver info -> job id
HEAD_SHUTDOWN = 68        # req: stop the cluster (CLI `gdfut stop`)
HEAD_PROCESSES_DIED = 69  # [wid, ...]: a node saw these drivers/workers go
HEAD_DEAD_PROCESSES = 70  # req: since_seq -> [seq, [wid, ...]] died after since_seq
HEAD_PROCESSES_STARTED = 71   # node_id, [wid, ...][, snapshot]: drivers/workers that registered there
HEAD_ACTOR_PLACED = 72    # req: actor_id, worker_wid, worker_addr: a detached actor's worker owns it
HEAD_ACTOR_SPEC = 73      # req: actor_id, worker_wid, worker_addr, node_id, spec: the head restarts it
HEAD_ACTOR_LOCATION = 74  # req: actor_id, dead_worker|None -> [addr, wid, node_id, options] | error
# placement groups (gdfut.util): driver/worker -> head
HEAD_PG_CREATE = 80       # req: pg_id, name, bundles, strategy, detached -> True
HEAD_PG_REMOVE = 81       # req: pg_id -> True
HEAD_PG_WAIT = 82         # req: pg_id, timeout|None -> {"state", "bundle_nodes"} | error if removed
HEAD_PG_TABLE = 83        # req: pg_id|None -> [row, ...]
HEAD_PG_LOOKUP = 84       # req: name -> row | error
# head -> node: two-phase bundle reservation
NODE_PREPARE_BUNDLES = 85   # req: group hex, [[index, resources], ...] -> bool
NODE_COMMIT_BUNDLES = 86    # req: group hex, [index, ...] -> True
NODE_RETURN_BUNDLES = 87    # req: group hex, [index, ...] | None (all) -> True

# Start of the lease-request error a node sends when its workers cannot start
# (the owner then fails the tasks with WorkerCrashedError, not Unschedulable).
WORKERS_FAIL_TO_START = "workers fail to start"
# error text of a lease request refused because the node's bounded queue is full:
# back-pressure, not a verdict on the task; the requester waits and asks again
LEASE_QUEUE_FULL = "lease queue full"


def pack_frame(messages: list) -> bytes:
    payload = msgpack.packb(messages, use_bin_type=True)
    return HEADER.pack(len(payload)) + payload


def raw_frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def unpack_messages(payload: bytes | memoryview) -> list:
    try:
        messages = msgpack.unpackb(payload, raw=False, use_list=True, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated classes
        raise ProtocolError(f"malformed frame: {exc}") from None
    if not isinstance(messages, list) or len(messages) > MAX_MESSAGES_PER_FRAME:
        raise ProtocolError("malformed frame: not a bounded list of messages")
    for m in messages:
        if not isinstance(m, list) or not m or not isinstance(m[0], int):
            raise ProtocolError("malformed frame: message is not [type, ...]")
    return messages


class FrameDecoder:
    """Pure incremental frame splitter with a size limit (h11 style).

    ``max_frame`` may change between frames (the handshake's limit is tiny,
    the one after it large): ``feed`` buffers, ``next_frame`` returns one
    complete frame at a time, checking its length against the limit in force
    when its header is read, so a frame announced over the limit is refused
    before any of its body is buffered.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME):
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as frames."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> list[bytes]:
        """Buffer ``data``; every frame now complete (all under one limit)."""
        self.append(data)
        frames = []
        while (frame := self.next_frame()) is not None:
            frames.append(frame)
        return frames

    def append(self, data: bytes) -> None:
        self._buf += data

    def next_frame(self) -> bytes | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            self._compact()
            return None
        (length,) = HEADER.unpack_from(buf, pos)
        if length > self.max_frame:
            raise ProtocolError(f"frame of {length} bytes exceeds limit {self.max_frame}")
        if len(buf) - pos - 4 < length:
            self._compact()
            return None
        self._pos = pos + 4 + length
        return bytes(buf[pos + 4:self._pos])

    def _compact(self) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0


def new_nonce() -> bytes:
    return os.urandom(NONCE_LEN)


def auth_digest(token: bytes, nonce: bytes) -> bytes:
    return hmac.new(token, nonce, hashlib.sha256).digest()


def check_auth(token: bytes, nonce: bytes, digest: bytes) -> bool:
    return hmac.compare_digest(auth_digest(token, nonce), digest)
