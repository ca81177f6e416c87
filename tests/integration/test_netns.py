"""A head and two nodes on separate network hosts (namespaces) on one machine.

Skipped with a reason when not root or when ``ip netns`` does not work here.
Addresses are in 10.213.0.0/24 on a bridge this test creates and removes.
"""
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from gdfut import cluster as _cluster
from helpers import shm_files

SUBNET = "10.213.0"


def _sh(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, check=check)


def _netns_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for ip netns"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"gdfut-probe-{uuid.uuid4().hex[:6]}"
    r = _sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns does not work here: {r.stderr.strip()}"
    _sh("ip", "netns", "del", probe, check=False)
    return None


class Hosts:
    """Three namespaces h0..h2 bridged in the root namespace."""

    def __init__(self):
        tag = uuid.uuid4().hex[:4]
        self.bridge = f"gdbr{tag}"
        self.names = [f"gdfut-{tag}-h{i}" for i in range(3)]
        self.ips = [f"{SUBNET}.{10 + i}" for i in range(3)]
        self.veths = [f"gdv{tag}{i}" for i in range(3)]

    def up(self):
        _sh("ip", "link", "add", self.bridge, "type", "bridge")
        _sh("ip", "link", "set", self.bridge, "up")
        for ns, ip, veth in zip(self.names, self.ips, self.veths):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _sh("ip", "link", "set", veth, "master", self.bridge)
            _sh("ip", "link", "set", veth, "up")
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def down(self):
        for ns, veth in zip(self.names, self.veths):
            _sh("ip", "link", "del", veth, check=False)
            _sh("ip", "netns", "del", ns, check=False)
        _sh("ip", "link", "del", self.bridge, check=False)

    def popen(self, i, args, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.names[i], sys.executable, *args],
                                stdin=subprocess.DEVNULL, **kw)


DRIVER = textwrap.dedent("""
    import sys, numpy as np, gdfut
    gdfut.init(address=sys.argv[1], session_dir=sys.argv[2])
    nodes = [n for n in gdfut.nodes() if n["state"] == "ALIVE"]
    ids = sorted(n["node_id"].hex() for n in nodes)
    assert len(ids) == 2, ids

    @gdfut.remote
    def make(seed):
        arr = np.random.default_rng(seed).integers(0, 1000, size=2_000_000)
        return arr, gdfut.get_runtime_context().get_node_id()

    @gdfut.remote
    def consume(pair):
        arr, made_on = pair
        return int(arr.sum()), made_on, gdfut.get_runtime_context().get_node_id()

    on = [gdfut.NodeAffinitySchedulingStrategy(i) for i in ids]
    made = make.options(scheduling_strategy=on[0]).remote(3)
    total, made_on, used_on = gdfut.get(consume.options(scheduling_strategy=on[1]).remote(made))
    expect = int(np.random.default_rng(3).integers(0, 1000, size=2_000_000).sum())
    assert total == expect and made_on == ids[0] and used_on == ids[1], (total, made_on, used_on)
    back, _ = gdfut.get(made)                  # pulled to the driver's node as well
    assert int(back.sum()) == expect
    print("CROSS-HOST OK", made_on[:8], "->", used_on[:8], flush=True)
    gdfut.shutdown()
""")


@pytest.fixture
def hosts():
    reason = _netns_usable()
    if reason:
        pytest.skip(reason)
    h = Hosts()
    try:
        h.up()
        yield h
    finally:
        h.down()


def _wait_line(p, timeout=30):
    return _cluster._readline(p, timeout)


def test_task_graph_across_network_hosts(hosts, tmp_path):
    session = _cluster.new_session_dir()
    procs = []
    try:
        head = hosts.popen(0, ["-m", "gdfut.head", "--session-dir", session, "--bind",
                               hosts.ips[0]], stdout=subprocess.PIPE)
        procs.append(head)
        port = __import__("json").loads(_wait_line(head))["port"]
        address = f"{hosts.ips[0]}:{port}"
        for i in (1, 2):
            node = hosts.popen(i, ["-m", "gdfut.node", "--session-dir", session,
                                   "--head-addr", address, "--bind", hosts.ips[i],
                                   "--num-cpus", "1", "--num-gpus", "0",
                                   "--object-store-memory", str(128 * 1024 * 1024)],
                               stdout=subprocess.PIPE)
            procs.append(node)
            assert _wait_line(node), "node did not start"
        time.sleep(2.5)            # heartbeats: every node learns the other
        script = tmp_path / "driver.py"
        script.write_text(DRIVER)
        driver = hosts.popen(1, [str(script), address, session], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=str(tmp_path))
        out, err = driver.communicate(timeout=120)
        assert driver.returncode == 0, err[-3000:]
        assert "CROSS-HOST OK" in out
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if p.stdout:
                p.stdout.close()
        for path in shm_files(session):
            os.unlink(path)
