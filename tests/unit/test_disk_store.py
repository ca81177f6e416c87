"""Disk tier: fused spill files, per-object space reclaim, dead-node cleanup."""

from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from gdfut.devstore import disk_store
from gdfut.devstore.disk_store import DiskStore, SpillLayout, remove_dead_node_dirs

KB = 1024


def test_layout_fuses_small_objects_and_isolates_large_ones():
    layout = SpillLayout(max_file_bytes=64 * KB)
    a = layout.place("a", 10 * KB)
    b = layout.place("b", 1)
    assert a.file_no == b.file_no and (a.offset, b.offset) == (0, 12 * KB)
    big = layout.place("big", 64 * KB)
    assert big.file_no != a.file_no and big.offset == 0
    c = layout.place("c", 50 * KB)          # 16 KiB + 52 KiB > 64 KiB: a new file
    assert c.file_no not in (a.file_no, big.file_no)
    assert layout.remove("a") == (a, False)
    assert layout.remove("b") == (b, True)  # last live object: the file goes
    assert layout.remove("big")[1] is True
    assert layout.live_bytes() == 52 * KB
    with pytest.raises(ValueError, match="spilled already"):
        layout.place("c", 1)


def test_layout_streams_spread_writes_over_files():
    layout = SpillLayout(max_file_bytes=64 * KB, streams=2)
    places = [layout.place(i, 4 * KB) for i in range(4)]
    assert len({p.file_no for p in places}) == 2          # one file per stream
    assert [p.offset for p in places] == [0, 0, 4 * KB, 4 * KB]


def test_layout_sparse_candidates():
    layout = SpillLayout(max_file_bytes=16 * KB)
    for oid in "abcd":
        layout.place(oid, 4 * KB)
    layout.place("e", 4 * KB)               # a second file becomes current
    layout.remove("a")
    layout.remove("b")
    assert layout.sparse_candidates() == []    # exactly half live
    layout.remove("c")
    assert layout.sparse_candidates() == [1]


def blocks(path):
    return sum(os.stat(os.path.join(path, n)).st_blocks * 512 for n in os.listdir(path)
               if n.startswith("spill-"))


def test_spill_restore_punch_and_delete(tmp_path):
    async def main():
        store = DiskStore(str(tmp_path / "spill"), "node-a", max_file_bytes=1 << 20,
                          io_threads=1)
        data = {i: np.random.default_rng(i).integers(0, 255, 256 * KB, dtype=np.uint8)
                for i in range(6)}
        await asyncio.gather(*(store.spill(i, memoryview(d)) for i, d in data.items()))
        assert len(store.layout.files) == 2      # 4 per 1 MiB file
        for i, d in data.items():
            out = np.zeros_like(d)
            await store.restore(i, memoryview(out))
            assert np.array_equal(out, d)
        before = blocks(store.path)
        store.delete(0)
        store.delete(1)
        assert store._punches or not store.can_punch      # off the loop, in the pool
        await store.punches_done()
        if store.can_punch:
            assert blocks(store.path) <= before - 512 * KB   # space back per object
        for i in range(2, 6):
            store.delete(i)
        await store.punches_done()
        assert blocks(store.path) == 0
        assert [n for n in os.listdir(store.path) if n.startswith("spill-")] == []
        store.close()
        assert not os.path.exists(store.path)
    asyncio.run(main())


def test_punch_runs_off_the_event_loop(tmp_path, monkeypatch):
    """A hole punch can take 100 ms (writeback, discard): it runs in the I/O
    pool, and a file emptied meanwhile is deleted once the punch ends."""
    real = disk_store.punch_hole
    calls = []

    def slow(fd, offset, length):
        time.sleep(0.3)
        calls.append(offset)
        return real(fd, offset, length)
    monkeypatch.setattr(disk_store, "punch_hole", slow)

    async def main():
        store = DiskStore(str(tmp_path / "spill"), "node-p", max_file_bytes=1 << 20,
                          io_threads=1)
        for i in range(2):
            await store.spill(i, memoryview(bytes([i]) * (64 * KB)))
        t0 = time.perf_counter()
        store.delete(0)
        store.delete(1)               # the last object: the file goes after the punch
        assert time.perf_counter() - t0 < 0.2 and calls == []
        assert len([n for n in os.listdir(store.path) if n.startswith("spill-")]) == 1
        await store.punches_done()
        assert calls == [0]
        assert store.stats["punched_bytes"] == (64 * KB if store.can_punch else 0)
        assert [n for n in os.listdir(store.path) if n.startswith("spill-")] == []
        store.close()
    asyncio.run(main())


def test_compaction_when_holes_cannot_be_punched(tmp_path, monkeypatch):
    monkeypatch.setattr(disk_store, "punch_hole", lambda fd, off, n: False)

    async def main():
        store = DiskStore(str(tmp_path / "spill"), "node-b", max_file_bytes=64 * KB,
                          io_threads=1)
        data = {i: bytes([i]) * (16 * KB) for i in range(8)}
        for i, d in data.items():
            await store.spill(i, memoryview(d))
        for i in (0, 1, 2):                       # file 1 drops to a quarter live
            store.delete(i)
        for _ in range(50):
            await asyncio.sleep(0.01)
            if 1 not in store.layout.files:
                break
        assert 1 not in store.layout.files and store.stats["compactions"] == 1
        for i in range(3, 8):
            out = bytearray(16 * KB)
            await store.restore(i, memoryview(out))
            assert bytes(out) == data[i]
        store.close()
    asyncio.run(main())


def test_dead_node_directory_is_removed_live_one_kept(tmp_path):
    spill = str(tmp_path / "spill")
    idle = DiskStore(spill, "idle")
    assert not os.path.exists(idle.path)          # made at the first spill only
    live = DiskStore(spill, "alive")
    asyncio.run(live.spill("x", memoryview(b"x" * 100)))
    dead = os.path.join(spill, "gdfut-dead")
    os.makedirs(dead)
    open(os.path.join(dead, "lock"), "w").close()
    open(os.path.join(dead, "spill-000001.bin"), "wb").write(b"x" * 4096)
    assert remove_dead_node_dirs(spill) == [dead]
    assert os.path.isdir(live.path)
    idle.close()
    live.close()
    assert not os.path.exists(spill)
