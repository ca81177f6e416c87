"""TCP backend of the task/control planes: authenticated, framed, batched.

``send`` only queues; the queue is flushed once per event-loop iteration into
a single ``transport.write`` so bursts of small messages cost one syscall.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket

from .. import protocol as P
from ..exceptions import AuthenticationError, ProtocolError

log = logging.getLogger("gdfut.transport")

MAX_PENDING_MESSAGES = 1_000_000   # bound on the unsent queue of one connection
AUTH_TIMEOUT_S = 10.0
MAX_PENDING_HANDSHAKES = 256       # unauthenticated connections per listener at once
# Linux TCP states (include/net/tcp_states.h) in which the peer has closed:
# CLOSE (after a reset) and CLOSE_WAIT (its FIN arrived).
_PEER_CLOSED_STATES = (7, 8)


class HandshakeGate:
    """Bound on the connections of one listener that have not authenticated
    yet: beyond it a new connection is closed at once (an unauthenticated
    peer must not be able to hold unbounded sockets and buffers)."""

    def __init__(self, limit: int = MAX_PENDING_HANDSHAKES):
        assert limit > 0
        self.limit = limit
        self.pending = 0
        self.refused = 0

    def enter(self) -> bool:
        if self.pending >= self.limit:
            self.refused += 1
            return False
        self.pending += 1
        return True

    def leave(self) -> None:
        self.pending -= 1
        assert self.pending >= 0


class ConnectionLost(ConnectionError):
    pass


class FramedConnection(asyncio.Protocol):
    """One authenticated connection. ``handler`` gets decoded message lists."""

    def __init__(self, handler, token: bytes, server_side: bool,
                 max_frame: int = P.DEFAULT_MAX_FRAME, gate: HandshakeGate | None = None):
        self.handler = handler
        self.token = token
        self.server_side = server_side
        self.peer: dict = {}
        self.authenticated = asyncio.get_running_loop().create_future()
        self.max_frame = max_frame
        # until the handshake is done only its few bytes are accepted
        self._decoder = P.FrameDecoder(P.HANDSHAKE_MAX_FRAME)
        self._gate = gate
        self._in_gate = False
        self._transport: asyncio.Transport | None = None
        self._nonce: bytes | None = None
        self._pending: list = []
        self._flush_scheduled = False
        self._req_ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._tcp_sock = None       # for peer_closed(), where TCP_INFO is known

    # --- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport):
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if hasattr(socket, "TCP_INFO"):
                self._tcp_sock = sock
        if self.server_side:
            if self._gate is not None:
                if not self._gate.enter():
                    if self._gate.refused % 100 == 1:   # a flood must not flood the log
                        log.warning("refusing connection from %s: %d handshakes pending "
                                    "(%d refused so far)", self._peername(),
                                    self._gate.pending, self._gate.refused)
                    self._abort(AuthenticationError("too many pending handshakes"))
                    return
                self._in_gate = True
            self._nonce = P.new_nonce()
            transport.write(P.raw_frame(self._nonce))
            self._loop.call_later(AUTH_TIMEOUT_S, self._auth_deadline)

    def data_received(self, data):
        if self._closed:
            return
        decoder = self._decoder
        try:
            decoder.append(data)
            while (frame := decoder.next_frame()) is not None:
                if self._closed:
                    return
                if not self.authenticated.done():
                    self._handshake(frame)
                    decoder.max_frame = self.max_frame
                else:
                    self.handler.on_messages(self, P.unpack_messages(frame))
        except (ProtocolError, AuthenticationError) as exc:
            log.warning("closing connection from %s: %s", self._peername(), exc)
            self._abort(exc)

    def _leave_gate(self):
        if self._in_gate:
            self._in_gate = False
            self._gate.leave()

    def connection_lost(self, exc):
        self._closed = True
        self._leave_gate()
        if not self.authenticated.done():
            self.authenticated.set_exception(ConnectionLost("closed before authentication"))
            self.authenticated.exception()  # mark retrieved
        err = ConnectionLost(f"connection to {self.peer or self._peername()} lost")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
        if self.authenticated.done() and self.authenticated.exception() is None:
            self.handler.on_closed(self, exc)

    # --- handshake ----------------------------------------------------------
    def _handshake(self, frame: bytes):
        if self.server_side:
            if not P.check_auth(self.token, self._nonce, frame):
                raise AuthenticationError("bad cluster token")
            self._leave_gate()
            self.authenticated.set_result(True)
        else:
            if len(frame) != P.NONCE_LEN:
                raise AuthenticationError("server sent no valid nonce")
            self._transport.write(P.raw_frame(P.auth_digest(self.token, frame)))
            self.authenticated.set_result(True)
            self._schedule_flush()

    def _auth_deadline(self):
        if not self.authenticated.done() and not self._closed:
            log.warning("closing unauthenticated connection from %s (timeout)",
                        self._peername())
            self._abort(AuthenticationError("authentication timeout"))

    # --- sending ---------------------------------------------------------------
    def send(self, message: list) -> None:
        if self._closed:
            raise ConnectionLost(f"connection to {self.peer or self._peername()} is closed")
        if len(self._pending) >= MAX_PENDING_MESSAGES:
            raise ProtocolError("send queue full: peer is not reading")
        self._pending.append(message)
        self._schedule_flush()

    def _schedule_flush(self):
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self):
        self._flush_scheduled = False
        if self._closed or not self._pending or not self.authenticated.done():
            return
        pending, self._pending = self._pending, []
        try:
            chunks = [P.pack_frame(pending[i:i + P.MAX_MESSAGES_PER_FRAME])
                      for i in range(0, len(pending), P.MAX_MESSAGES_PER_FRAME)]
        except (TypeError, ValueError, OverflowError):
            chunks = self._pack_one_by_one(pending)
        if chunks:
            self._transport.write(b"".join(chunks) if len(chunks) > 1 else chunks[0])

    def _pack_one_by_one(self, pending):
        """A message that cannot be packed is a bug in its sender: log it and
        drop only that message, never the rest of the batch."""
        chunks = []
        for message in pending:
            try:
                chunks.append(P.pack_frame([message]))
            except (TypeError, ValueError, OverflowError) as exc:
                log.error("dropping unpackable message type %s: %s", message[0], exc)
                if message[0] == P.REPLY and len(message) > 1:
                    chunks.append(P.pack_frame([[P.ERROR, message[1],
                                                 f"reply could not be encoded: {exc}"]]))
        return chunks

    def request(self, mtype: int, *fields) -> asyncio.Future:
        req_id = next(self._req_ids)
        fut = self._loop.create_future()
        self._waiting[req_id] = fut
        self.send([mtype, req_id, *fields])
        return fut

    def resolve_reply(self, message: list) -> bool:
        """Handle REPLY/ERROR messages; True if the message was one."""
        kind = message[0]
        if kind != P.REPLY and kind != P.ERROR:
            return False
        if len(message) != 3 or type(message[1]) is not int or (
                kind == P.ERROR and not isinstance(message[2], str)):
            log.warning("dropping malformed reply from %s", self._peername())
            return True
        fut = self._waiting.pop(message[1], None)
        if fut is not None and not fut.done():
            if kind == P.REPLY:
                fut.set_result(message[2])
            else:
                fut.set_exception(RemoteError(message[2]))
        return True

    def reply(self, req_id: int, payload) -> None:
        if not self._closed:
            self.send([P.REPLY, req_id, payload])

    def reply_error(self, req_id: int, text: str) -> None:
        if not self._closed:
            self.send([P.ERROR, req_id, text])

    # --- closing ---------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def peer_closed(self) -> bool:
        """The peer has closed, though this loop may not have read that yet
        (the kernel holds its FIN or reset): one getsockopt. Lets a caller
        tell a message it would send to a process already dead from one the
        process may have received. False where the kernel does not say."""
        if self._closed:
            return True
        if self._tcp_sock is None:
            return False
        try:
            info = self._tcp_sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        except OSError:
            return True
        return info[0] in _PEER_CLOSED_STATES

    def close(self):
        if not self._closed:
            self._flush()
            self._closed = True
            if self._transport is not None:
                self._transport.close()

    def _abort(self, exc):
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def _peername(self):
        if self._transport is None:
            return "?"
        return self._transport.get_extra_info("peername")


class RemoteError(Exception):
    """The peer answered a request with an error."""


async def connect(host: str, port: int, handler, token: bytes,
                  timeout: float = 10.0) -> FramedConnection:
    loop = asyncio.get_running_loop()
    _, conn = await asyncio.wait_for(loop.create_connection(
        lambda: FramedConnection(handler, token, server_side=False), host, port), timeout)
    await asyncio.wait_for(conn.authenticated, timeout)
    return conn


async def listen(host: str, port: int, handler_factory, token: bytes) -> asyncio.Server:
    """handler_factory() -> handler for each accepted connection."""
    loop = asyncio.get_running_loop()
    gate = HandshakeGate()
    return await loop.create_server(
        lambda: FramedConnection(handler_factory(), token, server_side=True, gate=gate),
        host, port, reuse_address=True, backlog=1024)
