"""Pure task bookkeeping of an owner: attempts and the retry decision.

Events: ``submitted``, ``worker_failed``, ``task_raised``, ``finished``. The
decision on a worker failure is ``Retry(attempt)`` while the task has retries
left (``max_retries``; -1 means retry forever, as in Ray), else
``Fail(reason)``. An application exception is retried the same way only when
the task's ``retry_exceptions`` says so (Ray's option, off by default): True
retries any ``Exception``, a tuple of class names retries an exception whose
class has one of them among its bases. Both kinds of retry draw on the one
``max_retries`` budget, as in Ray. A generator task that already streamed
items to its owner is not retried: a new attempt would yield them again (its
refs may be in use).
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


# What ``retry_exceptions=True`` matches: any Exception (not a BaseException
# such as KeyboardInterrupt or SystemExit), as in Ray.
ANY_EXCEPTION = "builtins.Exception"


def class_names(classes) -> tuple[str, ...]:
    """``module.name`` of each class: how an error's classes are named between
    the worker that raised it and the owner that decides. Not the qualified
    name: cloudpickle rebuilds a class defined in a function (pickled by
    value) with ``__qualname__`` reset to its bare name in another process."""
    return tuple(f"{c.__module__}.{c.__name__}" for c in classes)


@dataclass
class _Task:
    max_retries: int
    attempt: int = 1
    retry_exceptions: bool | tuple = False   # True, or class names (see class_names)


class TaskManager:
    def __init__(self):
        self._tasks: dict[bytes, _Task] = {}

    def submitted(self, tid: bytes, max_retries: int,
                  retry_exceptions: bool | tuple = False) -> None:
        assert tid not in self._tasks, "task submitted twice"
        assert max_retries >= -1
        self._tasks[tid] = _Task(max_retries, retry_exceptions=retry_exceptions)

    def worker_failed(self, tid: bytes, streamed: int = 0) -> Retry | Fail:
        """The worker running tid died; ``streamed``: items it already yielded."""
        task = self._tasks[tid]
        if streamed:
            return Fail(f"it had already yielded {streamed} item{'s' if streamed > 1 else ''}, "
                        f"which a retry would repeat")
        return self._next_attempt(task)

    def task_raised(self, tid: bytes, error_classes, streamed: int = 0) -> Retry | Fail:
        """The task raised an exception whose class and bases are named
        ``error_classes`` (``module.name``, most derived first; empty when
        the worker did not say). Retry while ``retry_exceptions`` covers it
        and retries are left; else the error is the task's result."""
        task = self._tasks[tid]
        wanted = task.retry_exceptions
        if wanted is True:
            wanted = (ANY_EXCEPTION,)
        if not wanted or not set(wanted) & set(error_classes):
            return Fail("its exception is not one retry_exceptions lists")
        if streamed:
            return Fail(f"it had already yielded {streamed} item{'s' if streamed > 1 else ''}")
        return self._next_attempt(task)

    @staticmethod
    def _next_attempt(task: _Task) -> Retry | Fail:
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
