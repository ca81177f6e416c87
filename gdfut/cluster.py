"""Starting and stopping the daemons (head, node) of a local cluster.

Every process started here is recorded by pid in the session directory and
stopped by pid. Head and node start concurrently (the node is told the head's
address later through ``--head-addr`` only when the head is already up, so
in the embedded case the node starts with the head's port handed over once
known; see ``start_embedded``).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

DEFAULT_ROOT = os.path.join(tempfile.gettempdir(), "gdfut-sessions")  # not importable as a package
STARTUP_TIMEOUT_S = 30.0
KEEP_SESSIONS = 100          # session directories (logs) kept; older dead ones go
MAX_PRUNED_PER_START = 500   # bound on the clean-up work one start does
STARTING_GRACE_S = 60.0      # a session with no head.json yet this young may be starting


def new_session_dir(root: str = DEFAULT_ROOT, path: str | None = None) -> str:
    """A new session directory with a fresh token: ``path`` if given (it must
    not exist yet, or be empty), else a new one under ``root``. Either way
    ``session_latest`` under ``root`` points at it."""
    os.makedirs(root, exist_ok=True)
    if path is None:
        name = f"session_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}_{secrets.token_hex(2)}"
        path = os.path.join(root, name)
    else:
        path = os.path.realpath(path)
        if os.path.isdir(path) and os.listdir(path):
            what = "a gdfut session already" if os.path.exists(os.path.join(path, "token")) \
                else "not empty"
            raise FileExistsError(f"session directory {path} is {what}; give a new or "
                                  f"empty directory")
    os.makedirs(os.path.join(path, "logs"))
    fd = os.open(os.path.join(path, "token"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    latest = os.path.join(root, "session_latest")
    try:
        if os.path.islink(latest):
            os.unlink(latest)
        os.symlink(path, latest)
    except OSError:
        pass
    prune_sessions(root)
    return path


def prune_sessions(root: str = DEFAULT_ROOT, keep: int = KEEP_SESSIONS) -> list[str]:
    """Delete the oldest session directories beyond the newest ``keep``, but
    never one whose head still runs (or that may still be starting), so the
    logs of recent and live clusters stay while /tmp does not fill up.
    Returns the directories deleted."""
    try:
        names = sorted(e.name for e in os.scandir(root)
                       if e.name.startswith("session_2") and e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    removed = []
    for name in names[:max(0, len(names) - keep)][:MAX_PRUNED_PER_START]:
        path = os.path.join(root, name)
        if not _session_may_be_live(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _session_may_be_live(path: str) -> bool:
    info = read_head_info(path)
    if info is None or not isinstance(info.get("pid"), int):
        try:            # no head (yet): a young directory may belong to a start in progress
            return time.time() - os.path.getmtime(path) < STARTING_GRACE_S
        except OSError:
            return False
    return pid_alive(info["pid"])


def read_head_info(session_dir: str) -> dict | None:
    """What the head wrote when it came up (host, port, pid), or None."""
    try:
        with open(os.path.join(session_dir, "head.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # someone else's live process
        return True
    return True


class Daemon:
    """A started daemon process and what it printed when ready."""

    def __init__(self, popen: subprocess.Popen, kind: str, err_path: str | None = None):
        self.popen = popen
        self.kind = kind
        self.err_path = err_path          # its stderr
        self.info: dict | None = None

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> dict:
        if self.info is None:
            line = _readline(self.popen, timeout)
            if not line:
                try:              # it exited (or closed stdout): let it finish its stderr
                    code = self.popen.wait(1.0)
                except subprocess.TimeoutExpired:
                    code = None
                why = last_error_line(self.err_path)
                raise RuntimeError(f"gdfut {self.kind} failed to start (exit code {code})"
                                   + (f": {why}" if why else "")
                                   + f"; see its log in {self.err_path or 'the session directory'}")
            self.info = json.loads(line)
        return self.info

    def stop(self, timeout: float = 5.0):
        p = self.popen
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if p.stdout is not None:
            p.stdout.close()


def last_error_line(path: str | None, max_bytes: int = 16384) -> str:
    """The last non-empty line of a daemon's stderr (what it died of)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - max_bytes))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((ln.strip() for ln in reversed(lines) if ln.strip()), "")[:500]


def _readline(popen, timeout):
    import select
    deadline = time.monotonic() + timeout
    fd = popen.stdout
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            return fd.readline().decode()
        if popen.poll() is not None:
            return ""
    return ""


def spawn_head(session_dir, port=0, bind="127.0.0.1", embedded=False, detach=False) -> Daemon:
    cmd = [sys.executable, "-m", "gdfut.head", "--session-dir", session_dir, "--port", str(port),
           "--bind", bind]
    if embedded:
        cmd.append("--embedded")
    popen, err = _popen(cmd, session_dir, "head", detach)
    return Daemon(popen, "head", err)


def spawn_node(session_dir, head_addr, num_cpus, num_gpus=None, resources=None,
               object_store_memory=None, port=0, bind="127.0.0.1", embedded=False,
               detach=False, node_ip=None, transport=None, spill_dir=None,
               device_store_memory=None) -> Daemon:
    cmd = [sys.executable, "-m", "gdfut.node", "--session-dir", session_dir,
           "--num-cpus", str(num_cpus),
           "--resources", json.dumps(resources or {}), "--port", str(port), "--bind", bind]
    if num_gpus is not None:          # else the node counts real GPUs (NVML)
        cmd += ["--num-gpus", str(num_gpus)]
    if node_ip:
        cmd += ["--node-ip", node_ip]
    if transport:
        cmd += ["--transport", transport]
    if head_addr:
        cmd += ["--head-addr", f"{head_addr[0]}:{head_addr[1]}"]
    if object_store_memory:
        cmd += ["--object-store-memory", str(int(object_store_memory))]
    if spill_dir:
        cmd += ["--spill-dir", os.path.abspath(spill_dir)]
    if device_store_memory is not None:
        cmd += ["--device-store-memory", str(int(device_store_memory))]
    if embedded:
        cmd.append("--embedded")
    popen, err = _popen(cmd, session_dir, "node", detach)
    return Daemon(popen, "node", err)


def _popen(cmd, session_dir, kind, detach) -> tuple:
    """(the process, the path of its stderr)."""
    path = os.path.join(session_dir, "logs", f"{kind}-{time.time_ns()}.err")
    err = open(path, "ab")
    try:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, start_new_session=detach), path
    finally:
        err.close()


def record_pid(session_dir: str, kind: str, pid: int) -> None:
    with open(os.path.join(session_dir, "pids"), "a") as f:
        f.write(f"{kind} {pid}\n")


def default_object_store_memory() -> int:
    """30% of memory (Ray's default), at most what /dev/shm can hold, max 8 GiB."""
    try:
        import psutil
        mem = psutil.virtual_memory().total
    except Exception:
        mem = 8 * 1024**3
    st = os.statvfs("/dev/shm")
    shm_free = st.f_bavail * st.f_frsize
    return int(min(mem * 0.3, shm_free * 0.8, 8 * 1024**3))
