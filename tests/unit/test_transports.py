"""Data-plane backends (gdfut/transport/base.py): same contract for each.

Every test runs its own event loop and ends by checking that closing the
endpoints and listeners left no task and no transfer thread behind.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading

import numpy as np
import pytest

from gdfut import protocol as P
from gdfut.exceptions import AuthenticationError, ProtocolError
from gdfut.transport import base, tcp_data
from gdfut.transport.inproc import InprocDataBackend
from gdfut.transport.tcp import ConnectionLost
from gdfut.transport.tcp_data import TcpDataBackend

TOKEN = b"cluster-token"
MiB = 1 << 20

try:
    from gdfut.transport.ucx import import_ucxx
    import_ucxx()
    UCX_SKIP = None
except RuntimeError as exc:
    UCX_SKIP = f"ucxx not importable ({exc}); pip install ucxx-cu12 to run these"


def make_backend(name: str, **kw):
    if name == "tcp":
        return TcpDataBackend(**kw)
    if name == "inproc":
        return InprocDataBackend(**kw)
    from gdfut.transport.ucx import UcxDataBackend
    return UcxDataBackend(**kw)


@pytest.fixture(params=["inproc", "tcp", pytest.param("ucx", marks=pytest.mark.skipif(
    UCX_SKIP is not None, reason=UCX_SKIP or ""))])
def backend_name(request) -> str:
    return request.param


def lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gdfut-data-lane"]


def is_ucxx_progress(task: asyncio.Task) -> bool:
    """ucxx's own per-loop progress tasks (blocking progress mode): ucxx
    starts them on first use in a loop and cancels them when the loop closes."""
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and f"{os.sep}ucxx{os.sep}" in code.co_filename


def run(coro, timeout: float = 30.0):
    """Run ``coro`` on a fresh loop; afterwards nothing may be left running."""
    async def main():
        result = await asyncio.wait_for(coro, timeout)
        await asyncio.sleep(0)   # let done-callbacks of closed things run
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                   and not is_ucxx_progress(t)]
        assert not pending, f"tasks left after close: {pending}"
        assert not lane_threads(), "transfer threads left after close"
        return result
    return asyncio.run(main())


def pattern(nbytes: int, seed: int = 0) -> np.ndarray:
    return np.resize(np.arange(seed, seed + 251, dtype=np.uint64).astype(np.uint8), nbytes)


async def buffer_server(handler_log: list | None = None):
    """A handler: ["get", nbytes, seed] -> ["ok", nbytes] and the buffer;
    ["echo", x] -> ["echo", x]; anything else ends the connection."""
    async def handler(ep):
        try:
            while True:
                msg = await ep.recv_frame()
                if msg[0] == "get":
                    await ep.send_frame(["ok", msg[1]])
                    await ep.send_buffer(memoryview(pattern(msg[1], msg[2])))
                elif msg[0] == "echo":
                    await ep.send_frame(["echo", msg[1]])
                elif msg[0] == "put":   # the client sends a buffer to us
                    dst = np.empty(msg[1], np.uint8)
                    await ep.recv_into(memoryview(dst))
                    await ep.send_frame(["got", bool(np.array_equal(dst, pattern(msg[1], msg[2])))])
                else:
                    return
        except Exception as exc:
            if handler_log is None:
                raise
            handler_log.append(exc)
    return handler


async def fetch(ep, nbytes: int, seed: int, into: memoryview) -> None:
    await ep.send_frame(["get", nbytes, seed])
    assert await ep.recv_frame() == ["ok", nbytes]
    await ep.recv_into(into)


# --- the contract, for each backend ---------------------------------------------------
def test_frames_round_trip(backend_name):
    async def go():
        be = make_backend(backend_name)
        listener = await be.listen("127.0.0.1", 0, TOKEN, await buffer_server())
        ep = await be.connect(listener.address, TOKEN)
        values = [1, -2**63, 2**64 - 1, 1.5, "text ✓", b"\x00bytes", None, True,
                  [1, [2, [3]]], {"k": [1, 2], "n": None}]
        for value in values:
            await ep.send_frame(["echo", value])
            assert await ep.recv_frame() == ["echo", value]
        with pytest.raises(TypeError):
            await ep.send_frame(("not", "a list"))
        await ep.send_frame(["bye"])
        await ep.close()
        await listener.close()
    run(go())


def test_64mib_lands_byte_exact_at_offset(backend_name):
    async def go():
        be = make_backend(backend_name)
        listener = await be.listen("127.0.0.1", 0, TOKEN, await buffer_server())
        ep = await be.connect(listener.address, TOKEN)
        n, offset = 64 * MiB, 4096 + 13           # unaligned on purpose
        region = np.full(n + 2 * offset, 0xEE, np.uint8)
        await fetch(ep, n, 7, memoryview(region)[offset:offset + n])
        assert np.array_equal(region[offset:offset + n], pattern(n, 7))
        assert (region[:offset] == 0xEE).all() and (region[offset + n:] == 0xEE).all()
        # the other direction, from a typed (non-byte) array
        src = pattern(8 * MiB, 3).view(np.float64)
        await ep.send_frame(["put", src.nbytes, 3])
        await ep.send_buffer(memoryview(src))
        assert await ep.recv_frame() == ["got", True]
        await ep.send_frame(["bye"])
        await ep.close()
        await listener.close()
    run(go())


def test_sequential_and_concurrent_transfers(backend_name):
    async def go():
        be = make_backend(backend_name)
        listener = await be.listen("127.0.0.1", 0, TOKEN, await buffer_server())
        ep = await be.connect(listener.address, TOKEN)
        for seed, n in enumerate([0, 1, 1000, MiB - 1, MiB, 5 * MiB + 3]):
            dst = np.zeros(n, np.uint8)
            await fetch(ep, n, seed, memoryview(dst))
            assert np.array_equal(dst, pattern(n, seed)), n
        eps = [await be.connect(listener.address, TOKEN) for _ in range(3)]
        dsts = [np.zeros(8 * MiB + i, np.uint8) for i in range(3)]
        await asyncio.gather(*(fetch(e, d.nbytes, 10 + i, memoryview(d))
                               for i, (e, d) in enumerate(zip(eps, dsts))))
        for i, d in enumerate(dsts):
            assert np.array_equal(d, pattern(d.nbytes, 10 + i))
        for e in [ep, *eps]:
            await e.send_frame(["bye"])
            await e.close()
        await listener.close()
    run(go())


def test_wrong_token_refused_listener_keeps_serving(backend_name, caplog):
    async def go():
        be = make_backend(backend_name)
        listener = await be.listen("127.0.0.1", 0, TOKEN, await buffer_server())
        good = await be.connect(listener.address, TOKEN)
        with caplog.at_level(logging.WARNING, logger="gdfut.transport"):
            with pytest.raises(ConnectionRefusedError, match="authentication") as info:
                await be.connect(listener.address, b"wrong token")
        assert isinstance(info.value, AuthenticationError)
        assert "token" in caplog.text       # the server side logged the refusal
        await good.send_frame(["echo", 1])
        assert await good.recv_frame() == ["echo", 1]
        other = await be.connect(listener.address, TOKEN)
        await other.send_frame(["echo", 2])
        assert await other.recv_frame() == ["echo", 2]
        for e in (good, other):
            await e.send_frame(["bye"])
            await e.close()
        await listener.close()
        with pytest.raises(ConnectionRefusedError):
            await be.connect(listener.address, TOKEN)
    run(go())


def test_oversized_frame_refused(backend_name):
    async def go():
        limit = 1024
        errors: list = []
        server_be = make_backend(backend_name, max_frame=limit)
        listener = await server_be.listen("127.0.0.1", 0, TOKEN, await buffer_server(errors))
        # the sender refuses a frame over its own limit and stays usable
        small = await make_backend(backend_name, max_frame=limit).connect(listener.address, TOKEN)
        with pytest.raises(ProtocolError, match="exceeds limit"):
            await small.send_frame(["echo", b"x" * limit])
        await small.send_frame(["echo", "still fine"])
        assert await small.recv_frame() == ["echo", "still fine"]
        # a peer with a larger limit sends one: the receiver refuses it and
        # closes that connection only
        big = await make_backend(backend_name).connect(listener.address, TOKEN)
        await big.send_frame(["echo", b"x" * (4 * limit)])
        with pytest.raises(ConnectionLost):
            await big.recv_frame()
        assert any(isinstance(e, ProtocolError) and "exceeds limit" in str(e) for e in errors)
        await small.send_frame(["echo", "others unaffected"])
        assert await small.recv_frame() == ["echo", "others unaffected"]
        for e in (small, big):
            await e.close()
        await listener.close()
    run(go())


def test_frame_and_buffer_out_of_step_is_a_protocol_error(backend_name):
    async def go():
        async def handler(ep):
            await ep.send_buffer(memoryview(bytearray(100)))   # a buffer, not a frame
            await ep.recv_frame()                              # wait for the close
        be = make_backend(backend_name)
        listener = await be.listen("127.0.0.1", 0, TOKEN, handler)
        ep = await be.connect(listener.address, TOKEN)
        with pytest.raises(ProtocolError):
            await ep.recv_into(memoryview(bytearray(99)))        # wrong size
        assert ep.closed
        ep2 = await be.connect(listener.address, TOKEN)
        with pytest.raises(ProtocolError):
            await ep2.recv_frame()                               # a buffer came
        await ep.close()
        await ep2.close()
        await listener.close()
    run(go())


def test_close_while_receiving_wakes_the_receiver(backend_name):
    async def go():
        async def handler(ep):
            await ep.recv_frame()        # never sends a buffer
        be = make_backend(backend_name)
        listener = await be.listen("127.0.0.1", 0, TOKEN, handler)
        ep = await be.connect(listener.address, TOKEN)
        receiver = asyncio.ensure_future(ep.recv_into(memoryview(bytearray(4 * MiB))))
        await asyncio.sleep(0.05)
        await ep.close()
        with pytest.raises((ConnectionLost, ConnectionError)):
            await receiver
        with pytest.raises(ConnectionError):
            await ep.send_frame(["echo", 1])
        await listener.close()           # cancels the handler still waiting
    run(go())


# --- tcp specifics -------------------------------------------------------------------
def test_tcp_uses_lanes_and_cancelled_transfer_stops_its_threads():
    async def go():
        release = asyncio.Event()

        async def handler(ep):
            await ep.recv_frame()
            await ep.send_buffer(memoryview(pattern(64 * MiB)))
            await release.wait()                                # then stall

        be = TcpDataBackend(lanes=2)
        listener = await be.listen("127.0.0.1", 0, TOKEN, handler)
        ep = await be.connect(listener.address, TOKEN)
        assert ep.lanes == 2
        await ep.send_frame(["go"])
        dst = np.zeros(64 * MiB, np.uint8)
        await ep.recv_into(memoryview(dst))
        assert np.array_equal(dst, pattern(64 * MiB))
        # a transfer whose bytes never come: cancelling it joins its threads
        # and closes the endpoint (the stream is out of step)
        task = asyncio.ensure_future(ep.recv_into(memoryview(bytearray(8 * MiB))))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises((asyncio.CancelledError, ConnectionLost)):
            await task
        assert ep.closed
        await ep.close()
        release.set()
        await listener.close()
    run(go())


def test_tcp_handshake_timeout_and_garbage_do_not_stop_the_listener(monkeypatch):
    monkeypatch.setattr(tcp_data, "AUTH_TIMEOUT_S", 0.3)

    async def go():
        be = TcpDataBackend()
        listener = await be.listen("127.0.0.1", 0, TOKEN, await buffer_server())
        loop = asyncio.get_running_loop()
        silent = socket.create_connection(listener.address)     # never answers
        garbage = socket.create_connection(listener.address)
        garbage.sendall(b"\x7f" + b"\xff" * 63)                 # a huge frame length
        await asyncio.sleep(0.5)
        silent.setblocking(False)
        garbage.setblocking(False)
        for s in (silent, garbage):   # both were closed by the server
            data = b"x"
            while data:
                try:
                    data = await loop.sock_recv(s, 4096)
                except ConnectionResetError:   # closed with our bytes unread
                    data = b""
            s.close()
        ep = await be.connect(listener.address, TOKEN)
        await ep.send_frame(["echo", "ok"])
        assert await ep.recv_frame() == ["echo", "ok"]
        await ep.close()
        await listener.close()
    run(go())


def test_tcp_lane_join_with_unknown_session_is_refused():
    async def go():
        be = TcpDataBackend()
        listener = await be.listen("127.0.0.1", 0, TOKEN, await buffer_server())
        with pytest.raises((ConnectionError, ProtocolError)):
            sock, _ = await be._lane(listener.address, TOKEN, ["join", os.urandom(16), 1])
        ep = await be.connect(listener.address, TOKEN)
        await ep.send_frame(["echo", 1])
        assert await ep.recv_frame() == ["echo", 1]
        await ep.close()
        await listener.close()
    run(go())


# --- registry and optional ucxx ---------------------------------------------------------
def test_get_backend_names():
    assert base.get_backend("tcp").name == "tcp"
    assert base.get_backend("inproc").name == "inproc"
    with pytest.raises(ValueError, match="unknown transport"):
        base.get_backend("carrier-pigeon")


def test_ucx_without_ucxx_says_how_to_install(monkeypatch):
    from gdfut.transport import ucx
    monkeypatch.setitem(sys.modules, "ucxx", None)   # import ucxx -> ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'gdfut\[gpu\]'"):
        ucx.import_ucxx()

    async def go():
        with pytest.raises(RuntimeError, match="needs ucxx"):
            await ucx.UcxDataBackend().connect(("127.0.0.1", 1), TOKEN)
    run(go())


def test_inproc_frame_limit_and_header_constants():
    assert P.DEFAULT_MAX_FRAME < tcp_data.BUF_MARK   # a frame length is never the mark
