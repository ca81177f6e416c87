"""The streaming executor's decisions (gdfut/data/planner.py), on exact
event -> instruction sequences."""
import pytest

from gdfut.data.planner import (Emit, Launch, OpSpec, Pipeline, Release, StartActor,
                                StopActor)

MB = 1 << 20


def task(name="t", budget=10 * MB, max_tasks=4):
    return OpSpec(name, "task", budget, max_tasks=max_tasks)


def actor(name="a", budget=10 * MB, lo=2, hi=2, slots=1):
    return OpSpec(name, "actor", budget, min_actors=lo, max_actors=hi, slots_per_actor=slots)


def feed(p, n, nbytes=MB, done=True):
    for i in range(n):
        p.add_input(i, nbytes)
    if done:
        p.inputs_done()


def launches(ins):
    return [(x.op, x.seq) for x in ins if isinstance(x, Launch)]


def test_task_op_launches_up_to_its_cap_lowest_seq_first():
    p = Pipeline([task(max_tasks=2)])
    feed(p, 5)
    assert launches(p.step()) == [(0, 0), (0, 1)]
    assert p.step() == []
    p.task_done(0, 1, MB, 10)            # out of order: seq 1 first, not emitted yet
    ins = p.step()
    assert launches(ins) == [(0, 2)] and not [x for x in ins if isinstance(x, Emit)]
    p.task_done(0, 0, MB, 10)
    ins = p.step()
    assert [x.seq for x in ins if isinstance(x, Emit)] == [0, 1]
    p.validate()


def test_budget_stops_launches_until_consumer_releases():
    # budget 3 MB, 1 MB blocks, consumer never takes more than prefetch+1
    p = Pipeline([task(budget=3 * MB, max_tasks=10)], prefetch_blocks=0)
    feed(p, 10)
    assert launches(p.step()) == [(0, 0), (0, 1), (0, 2)]     # 3 x 1 MB estimate fills it
    for s in (0, 1, 2):
        p.task_done(0, s, MB, 1)
    ins = p.step()
    assert launches(ins) == [] and [x.seq for x in ins if isinstance(x, Emit)] == [0]
    assert p.held_bytes() == [3 * MB]
    p.consumed(0)
    ins = p.step()
    assert launches(ins) == [(0, 3)] and [x.seq for x in ins if isinstance(x, Emit)] == [1]
    assert max(p.held_bytes()) <= 3 * MB
    p.validate()


def test_head_of_line_block_always_starts_so_reorder_buffer_cannot_deadlock():
    # op0 finishes 1..2 before 0; op1 takes its input in order, so it waits
    # for 0 while 1 and 2 fill op0's budget. Block 0 (running) lands, then
    # everything flows; op0's third task started on a free slot meanwhile.
    p = Pipeline([task("a", budget=2 * MB, max_tasks=3), task("b", budget=2 * MB, max_tasks=3)],
                 prefetch_blocks=0)
    feed(p, 4)
    assert launches(p.step()) == [(0, 0), (0, 1)]          # 2 x 1 MB estimates fill it
    p.task_done(0, 1, MB, 1)
    assert launches(p.step()) == []                        # 1 waits for 0, budget full
    p.task_done(0, 0, MB, 1)
    assert launches(p.step()) == [(1, 0), (1, 1)]
    p.task_done(1, 0, MB, 1)
    p.task_done(1, 1, MB, 1)
    for _ in range(30):
        for ins in p.step():
            if isinstance(ins, Launch):
                p.task_done(ins.op, ins.seq, MB, 1)
            elif isinstance(ins, Emit):
                p.consumed(ins.seq)
        p.validate()
        assert max(p.held_bytes()) <= 3 * MB               # budget + one head-of-line block
    assert p.finished() and p.held_bytes() == [0, 0]


def test_head_of_line_reaches_through_a_bundler_waiting_for_rows():
    # op1 needs 10 rows a bundle; op0's 3-row blocks fill its 2 MB budget
    # before a bundle is complete: the block the bundle waits on still starts.
    p = Pipeline([task("a", budget=2 * MB, max_tasks=3),
                  OpSpec("b", "task", 10 * MB, max_tasks=3, min_rows=10)], prefetch_blocks=0)
    feed(p, 6)
    assert launches(p.step()) == [(0, 0), (0, 1)]
    p.task_done(0, 0, MB, 3)
    p.task_done(0, 1, MB, 3)
    assert launches(p.step()) == [(0, 2)]          # over budget: the bundle needs it
    p.task_done(0, 2, MB, 3)
    assert launches(p.step()) == [(0, 3)]
    p.task_done(0, 3, MB, 3)
    ins = p.step()
    first = [x for x in ins if isinstance(x, Launch) and x.op == 1]
    assert [x.pieces for x in first] == [((0, 0, 3), (1, 0, 3), (2, 0, 3), (3, 0, 1))]
    p.task_done(1, 0, MB, 10)
    ins = p.step()
    released = [(x.level, x.seq) for x in ins if isinstance(x, Release)]
    assert [x.seq for x in ins if isinstance(x, Emit)] == [0]
    assert released == [(0, 0), (0, 1), (0, 2)]    # 3 still has 2 rows pending
    rows = [10]
    for _ in range(30):
        for x in ins:
            if isinstance(x, Launch):
                n = sum(b - a for _, a, b in x.pieces) if x.op == 1 else 3
                if x.op == 1:
                    rows.append(n)
                p.task_done(x.op, x.seq, MB, n)
            elif isinstance(x, Emit):
                p.consumed(x.seq)
        p.validate()
        ins = p.step()
    assert p.finished() and rows == [10, 8] and p.held_bytes() == [0, 0]


def test_estimate_follows_observed_output_ratio():
    p = Pipeline([task(budget=10 * MB, max_tasks=100)], prefetch_blocks=100)
    feed(p, 20, nbytes=MB)
    first = launches(p.step())
    assert len(first) == 10              # estimate = input size before any output is seen
    for _, s in first:
        p.task_done(0, s, 4 * MB, 1)     # outputs are 4x their input
    for s in range(10):
        p.step()
        p.consumed(s)
    p.step()
    running = p.ops[0].running
    assert [e for e, _ in running.values()] == [4 * MB, 4 * MB]   # 10 MB budget: 2 fit, not 3
    assert sorted(running) == [10, 11]


def test_actor_pool_starts_at_full_size_at_once_and_spreads_calls():
    p = Pipeline([task(), actor(lo=3, hi=3, slots=2)])
    ins = p.step()
    assert [x for x in ins if isinstance(x, StartActor)] == [StartActor(1, 0), StartActor(1, 1),
                                                             StartActor(1, 2)]
    feed(p, 8)
    p.step()
    for s in range(4):
        p.task_done(0, s, MB, 1)
    ins = [x for x in p.step() if isinstance(x, Launch) and x.op == 1]
    assert sorted(x.actor for x in ins) == [0, 1, 2, 0] or len({x.actor for x in ins}) == 3
    assert len(ins) == 4
    p.validate()


def test_autoscaling_grows_on_queue_length_and_shrinks_when_input_ends():
    p = Pipeline([actor(lo=1, hi=4, slots=1, budget=100 * MB)])
    assert [type(x) for x in p.step()] == [StartActor]
    feed(p, 6, done=False)
    ins = p.step()
    assert launches(ins) == [(0, 0)]
    starts = [x for x in ins if isinstance(x, StartActor)]
    assert len(starts) == 3              # 5 waiting, 0 free: up to max at once, not one by one
    ins = p.step()
    assert launches(ins) == [(0, 1), (0, 2), (0, 3)]
    p.inputs_done()
    for s in range(4):
        p.task_done(0, s, MB, 1)
    ins = p.step()
    assert launches(ins) == [(0, 4), (0, 5)]
    stops = [x for x in ins if isinstance(x, StopActor)]
    assert len(stops) == 2               # the two idle ones go at once, input has ended
    for s in (4, 5):
        p.task_done(0, s, MB, 1)
    stops += [x for x in p.step() if isinstance(x, StopActor)]
    assert len(stops) == 3 and len(p.ops[0].actors) == 1     # back to min
    p.validate()


def test_scaling_not_triggered_by_budget_waits():
    p = Pipeline([actor(lo=1, hi=4, slots=2, budget=2 * MB)], prefetch_blocks=0)
    p.step()
    feed(p, 6)
    assert launches(p.step()) == [(0, 0), (0, 1)]
    p.task_done(0, 0, MB, 1)
    p.task_done(0, 1, MB, 1)
    ins = p.step()                       # slots free, budget full: no new actors
    assert not [x for x in ins if isinstance(x, StartActor)]
    assert launches(ins) == []


def test_two_ops_drain_downstream_first_and_finish():
    p = Pipeline([task("a", max_tasks=1), task("b", max_tasks=1)], prefetch_blocks=1)
    feed(p, 2)
    seen = []
    for _ in range(20):
        for ins in p.step():
            if isinstance(ins, Launch):
                p.task_done(ins.op, ins.seq, MB, 5)
                seen.append((ins.op, ins.seq))
            elif isinstance(ins, Emit):
                p.consumed(ins.seq)
        if p.finished():
            break
    assert p.finished()
    assert seen == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert p.ops[1].rows_done == 10 and p.held_bytes() == [0, 0]


def test_bad_specs_and_events_are_refused():
    with pytest.raises(AssertionError):
        OpSpec("x", "actor", MB, min_actors=3, max_actors=2)
    with pytest.raises(AssertionError):
        OpSpec("x", "thread", MB)
    p = Pipeline([task()])
    with pytest.raises(AssertionError):
        p.task_done(0, 0, 1, 1)          # never launched
    with pytest.raises(AssertionError):
        p.add_input(3, 1)                # seqs come in order
