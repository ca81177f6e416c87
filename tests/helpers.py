"""Shared test helpers: leak checks for processes and shared memory."""
from __future__ import annotations

import glob
import os
import time

import psutil


def shm_files(session_dir: str | None = None) -> list[str]:
    pattern = "/dev/shm/gdfut-*"
    if session_dir:
        pattern = f"/dev/shm/gdfut-{os.path.basename(session_dir)}-*"
    return glob.glob(pattern)


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


def assert_no_leaks(session_dir: str | None):
    wait_until(lambda: not child_processes(), timeout=10, what="child processes to exit")
    assert not shm_files(session_dir), shm_files(session_dir)
