"""In-process data-plane backend, for tests: no sockets, same contract.

``listen`` registers the handler under an address ``("inproc", n)`` in a
module-level registry; ``connect`` looks it up, runs the same token check as
the real backends (HMAC over a fresh nonce) and pairs two endpoints linked by
bounded channels. Frames are msgpack-encoded on the way (so only what the
wire could carry gets through, size limit included). ``send_buffer`` hands
the receiver a view of the sender's memory and waits until ``recv_into`` has
copied it into the caller's region: one memcpy, and the sender's buffer is
not referenced after ``send_buffer`` returns.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from typing import Awaitable, Callable

from .. import protocol as P
from ..exceptions import ProtocolError
from .tcp import ConnectionLost
from .tcp_data import AuthRefusedError, byte_view, decode_message, encode_message

log = logging.getLogger("gdfut.transport")

CHANNEL_LIMIT = 64          # messages in flight per direction (backpressure)
MAX_CONNECTIONS = 1024
Handler = Callable[["InprocDataEndpoint"], Awaitable[None]]

_listeners: dict[tuple, "InprocDataListener"] = {}
_ports = itertools.count(1)


class _Channel:
    """A bounded one-way queue that can be closed: waiters wake with
    ``ConnectionLost``; items queued before the close are still delivered."""

    def __init__(self, limit: int = CHANNEL_LIMIT):
        self._items: deque = deque()
        self._limit = limit
        self._waiters: list[asyncio.Future] = []
        self.closed = False

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def _wait(self) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut

    async def put(self, item) -> None:
        while len(self._items) >= self._limit and not self.closed:
            await self._wait()
        if self.closed:
            raise ConnectionLost("in-process connection is closed")
        self._items.append(item)
        self._wake()

    async def get(self):
        while not self._items and not self.closed:
            await self._wait()
        if not self._items:
            raise ConnectionLost("in-process connection closed by peer")
        item = self._items.popleft()
        self._wake()
        return item

    def close(self) -> None:
        self.closed = True
        # buffers nobody will copy: release their senders
        for item in [i for i in self._items if i[0] == "buf"]:
            self._items.remove(item)
            if not item[2].done():
                item[2].set_exception(ConnectionLost("in-process connection closed"))
        self._wake()


class InprocDataEndpoint:
    def __init__(self, outbox: _Channel, inbox: _Channel, max_frame: int):
        self._outbox = outbox
        self._inbox = inbox
        self.max_frame = max_frame
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        return self._outbox.closed

    async def send_frame(self, message: list) -> None:
        payload = encode_message(message, self.max_frame)[P.HEADER.size:]
        async with self._send_lock:
            await self._outbox.put(("frame", payload))

    async def recv_frame(self) -> list:
        async with self._recv_lock:
            kind, payload = (await self._inbox.get())[:2]
        if kind != "frame":
            await self.close()
            raise ProtocolError("expected a frame, the peer sent a buffer")
        if len(payload) > self.max_frame:   # a peer with a larger limit sent it
            await self.close()
            raise ProtocolError(f"frame of {len(payload)} bytes exceeds limit {self.max_frame}")
        try:
            return decode_message(payload)
        except ProtocolError:
            await self.close()
            raise

    async def send_buffer(self, buf: memoryview) -> None:
        view = byte_view(buf)
        done = asyncio.get_running_loop().create_future()
        async with self._send_lock:
            await self._outbox.put(("buf", view, done))
            try:
                await done   # the receiver copied it (or gave up)
            except asyncio.CancelledError:
                await self.close()   # the receiver must not read it any more
                raise

    async def recv_into(self, buf: memoryview) -> None:
        view = byte_view(buf)
        if view.readonly:
            raise ValueError("recv_into needs a writable buffer")
        async with self._recv_lock:
            item = await self._inbox.get()
        if item[0] != "buf":
            await self.close()
            raise ProtocolError("expected a buffer, the peer sent a frame")
        src, done = item[1], item[2]
        if src.nbytes != view.nbytes:
            err = ProtocolError(f"peer sent a buffer of {src.nbytes} bytes, "
                                f"recv_into expected {view.nbytes}")
            if not done.done():
                done.set_exception(err)
            await self.close()
            raise err
        if done.done():   # the sender was cancelled meanwhile
            raise ConnectionLost("peer abandoned the buffer")
        view[:] = src     # the one memcpy
        done.set_result(None)

    async def close(self) -> None:
        self._outbox.close()
        self._inbox.close()


class InprocDataListener:
    def __init__(self, address: tuple, token: bytes, handler: Handler, max_frame: int):
        self.address = address
        self.token = token
        self.max_frame = max_frame
        self._handler = handler
        self._tasks: set[asyncio.Task] = set()

    def accept(self, digest: bytes, nonce: bytes, client_max_frame: int) -> InprocDataEndpoint:
        if not P.check_auth(self.token, nonce, digest):
            log.warning("inproc data listener %s: refusing a client: bad cluster token",
                        self.address)
            raise AuthRefusedError(f"{self.address} refused the connection: "
                                   "authentication failed (wrong cluster token?)")
        if len(self._tasks) >= MAX_CONNECTIONS:
            raise ConnectionRefusedError(f"{self.address}: too many connections")
        to_server, to_client = _Channel(), _Channel()
        server_ep = InprocDataEndpoint(to_client, to_server, self.max_frame)
        task = asyncio.get_running_loop().create_task(self._serve(server_ep))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return InprocDataEndpoint(to_server, to_client, client_max_frame)

    async def _serve(self, ep: InprocDataEndpoint) -> None:
        try:
            await self._handler(ep)
        except (ConnectionLost, ProtocolError) as exc:
            log.info("inproc data connection ended: %s", exc)
        except Exception:
            log.exception("inproc data handler failed")
        finally:
            await ep.close()

    async def close(self) -> None:
        if _listeners.get(self.address) is self:
            del _listeners[self.address]
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class InprocDataBackend:
    name = "inproc"

    def __init__(self, max_frame: int = P.DEFAULT_MAX_FRAME):
        self.max_frame = max_frame

    async def listen(self, host: str, port: int, token: bytes,
                     handler: Handler) -> InprocDataListener:
        """``port`` 0 picks a free number; ``host`` is ignored."""
        n = port or next(p for p in _ports if ("inproc", p) not in _listeners)
        address = ("inproc", n)
        if address in _listeners:
            raise OSError(f"inproc address {address} is in use")
        listener = _listeners[address] = InprocDataListener(address, token, handler,
                                                            self.max_frame)
        return listener

    async def connect(self, address: tuple, token: bytes) -> InprocDataEndpoint:
        listener = _listeners.get(tuple(address))
        if listener is None:
            raise ConnectionRefusedError(f"no inproc listener at {tuple(address)}")
        nonce = P.new_nonce()
        return listener.accept(P.auth_digest(token, nonce), nonce, self.max_frame)
