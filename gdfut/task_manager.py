"""Pure task bookkeeping of an owner: attempts and the retry decision.

Events: ``submitted``, ``worker_failed``, ``finished``. The decision on a
worker failure is ``Retry(attempt)`` while the task has retries left
(``max_retries``; -1 means retry forever, as in Ray), else ``Fail(reason)``.
Application exceptions are not retried here (Ray's ``retry_exceptions`` is off
by default). A generator task that already streamed items to its owner is not
retried: a new attempt would yield them again (its refs may be in use).
Lineage reconstruction will build on the same attempt counts.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Retry:
    attempt: int


@dataclass(frozen=True)
class Fail:
    reason: str


@dataclass
class _Task:
    max_retries: int
    attempt: int = 1


class TaskManager:
    def __init__(self):
        self._tasks: dict[bytes, _Task] = {}

    def submitted(self, tid: bytes, max_retries: int) -> None:
        assert tid not in self._tasks, "task submitted twice"
        assert max_retries >= -1
        self._tasks[tid] = _Task(max_retries)

    def worker_failed(self, tid: bytes, streamed: int = 0) -> Retry | Fail:
        """The worker running tid died; ``streamed``: items it already yielded."""
        task = self._tasks[tid]
        if streamed:
            return Fail(f"it had already yielded {streamed} item{'s' if streamed > 1 else ''}, "
                        f"which a retry would repeat")
        used = task.attempt - 1
        if task.max_retries == -1 or used < task.max_retries:
            task.attempt += 1
            return Retry(task.attempt)
        tries = task.attempt
        return Fail(f"gave up after {tries} attempt{'s' if tries > 1 else ''} "
                    f"(max_retries={task.max_retries})")

    def finished(self, tid: bytes) -> None:
        self._tasks.pop(tid, None)

    def attempt(self, tid: bytes) -> int:
        return self._tasks[tid].attempt

    def __len__(self):
        return len(self._tasks)

    def validate(self) -> None:
        for t in self._tasks.values():
            assert t.attempt >= 1
            assert t.max_retries == -1 or t.attempt <= t.max_retries + 1
