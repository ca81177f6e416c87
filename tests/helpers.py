"""Shared test helpers: leak checks for processes and shared memory."""
from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def emulated_gpu_cluster(tmp_path, monkeypatch, *, num_gpus: int = 1, host: int, device: int):
    """An embedded cluster in CPU mode with emulated GPUs (``device`` bytes of
    device tier each) and a spill dir of its own; shut down and checked for
    leaks on the way out, also when the test failed."""
    import gdfut
    monkeypatch.setenv("GDFUT_CPU_MODE", "1")
    spill = str(tmp_path / "spill")
    info = gdfut.init(num_cpus=2, num_gpus=num_gpus, object_store_memory=host,
                      device_store_memory=device, spill_dir=spill)
    try:
        yield {**info, "spill_dir": spill}
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"], spill)


def node_tiers() -> dict:
    """The tier figures of the driver's node (``NODE_STATUS``'s "tiers")."""
    from gdfut import protocol, runtime_context
    return runtime_context.require().node_request(protocol.NODE_STATUS)["tiers"]


STORE = 512 * 1024 * 1024      # object store of the test clusters


def node_status():
    """NODE_STATUS of the driver's node (cluster must be initialised)."""
    from gdfut import protocol as P, runtime_context
    return runtime_context.require().node_request(P.NODE_STATUS)


def store_stats():
    return node_status()["store"]


# ------------------------------------------------ clusters started by the CLI
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gdfut_cli(*args, check=True, timeout=60, env=None):
    """``python -m gdfut.cli ARGS`` (its daemons inherit ``env`` additions)."""
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "gdfut.cli", *args], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"gdfut {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def session_processes(session_dir: str) -> list:
    """(kind, pid) of every gdfut daemon or worker of a session still running
    (CLI daemons are not this process's children, so look in /proc)."""
    from gdfut.cli import _session_processes
    from gdfut.cluster import pid_alive
    return [kp for kp in _session_processes(os.path.realpath(session_dir))
            if pid_alive(kp[1])]


class CliCluster:
    """A cluster started with ``gdfut start --head`` in ``session_dir``;
    ``stop()`` stops it and checks that nothing of it is left (processes,
    shared memory, spill files)."""

    def __init__(self, session_dir: str, num_cpus: int = 2, store: int = 64 * 1024 * 1024,
                 env: dict | None = None):
        import json
        self.session_dir = os.path.realpath(str(session_dir))
        self.env = dict(env or {})
        out = gdfut_cli("start", "--head", "--num-cpus", str(num_cpus),
                        "--object-store-memory", str(store), "--session-dir",
                        self.session_dir, env=self.env, check=False)
        if out.returncode != 0:
            self.stop(check=False)
            raise AssertionError(f"start --head failed: {out.stdout}\n{out.stderr}")
        with open(os.path.join(self.session_dir, "address")) as f:
            self.address = f.read().strip()
        self.json = json

    def head_pid(self) -> int:
        with open(os.path.join(self.session_dir, "head.json")) as f:
            return self.json.load(f)["pid"]

    def status(self) -> dict:
        return self.json.loads(gdfut_cli("status", "--session-dir", self.session_dir,
                                         "--json").stdout)

    def stop(self, check: bool = True) -> None:
        gdfut_cli("stop", "--session-dir", self.session_dir, check=False)
        if check:
            wait_until(lambda: not session_processes(self.session_dir), timeout=10,
                       what="the session's processes to exit")
            assert not shm_files(self.session_dir), shm_files(self.session_dir)
            assert not spill_files(self.session_dir), spill_files(self.session_dir)


@contextlib.contextmanager
def running_cli_cluster(tmp_path, env: dict | None = None):
    """A CliCluster under ``tmp_path/session`` for one test: the driver is
    disconnected, the cluster stopped and no child process may be left,
    also when the test failed."""
    import gdfut
    cluster = CliCluster(tmp_path / "session", env=env)
    try:
        yield cluster
    finally:
        gdfut.shutdown()
        cluster.stop()
        assert not child_processes()


def actor_name_gone(name: str) -> bool:
    """``get_actor(name)`` finds nothing any more (Ray raises ValueError)."""
    import gdfut
    try:
        gdfut.get_actor(name)
    except ValueError:
        return True
    return False
