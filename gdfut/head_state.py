"""Pure decisions of the head's durable state: actor names in namespaces,
who owns a detached actor, and what a node's registration means after the
head restarted.

The head (``head.py``) keeps nodes, named and detached actors, jobs,
placement groups (``head_pgs.py``), the processes each node runs and the
dead-process log in SQLite in the session directory, written on
control-plane events only (registrations, deaths), never per task. A
restarted head reads them back; then:

* every node that was ALIVE is *awaited*: it stays listed ALIVE until it
  registers again or ``grace_s`` passes, then it is DEAD (its processes
  died with it, as for any dead node);
* a node that registers again sends the full list of its live processes;
  processes the head had recorded for it that are not in that list died
  while the head was down (``NodeRecovery.registered``), and are handled as
  any reported death: their objects are freed cluster-wide and the named
  actors they owned lose their names (``actors_after_deaths``);
* named actors are kept: a non-detached one until its owner is known dead,
  a detached one until its worker is (or ``gdfut.kill``).

Ownership of a detached actor: its creator starts it as any actor, then
hands it over: the lease on its worker is held by the worker itself (so the
creator's exit does not kill it) and the head records the actor's own
worker as the owner of its metadata (``HEAD_ACTOR_PLACED``). Handles from
``get_actor`` then ask the actor's worker where it is and tell it to die.
Until its spec is handed over too (``DetachedActor``: once its first
``__init__`` succeeded, with ``max_restarts``) its creator decides
restarts (and hands the new worker over again); from then on the head does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

LIFETIMES = (None, "non_detached", "detached")
MAX_NAMESPACE_LEN = 256
_NAMESPACE_RE = re.compile(r"^[^\x00-\x1f]+$")
ANONYMOUS_PREFIX = "anonymous-"


def check_lifetime(value) -> bool:
    """Ray's ``lifetime`` option: True when detached."""
    if value not in LIFETIMES:
        raise ValueError(f"lifetime must be 'detached', 'non_detached' or None, got {value!r}")
    return value == "detached"


def check_namespace(value, what: str = "namespace") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_NAMESPACE_LEN \
            or not _NAMESPACE_RE.match(value):
        raise ValueError(f"{what} must be a non-empty string of printable characters "
                         f"(at most {MAX_NAMESPACE_LEN}), got {value!r}")
    return value


def anonymous_namespace(driver_wid: bytes) -> str:
    """A job that names no namespace gets one of its own (Ray's anonymous
    namespace): its named actors are invisible to other jobs unless they
    give this name."""
    return ANONYMOUS_PREFIX + driver_wid.hex()


@dataclass(frozen=True)
class ActorRow:
    namespace: str
    name: str
    actor_id: bytes
    creator_wid: bytes | None   # None once the creator of a handed-over detached actor died
    owner_wid: bytes            # who answers for it: the creator, or after the
    detached: bool              # hand-over a detached actor's own worker

    @property
    def handed_over(self) -> bool:
        return self.detached and self.owner_wid != self.creator_wid


def actors_after_deaths(rows, dead_wids) -> tuple[list, list]:
    """(actor ids whose names go, actor ids whose creator is forgotten)
    because the processes ``dead_wids`` died.

    A non-detached actor goes with its creator (its owner). A detached one
    goes when nobody can answer for it any more: its creator died before the
    hand-over (the actor dies with it: it still held the lease), or its
    creator and, after the hand-over, its worker are both dead. While the
    creator lives it frees the name itself (or restarts the actor and hands
    it over again), so a worker's death alone changes nothing here."""
    dead = set(dead_wids)
    gone, creator_gone = [], []
    for r in rows:
        creator_dead = r.creator_wid is None or r.creator_wid in dead
        if not r.detached or not r.handed_over:
            if creator_dead:
                gone.append(r.actor_id)
        elif creator_dead and r.owner_wid in dead:
            gone.append(r.actor_id)
        elif creator_dead and r.creator_wid is not None:
            creator_gone.append(r.actor_id)
    return gone, creator_gone


# ------------------------------------------------------------ head restart
@dataclass
class NodeRecovery:
    """Nodes a restarted head waits for. ``awaited`` maps node id to the time
    (on the caller's clock) after which it is declared dead."""

    awaited: dict = field(default_factory=dict)

    @classmethod
    def after_restart(cls, node_states: dict, now: float, grace_s: float) -> "NodeRecovery":
        assert grace_s > 0
        return cls({n: now + grace_s for n, state in node_states.items() if state == "ALIVE"})

    def node_back(self, node_id: bytes) -> bool:
        """The node registered: no longer awaited. True if it was."""
        return self.awaited.pop(node_id, None) is not None

    def registered(self, node_id: bytes, recorded: set, live: set) -> set:
        """After registering, the node listed its ``live`` processes; the
        head had ``recorded`` for it. Returns the processes that died unseen
        (always computed: a node that registers again on a new connection to
        a head that never stopped reports the same way)."""
        self.node_back(node_id)
        return set(recorded) - set(live)

    def expired(self, now: float) -> list:
        """Awaited nodes whose grace is over: they are dead."""
        gone = [n for n, deadline in self.awaited.items() if now >= deadline]
        for n in gone:
            del self.awaited[n]
        return gone


def reconnect_delay(attempt: int, base: float, cap: float) -> float:
    """Seconds a node waits before its ``attempt``-th reconnect to the head
    (0 first): doubling from ``base`` up to ``cap``, so a head that comes
    back is found within ``cap`` seconds."""
    assert attempt >= 0 and 0 < base <= cap
    return min(cap, base * (2 ** min(attempt, 30)))


def dead_seq_to_serve(asked: int, current: int) -> int:
    """A node asks for deaths after ``asked``; the log is at ``current``. A
    node ahead of the log talked to a head whose log was lost: it gets the
    whole retained log again (repeats are harmless)."""
    return 0 if asked > current else asked


# ------------------------------------------------- detached actor restarts
ALIVE, RESTARTING, DEAD = "ALIVE", "RESTARTING", "DEAD"


@dataclass
class DetachedActor:
    """The head's record of a detached actor it restarts (as Ray's GCS
    does): its creation spec, captured by value when its first ``__init__``
    succeeded (``HEAD_ACTOR_SPEC``), where it runs, and its restart count
    (the pure ``ActorRestarts`` decides). From the hand-over on the head
    alone decides its restarts, whether its creator lives or not."""

    actor_id: bytes
    spec: dict
    restarts: object                 # actor_restarts.ActorRestarts
    state: str = ALIVE
    worker_wid: bytes | None = None
    worker_addr: tuple | None = None
    node_id: bytes | None = None
    reason: str = ""

    def placed(self, worker_wid: bytes, worker_addr, node_id: bytes) -> None:
        assert self.state != DEAD
        self.state = ALIVE
        self.worker_wid, self.worker_addr, self.node_id = worker_wid, tuple(worker_addr), node_id

    def worker_died(self, wid: bytes, reason: str):
        """Its worker ``wid`` died: ``Restart`` (go RESTARTING) or
        ``StayDead`` (go DEAD), or None when ``wid`` is not its live worker."""
        from .actor_restarts import Restart
        if self.state != ALIVE or wid != self.worker_wid:
            return None
        decision = self.restarts.worker_died(reason)
        if isinstance(decision, Restart):
            self.state = RESTARTING
        else:
            self.died(decision.reason)
        self.worker_wid = self.worker_addr = self.node_id = None
        return decision

    def restart_failed(self, reason: str) -> None:
        """A restart could not place or start it (unschedulable, __init__ raised)."""
        self.died(reason)

    def died(self, reason: str) -> None:
        self.state = DEAD
        self.reason = reason
        self.worker_wid = self.worker_addr = self.node_id = None

    def location(self, dead_worker: bytes | None) -> str:
        """What a caller that asks where it is gets now: "answer" (its
        location), "dead" (the reason) or "wait" (restarting, or the caller
        saw ``dead_worker`` die before the head did)."""
        if self.state == DEAD:
            return "dead"
        if self.state == RESTARTING or (dead_worker is not None
                                        and dead_worker == self.worker_wid):
            return "wait"
        return "answer"

    def options(self) -> dict:
        return {"max_restarts": self.restarts.max_restarts,
                "max_task_retries": self.restarts.max_task_retries, "detached": True}

    def validate(self) -> None:
        self.restarts.validate()
        assert self.state in (ALIVE, RESTARTING, DEAD)
        assert (self.worker_wid is not None) == (self.state == ALIVE)
