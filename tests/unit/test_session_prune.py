"""Old session directories are pruned; live and young ones are kept."""
import json
import os
import subprocess
import sys
import time

from gdfut import cluster


def _session(root, stamp, head_pid=None, age_s=0.0):
    path = root / f"session_{stamp}_1_abcd"
    (path / "logs").mkdir(parents=True)
    if head_pid is not None:
        (path / "head.json").write_text(json.dumps({"pid": head_pid, "port": 1}))
    old = time.time() - age_s
    os.utime(path, (old, old))
    return path


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_prune_keeps_newest_live_and_starting(tmp_path):
    dead = _dead_pid()
    oldest_dead = _session(tmp_path, "20260101-000000", dead, age_s=3600)
    old_live = _session(tmp_path, "20260101-000001", os.getpid(), age_s=3600)
    old_no_head = _session(tmp_path, "20260101-000002", None, age_s=3600)
    young_no_head = _session(tmp_path, "20260101-000003", None, age_s=1)
    newest = [_session(tmp_path, f"20260102-00000{i}", dead) for i in range(2)]
    (tmp_path / "session_latest").symlink_to(newest[-1])

    removed = cluster.prune_sessions(str(tmp_path), keep=2)

    assert sorted(removed) == sorted([str(oldest_dead), str(old_no_head)])
    for kept in [old_live, young_no_head, *newest]:
        assert kept.exists()
    assert (tmp_path / "session_latest").is_symlink()
