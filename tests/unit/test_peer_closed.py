"""FramedConnection.peer_closed (control-plane TCP) sees a peer's close that
the event loop has not read yet: an actor call made after the actor's worker
exited then queues for its restart instead of being sent and lost."""
from __future__ import annotations

import asyncio
import socket

import pytest

from gdfut.transport import tcp

TOKEN = b"cluster-token"


class Handler:
    def on_messages(self, conn, messages):
        pass

    def on_closed(self, conn, exc):
        pass


async def _server_side_connection(read_first: bool):
    """A raw peer connects and closes (after reading what the server sent,
    so it sends a FIN; else, with unread bytes, a reset)."""
    loop = asyncio.get_running_loop()
    conns = []

    def make():
        conns.append(tcp.FramedConnection(Handler(), TOKEN, server_side=True))
        return conns[-1]
    server = await loop.create_server(make, "127.0.0.1", 0)
    raw = socket.create_connection(server.sockets[0].getsockname())
    try:
        while not conns:
            await asyncio.sleep(0.01)
        conn = conns[0]
        if read_first:
            raw.settimeout(5)
            assert raw.recv(1 << 16)         # the server's handshake nonce
        assert not conn.peer_closed()
        raw.close()            # on loopback the close reaches the kernel at once
        seen = conn.peer_closed()
        read_by_loop = conn.closed
        for _ in range(500):               # then the loop reads it too
            if conn.closed:
                break
            await asyncio.sleep(0.01)
        return seen, read_by_loop, conn.closed
    finally:
        raw.close()
        server.close()
        await server.wait_closed()


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="needs Linux TCP_INFO")
@pytest.mark.parametrize("read_first", [True, False], ids=["fin", "reset"])
def test_peer_closed_before_the_loop_reads_the_close(read_first):
    seen, read_by_loop, closed_later = asyncio.run(_server_side_connection(read_first))
    assert seen and not read_by_loop and closed_later
