"""How an operator's input bundles are cut from its upstream's output blocks:
a pure state machine inside ``planner.Pipeline`` (one per operator).

The upstream's blocks are taken in ``seq`` order (so the dataset's row order
holds) and cut into bundles, each a tuple of pieces ``(upstream seq, start
row, stop row)``; a task of the operator runs on one bundle. Two rules:

- ``min_rows`` (``map_batches(batch_size=N)``): every bundle holds a
  multiple of N rows, at least N, except the last one; so the task cuts
  batches of exactly N rows, across block boundaries, and only the dataset's
  last batch is shorter. Blocks smaller than N are bundled together; a block
  larger than a bundle is split between two bundles.
- ``max_bytes`` (the target max block size): a bundle holds about that many
  bytes at most (never fewer than ``min_rows`` rows), so an oversized block is
  split into several bundles and no task works on more.

Without either (a read source, whose rows are unknown before it is read),
each upstream item is one bundle, whole: pieces ``(seq, None, None)``.

An upstream block is *released* (its bytes may go) once every bundle with a
piece of it has been processed.
"""
from __future__ import annotations

import math


class Bundler:
    def __init__(self, min_rows: int | None = None, max_bytes: int | None = None):
        assert min_rows is None or min_rows >= 1
        assert max_bytes is None or max_bytes >= 1
        self.min_rows, self.max_bytes = min_rows, max_bytes
        self.next_up = 0               # the next upstream seq to take
        self.pending: list = []        # [useq, start, stop, bytes per row, bytes] not bundled
        self.pending_rows = 0
        self.users: dict = {}          # useq -> bundles not done (+1 while pending)
        self.bundles: dict = {}        # bundle seq -> pieces, until its task is done
        self.formed = 0                # bundles formed so far (the next bundle's seq)
        self.flushed = False           # every bundle is formed

    # ------------------------------------------------------------ events
    def take(self, useq: int, nbytes: int, rows: int | None):
        """The upstream block ``useq`` (the next in order) is done. Returns
        (new bundles as (seq, estimated bytes), released upstream seqs)."""
        assert useq == self.next_up and not self.flushed, (useq, self.next_up)
        self.next_up += 1
        if rows is None:
            assert self.min_rows is None, "bundling by rows needs the upstream's row counts"
            return [self._form(((useq, None, None),), nbytes, [useq])], []
        self.users[useq] = 1
        self.pending.append([useq, 0, rows, nbytes / rows if rows else 0.0, nbytes])
        self.pending_rows += rows
        return self._cut(final=False)

    def flush(self):
        """No more upstream blocks: the rest becomes the last bundle."""
        assert not self.flushed
        out, released = self._cut(final=True)
        if self.pending and self.formed == 0:   # only empty blocks: pass one on (its schema)
            out.append(self._bundle_pending(0))
        for useq, *_ in self.pending:               # empty blocks after the last bundle
            released += self._drop(useq)
        self.pending = []
        self.flushed = True
        return out, released

    def done(self, seq: int) -> list[int]:
        """Bundle ``seq``'s task finished: the upstream seqs released by it."""
        released = []
        for useq, _, _ in self.bundles.pop(seq):
            released += self._drop(useq)
        return released

    # ------------------------------------------------------------ cutting
    def _cut(self, final: bool):
        out = []
        while self.pending:
            want = self._want(final)
            if want is None:
                break
            out.append(self._bundle_pending(want))
        return out, []

    def _want(self, final: bool) -> int | None:
        """Rows of the next bundle, None to wait for more."""
        n, rows = self.min_rows, self.pending_rows
        row_bytes = self.pending[0][3]
        cap = math.inf if not self.max_bytes or not row_bytes else \
            max(1, int(self.max_bytes // row_bytes))
        if n is None:
            first = self.pending[0][2] - self.pending[0][1]
            if first == 0:
                return 0                    # an empty block passes on as it is
            parts = math.ceil(first / cap) if cap != math.inf else 1
            return math.ceil(first / parts)
        if rows < n:
            return rows if final and rows else None
        return min(rows // n, max(1, int(cap // n)) if cap != math.inf else rows) * n

    def _bundle_pending(self, rows: int):
        """Cut the first ``rows`` rows off the pending pieces into a bundle
        (zero-row pieces at the front ride along)."""
        pieces, nbytes, users, left = [], 0.0, [], rows
        while self.pending and (left > 0 or self.pending[0][2] == self.pending[0][1]):
            useq, start, stop, row_bytes, whole = self.pending[0]
            take = min(left, stop - start)
            pieces.append((useq, start, start + take))
            nbytes += take * row_bytes if stop > start else whole
            users.append(useq)
            left -= take
            if start + take == stop:
                self.pending.pop(0)
                self.users[useq] -= 1          # no longer pending
            else:
                self.pending[0][1] = start + take
            if rows == 0:
                break
        self.pending_rows -= rows
        assert left == 0 and self.pending_rows >= 0
        return self._form(tuple(pieces), int(nbytes), users)

    def _form(self, pieces: tuple, nbytes: int, users: list):
        seq = self.formed
        self.formed += 1
        self.bundles[seq] = pieces
        for useq in users:
            self.users[useq] = self.users.get(useq, 0) + 1
        return seq, nbytes

    def _drop(self, useq: int) -> list[int]:
        self.users[useq] -= 1
        assert self.users[useq] >= 0
        if self.users[useq] == 0:
            del self.users[useq]
            return [useq]
        return []

    def validate(self) -> None:
        assert self.pending_rows == sum(p[2] - p[1] for p in self.pending)
        assert all(n > 0 for n in self.users.values())
        if self.min_rows is not None:
            assert self.flushed or self.pending_rows < self.min_rows or not self.pending
