"""Shared test helpers: leak checks for processes and shared memory."""
from __future__ import annotations

import glob
import os
import time

import psutil


def shm_files(session_dir: str) -> list[str]:
    """Shared-memory files of one session. Only ever this session's: another
    gdfut on the same machine (a user, a parallel test run) is not a leak."""
    if not session_dir:
        raise ValueError("shm_files needs the session directory of the cluster under test")
    return glob.glob(f"/dev/shm/gdfut-{os.path.basename(os.path.normpath(session_dir))}-*")


def child_processes() -> list[psutil.Process]:
    try:
        return [p for p in psutil.Process().children(recursive=True) if p.is_running()
                and p.status() != psutil.STATUS_ZOMBIE]
    except psutil.Error:
        return []


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def spill_files(session_dir: str, spill_dir: str | None = None) -> list[str]:
    """Spill directories and files of one session's nodes, under the default
    spill directory (``<session>/spill``) and ``spill_dir`` if given."""
    if not session_dir:
        raise ValueError("spill_files needs the session directory of the cluster under test")
    session = os.path.basename(os.path.normpath(session_dir))
    found = []
    for root in {os.path.join(session_dir, "spill"), spill_dir or os.path.join(session_dir, "spill")}:
        found += glob.glob(os.path.join(root, f"gdfut-{session}-*"))
        found += glob.glob(os.path.join(root, f"gdfut-{session}-*", "*"))
    return sorted(found)


def assert_no_leaks(session_dir: str, spill_dir: str | None = None):
    """No process this test started is left, and no shared memory or spill
    file of its session (``spill_dir``: a spill directory given to ``init``)."""
    wait_until(lambda: not child_processes(), timeout=10, what="child processes to exit")
    assert not shm_files(session_dir), shm_files(session_dir)
    assert not spill_files(session_dir, spill_dir), spill_files(session_dir, spill_dir)


STORE = 512 * 1024 * 1024      # object store of the test clusters


def node_status():
    """NODE_STATUS of the driver's node (cluster must be initialised)."""
    from gdfut import protocol as P, runtime_context
    return runtime_context.require().node_request(P.NODE_STATUS)


def store_stats():
    return node_status()["store"]
