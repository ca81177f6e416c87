"""Pure restart bookkeeping of one actor, kept by its owner (as in Ray, the
owner decides whether a dead actor comes back; for a detached actor handed
over to the head, the head's ``head_state.DetachedActor`` keeps it).

Events: ``worker_died(cause)`` (its worker process is gone and it was not
killed for good), ``call_lost(tid, streamed)`` (a call was in flight when it
died). Decisions: ``Restart(n)`` (run ``__init__`` again; the n-th restart)
while ``max_restarts`` allows (-1: forever), else ``StayDead(reason)``; a
lost call is retried while it has ``max_task_retries`` left (-1: forever)
and had not yet streamed items to its caller (a retry would yield them
again). Callers that are not the owner use ``call_lost`` the same way, with
the options the owner told them.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Restart:
    restarts: int        # this is the actor's n-th restart


@dataclass(frozen=True)
class StayDead:
    reason: str


def check_restart_option(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < -1:
        raise ValueError(f"{name} must be an int >= -1 (-1: without limit), got {value!r}")


@dataclass
class ActorRestarts:
    max_restarts: int = 0
    max_task_retries: int = 0
    restarts: int = 0
    call_retries: dict = field(default_factory=dict)   # tid -> retries used so far

    def __post_init__(self):
        assert self.max_restarts >= -1 and self.max_task_retries >= -1

    @property
    def may_restart(self) -> bool:
        return self.max_restarts == -1 or self.restarts < self.max_restarts

    def worker_died(self, cause: str) -> Restart | StayDead:
        if self.may_restart:
            self.restarts += 1
            return Restart(self.restarts)
        if self.max_restarts == 0:
            return StayDead(cause)
        n = self.restarts
        return StayDead(f"{cause}; it was restarted {n} time{'s' if n != 1 else ''} "
                        f"(max_restarts={self.max_restarts}) and died again")

    def call_lost(self, tid: bytes, streamed: int = 0) -> bool:
        """Retry this call on the restarted actor?"""
        used = self.call_retries.get(tid, 0)
        if streamed or not (self.max_task_retries == -1 or used < self.max_task_retries):
            self.call_retries.pop(tid, None)
            return False
        self.call_retries[tid] = used + 1
        return True

    def call_done(self, tid: bytes) -> None:
        self.call_retries.pop(tid, None)

    def validate(self) -> None:
        assert self.restarts >= 0
        assert self.max_restarts == -1 or self.restarts <= self.max_restarts
        for used in self.call_retries.values():
            assert used >= 1
            assert self.max_task_retries == -1 or used <= self.max_task_retries
