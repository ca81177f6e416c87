"""OutputForwarder: each printed line is forwarded once, labelled, with no
empty line after it (print writes the text and the newline separately)."""
import io

from gdfut.worker_output import STDOUT, OutputForwarder


class FakeConn:
    closed = False

    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)


class FakeIO:
    def post(self, fn, *args):
        fn(*args)


class FakeRuntime:
    def __init__(self):
        self.io = FakeIO()
        self.output_conn = FakeConn()
        self.output_label = "fn pid=1"


def forwarded(write_calls) -> list[str]:
    rt = FakeRuntime()
    out = OutputForwarder(rt, io.StringIO(), STDOUT)
    for s in write_calls:
        out.write(s)
    return [line for msg in rt.output_conn.sent for _label, _stream, line in msg[1]]


def test_print_forwards_one_line_per_print():
    rt = FakeRuntime()
    out = OutputForwarder(rt, io.StringIO(), STDOUT)
    print("hello", file=out)
    print("world", file=out)
    lines = [entry for msg in rt.output_conn.sent for entry in msg[1]]
    assert lines == [["fn pid=1", STDOUT, "hello"], ["fn pid=1", STDOUT, "world"]]


def test_partial_and_multi_line_writes():
    assert forwarded(["a", "b", "\n"]) == ["ab"]
    assert forwarded(["x\ny\n"]) == ["x", "y"]
    assert forwarded(["x\ny"]) == ["x"]              # "y" waits for its newline
    assert forwarded(["\n"]) == [""]                 # a deliberately empty line stays
    assert forwarded(["a\n\nb\n"]) == ["a", "", "b"]
