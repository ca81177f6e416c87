"""A rich progress display of a shuffle: maps, merges and reduces done, bytes
shuffled and spilled. Off when stdout is not a terminal or ``enabled=False``
(``enabled=None``: on only on a terminal)."""
from __future__ import annotations

import sys
import time

REFRESH_S = 0.25


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


class ShuffleProgress:
    def __init__(self, num_maps: int, num_reducers: int, enabled: bool | None = None,
                 stream=None):
        stream = stream if stream is not None else sys.stdout
        if enabled is None:
            enabled = bool(getattr(stream, "isatty", lambda: False)())
        self.enabled = bool(enabled)
        self.num_maps, self.num_reducers = num_maps, num_reducers
        self.stream = stream
        self._progress = None
        self._last = 0.0

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
            self._progress = Progress(TextColumn("{task.description:<8}"), BarColumn(),
                                      MofNCompleteColumn(), TextColumn("{task.fields[extra]}"),
                                      console=Console(file=self.stream), transient=False)
            self._progress.start()
            p = self._progress
            self._maps = p.add_task("maps", total=self.num_maps, extra="")
            self._merges = p.add_task("merges", total=None, extra="")
            self._reduces = p.add_task("reduces", total=self.num_reducers, extra="")
        return self

    def update(self, stats) -> None:
        if self._progress is None:
            return
        now = time.monotonic()
        if now - self._last < REFRESH_S and stats.reduces < self.num_reducers:
            return
        self._last = now
        p = self._progress
        p.update(self._maps, completed=stats.maps,
                 extra=f"shuffled {_gb(stats.bytes_shuffled)}")
        p.update(self._merges, completed=stats.merges, extra="")
        p.update(self._reduces, completed=stats.reduces,
                 extra=f"spilled {_gb(stats.spilled_bytes)}")

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        return False
