"""One rich progress bar per operator: rows and blocks done, bytes in
flight, throughput. Off unless stderr is a terminal (and DataContext allows)."""
from __future__ import annotations

import sys
import time


def wanted(enabled: bool) -> bool:
    return bool(enabled) and sys.stderr.isatty()


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class ProgressBars:
    _INTERVAL_S = 0.2

    def __init__(self, names: list[str]):
        from rich.progress import BarColumn, Progress, TextColumn
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                  TextColumn("{task.completed}/{task.total} blocks"),
                                  TextColumn("{task.fields[info]}"),
                                  transient=False, refresh_per_second=5)
        self._tasks = [self._progress.add_task(n, total=None, info="") for n in names]
        self._progress.start()
        self._last = 0.0

    def update(self, rows_blocks_held_wall, total_blocks: int, force: bool = False):
        now = time.monotonic()
        if not force and now - self._last < self._INTERVAL_S:
            return
        self._last = now
        for task, (rows, blocks, held, wall) in zip(self._tasks, rows_blocks_held_wall):
            rate = rows / wall if wall > 0 else 0.0
            self._progress.update(task, completed=blocks, total=total_blocks,
                                  info=f"{rows} rows, {fmt_bytes(held)} in flight, "
                                       f"{rate:,.0f} rows/s")

    def close(self):
        self._progress.stop()
