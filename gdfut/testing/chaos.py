"""Chaos harness: kill a random worker or node daemon every N seconds.

    with Cluster() as c:
        ...nodes...
        c.connect()
        with Chaos(c, seed=3, interval_s=0.5, kinds=("worker",)) as chaos:
            results = gdfut.get(workload())
        print(chaos.kills)              # what died, in order

Victims are found from what the cluster knows: the node daemons the head
lists (their pids) and each daemon's worker processes (its children). The
head, the driver (this process) and the driver's own node are never chosen
unless ``allow_driver_node=True``; nodes in ``spare`` never either. Killing is
SIGKILL (a crash, not a shutdown). A node killed through a ``Cluster`` is also
removed from it (its arena unlinked), as ``Cluster.remove_node`` does.

The choice is a pure function of the seed and the candidates
(``choose_victim``), so a failing run names the seed that reproduces which
kind of process died in which order; *when* it lands in the workload still
depends on timing. Use it as a context manager (a background thread kills
every ``interval_s``) or call ``kill_one()`` yourself at chosen points.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass

import psutil

KINDS = ("worker", "node")
MAX_KILLS_DEFAULT = 1000     # a bound on the record (and on a runaway loop)


@dataclass(frozen=True)
class Target:
    kind: str                  # "worker" or "node"
    pid: int
    node_id: str               # hex: the node it is (or runs on)


@dataclass(frozen=True)
class Kill:
    at: float                  # seconds since the harness started
    target: Target


def choose_victim(rng: random.Random, candidates: list[Target], kinds: tuple) -> Target | None:
    """Pick a kind among those with candidates, then a process of that kind.

    Picking the kind first keeps node kills as likely as worker kills even
    though workers outnumber daemons. Candidates are sorted first so the
    choice depends only on the seed and the set, not on listing order."""
    by_kind = {k: sorted((t for t in candidates if t.kind == k), key=lambda t: (t.node_id, t.pid))
               for k in kinds}
    present = [k for k in kinds if by_kind[k]]
    if not present:
        return None
    return rng.choice(by_kind[rng.choice(present)])


class Chaos:
    """Seeded process killer for a running cluster (see module doc).

    ``cluster``: a ``gdfut.testing.Cluster`` (its head and nodes are known);
    ``kinds``: which processes may die (``"worker"``, ``"node"``);
    ``interval_s``: time between kills of the background thread (the first
    comes after ``first_after_s``, default one interval); ``max_kills``: stop
    after that many; ``spare``: node ids (hex) never touched, nor their
    workers; ``min_nodes``: never kill a node daemon when that would leave
    fewer alive."""

    def __init__(self, cluster, *, seed: int = 0, interval_s: float = 1.0,
                 kinds: tuple = ("worker",), max_kills: int | None = None,
                 first_after_s: float | None = None, spare: tuple = (),
                 allow_driver_node: bool = False, min_nodes: int = 1):
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s!r}")
        if max_kills is not None and max_kills < 0:
            raise ValueError(f"max_kills must be >= 0 or None, got {max_kills!r}")
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.seed = seed
        self.interval_s = float(interval_s)
        self.first_after_s = self.interval_s if first_after_s is None else float(first_after_s)
        self.kinds = tuple(kinds)
        self.max_kills = MAX_KILLS_DEFAULT if max_kills is None else max_kills
        self.spare = set(spare)
        self.allow_driver_node = allow_driver_node
        self.min_nodes = min_nodes
        self.kills: list[Kill] = []
        self.errors: list[str] = []          # kills that failed (process gone meanwhile...)
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ victims
    def protected_pids(self) -> set[int]:
        pids = {os.getpid()}
        head = getattr(self.cluster, "head", None)
        if head is not None:
            pids.add(head.popen.pid)
        return pids

    def protected_nodes(self) -> set[str]:
        nodes = set(self.spare)
        if not self.allow_driver_node:
            node = _driver_node_id()
            if node is not None:
                nodes.add(node)
        return nodes

    def candidates(self) -> list[Target]:
        """Live processes of ``kinds`` that may die now."""
        protected, spare = self.protected_pids(), self.protected_nodes()
        nodes = [(n.node_id, n.pid) for n in list(self.cluster.nodes)
                 if n.daemon.popen.poll() is None]
        out = []
        for node_id, pid in nodes:
            if node_id in spare:
                continue
            if "node" in self.kinds and len(nodes) > self.min_nodes and pid not in protected:
                out.append(Target("node", pid, node_id))
            for child in _children(pid) if "worker" in self.kinds else ():
                if child not in protected:
                    out.append(Target("worker", child, node_id))
        return out

    # ------------------------------------------------------------ killing
    def kill_one(self) -> Kill | None:
        """Kill one process now; None when nothing may die."""
        if len(self.kills) >= self.max_kills:
            return None
        target = choose_victim(self.rng, self.candidates(), self.kinds)
        if target is None:
            return None
        try:
            if target.kind == "node":
                self._kill_node(target)
            else:
                os.kill(target.pid, signal.SIGKILL)
        except (ProcessLookupError, psutil.Error, OSError) as exc:
            self.errors.append(f"{target}: {exc}")
            return None
        kill = Kill(round(time.monotonic() - self._started, 3), target)
        self.kills.append(kill)
        return kill

    def _kill_node(self, target: Target) -> None:
        for node in list(self.cluster.nodes):
            if node.pid == target.pid:
                self.cluster.remove_node(node)      # SIGKILL, wait, unlink its arena
                return
        os.kill(target.pid, signal.SIGKILL)

    # ------------------------------------------------------------ background
    def start(self) -> "Chaos":
        if self._thread is not None:
            raise RuntimeError("this Chaos is running already")
        self._started = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"chaos-{self.seed}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Kill]:
        """Stop killing (waits for a kill in progress); returns the kills."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join(30)
            self._thread = None
        return list(self.kills)

    def _loop(self) -> None:
        wait = self.first_after_s
        while not self._stop.wait(wait) and len(self.kills) < self.max_kills:
            try:
                self.kill_one()
            except Exception as exc:             # a test helper must not die silently
                self.errors.append(f"{type(exc).__name__}: {exc}")
            wait = self.interval_s

    def summary(self) -> str:
        return (f"chaos seed={self.seed}: " +
                ", ".join(f"{k.target.kind} {k.target.pid}@{k.at}s" for k in self.kills)
                or "nothing killed")

    def __enter__(self) -> "Chaos":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _children(pid: int) -> list[int]:
    try:
        return sorted(c.pid for c in psutil.Process(pid).children()
                      if c.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return []


def _driver_node_id() -> str | None:
    """The node this process (a driver) is registered with, if any."""
    from .. import runtime_context
    node = getattr(runtime_context.current(), "node_id", None)
    return node.hex() if isinstance(node, bytes) else node
