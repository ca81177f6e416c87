"""The transport interface.

Two planes use transports:

* Task/control planes: many small messages. ``tcp.FramedConnection`` —
  authenticated, length-prefixed msgpack frames over asyncio, batched.
* Data plane (object bytes between nodes): few large buffers. A
  ``DataBackend`` gives ``DataEndpoint``s that send small control frames and
  move a buffer straight from the sender's memory into a region the receiver
  provides (``recv_into``): no intermediate ``bytes`` for large objects.
  Backends: ``tcp`` (default), ``ucx`` (ucxx: shared memory / CMA on one host,
  RDMA or NVLink where present, device buffers), ``inproc`` (tests).

Every backend authenticates with the cluster token before any frame is
decoded, and bounds frame sizes.
"""
from __future__ import annotations

from typing import Awaitable, Callable, Protocol


class DataEndpoint(Protocol):
    """One authenticated, ordered, reliable connection between two nodes."""

    async def send_frame(self, message: list) -> None:
        """Send a small msgpack-able message (a list)."""

    async def recv_frame(self) -> list:
        """Receive the next message sent with ``send_frame``."""

    async def send_buffer(self, buf: memoryview) -> None:
        """Send exactly ``buf.nbytes`` bytes (host memory, or device memory
        where the backend supports it)."""

    async def recv_into(self, buf: memoryview) -> None:
        """Receive exactly ``buf.nbytes`` bytes into ``buf`` (the caller's
        memory, e.g. a store slot), which the peer sent with ``send_buffer``."""

    async def close(self) -> None: ...


class DataListener(Protocol):
    address: tuple          # (host, port) peers connect to

    async def close(self) -> None: ...


class DataBackend(Protocol):
    name: str

    async def listen(self, host: str, port: int, token: bytes,
                     handler: Callable[[DataEndpoint], Awaitable[None]]) -> DataListener:
        """Serve: ``handler(endpoint)`` runs for each authenticated connection
        and owns it (the backend closes it when the handler returns)."""

    async def connect(self, address: tuple, token: bytes) -> DataEndpoint: ...


def get_backend(name: str) -> DataBackend:
    """The data-plane backend by name: ``tcp``, ``ucx`` or ``inproc``."""
    if name == "tcp":
        from .tcp_data import TcpDataBackend
        return TcpDataBackend()
    if name == "inproc":
        from .inproc import InprocDataBackend
        return InprocDataBackend()
    if name == "ucx":
        from .ucx import UcxDataBackend   # imported lazily: ucxx is optional
        return UcxDataBackend()
    raise ValueError(f"unknown transport {name!r}; choose 'tcp', 'ucx' or 'inproc'")


def default_backend_name() -> str:
    """``GDFUT_TRANSPORT`` if set, else ``ucx`` when ucxx imports and
    ``GDFUT_UCX=1``, else ``tcp``."""
    import os
    name = os.environ.get("GDFUT_TRANSPORT")
    if name:
        return name
    if os.environ.get("GDFUT_UCX") == "1":
        try:
            import ucxx  # noqa: F401
            return "ucx"
        except ImportError:
            pass
    return "tcp"
