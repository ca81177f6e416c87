"""Sort-benchmark records: generation, sorting and valsort-style validation.

A record is 100 bytes (workload W5 of bench/README.md, gensort's layout): a
10-byte binary key, bytes 10-19 a copy of the key (so a reducer can check each
record is intact), 80 random bytes. Keys compare as bytes (memcmp order).

Every function takes a ``(n, 100)`` uint8 array from numpy or, on a GPU, cupy
(``gdfut.kernels.xp`` picks the module), so the same code sorts on either.

The checksum is valsort's idea: a per-record hash summed over all records
(mod 2**64), so it is independent of order; the sum over the input must equal
the sum over the output, which catches a corrupted, lost or duplicated record.
"""
from __future__ import annotations

import threading

import numpy as np

from gdfut import kernels

RECORD_SIZE = 100
KEY_SIZE = 10
MASK64 = (1 << 64) - 1
# Odd 64-bit constants (splitmix64, FNV) for the per-record hash.
_H_MUL = 0x9E3779B97F4A7C15
_H_MIX = 0xBF58476D1CE4E5B9


def generate(map_index: int, num_records: int, seed: int = 0, skew: float = 0.0, xp=np):
    """``num_records`` records of map ``map_index`` (deterministic in ``seed``).

    ``skew`` > 0 draws the 16-bit key prefix from an exponential law instead
    of uniformly (skew=1: about 63% of keys below 1/16 of the key space), so
    range partitions get very unequal, often empty: the skewed test data.
    """
    if num_records < 0:
        raise ValueError(f"num_records must be >= 0, got {num_records}")
    words = -(-num_records * RECORD_SIZE // 8)
    raw = np.random.PCG64([seed, map_index]).random_raw(words)
    rec = raw.view(np.uint8)[:num_records * RECORD_SIZE].reshape(num_records, RECORD_SIZE)
    if skew > 0 and num_records:
        rng = np.random.default_rng([seed, map_index, 1])
        prefix = np.minimum(rng.exponential(65536 / (16 * skew), num_records), 65535)
        prefix = prefix.astype(np.uint16).astype(">u2")
        rec[:, 0:2] = prefix.view(np.uint8).reshape(-1, 2)
    rec[:, KEY_SIZE:2 * KEY_SIZE] = rec[:, 0:KEY_SIZE]
    if xp is not np:
        return xp.asarray(rec)
    return rec


def empty(xp=np):
    return xp.empty((0, RECORD_SIZE), dtype=np.uint8)


def words32(rec):
    """The records as 25 uint32 words each, without a copy (100 = 25 * 4 bytes)."""
    xp = kernels.xp(rec)
    rec = xp.ascontiguousarray(rec)
    return rec.reshape(-1).view(np.uint32).reshape(rec.shape[0], RECORD_SIZE // 4)


def _bswap32(w):
    """Byte swap of uint32 words with shifts (cupy arrays have no byteswap)."""
    return ((w >> 24) & 0xFF) | ((w >> 8) & 0xFF00) | ((w << 8) & 0xFF0000) | (w << 24)


def key_words(rec):
    """The 10-byte key as (hi, lo): bytes 0-7 as a big-endian uint64 and bytes
    8-9 as a big-endian uint16 (in a uint32), so (hi, lo) order is memcmp
    order. On numpy: the key bytes copied out (18 of every 100 bytes) and
    byte-swapped, about 6x faster than the shifts; on a device (cupy has no
    byteswap) from the uint32 view with shifts."""
    xp = kernels.xp(rec)
    if xp is np:
        n = rec.shape[0]
        hi = np.ascontiguousarray(rec[:, 0:8]).view(np.uint64).reshape(n)
        if np.little_endian:
            hi = hi.byteswap()
        lo = np.ascontiguousarray(rec[:, 8:KEY_SIZE]).view(">u2").reshape(n).astype(np.uint32)
        return hi, lo
    w = words32(rec)
    hi = (_bswap32(w[:, 0]).astype(np.uint64) << np.uint64(32)) | _bswap32(w[:, 1])
    w2 = w[:, 2]
    lo = ((w2 & 0xFF) << 8) | ((w2 >> 8) & 0xFF)
    return hi, lo


SCRATCH_MAX_BYTES = 256 << 20     # largest reusable buffer kept per slot and thread
_scratch = threading.local()


def scratch(slot: str, shape: tuple):
    """A uint8 array of ``shape`` in a buffer this thread reuses for ``slot``
    (None when larger than SCRATCH_MAX_BYTES). Fresh arrays of 100s of MB cost
    a page fault per 4 KiB on every use (about 0.6 s of system time per GB
    here); a reused one does not. Only for results that do not escape the
    caller: the next call with the same slot overwrites it."""
    nbytes = 1
    for d in shape:
        nbytes *= int(d)
    if nbytes > SCRATCH_MAX_BYTES:
        return None
    buf = getattr(_scratch, slot, None)
    if buf is None or buf.size < nbytes:
        grow = min(SCRATCH_MAX_BYTES, nbytes + nbytes // 8)     # room for the next one
        buf = np.empty(grow, dtype=np.uint8)
        setattr(_scratch, slot, buf)
    return buf[:nbytes].reshape(shape)


def sort_records(rec, scratch_slot: str | None = None):
    """Records in key order. The 64-bit prefix decides almost always (argsort is
    SIMD-fast); only when two prefixes tie does a full lexsort run.
    ``scratch_slot``: the result goes into that reused buffer (see scratch)."""
    xp = kernels.xp(rec)
    if rec.shape[0] < 2:
        return rec
    hi, lo = key_words(rec)
    order = xp.argsort(hi)
    shi = hi[order]
    if bool((shi[1:] == shi[:-1]).any()):
        order = xp.lexsort(xp.stack([lo, hi]))
    out = scratch(scratch_slot, rec.shape) if scratch_slot and xp is np and \
        rec.dtype == np.uint8 else None
    if out is not None:
        return np.take(rec, order, axis=0, out=out, mode="clip")   # "raise" buffers: a copy
    return xp.take(rec, order, axis=0)


def concat(blocks, xp=None, scratch_slot: str | None = None):
    """The blocks as one array; ``scratch_slot``: into that reused buffer."""
    blocks = [b for b in blocks if b is not None]
    if xp is None:
        xp = kernels.xp(blocks[0]) if blocks else np
    if not blocks:
        return empty(xp)
    if len(blocks) == 1:
        return blocks[0]
    if scratch_slot and xp is np and all(b.dtype == np.uint8 and b.ndim == 2 for b in blocks):
        out = scratch(scratch_slot, (sum(b.shape[0] for b in blocks), blocks[0].shape[1]))
        if out is not None:
            return np.concatenate(blocks, axis=0, out=out)
    return xp.concatenate(blocks, axis=0)


HASH_CHUNK = 16384      # records per step of the numpy hash: its uint64 copy stays in cache


def _hash_consts():
    return (np.arange(RECORD_SIZE // 4, dtype=np.uint64) * np.uint64(2) + np.uint64(1)) \
        * np.uint64(_H_MUL)


def _mix(h) -> None:
    h ^= h >> np.uint64(31)
    h *= np.uint64(_H_MIX)
    h ^= h >> np.uint64(29)


def record_hashes(rec):
    """A 64-bit hash of every record: its 25 uint32 words times distinct odd
    constants, summed, then mixed (a matrix-vector product: one pass). On
    numpy in chunks of HASH_CHUNK records, so the words' uint64 copy and the
    mixing stay in cache (about 2x faster than one product over all)."""
    xp = kernels.xp(rec)
    n = rec.shape[0]
    if n == 0:
        return xp.zeros(0, dtype=np.uint64)
    consts = _hash_consts()
    w = words32(rec)
    if xp is not np:
        h = w @ xp.asarray(consts)
        _mix(h)
        return h
    h = np.empty(n, dtype=np.uint64)
    for s in range(0, n, HASH_CHUNK):
        part = h[s:s + HASH_CHUNK]
        np.matmul(w[s:s + HASH_CHUNK].astype(np.uint64), consts, out=part)
        _mix(part)
    return h


def checksum(rec) -> int:
    """Sum of the record hashes mod 2**64 (order-independent)."""
    if rec.shape[0] == 0:
        return 0
    return int(record_hashes(rec).sum(dtype=np.uint64)) & MASK64


def _key_hex(rec, i: int) -> str:
    row = rec[i, 0:KEY_SIZE]
    if hasattr(row, "get"):
        row = row.get()
    return bytes(np.asarray(row)).hex()


def summarize(rec, partition: int) -> dict:
    """What a reducer reports about its sorted output (W5's summary)."""
    xp = kernels.xp(rec)
    n = int(rec.shape[0])
    out = {"partition": int(partition), "count": n, "checksum": checksum(rec),
           "sorted": True, "intact": True, "min_key": None, "max_key": None}
    if n == 0:
        return out
    out["intact"] = bool(xp.array_equal(rec[:, KEY_SIZE:2 * KEY_SIZE], rec[:, 0:KEY_SIZE]))
    hi, lo = key_words(rec)
    ascending = (hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] >= lo[:-1]))
    out["sorted"] = bool(ascending.all()) if n > 1 else True
    out["min_key"], out["max_key"] = _key_hex(rec, 0), _key_hex(rec, n - 1)
    return out


def validate(summaries: list[dict], expected_records: int, expected_checksum: int) -> dict:
    """valsort over the reducers' summaries: every partition sorted and intact,
    partitions in global key order, total count and checksum as generated.
    Returns {"ok": bool, "errors": [...], "records": n, "checksum": c}."""
    errors = []
    ordered = sorted(summaries, key=lambda s: s["partition"])
    parts = [s["partition"] for s in ordered]
    if len(set(parts)) != len(parts):
        errors.append(f"duplicate partitions in the output: {parts}")
    total = sum(s["count"] for s in ordered)
    total_sum = sum(s["checksum"] for s in ordered) & MASK64
    for s in ordered:
        if not s["sorted"]:
            errors.append(f"partition {s['partition']} is not sorted")
        if not s["intact"]:
            errors.append(f"partition {s['partition']} has records whose key copy differs "
                          f"(corrupted records)")
    previous = None
    for s in ordered:
        if s["count"] == 0:
            continue
        if previous is not None and s["min_key"] < previous["max_key"]:
            errors.append(f"partition {s['partition']} starts at key {s['min_key']}, below "
                          f"the end {previous['max_key']} of partition {previous['partition']}")
        previous = s
    if total != expected_records:
        errors.append(f"{total} records in the output, {expected_records} generated")
    if total_sum != expected_checksum & MASK64:
        errors.append(f"checksum {total_sum:#018x} of the output differs from "
                      f"{expected_checksum & MASK64:#018x} of the input")
    return {"ok": not errors, "errors": errors, "records": total, "checksum": total_sum}


def read_partition(path: str) -> np.ndarray:
    """A partition file written by the sort (raw records, no header)."""
    data = np.fromfile(path, dtype=np.uint8)
    if data.size % RECORD_SIZE:
        raise ValueError(f"{path}: {data.size} bytes is not a whole number of "
                         f"{RECORD_SIZE}-byte records (truncated?)")
    return data.reshape(-1, RECORD_SIZE)
