"""Background tasks of a daemon that never die silently.

A ``Supervisor`` owns a daemon's background tasks (structured concurrency:
it cancels and awaits them all at shutdown). A long-running loop started
with ``keep_running`` that raises is logged with its traceback and
restarted after a short delay; if it keeps failing (``max_failures`` within
``window_s``) the supervisor calls ``on_fatal`` so the process goes down
loudly instead of living on without, say, its failure detector. One-shot
tasks (``spawn``) that raise are logged.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Awaitable, Callable

RESTART_DELAY_S = 0.5
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0


class Supervisor:
    def __init__(self, log: logging.Logger, on_fatal: Callable[[str], None],
                 restart_delay_s: float = RESTART_DELAY_S, max_failures: int = MAX_FAILURES,
                 window_s: float = FAILURE_WINDOW_S):
        assert max_failures >= 1
        self.log = log
        self.on_fatal = on_fatal
        self.restart_delay_s = restart_delay_s
        self.max_failures = max_failures
        self.window_s = window_s
        self.tasks: set[asyncio.Task] = set()
        self.restarts: collections.Counter = collections.Counter()   # name -> restarts so far

    def keep_running(self, name: str, factory: Callable[[], Awaitable[None]]) -> asyncio.Task:
        """Run ``factory()`` until it returns; restart it when it raises."""
        return self._track(asyncio.ensure_future(self._supervise(name, factory)))

    def spawn(self, name: str, coro: Awaitable) -> asyncio.Task:
        """A one-shot task; an exception it raises is logged, never lost."""
        task = self._track(asyncio.ensure_future(coro))
        task.add_done_callback(lambda t: self._log_failure(name, t))
        return task

    async def cancel_all(self) -> None:
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ internals
    def _track(self, task: asyncio.Task) -> asyncio.Task:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _supervise(self, name, factory) -> None:
        failures: collections.deque = collections.deque()
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                now = time.monotonic()
                failures.append(now)
                while failures and now - failures[0] > self.window_s:
                    failures.popleft()
                if len(failures) >= self.max_failures:
                    self.log.critical("background task %s failed %d times in %.0f s; giving up",
                                      name, len(failures), self.window_s, exc_info=True)
                    self.on_fatal(f"background task {name} keeps failing")
                    return
                self.log.exception("background task %s failed; restarting it", name)
                self.restarts[name] += 1
            await asyncio.sleep(self.restart_delay_s)

    def _log_failure(self, name: str, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.error("task %s failed", name, exc_info=exc)
