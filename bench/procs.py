"""Process bookkeeping: every process a benchmark starts can be found and stopped.

Two nets, because neither catches everything alone:

- The orchestrator makes itself a child subreaper (Linux prctl), so helper
  processes orphaned by a system's driver (Ray's raylet-spawned agents, which
  do not inherit the driver's environment) are re-parented to it instead of
  to init, and show up as its descendants.
- Each spawned process gets a unique marker in its environment, inherited by
  most helpers (Ray's gcs_server/raylet/workers, Dask's scheduler, nannies
  and workers), which finds those that start their own session or detach.

Anything found is stopped by pid, never by name.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
import uuid
from pathlib import Path

MARK_VAR = "GDFUT_BENCH_MARK"
REPO_ROOT = Path(__file__).resolve().parent.parent


def marked_env(base: dict) -> tuple[dict, str]:
    """Copy of ``base`` with a fresh marker and the repo root on PYTHONPATH.

    PYTHONPATH lets workers import ``bench.tasks`` and lets gdfut run from
    the source tree without being installed.
    """
    mark = uuid.uuid4().hex
    env = dict(base)
    env[MARK_VAR] = mark
    parts = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env, mark


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment carries ``mark`` (zombies have none)."""
    needle = f"{MARK_VAR}={mark}".encode()
    own = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def become_subreaper() -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER) so leaks stay visible."""
    pr_set_child_subreaper = 36
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux/glibc: the marker net remains
        return False


def descendant_pids(root: int | None = None) -> list[int]:
    """Live (non-zombie) descendants of ``root`` (default: this process)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat:
                children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            stack.append(child)
            if _alive(child):
                found.append(child)
    return sorted(found)


def reap_zombie_children() -> None:
    """Collect exit statuses of adopted children so they do not stay zombies.

    Only called when no subprocess.Popen of ours is still running, so no
    Popen loses its return code to this.
    """
    own = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat and stat[0] == "Z" and int(stat[1]) == own:
            try:
                os.waitpid(int(entry.name), os.WNOHANG)
            except ChildProcessError:
                pass


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def kill_pids(pids: list[int], grace_s: float = 5.0) -> None:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL whatever is left."""
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    _signal_all([p for p in pids if _alive(p)], signal.SIGKILL)


def kill_marked(mark: str, extra_pids: list[int] = (), rounds: int = 5) -> None:
    """Stop ``extra_pids`` and every leftover of ``mark`` (see ``leftover_pids``).

    Several rounds, because a dying cluster may still spawn processes (Ray's
    raylet starting workers) between one scan and the signals.
    """
    for _ in range(rounds):
        pids = sorted(set(leftover_pids(mark)) | {p for p in extra_pids if _alive(p)})
        if not pids:
            break
        kill_pids(pids, grace_s=3.0)
    reap_zombie_children()


def leftover_pids(mark: str) -> list[int]:
    """Processes carrying ``mark``, plus any live descendant of ours.

    Called only once the spawned process has exited (or is being killed), so
    every descendant still alive is something a system left behind.
    """
    return sorted(set(marked_pids(mark)) | set(descendant_pids()))


def reap_leftovers(mark: str, grace_s: float = 10.0) -> list[str]:
    """Stop what a finished run left running; return 'pid name' for each.

    Waits ``grace_s`` first: a system's own teardown may still be finishing
    after its driver exits, and that is not a leak.
    """
    deadline = time.monotonic() + grace_s
    pids = leftover_pids(mark)
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = leftover_pids(mark)
    leaked = [f"{pid} {process_name(pid)}" for pid in pids]
    if pids:
        kill_marked(mark, pids)
    reap_zombie_children()
    return leaked


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, ppid) from /proc/PID/stat, or None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[1]


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
