"""What tasks and actors print shows up at the driver, labelled (log_to_driver)."""
import sys

import pytest

import gdfut
from helpers import assert_no_leaks, wait_until


@gdfut.remote
def say(text):
    import os
    print(text)
    print(f"err {text}", file=sys.stderr)
    return os.getpid()


@gdfut.remote
def outer():
    print("outer line")
    return gdfut.get(say.remote("inner line"))


@gdfut.remote
class Talker:
    def talk(self, text):
        print(text, end="")          # a partial line...
        print("!")                   # ...completed by the next write
        return True


class Captured:
    def __init__(self, capsys):
        self.capsys, self.out, self.err = capsys, "", ""

    def read(self):
        got = self.capsys.readouterr()
        self.out += got.out
        self.err += got.err
        return self


def test_task_output_reaches_the_driver(cluster, capsys):
    cap = Captured(capsys)
    pid = gdfut.get(say.remote("hello from a task"))
    wait_until(lambda: "hello from a task" in cap.read().out, timeout=10, what="stdout line")
    assert f"(say pid={pid}) hello from a task" in cap.out
    wait_until(lambda: "err hello from a task" in cap.read().err, timeout=10, what="stderr line")
    assert f"(say pid={pid}) err hello from a task" in cap.err


def test_nested_task_output_is_relayed(cluster, capsys):
    cap = Captured(capsys)
    inner_pid = gdfut.get(outer.remote())
    wait_until(lambda: "inner line" in cap.read().out and "outer line" in cap.out, timeout=10,
               what="both lines")
    assert f"(say pid={inner_pid}) inner line" in cap.out
    assert "(outer pid=" in cap.out


def test_actor_output_labelled_with_class(cluster, capsys):
    cap = Captured(capsys)
    t = Talker.remote()
    assert gdfut.get(t.talk.remote("hi there"))
    wait_until(lambda: "hi there!" in cap.read().out, timeout=10, what="actor line")
    assert "(Talker pid=" in cap.out


def test_log_to_driver_off(capsys):
    info = gdfut.init(num_cpus=1, object_store_memory=64 * 1024 * 1024, log_to_driver=False)
    try:
        gdfut.get(say.remote("should stay in the worker log"))
        gdfut.get(say.remote("sync"))             # later replies: earlier output was handled
        assert "should stay" not in capsys.readouterr().out
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def test_unknown_init_argument_is_an_error():
    with pytest.raises(TypeError, match="bogus"):
        gdfut.init(bogus=1)
    assert not gdfut.is_initialized()
