"""Authentication, malformed frames, frame limits, and clean teardown."""
import os
import socket
import struct
import subprocess
import sys
import time

import gdfut
from gdfut import protocol as P, runtime_context
from helpers import assert_no_leaks, shm_files


SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


def _node_addr():
    return runtime_context.require().node_addr


def _closed_by_peer(sock, timeout=15):
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_unauthenticated_socket_is_refused(cluster):
    @gdfut.remote
    def one():
        return 1

    host, port = _node_addr()
    s = socket.create_connection((host, port))
    nonce_frame = s.recv(4 + P.NONCE_LEN)
    assert len(nonce_frame) == 4 + P.NONCE_LEN
    # a client without the token sends a msgpack message instead of the HMAC
    s.sendall(P.pack_frame([[P.NODE_STATUS, 1]]))
    assert _closed_by_peer(s)
    s.close()
    assert gdfut.get(one.remote()) == 1          # everyone else is still served


def test_wrong_token_and_oversized_frame_refused(cluster):
    host, port = _node_addr()
    s = socket.create_connection((host, port))
    nonce = s.recv(4 + P.NONCE_LEN)[4:]
    s.sendall(P.raw_frame(P.auth_digest(b"not-the-token", nonce)))
    assert _closed_by_peer(s)
    s.close()
    # authenticated, then a frame over the limit
    token = open(os.path.join(cluster["session_dir"], "token"), "rb").read()
    s = socket.create_connection((host, port))
    nonce = s.recv(4 + P.NONCE_LEN)[4:]
    s.sendall(P.raw_frame(P.auth_digest(token, nonce)))
    s.sendall(struct.pack(">I", P.DEFAULT_MAX_FRAME + 1))
    assert _closed_by_peer(s)
    s.close()
    # authenticated, then garbage that is not msgpack
    s = socket.create_connection((host, port))
    nonce = s.recv(4 + P.NONCE_LEN)[4:]
    s.sendall(P.raw_frame(P.auth_digest(token, nonce)) + P.raw_frame(b"\xc1\xc1\xc1"))
    assert _closed_by_peer(s)
    s.close()
    assert runtime_context.require().node_request(P.NODE_STATUS)["workers"] >= 1


def test_token_file_is_private(cluster):
    mode = os.stat(os.path.join(cluster["session_dir"], "token")).st_mode & 0o777
    assert mode == 0o600


def test_listeners_bind_loopback(cluster):
    host, _ = _node_addr()
    assert host == "127.0.0.1"


def test_shutdown_stops_every_process_and_frees_shm():
    info = gdfut.init(num_cpus=2, object_store_memory=128 * 1024 * 1024)
    import numpy as np

    @gdfut.remote
    def make():
        return np.ones(1 << 20)

    refs = [make.remote() for _ in range(4)]
    gdfut.get(refs)
    assert shm_files(info["session_dir"])
    t0 = time.monotonic()
    gdfut.shutdown()
    assert time.monotonic() - t0 < 5
    assert_no_leaks(info["session_dir"])


def test_driver_exit_without_shutdown_cleans_up(tmp_path):
    """A driver that just exits (atexit) leaves nothing behind."""
    script = tmp_path / "driver.py"
    script.write_text(
        "import gdfut\n"
        "info = gdfut.init(num_cpus=1, object_store_memory=64*1024*1024)\n"
        "print(info['session_dir'], flush=True)\n"
        "@gdfut.remote\n"
        "def f(): return 1\n"
        "assert gdfut.get(f.remote()) == 1\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    session = out.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 10
    while shm_files(session) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not shm_files(session)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert session not in ps
