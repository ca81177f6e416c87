"""A raw protocol peer for tests: speaks gdfut frames over a plain socket,
so a test can send what no well-behaved client would."""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time

import msgpack

from gdfut import protocol as P


class RawPeer:
    def __init__(self, addr, token: bytes | None = None, timeout: float = 10.0):
        self.sock = socket.create_connection(tuple(addr), timeout=timeout)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.ids = itertools.count(1)
        self.nonce = self._read_frame()
        if token is not None:
            self.sock.sendall(P.raw_frame(P.auth_digest(token, self.nonce)))

    # --- frames ---------------------------------------------------------------------
    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by peer")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _read_frame(self) -> bytes:
        (length,) = struct.unpack(">I", self._read_exact(4))
        return self._read_exact(length)

    def send(self, *messages) -> None:
        self.sock.sendall(P.pack_frame(list(messages)))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, mtype: int, *fields, timeout: float = 10.0):
        """Send a request; (kind, payload) of its answer: REPLY or ERROR."""
        req_id = next(self.ids)
        self.send([mtype, req_id, *fields])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in msgpack.unpackb(self._read_frame(), raw=False, strict_map_key=False):
                if m[0] in (P.REPLY, P.ERROR) and m[1] == req_id:
                    return m[0], m[2]
        raise TimeoutError(f"no answer to message {mtype}")

    def register_client(self, wid: bytes | None = None, kind: str = "driver"):
        self.wid = wid or os.urandom(16)
        return self.request(P.REGISTER_CLIENT, self.wid, os.getpid(), ["127.0.0.1", 1], kind)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()
