"""SharedArena: creation, attach, pre-faulting, pinned read-only views."""

from __future__ import annotations

import gc
import itertools
import os
import pickle
import stat
import subprocess
import sys
import time
from typing import Iterator

import numpy as np
import pytest

from gdfut.devstore import arena as arena_module
from gdfut.devstore.arena import SHM_DIR, SharedArena

MiB = 1 << 20
_counter = itertools.count()
PREFIX = f"gdfut-test-{os.getpid()}-"


def _leftovers() -> list[str]:
    return [name for name in os.listdir(SHM_DIR) if name.startswith(PREFIX)]


@pytest.fixture(scope="module", autouse=True)
def no_leftover_files() -> Iterator[None]:
    yield
    gc.collect()
    assert _leftovers() == []


@pytest.fixture
def make_arena() -> Iterator:
    created: list[SharedArena] = []

    def make(capacity: int = 4 * MiB, prefault: bool = True) -> SharedArena:
        arena = SharedArena.create(f"{PREFIX}{next(_counter)}", capacity, prefault=prefault)
        created.append(arena)
        return arena

    yield make
    for arena in created:
        arena.close()
        arena.unlink()


class Releases:
    """on_release callback that counts its calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_names_must_start_with_prefix() -> None:
    for bad in ("test-x", "gdfut", "/gdfut-x", "gdfut-a/b"):
        with pytest.raises(ValueError):
            SharedArena.create(bad, MiB)
        with pytest.raises(ValueError):
            SharedArena.attach(bad)


def test_create_makes_private_file_of_capacity(make_arena) -> None:
    arena = make_arena(2 * MiB)
    info = os.stat(arena.path)
    assert info.st_size == 2 * MiB
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert arena.capacity == 2 * MiB and arena.owner


def test_create_refuses_existing_name(make_arena) -> None:
    arena = make_arena()
    with pytest.raises(FileExistsError):
        SharedArena.create(arena.name, MiB)


def test_create_refuses_more_than_shm_space() -> None:
    with pytest.raises(OSError):
        SharedArena.create(f"{PREFIX}huge", 1 << 60)
    assert _leftovers() == []


def test_bad_capacity() -> None:
    with pytest.raises(ValueError):
        SharedArena.create(f"{PREFIX}zero", 0)


def test_prefault_runs_in_background_and_completes(make_arena) -> None:
    arena = make_arena(64 * MiB)
    assert arena.prefault_done.wait(10)
    assert arena.prefaulted_bytes == 64 * MiB
    assert arena.prefault_error is None


def test_prefault_fallback_read_touch(make_arena, monkeypatch) -> None:
    monkeypatch.setattr(arena_module, "_madvise", None)
    arena = make_arena(8 * MiB + 4096)  # not a multiple of the chunk size
    arena.view(0, 4)[:] = b"keep"  # a producer writing during prefault
    assert arena.prefault_done.wait(10)
    assert arena.prefaulted_bytes == arena.capacity
    assert bytes(arena.view(0, 4)) == b"keep"  # read-touch never writes


def test_no_prefault(make_arena) -> None:
    arena = make_arena(prefault=False)
    assert arena.prefault_done.is_set() and arena.prefaulted_bytes == 0


def test_close_stops_prefault_thread(make_arena) -> None:
    arena = make_arena(512 * MiB)
    thread = arena._prefault_thread
    started = time.perf_counter()
    arena.close()
    assert time.perf_counter() - started < 2.0
    assert thread is not None and not thread.is_alive()
    assert arena.prefault_done.is_set()
    assert arena.closed


def test_view_writes_are_seen_by_attached_mapping(make_arena) -> None:
    arena = make_arena()
    arena.view(100, 5)[:] = b"hello"
    other = SharedArena.attach(arena.name)
    try:
        assert other.capacity == arena.capacity and not other.owner
        assert bytes(other.view(100, 5)) == b"hello"
        other.view(200, 3)[:] = b"abc"
        assert bytes(arena.view(200, 3)) == b"abc"
    finally:
        other.close()


def test_attach_from_another_process(make_arena) -> None:
    arena = make_arena()
    arena.view(0, 4)[:] = b"ping"
    code = (
        "import sys; from gdfut.devstore.arena import SharedArena\n"
        "a = SharedArena.attach(sys.argv[1])\n"
        "assert bytes(a.view(0, 4)) == b'ping'\n"
        "a.view(4, 4)[:] = b'pong'; a.close()\n"
    )
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=repo_root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, "-c", code, arena.name], check=True, env=env, timeout=30)
    assert bytes(arena.view(4, 4)) == b"pong"


def test_attach_missing_raises() -> None:
    with pytest.raises(FileNotFoundError):
        SharedArena.attach(f"{PREFIX}missing")


def test_view_bounds(make_arena) -> None:
    arena = make_arena(MiB)
    assert len(arena.view(MiB - 10, 10)) == 10
    for offset, size in ((-1, 1), (MiB - 10, 11), (0, -1)):
        with pytest.raises(ValueError):
            arena.view(offset, size)
        with pytest.raises(ValueError):
            arena.readonly_pinned(offset, size, lambda: None)


def test_readonly_pinned_is_zero_copy_and_read_only(make_arena) -> None:
    arena = make_arena()
    arena.view(64, 8)[:] = bytes(range(8))
    released = Releases()
    array = arena.readonly_pinned(64, 8, released)
    assert array.dtype == np.uint8 and array.shape == (8,)
    assert list(array) == list(range(8))
    assert not array.flags.writeable
    with pytest.raises(ValueError):
        array[0] = 1
    with pytest.raises(ValueError):
        array.flags.writeable = True
    arena.view(64, 1)[:] = b"\xff"  # same memory: the writer's change shows
    assert array[0] == 255
    del array
    assert released.count == 1


def test_release_waits_for_every_derived_view(make_arena) -> None:
    arena = make_arena()
    released = Releases()
    array = arena.readonly_pinned(0, 1024, released)
    derived = [array[10:20], array.view(np.float64), array.reshape(32, 32)[::2], memoryview(array)]
    del array
    gc.collect()
    assert released.count == 0
    while derived:
        derived.pop()
        assert released.count == (0 if derived else 1)
    gc.collect()
    assert released.count == 1


def test_pickle_out_of_band_buffers_restore_as_pinned_views(make_arena) -> None:
    arena = make_arena()
    value = {"x": np.arange(1000, dtype=np.float64), "y": np.ones((16, 16), dtype=np.int32), "tag": "t"}
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 2

    # Producer: write the buffers back to back into the arena.
    spans, position = [], 0
    for buffer in buffers:
        raw = buffer.raw()
        arena.view(position, raw.nbytes)[:] = raw
        spans.append((position, position + raw.nbytes))
        position += raw.nbytes

    released = Releases()
    region = arena.readonly_pinned(0, position, released)
    restored = pickle.loads(payload, buffers=[region[start:end] for start, end in spans])
    del region
    gc.collect()
    np.testing.assert_array_equal(restored["x"], value["x"])
    np.testing.assert_array_equal(restored["y"], value["y"])
    for key in ("x", "y"):
        assert not restored[key].flags.writeable
        assert np.shares_memory(restored[key], np.frombuffer(arena.view(0, position), dtype=np.uint8))
    assert released.count == 0
    x = restored["x"]
    del restored
    gc.collect()
    assert released.count == 0  # x still alive
    del x
    assert released.count == 1


def test_release_callback_error_does_not_propagate(make_arena, monkeypatch) -> None:
    arena = make_arena()
    reported: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: reported.append(info.exc_value))

    def boom() -> None:
        raise RuntimeError("callback failed")

    array = arena.readonly_pinned(0, 8, boom)
    del array  # reported as unraisable, not raised here
    assert len(reported) == 1 and isinstance(reported[0], RuntimeError)


def test_close_twice_and_unlink_twice(make_arena) -> None:
    arena = make_arena()
    arena.close()
    arena.close()
    assert arena.closed
    with pytest.raises(ValueError):
        arena.view(0, 1)
    arena.unlink()
    arena.unlink()
    assert not os.path.exists(arena.path)


def test_close_with_live_views_keeps_them_valid(make_arena) -> None:
    arena = make_arena()
    arena.view(0, 3)[:] = b"abc"
    writable = arena.view(0, 3)
    released = Releases()
    pinned = arena.readonly_pinned(0, 3, released)
    arena.close()  # must not raise BufferError nor unmap under the views
    arena.unlink()
    assert bytes(writable) == b"abc"
    assert bytes(pinned) == b"abc"
    del writable, pinned
    assert released.count == 1


def test_context_manager_closes(make_arena) -> None:
    with make_arena() as arena:
        assert not arena.closed
    assert arena.closed


# -- how far ahead to fault (the pure decision) --------------------------------------

def test_prefault_target_runs_ahead_of_the_high_water_mark() -> None:
    from gdfut.devstore.arena import prefault_target
    step, cap = 32 * MiB, 8192 * MiB
    assert prefault_target(0, 0, cap, ahead=1024 * MiB, step=step) == 1024 * MiB      # fresh arena
    assert prefault_target(128 * MiB, 10 * MiB, cap, 1024 * MiB, step) == 1152 * MiB
    # room for two more of the largest object, when that is more than ``ahead``
    assert prefault_target(1024 * MiB, 1024 * MiB, cap, 512 * MiB, step) == 3072 * MiB
    # rounded up to whole steps
    assert prefault_target(1, 0, cap, 1024 * MiB, step) == 1024 * MiB + step
    # never past the capacity
    assert prefault_target(cap - MiB, 1024 * MiB, cap, 1024 * MiB, step) == cap
    assert prefault_target(0, 0, 5 * MiB, 1024 * MiB, step) == 5 * MiB


def test_prefault_target_rejects_bad_input() -> None:
    from gdfut.devstore.arena import prefault_target
    with pytest.raises(ValueError, match="step"):
        prefault_target(0, 0, MiB, MiB, step=0)
    with pytest.raises(ValueError, match="negative"):
        prefault_target(-1, 0, MiB, MiB, MiB)


def test_note_allocation_raises_the_target_and_never_lowers_it(monkeypatch, make_arena) -> None:
    from gdfut.devstore.arena import PREFAULT_CHUNK
    monkeypatch.setattr(arena_module, "PREFAULT_AHEAD", 8 * MiB)
    arena = make_arena(1024 * MiB, prefault=False)      # decisions only: no thread
    assert arena.prefault_target_bytes == PREFAULT_CHUNK  # 8 MiB ahead, one whole step
    arena.note_allocation(0, 100 * MiB)                   # 100 + 2 * 100, rounded to steps
    assert arena.prefault_target_bytes == 320 * MiB
    arena.note_allocation(0, MiB)                         # lower: kept
    assert arena.prefault_target_bytes == 320 * MiB
    arena.note_allocation(900 * MiB, 100 * MiB)           # capped at the capacity
    assert arena.prefault_target_bytes == 1024 * MiB


def test_prefault_thread_faults_up_to_the_target_then_waits(monkeypatch, make_arena) -> None:
    monkeypatch.setattr(arena_module, "PREFAULT_CHUNK", 4 * MiB)
    monkeypatch.setattr(arena_module, "PREFAULT_AHEAD", 4 * MiB)
    arena = make_arena(64 * MiB)
    deadline = time.monotonic() + 10
    while arena.prefaulted_bytes < 4 * MiB and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert arena.prefaulted_bytes == 4 * MiB and not arena.prefault_done.is_set()
    arena.note_allocation(0, 8 * MiB)                     # 8 + 2 * 8 = 24 MiB
    while arena.prefaulted_bytes < 24 * MiB and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert arena.prefaulted_bytes == 24 * MiB and not arena.prefault_done.is_set()


def test_map_file_readonly_views_a_file_range_and_releases_once(tmp_path):
    """The reader's view of an object that lives in a spill file."""
    import gc
    from gdfut.devstore.arena import map_file_readonly
    path = tmp_path / "spill.bin"
    data = bytes(range(256)) * 64          # 16 KiB
    path.write_bytes(b"\0" * 4096 + data)
    released = []
    view = map_file_readonly(str(path), 4096, len(data), lambda: released.append(1))
    assert not view.flags.writeable and view.tobytes() == data
    with pytest.raises(ValueError):
        view[0] = 1
    part = view[100:200]
    del view
    gc.collect()
    assert released == [] and part[0] == data[100]     # a slice keeps the mapping and the pin
    del part
    gc.collect()
    assert released == [1]
