"""The leak check looks at its own session only (issue 7, point 14)."""
import os

import pytest

from helpers import assert_no_leaks, shm_files


def test_other_sessions_shared_memory_is_not_a_leak(tmp_path):
    mine = tmp_path / "session_mine"
    mine.mkdir()
    other = f"/dev/shm/gdfut-session_someone_else_{os.getpid()}-0000"
    open(other, "wb").close()
    try:
        assert shm_files(str(mine)) == []
        assert_no_leaks(str(mine))          # another user's gdfut is not ours
        own = f"/dev/shm/gdfut-{mine.name}-0000"
        open(own, "wb").close()
        try:
            assert shm_files(str(mine)) == [own]
            with pytest.raises(AssertionError):
                assert_no_leaks(str(mine))
        finally:
            os.unlink(own)
    finally:
        os.unlink(other)


def test_leak_check_needs_a_session():
    with pytest.raises(ValueError, match="session directory"):
        shm_files(None)
