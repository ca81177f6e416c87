"""Best-fit allocator for offsets inside one pre-faulted arena.

Pure bookkeeping: no I/O, no threads. The host tier maps one big shared
memory arena per node (see docs/architecture.md, "Objects") and places every
object inside it; this class decides *where*.

Free space is kept twice, both sorted:
  * ``_free_starts`` (starts) + ``_free_size_at`` (start -> size): finds the
    neighbours of a block being freed, so coalescing is a bisect away;
  * ``_free_by_size`` of ``(size, start)``: best fit is one bisect — the
    smallest block that fits, lowest address among equals (keeps the arena
    packed towards its start).
Python list insert/delete is a memmove, which stays cheap for the tens of
thousands of free blocks an arena could fragment into.
"""

from __future__ import annotations

import bisect


def _round_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


class ArenaAllocator:
    """Hands out aligned, non-overlapping ``[offset, offset + size)`` blocks.

    ``capacity`` is rounded down to a multiple of ``alignment`` (the tail
    could never hold an aligned block). Every block's reserved size is its
    request rounded up to ``alignment`` and at least ``alignment``, so a
    zero-byte object still gets a distinct offset.
    """

    def __init__(self, capacity: int, alignment: int = 64) -> None:
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment}")
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self._alignment = alignment
        self._capacity = capacity - capacity % alignment
        self._allocated: dict[int, int] = {}  # offset -> reserved size
        self._used = 0
        self._free_starts: list[int] = []
        self._free_size_at: dict[int, int] = {}
        self._free_by_size: list[tuple[int, int]] = []
        if self._capacity > 0:
            self._add_free(0, self._capacity)

    # -- public API ---------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def alignment(self) -> int:
        return self._alignment

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def free_bytes(self) -> int:
        return self._capacity - self._used

    @property
    def largest_free_block(self) -> int:
        return self._free_by_size[-1][0] if self._free_by_size else 0

    @property
    def num_allocations(self) -> int:
        return len(self._allocated)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_starts)

    def reserved_size(self, size: int) -> int:
        """Bytes a request of ``size`` actually takes from the arena."""
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        return max(self._alignment, _round_up(size, self._alignment))

    def allocate(self, size: int) -> int | None:
        """Offset of a block of at least ``size`` bytes, or None if none fits."""
        need = self.reserved_size(size)
        index = bisect.bisect_left(self._free_by_size, (need, -1))
        if index == len(self._free_by_size):
            return None
        block_size, start = self._free_by_size[index]
        self._remove_free(start, block_size)
        if block_size > need:
            self._add_free(start + need, block_size - need)
        self._allocated[start] = need
        self._used += need
        return start

    def free(self, offset: int) -> int:
        """Release the block at ``offset``; returns the bytes given back."""
        size = self._allocated.pop(offset, None)
        if size is None:
            raise ValueError(f"free of unknown or already freed offset {offset}")
        self._used -= size
        start, end = offset, offset + size
        # Merge with the free block just before and just after, so free space
        # never splinters into adjacent pieces that no large object could use.
        index = bisect.bisect_left(self._free_starts, start)
        if index > 0:
            prev_start = self._free_starts[index - 1]
            prev_size = self._free_size_at[prev_start]
            if prev_start + prev_size == start:
                self._remove_free(prev_start, prev_size)
                start = prev_start
        next_size = self._free_size_at.get(end)
        if next_size is not None:
            self._remove_free(end, next_size)
            end += next_size
        self._add_free(start, end - start)
        return size

    def size_of(self, offset: int) -> int | None:
        """Reserved size of the live block at ``offset`` (None if not live)."""
        return self._allocated.get(offset)

    def free_blocks(self) -> list[tuple[int, int]]:
        """``(start, size)`` of every free block, by address."""
        return [(start, self._free_size_at[start]) for start in self._free_starts]

    def validate(self) -> None:
        """Assert every invariant; O(n log n), for tests and debug builds."""
        align = self._alignment
        assert self._capacity % align == 0
        assert self._free_starts == sorted(self._free_size_at)
        assert sorted(self._free_by_size) == self._free_by_size
        assert sorted((size, start) for start, size in self._free_size_at.items()) == self._free_by_size
        free_total = 0
        prev_end = -1
        for start in self._free_starts:
            size = self._free_size_at[start]
            assert size > 0 and start % align == 0 and size % align == 0
            assert start > prev_end, "free blocks overlap or touch (not coalesced)"
            prev_end = start + size
            free_total += size
        assert prev_end <= self._capacity
        used_total = 0
        blocks = sorted(self._allocated.items())
        # Live and free blocks together tile [0, capacity) exactly.
        position = 0
        for start, size in sorted(blocks + self.free_blocks()):
            assert start == position, "gap or overlap between blocks"
            position = start + size
        assert position == self._capacity
        for start, size in blocks:
            assert start % align == 0 and size % align == 0 and size >= align
            assert 0 <= start and start + size <= self._capacity
            used_total += size
        assert used_total == self._used
        assert used_total + free_total == self._capacity

    # -- free-list maintenance ----------------------------------------------

    def _add_free(self, start: int, size: int) -> None:
        assert size > 0 and start not in self._free_size_at
        bisect.insort(self._free_starts, start)
        self._free_size_at[start] = size
        bisect.insort(self._free_by_size, (size, start))

    def _remove_free(self, start: int, size: int) -> None:
        index = bisect.bisect_left(self._free_starts, start)
        assert self._free_starts[index] == start
        del self._free_starts[index]
        del self._free_size_at[start]
        index = bisect.bisect_left(self._free_by_size, (size, start))
        assert self._free_by_size[index] == (size, start)
        del self._free_by_size[index]
