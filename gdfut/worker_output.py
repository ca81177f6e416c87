"""What tasks print, shown where the work was submitted (Ray's log_to_driver).

In a worker, ``sys.stdout`` and ``sys.stderr`` become ``OutputForwarder``s:
every write still goes to the worker's log file, and each complete line is
also queued with the label of the task that printed it ("(fn pid=123)"). The
io thread sends queued lines, batched, to the process that submitted the
running task. A driver prints them with the label; a worker that receives
lines (output of tasks it submitted) relays them, label unchanged, to its own
submitter, so nested output reaches the driver too.

Bounded: at most MAX_PENDING_LINES wait to be sent and lines are cut at
MAX_LINE_CHARS; what does not fit is counted and reported as dropped, never
allowed to grow memory or block the task.
"""
from __future__ import annotations

import io
import sys
import threading

from . import protocol as P

MAX_PENDING_LINES = 10_000
MAX_LINE_CHARS = 16_384
STDOUT, STDERR = 1, 2


class OutputForwarder(io.TextIOBase):
    """A text stream that writes to ``file`` and forwards whole lines."""

    def __init__(self, rt, file, stream: int):
        super().__init__()
        self.rt = rt
        self.file = file
        self.stream = stream
        self._partial: list[str] = []
        self._lock = threading.Lock()
        self._pending: list[list] = []        # [label, stream, line]
        self._dropped = 0
        self._send_scheduled = False

    # -- the TextIO surface user code sees ---------------------------------
    def write(self, s: str) -> int:
        self.file.write(s)
        if "\n" not in s:
            self._partial.append(s)
            return len(s)
        *lines, tail = ("".join(self._partial) + s).split("\n")
        self._partial = [tail] if tail else []   # text after the last newline waits for more
        self._queue(lines, self.rt.output_label)
        return len(s)

    def flush(self) -> None:
        self.file.flush()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:             # subprocesses inherit the log file
        return self.file.fileno()

    @property
    def encoding(self):
        return getattr(self.file, "encoding", "utf-8")

    # -- forwarding ---------------------------------------------------------
    def relay(self, entries: list) -> None:
        """Lines from a task this process submitted: pass them on as they are."""
        for label, stream, line in entries:
            self.file.write(f"({label}) {line}\n")
        self._queue_entries([list(e) for e in entries])

    def _queue(self, lines: list[str], label: str) -> None:
        self._queue_entries([[label, self.stream, line[:MAX_LINE_CHARS]] for line in lines])

    def _queue_entries(self, entries: list[list]) -> None:
        with self._lock:
            room = MAX_PENDING_LINES - len(self._pending)
            self._pending.extend(entries[:max(room, 0)])
            self._dropped += max(len(entries) - max(room, 0), 0)
            if self._send_scheduled:
                return
            self._send_scheduled = True
        self.rt.io.post(self._send)

    def _send(self) -> None:            # io thread
        with self._lock:
            entries, self._pending = self._pending, []
            dropped, self._dropped = self._dropped, 0
            self._send_scheduled = False
        if dropped:
            entries.append([self.rt.output_label, STDERR,
                            f"[gdfut: {dropped} lines of output dropped: too many queued]"])
        conn = self.rt.output_conn
        if entries and conn is not None and not conn.closed:
            conn.send([P.WORKER_OUTPUT, entries])


def install(rt) -> None:
    """Make this worker's stdout/stderr forward task output (worker start-up)."""
    rt.output_label = f"worker pid={rt.pid}"
    sys.stdout = OutputForwarder(rt, sys.stdout, STDOUT)
    sys.stderr = OutputForwarder(rt, sys.stderr, STDERR)


def on_worker_output(rt, conn, m) -> None:
    """[WORKER_OUTPUT, entries] from a worker running a task we submitted."""
    entries = m[1]
    forwarder = sys.stdout if isinstance(sys.stdout, OutputForwarder) else None
    if forwarder is not None:
        forwarder.relay(entries)
        return
    if not rt.log_to_driver:
        return
    for label, stream, line in entries:
        target = sys.stderr if stream == STDERR else sys.stdout
        try:
            target.write(f"({label}) {line}\n")
        except (ValueError, OSError):     # the driver closed its stdout
            return
    for target in (sys.stdout, sys.stderr):
        try:
            target.flush()
        except (ValueError, OSError):
            pass
