"""ArenaAllocator: exact behaviour and a seeded randomized check against a model."""

from __future__ import annotations

import random
import time

import pytest

from gdfut.devstore.allocator import ArenaAllocator


def test_fresh_allocator_is_one_free_block() -> None:
    alloc = ArenaAllocator(1024, alignment=64)
    assert (alloc.capacity, alloc.used_bytes, alloc.free_bytes) == (1024, 0, 1024)
    assert alloc.largest_free_block == 1024
    assert alloc.num_allocations == 0
    assert alloc.free_blocks() == [(0, 1024)]
    alloc.validate()


def test_capacity_rounds_down_to_alignment() -> None:
    alloc = ArenaAllocator(1000, alignment=64)
    assert alloc.capacity == 960
    alloc.validate()


@pytest.mark.parametrize("alignment", [0, -64, 48])
def test_alignment_must_be_power_of_two(alignment: int) -> None:
    with pytest.raises(ValueError):
        ArenaAllocator(1024, alignment=alignment)


def test_sizes_round_up_and_zero_reserves_one_unit() -> None:
    alloc = ArenaAllocator(1024, alignment=64)
    assert alloc.allocate(1) == 0
    assert alloc.allocate(0) == 64
    assert alloc.allocate(65) == 128
    assert alloc.used_bytes == 64 + 64 + 128
    assert alloc.size_of(128) == 128
    assert alloc.size_of(64) == 64
    assert alloc.size_of(32) is None
    assert alloc.num_allocations == 3
    alloc.validate()
    with pytest.raises(ValueError):
        alloc.allocate(-1)


def test_offsets_are_aligned() -> None:
    alloc = ArenaAllocator(1 << 20, alignment=4096)
    offsets = [alloc.allocate(size) for size in (1, 5000, 4096, 0, 12345)]
    assert all(offset is not None and offset % 4096 == 0 for offset in offsets)
    alloc.validate()


def test_full_returns_none_and_changes_nothing() -> None:
    alloc = ArenaAllocator(256, alignment=64)
    assert alloc.allocate(256) == 0
    assert alloc.allocate(1) is None
    assert alloc.free_bytes == 0 and alloc.largest_free_block == 0
    assert alloc.free(0) == 256
    assert alloc.allocate(257) is None
    assert alloc.free_blocks() == [(0, 256)]
    alloc.validate()


def test_fragmentation_then_coalescing_on_free() -> None:
    alloc = ArenaAllocator(256, alignment=64)
    a, b, c, d = (alloc.allocate(64) for _ in range(4))
    assert (a, b, c, d) == (0, 64, 128, 192)
    alloc.free(a)
    alloc.free(c)
    # 128 bytes free but in two separate holes: a 128-byte object cannot fit.
    assert alloc.free_bytes == 128 and alloc.largest_free_block == 64
    assert alloc.allocate(128) is None
    assert alloc.free_blocks() == [(0, 64), (128, 64)]
    alloc.free(b)  # merges with both neighbours
    assert alloc.free_blocks() == [(0, 192)]
    assert alloc.allocate(128) == 0
    alloc.validate()


def test_coalesce_with_following_block_only() -> None:
    alloc = ArenaAllocator(256, alignment=64)
    a, b, _ = alloc.allocate(64), alloc.allocate(64), alloc.allocate(64)
    alloc.free(b)
    assert alloc.free_blocks() == [(64, 64), (192, 64)]
    alloc.free(a)
    assert alloc.free_blocks() == [(0, 128), (192, 64)]
    alloc.validate()


def test_best_fit_prefers_smallest_hole_then_lowest_address() -> None:
    alloc = ArenaAllocator(64 * 10, alignment=64)
    blocks = [alloc.allocate(64) for _ in range(10)]
    for index in (0, 1, 2, 4, 6, 7):  # holes: [0,192) [256,320) [384,512)
        alloc.free(blocks[index])
    assert alloc.free_blocks() == [(0, 192), (256, 64), (384, 128)]
    assert alloc.allocate(64) == 256  # exact fit, not the first hole
    assert alloc.allocate(64) == 384  # smallest remaining hole that fits
    assert alloc.allocate(64) == 448  # tail of that hole, now exact
    assert alloc.allocate(128) == 0
    alloc.validate()


def test_freed_space_is_reused() -> None:
    alloc = ArenaAllocator(4096, alignment=64)
    for _ in range(100):
        offset = alloc.allocate(4096)
        assert offset == 0
        assert alloc.free(offset) == 4096
    assert alloc.used_bytes == 0
    alloc.validate()


def test_double_free_and_unknown_offset_raise() -> None:
    alloc = ArenaAllocator(1024, alignment=64)
    offset = alloc.allocate(100)
    assert alloc.free(offset) == 128
    with pytest.raises(ValueError):
        alloc.free(offset)
    with pytest.raises(ValueError):
        alloc.free(64)
    alloc.validate()


def test_zero_capacity() -> None:
    alloc = ArenaAllocator(0)
    assert alloc.allocate(0) is None
    assert alloc.largest_free_block == 0
    alloc.validate()


def test_many_fragmented_blocks_stay_fast() -> None:
    count = 20_000
    alloc = ArenaAllocator(64 * count, alignment=64)
    offsets = [alloc.allocate(64) for _ in range(count)]
    started = time.perf_counter()
    for offset in offsets[::2]:
        alloc.free(offset)
    assert alloc.num_free_blocks == count // 2
    for _ in range(count // 2):
        assert alloc.allocate(1) is not None
    assert alloc.free_bytes == 0
    assert time.perf_counter() - started < 2.0
    alloc.validate()


def _model_holes(capacity: int, live: dict[int, int]) -> list[tuple[int, int]]:
    """Free holes implied by the live blocks of the model."""
    holes, position = [], 0
    for start, size in sorted(live.items()):
        if start > position:
            holes.append((position, start - position))
        position = start + size
    if position < capacity:
        holes.append((position, capacity - position))
    return holes


@pytest.mark.parametrize("seed", range(5))
def test_randomized_against_model(seed: int) -> None:
    rng = random.Random(seed)
    alignment = rng.choice([8, 64, 256])
    alloc = ArenaAllocator(alignment * rng.randint(20, 200), alignment)
    live: dict[int, int] = {}  # model: offset -> reserved size
    for _ in range(1500):
        if live and rng.random() < 0.45:
            offset = rng.choice(list(live))
            assert alloc.free(offset) == live.pop(offset)
        elif rng.random() < 0.03:
            with pytest.raises(ValueError):
                alloc.free(rng.randrange(alloc.capacity + alignment) | 1)
        else:
            size = rng.choice([0, 1, rng.randint(1, alignment * 8), rng.randint(1, alignment * 40)])
            need = alloc.reserved_size(size)
            holes = _model_holes(alloc.capacity, live)
            fitting = [(hole_size, start) for start, hole_size in holes if hole_size >= need]
            offset = alloc.allocate(size)
            if not fitting:
                assert offset is None
            else:
                assert offset == min(fitting)[1], "not the best-fit hole"
                live[offset] = need
        alloc.validate()
        assert alloc.used_bytes == sum(live.values())
        assert alloc.num_allocations == len(live)
        assert alloc.free_blocks() == _model_holes(alloc.capacity, live)
        assert alloc.largest_free_block == max((s for _, s in alloc.free_blocks()), default=0)
