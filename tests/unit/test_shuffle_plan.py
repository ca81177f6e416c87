"""The shuffle planner (gdfut/shuffle/plan.py): pure, driven with events."""
import random

import pytest

from gdfut.shuffle.plan import ShufflePlanner, SubmitMap, SubmitMerge, SubmitReduce


def drive(planner: ShufflePlanner, seed: int = 0, node_of=lambda m: "n0"):
    """Complete tasks in a random order, checking invariants at each step.
    Returns every instruction in order."""
    rng = random.Random(seed)
    log = list(planner.start())
    running = [i for i in log if not isinstance(i, SubmitReduce)]
    reduces = [i for i in log if isinstance(i, SubmitReduce)]
    planner.validate()
    while running or reduces:
        pool = running if running and (not reduces or rng.random() < 0.7) else reduces
        ins = pool.pop(rng.randrange(len(pool)))
        if isinstance(ins, SubmitMap):
            new = planner.map_done(ins.map_index, node_of(ins.map_index))
        elif isinstance(ins, SubmitMerge):
            new = planner.merge_done(ins.merge_id)
        else:
            new = planner.reduce_done(ins.reducer)
        planner.validate()
        log += new
        running += [i for i in new if not isinstance(i, SubmitReduce)]
        reduces += [i for i in new if isinstance(i, SubmitReduce)]
    assert planner.done
    return log


def of(log, kind):
    return [i for i in log if isinstance(i, kind)]


def test_simple_every_reducer_reads_every_map():
    p = ShufflePlanner(10, 3, "simple", map_parallelism=4)
    log = drive(p)
    assert [m.map_index for m in of(log, SubmitMap)] == list(range(10))
    assert not of(log, SubmitMerge)
    reds = of(log, SubmitReduce)
    assert sorted(r.reducer for r in reds) == [0, 1, 2]
    assert all(r.maps == tuple(range(10)) and r.merges == () for r in reds)


def test_simple_reduces_come_once_the_last_map_is_submitted():
    p = ShufflePlanner(3, 2, "simple", map_parallelism=2)
    first = p.start()
    assert first == [SubmitMap(0), SubmitMap(1)]
    second = p.map_done(0)
    assert second[0] == SubmitMap(2)
    assert [type(i) for i in second[1:]] == [SubmitReduce, SubmitReduce]


def test_map_window_bounds_maps_in_flight():
    p = ShufflePlanner(20, 2, "simple", map_parallelism=3)
    assert len(p.start()) == 3
    assert p.map_done(1) == [SubmitMap(3)]
    assert len(p.maps_in_flight) == 3


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("maps,factor", [(16, 4), (10, 4), (5, 8), (1, 2), (7, 2)])
def test_push_merges_rounds_per_reducer(seed, maps, factor):
    R = 3
    p = ShufflePlanner(maps, R, "push", map_parallelism=3, merge_factor=factor,
                       reducer_nodes=["a", "b", "c"])
    log = drive(p, seed)
    merges = of(log, SubmitMerge)
    for m in merges:
        assert m.node == "abc"[m.reducer]       # placed on its reducer's node
        assert len(m.maps) >= 2
    for r in range(R):
        mine = [m for m in merges if m.reducer == r]
        covered = sorted(x for m in mine for x in m.maps)
        red = p.reduces[r]
        assert red.merges == tuple(m.merge_id for m in mine)
        assert sorted(covered + list(red.maps)) == list(range(maps))
        assert red.node == "abc"[r]
    full_rounds = maps // factor
    assert len(merges) >= full_rounds * R


def test_push_merge_backlog_holds_maps_back():
    p = ShufflePlanner(8, 2, "push", map_parallelism=2, merge_factor=2, max_merges_in_flight=2)
    p.start()
    assert p.map_done(0) == [SubmitMap(2)]
    out = p.map_done(1)                  # a round: 2 merges, the backlog is full
    assert [type(i) for i in out] == [SubmitMerge, SubmitMerge]
    assert not any(isinstance(i, SubmitMap) for i in out)   # a window slot is free, yet
    assert p.maps_in_flight == {2}
    assert p.merge_done(out[0].merge_id) == [SubmitMap(3)]


@pytest.mark.parametrize("seed", range(5))
def test_riffle_merges_maps_of_one_node(seed):
    node_of = lambda m: f"n{m % 2}"      # noqa: E731
    p = ShufflePlanner(11, 4, "riffle", map_parallelism=4, merge_factor=3)
    log = drive(p, seed, node_of)
    merges = of(log, SubmitMerge)
    assert merges
    for m in merges:
        assert m.reducer is None
        assert {node_of(x) for x in m.maps} == {m.node}
    for red in of(log, SubmitReduce):
        assert red.merges == tuple(m.merge_id for m in merges)


def test_single_reducer_and_single_map():
    for strategy in ("simple", "push", "riffle"):
        p = ShufflePlanner(1, 1, strategy, map_parallelism=2)
        log = drive(p)
        assert len(of(log, SubmitReduce)) == 1
        assert p.reduces[0].maps == (0,)


def test_no_maps_still_reduces():
    for strategy in ("simple", "push", "riffle"):
        p = ShufflePlanner(0, 2, strategy)
        log = drive(p)
        assert [r.maps for r in of(log, SubmitReduce)] == [(), ()]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="strategy"):
        ShufflePlanner(2, 2, "bogus")
    with pytest.raises(ValueError, match="num_reducers"):
        ShufflePlanner(2, 0)
    with pytest.raises(ValueError, match="merge_factor"):
        ShufflePlanner(2, 2, "push", merge_factor=0)
    with pytest.raises(ValueError, match="reducer_nodes"):
        ShufflePlanner(2, 2, "push", reducer_nodes=["a"])


def test_events_out_of_order_are_refused():
    p = ShufflePlanner(2, 2)
    p.start()
    with pytest.raises(AssertionError):
        p.map_done(5)


def test_push_merges_overlap_maps_still_running():
    p = ShufflePlanner(12, 2, "push", map_parallelism=4, merge_factor=2)
    p.start()
    p.map_done(0)
    out = p.map_done(1)
    merges = [i for i in out if isinstance(i, SubmitMerge)]
    assert len(merges) == 2 and merges[0].maps == (0, 1)
    assert p.maps_in_flight and p.next_map < 12     # maps still running and to come
    assert not p.reduces


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("maps,factor,limit", [(16, 4, 8), (16, 4, 13), (9, 3, 5), (6, 2, 6)])
def test_push_merges_only_while_reducers_read_more_than_the_limit(seed, maps, factor, limit):
    p = ShufflePlanner(maps, 2, "push", map_parallelism=3, merge_factor=factor,
                       max_reducer_blocks=limit)
    drive(p, seed)
    for red in p.reduces.values():
        blocks = len(red.maps) + len(red.merges)
        assert blocks <= max(limit, 1)
        if red.merges:      # the last merge was needed: one fewer and it would read more
            last = p.merges[red.merges[-1]]
            assert blocks + len(last.maps) - 1 > limit
    p.validate()


def test_push_without_merges_reduces_as_early_as_simple():
    """A limit no round passes: push runs as simple, reduces submitted with
    the last map, before any map is done."""
    p = ShufflePlanner(4, 2, "push", map_parallelism=4, max_reducer_blocks=4)
    out = p.start()
    assert [type(i) for i in out] == [SubmitMap] * 4 + [SubmitReduce] * 2
    assert all(r.maps == (0, 1, 2, 3) and r.merges == () for r in p.reduces.values())
    for m in range(4):
        assert p.map_done(m) == []
    with pytest.raises(ValueError, match="max_reducer_blocks"):
        ShufflePlanner(4, 2, "push", max_reducer_blocks=-1)
