"""The head's log of dead drivers/workers that nodes read to fate-share objects."""
from gdfut.head import DeadProcessLog


def test_nodes_read_what_they_have_not_seen():
    log = DeadProcessLog()
    log.add([b"w1", b"w2"])
    seq, wids = log.since(0)
    assert (seq, wids) == (2, [b"w1", b"w2"])
    log.add([b"w2", b"w3"])               # w2 again: reported by a second node
    assert log.since(seq) == (3, [b"w3"])
    assert log.since(3) == (3, [])


def test_bounded_and_a_node_far_behind_gets_all_retained():
    log = DeadProcessLog(limit=3)
    log.add([b"a", b"b", b"c", b"d", b"e"])
    assert len(log.entries) == 3 and len(log.known) == 3
    assert log.since(0) == (5, [b"c", b"d", b"e"])
    log.add([b"a"])                        # forgotten, so counted again
    assert log.since(5) == (6, [b"a"])
