"""Bundles cut from upstream blocks (gdfut/data/bundler.py): exact multiples
of batch_size across block boundaries, oversized blocks split, blocks
released once every bundle with a piece of them is done."""
import random

from gdfut.data.bundler import Bundler


def run(bundler, blocks, nbytes=None):
    """Feed (rows) blocks in order, flush; returns {seq: pieces}, released order."""
    formed, released = {}, []
    for useq, rows in enumerate(blocks):
        new, rel = bundler.take(useq, nbytes[useq] if nbytes else rows * 8, rows)
        formed.update((s, bundler.bundles[s]) for s, _ in new)
        released += rel
        bundler.validate()
    new, rel = bundler.flush()
    formed.update((s, bundler.bundles[s]) for s, _ in new)
    released += rel
    for seq in sorted(formed):
        released += bundler.done(seq)
    bundler.validate()
    return formed, released


def rows_of(pieces):
    return sum(b - a for _, a, b in pieces)


def covered(formed):
    """Every row of every block once, in order."""
    return [(u, r) for s in sorted(formed) for u, a, b in formed[s] for r in range(a, b)]


def test_small_blocks_are_bundled_to_exact_multiples_of_batch_size():
    blocks = [3, 5, 0, 7, 2, 30, 1]
    formed, released = run(Bundler(min_rows=4), blocks)
    sizes = [rows_of(formed[s]) for s in sorted(formed)]
    assert all(n % 4 == 0 and n >= 4 for n in sizes[:-1]) and sum(sizes) == 48
    assert sizes[-1] == 48 - sum(sizes[:-1]) and 0 < sizes[-1]
    assert covered(formed) == [(u, r) for u, n in enumerate(blocks) for r in range(n)]
    assert sorted(released) == list(range(len(blocks)))


def test_random_block_sizes_keep_every_row_once_and_batches_exact():
    rng = random.Random(7)
    for _ in range(50):
        blocks = [rng.choice([0, 1, 2, 5, 13, 64, 100]) for _ in range(rng.randint(1, 12))]
        n = rng.choice([1, 3, 16, 50])
        cap = rng.choice([None, 80, 800])
        formed, released = run(Bundler(min_rows=n, max_bytes=cap), blocks)
        sizes = [rows_of(formed[s]) for s in sorted(formed)]
        assert all(k % n == 0 for k in sizes[:-1]), (blocks, n, sizes)
        if cap:
            assert all(k * 8 <= max(cap, n * 8) for k in sizes[:-1]), (blocks, n, cap, sizes)
        assert covered(formed) == [(u, r) for u, k in enumerate(blocks) for r in range(k)]
        assert sorted(released) == list(range(len(blocks)))


def test_oversized_block_is_split_into_even_bundles_under_the_target():
    formed, _ = run(Bundler(max_bytes=250), [100, 10], nbytes=[1000, 100])
    assert [formed[s] for s in sorted(formed)] == [((0, 0, 25),), ((0, 25, 50),),
                                                   ((0, 50, 75),), ((0, 75, 100),),
                                                   ((1, 0, 10),)]


def test_batch_size_wins_over_the_byte_target():
    formed, _ = run(Bundler(min_rows=10, max_bytes=250), [100], nbytes=[1000])
    assert [rows_of(formed[s]) for s in sorted(formed)] == [20] * 5


def test_block_is_released_only_when_its_last_bundle_is_done():
    b = Bundler(min_rows=4)
    new, rel = b.take(0, 48, 6)           # 4 rows bundled, 2 pending
    assert [s for s, _ in new] == [0] and rel == []
    new, rel = b.take(1, 16, 2)           # rows 4..6 of block 0 + block 1
    assert b.bundles[1] == ((0, 4, 6), (1, 0, 2)) and [n for _, n in new] == [32]
    assert b.done(0) == []                # block 0 is still in bundle 1
    assert b.done(1) == [0, 1]
    assert b.flush() == ([], [])


def test_only_empty_blocks_pass_one_on_and_rows_unknown_pass_whole():
    b = Bundler(min_rows=4)
    b.take(0, 0, 0)
    b.take(1, 0, 0)
    new, rel = b.flush()
    assert [b.bundles[s] for s, _ in new] == [((0, 0, 0),)] and rel == [1]
    whole = Bundler()
    new, _ = whole.take(0, 123, None)
    assert new == [(0, 123)] and whole.bundles[0] == ((0, None, None),)
