"""The ``gdfut`` command line against real detached daemons.

Every test that starts a cluster stops it in ``finally`` (``gdfut stop
--session-dir``), so a failing assertion leaves no daemon or /dev/shm file.
All commands name their session explicitly: other tests may start sessions
concurrently and move ``session_latest``.
"""
from __future__ import annotations

import glob
import json
import os
import re
import select
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STORE_BYTES = 64 * 1024 * 1024


def gdfut_cli(*args, check=True, timeout=60):
    """Run ``python -m gdfut.cli ARGS`` and return the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "gdfut.cli", *args], cwd=REPO,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"gdfut {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def wait_until(pred, timeout=15.0, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def recorded_pids(session_dir):
    with open(os.path.join(session_dir, "pids")) as f:
        return [int(line.split()[1]) for line in f if line.strip()]


def shm_files(session_dir):
    return glob.glob(f"/dev/shm/gdfut-{os.path.basename(session_dir)}-*")


def start_head(*extra):
    """``gdfut start --head`` -> (address, session_dir, stdout)."""
    proc = gdfut_cli("start", "--head", "--num-cpus", "1", "--object-store-memory",
                     str(STORE_BYTES), *extra, check=False)
    session = re.search(r"session dir:\s+(\S+)", proc.stdout)
    if proc.returncode != 0:
        if session:
            gdfut_cli("stop", "--session-dir", session.group(1), check=False)
        raise AssertionError(f"start --head failed: {proc.stdout}\n{proc.stderr}")
    address = re.search(r"gdfut head started at (\S+)", proc.stdout).group(1)
    return address, session.group(1), proc.stdout


def status_json(session_dir):
    return json.loads(gdfut_cli("status", "--session-dir", session_dir, "--json").stdout)


def alive_nodes_with_stats(session_dir, n):
    nodes = [x for x in status_json(session_dir)["nodes"]
             if x["state"] == "ALIVE" and x.get("stats")]
    return nodes if len(nodes) == n else None


DRIVER = r"""
import sys
import numpy as np
import gdfut

gdfut.init(address=sys.argv[1], session_dir=sys.argv[2])

@gdfut.remote
def add_one(x):
    return x + 1

assert gdfut.get(add_one.remote(1)) == 2
ref = gdfut.put(np.arange(1 << 18, dtype=np.int64))     # 2 MiB: lives in the node's store
extra = []
if len(sys.argv) > 3 and sys.argv[3] == "inline":
    extra.append(add_one.remote(41))                    # small result: inline in the driver
    assert gdfut.get(extra[-1]) == 42
print("READY", ref.hex(), flush=True)
sys.stdin.readline()                                    # hold the refs until told to exit
assert int(gdfut.get(ref).sum()) == (1 << 18) * ((1 << 18) - 1) // 2
print("DONE", flush=True)
"""


class Driver:
    def __init__(self, address, session_dir, *extra):
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER, address, session_dir, *extra],
                                     cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def readline(self, timeout=60.0):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise AssertionError("driver printed nothing in time")
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(5)
            raise AssertionError(f"driver exited {self.proc.returncode}: "
                                 f"{self.proc.stderr.read()}")
        return line.split()

    def finish(self, timeout=30.0):
        out, err = self.proc.communicate("exit\n", timeout=timeout)
        assert self.proc.returncode == 0, err
        return out

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_cli_cluster_lifecycle():
    address, session, out = start_head()
    driver = None
    try:
        assert f'gdfut.init(address="{address}")' in out
        assert f"gdfut stop --session-dir {session}" in out
        with open(os.path.join(session, "address")) as f:
            assert f.read().strip() == address
        pids = recorded_pids(session)
        assert len(pids) == 2                       # head and node, still running after the
        assert all(pid_alive(p) for p in pids)      # CLI process exited

        # status: one ALIVE node, CPU total 1, a 64 MiB store
        (node,) = wait_until(lambda: alive_nodes_with_stats(session, 1), what="heartbeat stats")
        assert node["stats"]["resources_total"]["CPU"] == 1
        assert node["stats"]["store"]["capacity"] == STORE_BYTES
        text = gdfut_cli("status", "--session-dir", session).stdout
        assert "ALIVE" in text and "0/1" in text and "64.0 MiB" in text
        assert os.path.join(session, "logs") in text
        # ... also when asked by address only (token from the session dir)
        assert "ALIVE" in gdfut_cli("status", "--address", address, "--session-dir",
                                    session).stdout

        # a driver joins, runs a task and holds a put object: `gdfut memory` lists it
        driver = Driver(address, session)
        tag, oid_hex = driver.readline()
        assert tag == "READY"
        listing = json.loads(gdfut_cli("memory", "--session-dir", session, "--json").stdout)
        rows = [r for node_listing in listing for r in node_listing["owners"]]
        mine = [r for r in rows if r["oid"] == oid_hex]
        assert len(mine) == 1, rows
        row = mine[0]
        assert row["owned"] and row["owner_mode"] == "driver" and row["state"] == "READY"
        assert row["local"] >= 1 and row["size"] >= 2 * 1024 * 1024
        mem_text = gdfut_cli("memory", "--session-dir", session).stdout
        assert f"{oid_hex[:16]}:put" in mem_text, mem_text
        assert "driver" in mem_text and "READY" in mem_text
        assert driver.finish().split()[-1] == "DONE"
        driver = None

        # a second node joins the running head
        joined = gdfut_cli("start", "--address", address, "--session-dir", session,
                           "--num-cpus", "2", "--object-store-memory", str(32 * 1024 * 1024),
                           "--resources", '{"accel": 2}')
        assert "joining the head" in joined.stdout
        assert len(recorded_pids(session)) == 3
        nodes = wait_until(lambda: alive_nodes_with_stats(session, 2), what="two nodes")
        cpus = sorted(n["stats"]["resources_total"]["CPU"] for n in nodes)
        assert cpus == [1, 2]
        text = gdfut_cli("status", "--session-dir", session).stdout
        assert "2 alive" in text and "accel 0/2" in text
    finally:
        if driver is not None:
            driver.kill()
        pids = recorded_pids(session)
        stopped = gdfut_cli("stop", "--session-dir", session, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.count("stopped ") >= 3, stopped.stdout
    assert not [p for p in pids if pid_alive(p)]
    assert not shm_files(session)
    # stopping again is harmless and says there was nothing to stop
    again = gdfut_cli("stop", "--session-dir", session)
    assert "no gdfut process" in again.stdout


def test_stop_cleans_up_after_sigkilled_node():
    """A node killed with SIGKILL cannot unlink its arena: `stop` removes it and its workers."""
    import signal
    address, session, _ = start_head()
    try:
        wait_until(lambda: alive_nodes_with_stats(session, 1), what="node")
        assert shm_files(session)
        with open(os.path.join(session, "pids")) as f:
            node_pid = next(int(p) for k, p in (line.split() for line in f) if k == "node")
        os.kill(node_pid, signal.SIGKILL)
        wait_until(lambda: not pid_alive(node_pid), what="node to die")
    finally:
        stopped = gdfut_cli("stop", "--session-dir", session, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert "removed leftover shared memory" in stopped.stdout
    assert not shm_files(session)
    assert not [p for p in recorded_pids(session) if pid_alive(p)]


def test_memory_lists_inline_objects():
    address, session, _ = start_head()
    driver = None
    try:
        driver = Driver(address, session, "inline")
        assert driver.readline()[0] == "READY"
        proc = gdfut_cli("memory", "--session-dir", session, "--json", "--timeout", "5")
        assert "no object listing" not in proc.stderr, proc.stderr
        rows = [r for node_listing in json.loads(proc.stdout) for r in node_listing["owners"]]
        assert any(r["owned"] and r["owner_mode"] == "driver" and r["size"] is not None
                   and r["size"] < 1024 for r in rows), rows
    finally:
        if driver is not None:
            driver.kill()
        gdfut_cli("stop", "--session-dir", session, check=False)


def test_status_of_unreachable_head_fails_clearly(tmp_path):
    session = tmp_path / "session"
    (session / "logs").mkdir(parents=True)
    (session / "token").write_bytes(os.urandom(32))
    proc = gdfut_cli("status", "--address", "127.0.0.1:1", "--session-dir", str(session),
                     check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "cannot reach the gdfut head at 127.0.0.1:1" in proc.stderr
    assert proc.stdout == ""


def test_bad_input_is_one_line_errors(tmp_path):
    cases = [
        (["status", "--address", "127.0.0.1:1", "--session-dir", str(tmp_path / "none")],
         "is not a gdfut session directory"),
        (["status", "--address", "no-port", "--session-dir", str(tmp_path)], "bad address"),
        (["memory", "--address", "127.0.0.1:1", "--session-dir", str(tmp_path / "none")],
         "is not a gdfut session directory"),
        (["stop", "--session-dir", str(tmp_path / "none")], "is not a gdfut session directory"),
        (["start", "--head", "--resources", "{nope"], "--resources is not valid JSON"),
        (["start"], "give exactly one of --head"),
    ]
    for argv, message in cases:
        proc = gdfut_cli(*argv, check=False)
        assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
        assert message in proc.stderr, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_stop_refuses_sessions_it_did_not_start(tmp_path):
    (tmp_path / "token").write_bytes(os.urandom(32))      # like an embedded gdfut.init() session
    proc = gdfut_cli("stop", "--session-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and "was not started by `gdfut start`" in proc.stderr


def test_resource_cells():
    from gdfut.cli import _bytes, _oid, _res_cell
    busy = {"resources_total": {"CPU": 2, "GPU": 1}, "resources_available": {"GPU": 0.5}}
    assert _res_cell(busy, "CPU") == "2/2"               # missing from available: all in use
    assert _res_cell(busy, "GPU") == "0.5/1"
    assert _res_cell(busy, "accel") == "-"
    assert _res_cell({}, "CPU") == "-"                    # a dead node has no stats
    assert _bytes(64 * 1024 * 1024) == "64.0 MiB" and _bytes(12) == "12 B"
    assert _oid(bytes(range(16)) + b"\xff\xff\xff\xff") == "0001020304050607:put"
    assert _oid(bytes(range(16)) + b"\x00\x00\x00\x02") == "0001020304050607:2"


def test_wrong_token_is_reported(tmp_path):
    address, session, _ = start_head()
    try:
        other = tmp_path / "other"
        other.mkdir()
        (other / "token").write_bytes(os.urandom(32))
        proc = gdfut_cli("status", "--address", address, "--session-dir", str(other),
                         check=False)
        assert proc.returncode == 1
        assert "authentication failed" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        gdfut_cli("stop", "--session-dir", session, check=False)


def test_sort_benchmark_joins_a_cli_cluster_by_address():
    """``python -m gdfut.shuffle.sort --address`` runs on the cluster it names:
    90 MB of records through that cluster's 64 MiB store must spill there (a
    cluster of its own would get a store of several GiB and not spill)."""
    address, session, _ = start_head("--num-cpus", "2")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "gdfut.shuffle.sort", "--address", address,
             "--session-dir", session, "--records", "900000", "--maps", "6",
             "--reducers", "4", "--json"],
            cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rep = json.loads(proc.stdout.strip().splitlines()[-1])
        assert rep["ok"] and rep["errors"] == [] and rep["records"] == 900000
        assert rep["spilled_bytes"] > 0 and rep["peak_spill_dir_bytes"] > 0
        assert all(pid_alive(p) for p in recorded_pids(session))   # the cluster outlives it
    finally:
        pids = recorded_pids(session)
        stopped = gdfut_cli("stop", "--session-dir", session, check=False)
    assert stopped.returncode == 0, stopped.stderr
    assert not [p for p in pids if pid_alive(p)]
    assert not shm_files(session)
    assert not glob.glob(os.path.join(session, "spill", "*", "spill-*"))   # spill files gone
