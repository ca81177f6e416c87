"""UCX backend of the data plane (ucxx): shared memory / CMA between processes
on one host, RDMA or NVLink where UCX finds them, and device buffers.

Layout of one endpoint:

* Control: a ``tcp_data`` endpoint with one lane. It does the handshake (the
  cluster token, exactly as the tcp backend: ucxx's own listener has no
  authentication) and carries the frames.
* Data: after the handshake each side sends ``["ucx", worker_address,
  tag_base]`` and opens a ucxx endpoint to the peer's *worker address* with
  endpoint error handling off. Measured on a 2-core host: endpoints made by
  ucxx's listener (error handling on) make UCX pick tcp, 0.7-0.9 GB/s;
  worker-address endpoints without error handling use shared memory + CMA
  (one copy, by the receiver). With the progress mode below this backend
  moved 1 GiB between two processes at 16-17 GB/s here, about memcpy speed.
  ``GDFUT_UCX_ERROR_HANDLING=1`` turns error handling on: slower, but a
  transfer to a peer that dies fails with ``ConnectionLost`` (ucxx also warns
  that without it a peer failure may terminate the process; here it did
  not). Without it, such a transfer stays pending until the caller cancels
  it, which closes the endpoint and so cancels the UCX request (tried: the
  process went on serving).
* Each ``send_buffer`` first sends a 16-byte notice ``(nbytes, seq)`` on the
  control stream (as a tcp buffer, so it keeps its place among the frames and
  a size mismatch is a ``ProtocolError``), then the bytes as one UCX tagged
  message with tag ``peer_tag_base + seq``. The receiver posts its UCX receive
  only once the notice is in: unless ucxx's Python-future notifier thread is
  on, a waiting ucxx request spins the event loop (``await asyncio.sleep(0)``,
  a full core), so nothing should wait in UCX longer than the transfer. Tag bases are
  chosen by the receiving side, random per connection, so connections sharing
  the process-wide UCX worker never match each other's messages.

Device memory: an object with ``__cuda_array_interface__`` (CuPy, Numba,
RMM) is given to ucxx as it is, so UCX moves it with cuda_ipc/cuda_copy or
GPUDirect; ``gdfut/device_transfer.py`` uses that to move device objects GPU
to GPU between nodes. Not tested on this machine (no GPU). The PyPI UCX build has no
verbs/rdmacm; real RDMA needs a system UCX
(``RAPIDS_LIBUCX_PREFER_SYSTEM_LIBRARY=true``).

ucxx is optional and imported only when this backend is used.
"""
from __future__ import annotations

import asyncio
import os
import struct
from typing import Any, Awaitable, Callable

from .. import protocol as P
from ..exceptions import ProtocolError
from .tcp import ConnectionLost
from .tcp_data import TcpDataBackend, TcpDataEndpoint, TcpDataListener, byte_view

SETUP_TIMEOUT_S = 10.0
NOTICE = struct.Struct(">QQ")          # nbytes, sequence number
TAG_MASK = (1 << 64) - 1
MAX_ADDRESS_BYTES = 64 * 1024          # a UCX worker address is a few hundred bytes
CLOSE_PERIOD_NS = 10**9
# ucxx's default "thread" mode (a progress thread) moved 1 GiB between two
# processes here at 5.5-10.8 GB/s; "blocking" (progress on the event loop,
# woken by the UCX worker's epoll fd; no extra thread) at 15.9-17.2 GB/s, and
# it keeps an idle loop idle ("polling" spins forever). It adds two small
# ucxx-owned tasks to each event loop that uses ucxx, which ucxx cancels when
# that loop closes. UCXPY_PROGRESS_MODE overrides.
PROGRESS_MODE = "blocking"
Handler = Callable[["UcxDataEndpoint"], Awaitable[None]]


def import_ucxx():
    """ucxx, or a RuntimeError that says how to get it."""
    # ucxx sets UCX_MEMTYPE_CACHE, which recent UCX no longer knows and warns
    # about in every process; keep a user's explicit setting.
    os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")
    # Read when ucxx makes its process-wide context (first use), so this only
    # applies if nothing in the process used ucxx before. See PROGRESS_MODE.
    os.environ.setdefault("UCXPY_PROGRESS_MODE", PROGRESS_MODE)
    try:
        import ucxx
    except ImportError as exc:
        raise RuntimeError(
            "the ucx transport needs ucxx: pip install 'gdfut[gpu]' (or ucxx-cu12); "
            f"import failed: {exc}") from exc
    return ucxx


def error_handling() -> bool:
    return os.environ.get("GDFUT_UCX_ERROR_HANDLING") == "1"


def _ucx_buffer(buf) -> tuple[Any, int, bool]:
    """(object for ucxx, nbytes, readonly). Device arrays go as they are."""
    if hasattr(buf, "__cuda_array_interface__"):
        from ucxx._lib.arr import Array
        arr = Array(buf)
        if not arr.contiguous:
            raise ValueError("device buffer must be contiguous")
        return buf, arr.nbytes, arr.readonly
    view = byte_view(buf)
    return view, view.nbytes, view.readonly


class UcxDataEndpoint:
    def __init__(self, ctrl: TcpDataEndpoint, ucx_ep, recv_base: int, send_base: int):
        self._ctrl = ctrl
        self._ucx_ep = ucx_ep
        self._recv_base = recv_base
        self._send_base = send_base
        self._send_seq = 0
        self._recv_seq = 0
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed or self._ctrl.closed

    async def send_frame(self, message: list) -> None:
        await self._ctrl.send_frame(message)

    async def recv_frame(self) -> list:
        return await self._ctrl.recv_frame()

    async def send_buffer(self, buf) -> None:
        obj, nbytes, _ = _ucx_buffer(buf)
        async with self._send_lock:
            self._check_open()
            seq, self._send_seq = self._send_seq, self._send_seq + 1
            await self._ctrl.send_buffer(memoryview(NOTICE.pack(nbytes, seq)))
            if nbytes:
                tag = (self._send_base + seq) & TAG_MASK
                await self._ucx_io(self._ucx_ep.send(obj, tag=tag, force_tag=True))

    async def recv_into(self, buf) -> None:
        obj, nbytes, readonly = _ucx_buffer(buf)
        if readonly:
            raise ValueError("recv_into needs a writable buffer")
        async with self._recv_lock:
            self._check_open()
            notice = bytearray(NOTICE.size)
            await self._ctrl.recv_into(memoryview(notice))
            size, seq = NOTICE.unpack(notice)
            if size != nbytes or seq != self._recv_seq:
                await self.close()
                raise ProtocolError(f"peer sent buffer #{seq} of {size} bytes, recv_into "
                                    f"expected #{self._recv_seq} of {nbytes}")
            self._recv_seq += 1
            if nbytes:
                tag = (self._recv_base + seq) & TAG_MASK
                await self._ucx_io(self._ucx_ep.recv(obj, tag=tag, force_tag=True))

    async def _ucx_io(self, op: Awaitable) -> None:
        """A UCX failure or cancellation leaves the pair out of step: close."""
        try:
            await op
        except asyncio.CancelledError:
            await asyncio.shield(self.close())
            raise
        except Exception as exc:
            await self.close()
            raise ConnectionLost(f"ucx transfer failed: {type(exc).__name__}: {exc}") from exc

    def _check_open(self) -> None:
        if self.closed:
            raise ConnectionLost("ucx data connection is closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # cancels this endpoint's outstanding UCX requests; ucxx blocks the
            # loop while it closes, so bound that (ns) below its 10 s default
            await self._ucx_ep.close(period=CLOSE_PERIOD_NS)
        finally:
            await self._ctrl.close()


async def _upgrade(ctrl: TcpDataEndpoint) -> UcxDataEndpoint:
    """Swap worker addresses over the authenticated control stream and open
    the UCX data endpoint."""
    ucxx = import_ucxx()
    recv_base = int.from_bytes(os.urandom(8), "big")
    address = ucxx.get_worker_address().tobytes()
    await ctrl.send_frame(["ucx", address, recv_base])
    msg = await asyncio.wait_for(ctrl.recv_frame(), SETUP_TIMEOUT_S)
    if (len(msg) != 3 or msg[0] != "ucx" or not isinstance(msg[1], bytes)
            or len(msg[1]) > MAX_ADDRESS_BYTES or not isinstance(msg[2], int)):
        raise ProtocolError(f"bad ucx setup message {msg!r:.80}")
    peer = ucxx.get_ucx_address_from_buffer(msg[1])
    ucx_ep = await ucxx.create_endpoint_from_worker_address(
        peer, endpoint_error_handling=error_handling())
    return UcxDataEndpoint(ctrl, ucx_ep, recv_base, msg[2] & TAG_MASK)


class UcxDataListener:
    def __init__(self, ctrl_listener: TcpDataListener):
        self._ctrl = ctrl_listener
        self.address: tuple = ctrl_listener.address

    async def close(self) -> None:
        await self._ctrl.close()


class UcxDataBackend:
    name = "ucx"

    def __init__(self, max_frame: int = P.DEFAULT_MAX_FRAME):
        # one control lane: bulk bytes go over UCX
        self._ctrl = TcpDataBackend(max_frame=max_frame, lanes=1)

    async def listen(self, host: str, port: int, token: bytes,
                     handler: Handler) -> UcxDataListener:
        import_ucxx()   # fail here, clearly, rather than per connection

        async def on_control(ctrl: TcpDataEndpoint) -> None:
            ep = await _upgrade(ctrl)
            try:
                await handler(ep)
            finally:
                await ep.close()

        return UcxDataListener(await self._ctrl.listen(host, port, token, on_control))

    async def connect(self, address: tuple, token: bytes) -> UcxDataEndpoint:
        import_ucxx()
        ctrl = await self._ctrl.connect(address, token)
        try:
            return await _upgrade(ctrl)
        except BaseException:
            await ctrl.close()
            raise
