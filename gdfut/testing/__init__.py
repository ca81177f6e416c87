"""A multi-node cluster on one machine, for tests and experiments.

    with Cluster() as c:
        n1 = c.add_node(num_cpus=1)
        n2 = c.add_node(num_cpus=2, num_gpus=1)      # emulated GPU in CPU mode
        c.connect()                                  # gdfut.init(address=...)
        ...
        c.remove_node(n2)                            # the node dies (SIGKILL)

Each node daemon has its own resources, worker pool and store. Every process
is started by pid and stopped by pid; ``shutdown`` (also on ``__exit__``)
stops everything and removes shared memory even when a test failed.
"""
from __future__ import annotations

import glob
import os
import signal
import time
from dataclasses import dataclass

from .. import cluster as _cluster
from .. import protocol as P

DEFAULT_NODE_STORE = 256 * 1024 * 1024


@dataclass
class NodeHandle:
    node_id: str          # hex, as gdfut.get_runtime_context().get_node_id()
    daemon: _cluster.Daemon
    info: dict

    @property
    def pid(self) -> int:
        return self.daemon.popen.pid


class Cluster:
    def __init__(self, *, transport: str | None = None):
        self.session_dir = _cluster.new_session_dir()
        self.transport = transport
        self.token = open(os.path.join(self.session_dir, "token"), "rb").read()
        self.head = _cluster.spawn_head(self.session_dir)
        try:
            info = self.head.wait_ready()
        except BaseException:
            self.head.stop()
            raise
        self.head_addr = ("127.0.0.1", info["port"])
        self.nodes: list[NodeHandle] = []
        self.connected = False

    @property
    def address(self) -> str:
        return f"{self.head_addr[0]}:{self.head_addr[1]}"

    def add_node(self, num_cpus: float = 1, num_gpus: float = 0, resources: dict | None = None,
                 object_store_memory: int = DEFAULT_NODE_STORE, bind: str = "127.0.0.1",
                 wait: bool = True) -> NodeHandle:
        daemon = _cluster.spawn_node(self.session_dir, self.head_addr, num_cpus, num_gpus,
                                     resources, object_store_memory, bind=bind,
                                     transport=self.transport)
        try:
            info = daemon.wait_ready()
        except BaseException:
            daemon.stop()
            raise
        node = NodeHandle(info["node_id"], daemon, info)
        self.nodes.append(node)
        if wait:
            self.wait_for_nodes()
        return node

    def alive_nodes(self) -> list[dict]:
        from ..cli import head_request
        nodes = head_request(self.head_addr, self.token, P.HEAD_LIST_NODES)
        return [n for n in nodes if n["state"] == "ALIVE"]

    def wait_for_nodes(self, timeout: float = 20.0) -> None:
        """Until the head lists every live node we started (and heard a heartbeat
        with its data address)."""
        want = {n.node_id for n in self.nodes if n.daemon.popen.poll() is None}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            listed = {n["node_id"].hex(): n for n in self.alive_nodes() if n.get("stats")}
            if want <= set(listed) and all(self._sees(listed[w]["addr"], want) for w in want):
                return
            time.sleep(0.05)
        raise TimeoutError(f"nodes {want} did not all register (and see each other) "
                           f"within {timeout} s")

    def _sees(self, node_addr, want: set) -> bool:
        """Whether the node at ``node_addr`` has every node of ``want`` alive,
        with its data address and a heartbeat's free resources (placement sees
        a node without them as full), in its own view of the cluster (refreshed
        from the head every heartbeat): asked, rather than waited for."""
        from ..cli import Unreachable, request
        try:
            view = request(tuple(node_addr), self.token, P.NODE_CLUSTER_VIEW, timeout=5)
        except Unreachable:
            return False
        seen = {n["node_id"].hex() for n in view
                if n.get("state") == "ALIVE" and n.get("data_addr")
                and n.get("available") is not None}
        return want <= seen

    def remove_node(self, node: NodeHandle, graceful: bool = False) -> None:
        """Stop a node: SIGKILL by default (a crash), SIGTERM when graceful."""
        p = node.daemon.popen
        if p.poll() is None:
            p.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
            p.wait(10)
        if node.daemon.popen.stdout is not None:
            node.daemon.popen.stdout.close()
        self._unlink_arena(node)
        if node in self.nodes:
            self.nodes.remove(node)

    def connect(self, **init_options) -> dict:
        import gdfut
        info = gdfut.init(address=self.address, session_dir=self.session_dir, **init_options)
        self.connected = True
        return info

    def shutdown(self) -> None:
        if self.connected:
            import gdfut
            gdfut.shutdown()
            self.connected = False
        for node in list(self.nodes):
            node.daemon.stop()
            self._unlink_arena(node)
        self.nodes.clear()
        self.head.stop()
        for path in glob.glob(f"/dev/shm/gdfut-{os.path.basename(self.session_dir)}-*"):
            os.unlink(path)
        from ..devstore.disk_store import remove_dead_node_dirs    # of nodes killed mid-test
        remove_dead_node_dirs(os.path.join(self.session_dir, "spill"))

    def _unlink_arena(self, node: NodeHandle) -> None:
        try:
            os.unlink(os.path.join("/dev/shm", node.info["arena"]))
        except FileNotFoundError:
            pass

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
