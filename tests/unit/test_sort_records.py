"""Sort-benchmark records (gdfut/shuffle/records.py) and the partitioners."""
import numpy as np
import pytest

from gdfut.shuffle import partition as P
from gdfut.shuffle import records as R


def sorted_by_python(rec):
    return np.array(sorted(rec.tolist(), key=lambda row: bytes(row[:10])), dtype=np.uint8)


def partitions(rec, num):
    pids = P.KeyRange()(rec, num)
    return P.split(rec, pids, num)


def summaries_of(rec, num):
    return [R.summarize(R.sort_records(b), r) for r, b in enumerate(partitions(rec, num))]


def test_generate_layout_and_determinism():
    a = R.generate(3, 500, seed=7)
    assert a.shape == (500, 100) and a.dtype == np.uint8
    assert np.array_equal(a[:, 10:20], a[:, 0:10])
    assert np.array_equal(a, R.generate(3, 500, seed=7))
    assert not np.array_equal(a, R.generate(4, 500, seed=7))
    assert R.generate(0, 0).shape == (0, 100)


def test_sort_matches_memcmp_order():
    rec = R.generate(0, 3000)
    rec[5, :8] = rec[9, :8]             # a tie in the 64-bit prefix: lexsort decides
    rec[5, 10:18] = rec[5, 0:8]
    out = R.sort_records(rec)
    assert np.array_equal(out, sorted_by_python(rec))


def test_skew_makes_empty_partitions():
    rec = R.generate(0, 2000, skew=2.0)
    sizes = [len(b) for b in partitions(rec, 16)]
    assert sum(sizes) == 2000 and sizes[0] > 1000 and 0 in sizes


def test_validate_accepts_a_correct_sort():
    rec = R.generate(1, 4000, skew=1.0)
    v = R.validate(summaries_of(rec, 8), 4000, R.checksum(rec))
    assert v["ok"], v["errors"]


def test_validate_catches_corruption():
    rec = R.generate(1, 4000)
    good = R.checksum(rec)
    bad = rec.copy()
    bad[100, 50] ^= 1                    # one payload bit: only the checksum sees it
    v = R.validate(summaries_of(bad, 4), 4000, good)
    assert not v["ok"] and any("checksum" in e for e in v["errors"])
    bad = rec.copy()
    bad[7, 12] ^= 0xFF                   # the key copy differs
    v = R.validate(summaries_of(bad, 4), 4000, good)
    assert not v["ok"] and any("corrupted" in e for e in v["errors"])


def test_validate_catches_reordering_within_and_across_partitions():
    rec = R.generate(2, 4000)
    sums = summaries_of(rec, 4)
    parts = partitions(rec, 4)
    swapped = R.sort_records(parts[1]).copy()
    swapped[[0, 5]] = swapped[[5, 0]]
    sums_within = list(sums)
    sums_within[1] = R.summarize(swapped, 1)
    v = R.validate(sums_within, 4000, R.checksum(rec))
    assert not v["ok"] and any("not sorted" in e for e in v["errors"])
    across = [dict(s) for s in sums]
    across[0]["partition"], across[3]["partition"] = 3, 0
    v = R.validate(across, 4000, R.checksum(rec))
    assert not v["ok"] and any("below the end" in e for e in v["errors"])


def test_validate_catches_truncation_and_duplicates():
    rec = R.generate(3, 4000)
    parts = partitions(rec, 4)
    short = [R.summarize(R.sort_records(b[:-1] if r == 2 else b), r) for r, b in enumerate(parts)]
    v = R.validate(short, 4000, R.checksum(rec))
    assert not v["ok"] and any("3999 records" in e for e in v["errors"])
    sums = summaries_of(rec, 4)
    v = R.validate(sums + [sums[1]], 4000, R.checksum(rec))
    assert not v["ok"] and any("duplicate" in e for e in v["errors"])


def test_truncated_partition_file_is_refused(tmp_path):
    rec = R.generate(0, 10)
    path = tmp_path / "part-00000"
    rec.tofile(path)
    assert np.array_equal(R.read_partition(str(path)), rec)
    with open(path, "ab") as f:
        f.write(b"xyz")
    with pytest.raises(ValueError, match="truncated"):
        R.read_partition(str(path))


def test_hash_and_user_partitioners_split_every_row_once():
    rec = R.generate(0, 1000)
    for part in ("hash", P.Hash(4), lambda b, n: (b[:, 3].astype(np.int64) % n)):
        fn = P.resolve(part)
        blocks = P.split(rec, fn(rec, 5), 5)
        assert sum(len(b) for b in blocks) == 1000
        assert R.checksum(R.concat(blocks)) == R.checksum(rec)
    keys = np.arange(100, dtype=np.int64)
    assert list(P.KeyRange([10, 50])(keys, 3)[[0, 10, 49, 50, 99]]) == [0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="boundaries"):
        P.KeyRange()(keys, 3)
    with pytest.raises(ValueError, match="unknown partitioner"):
        P.resolve("nope")


def test_key_words_and_checksum_keep_their_definition():
    """The numpy fast paths (byte-swapped key copy, chunked hash) give exactly
    the definitions: keys as big-endian integers, and the checksum as the sum
    of mix(sum_i word_i * (2i + 1) * K) over the records, mod 2**64."""
    rec = R.generate(1, R.HASH_CHUNK + 77, seed=3)     # more than one hash chunk
    rec[0, :10] = 255
    rec[1, :10] = 0
    hi, lo = R.key_words(rec[::2])                    # a strided view, too
    for i, row in enumerate(rec[::2][:50]):
        assert int(hi[i]) == int.from_bytes(bytes(row[0:8]), "big")
        assert int(lo[i]) == int.from_bytes(bytes(row[8:10]), "big")
    mask = (1 << 64) - 1

    def mix(h):
        h ^= h >> 31
        h = (h * R._H_MIX) & mask
        return h ^ (h >> 29)
    words = rec.reshape(-1).view("<u4").reshape(len(rec), 25).astype(object)
    consts = [((2 * i + 1) * R._H_MUL) & mask for i in range(25)]
    expected = [mix(sum(int(w) * c for w, c in zip(row, consts)) & mask) for row in words]
    assert [int(h) for h in R.record_hashes(rec)] == expected
    assert R.checksum(rec) == sum(expected) & mask


def test_reduce_summary_reuses_its_buffers_and_stays_correct():
    """The reducer's concatenated and sorted records go into per-thread
    buffers reused by the next call; each call's summary is still its own."""
    from gdfut.shuffle.sort import reduce_summary
    parts = [partitions(R.generate(m, 3000, seed=2), 3) for m in range(4)]
    first = [reduce_summary([p[r] for p in parts], r) for r in range(3)]
    buf = R._scratch.__dict__["reduce-out"]
    again = [reduce_summary([p[r] for p in parts], r) for r in range(3)]
    assert R._scratch.__dict__["reduce-out"] is buf            # reused, not reallocated
    expected = [R.summarize(R.sort_records(R.concat([p[r] for p in parts])), r)
                for r in range(3)]
    assert first == again == expected
    assert all(s["sorted"] and s["intact"] for s in first)
    assert R.scratch("x", (R.SCRATCH_MAX_BYTES + 1,)) is None     # too large: not kept
