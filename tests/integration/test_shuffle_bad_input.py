"""gdfut.shuffle and the sort command line given bad input, as users (and
attackers) would: a clear error at once, naming the option or the user's
function and the map/reduce index, with the cause kept; after a failed
shuffle no task of it runs and none of its objects is left."""
import functools
import os
import sys
import time

import cloudpickle
import pytest

import gdfut
from gdfut.exceptions import TaskError
from gdfut.shuffle import records as R, shuffle
from helpers import assert_no_leaks, wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module: every test leaves it as it found it (the
    tests check that), so they can share it."""
    info = gdfut.init(num_cpus=3, object_store_memory=128 << 20)
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def inputs(maps=3, n=400):
    return [functools.partial(R.generate, m, n, 5, 0.0) for m in range(maps)]


def sort_reduce(blocks, reducer):
    return R.sort_records(R.concat(blocks))


def assert_nothing_left():
    """No object of the failed shuffle is alive and its tasks gave their CPUs back."""
    wait_until(lambda: not gdfut.memory_summary(), timeout=10, what="no live objects")
    wait_until(lambda: gdfut.available_resources().get("CPU") == 3, timeout=10,
               what="all CPUs free")


@pytest.mark.parametrize("num_reducers", [0, -1, "4", 2.0, True])
@pytest.mark.parametrize("strategy", ["simple", "push"])
def test_bad_num_reducers(cluster, tmp_path, num_reducers, strategy):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="num_reducers must be an int >= 1"):
        shuffle(inputs(), None, sort_reduce, num_reducers, strategy=strategy,
                output_dir=str(out), progress=False)
    assert not out.exists()                 # refused before anything was done


def test_bad_arguments_named(cluster, tmp_path):
    with pytest.raises(ValueError, match="unknown strategy 'bogus'"):
        shuffle(inputs(), None, sort_reduce, 2, strategy="bogus", progress=False)
    with pytest.raises(ValueError, match="unknown partitioner 'bogus'"):
        shuffle(inputs(), None, sort_reduce, 2, partitioner="bogus", progress=False)
    with pytest.raises(TypeError, match="inputs must be an iterable"):
        shuffle(5, None, sort_reduce, 2, progress=False)
    with pytest.raises(TypeError, match="merge_fn must be callable"):
        shuffle(inputs(), None, sort_reduce, 2, merge_fn="concat", progress=False)
    with pytest.raises(ValueError, match="map_options must be a dict of task options without "
                                         "num_returns"):
        shuffle(inputs(), None, sort_reduce, 2, map_options={"num_returns": 2}, progress=False)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="output_dir .* is not a directory"):
        shuffle(inputs(), None, sort_reduce, 2, output_dir=str(afile), progress=False)
    with pytest.raises(ValueError, match="output_dir .* not a writable directory"):
        shuffle(inputs(), None, sort_reduce, 2, output_dir=str(afile / "sub"), progress=False)
    assert_nothing_left()


def test_empty_inputs_give_empty_partitions(cluster):
    out = shuffle([], None, sort_reduce, 3, progress=False)
    assert [len(p) for p in gdfut.get(list(out))] == [0, 0, 0]


def tagged(m):
    return m, R.generate(m, 400, 5, 0.0)


def map_raises_on_2(item):
    m, records = item
    if m == 2:
        raise KeyError("no such column")
    return records


def map_returns_text(item):
    return "not an array"


def untag(item):
    return item[1]


def partition_raises(block, n):
    raise IndexError("bad partition")


def merge_raises(blocks):
    raise RuntimeError("merge broke")


def reduce_raises_on_1(blocks, reducer):
    if reducer == 1:
        raise ZeroDivisionError("reducer 1 broke")
    return len(blocks)


@pytest.mark.parametrize("kwargs, cause, says", [
    ({"map_fn": map_raises_on_2}, KeyError,
     r"^task map_raises_on_2 \(map_fn of shuffle map 2 of 3\) raised KeyError: 'no such column'"),
    ({"map_fn": map_returns_text}, TypeError,
     r"map_returns_text \(map_fn of shuffle map \d of 3\) raised TypeError: map_fn "
     r"map_returns_text returned str, but a shuffle block must be an array"),
    ({"partitioner": partition_raises}, IndexError,
     r"partition_raises \(partitioner of shuffle map \d of 3\) raised IndexError"),
    ({"merge_fn": merge_raises, "strategy": "push", "merge_factor": 1, "max_reducer_blocks": 0},
     RuntimeError, r"merge_raises \(merge_fn of shuffle merge \d+\) raised RuntimeError"),
    ({"reduce_fn": reduce_raises_on_1}, ZeroDivisionError,
     r"reduce_raises_on_1 \(reduce_fn of shuffle reduce 1 of 3\) raised ZeroDivisionError"),
])
def test_a_failing_user_function_is_named(cluster, kwargs, cause, says):
    kwargs = {"map_fn": untag, "reduce_fn": sort_reduce, **kwargs}
    items = [functools.partial(tagged, m) for m in range(3)]
    with pytest.raises(TaskError, match=says) as err:
        shuffle(items, kwargs.pop("map_fn"), kwargs.pop("reduce_fn"), 3, progress=False,
                **kwargs)
    assert isinstance(err.value, cause)               # `except KeyError` still works
    assert isinstance(err.value.cause, cause)         # the original error is kept
    assert "remote traceback" in str(err.value)
    assert_nothing_left()


def reduce_fails_late_others_sleep(marks, blocks, reducer):
    if reducer == 0:               # fails once the others run (or after 20 s)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
                os.path.exists(os.path.join(marks, f"started-{r}")) for r in (1, 2)):
            time.sleep(0.05)
        raise ValueError("reducer 0 failed")
    open(os.path.join(marks, f"started-{reducer}"), "w").close()
    try:
        time.sleep(60)
    finally:
        open(os.path.join(marks, f"ended-{reducer}"), "w").close()
    return reducer


def test_a_failed_shuffle_cancels_its_running_tasks(cluster, tmp_path):
    marks = str(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"reduce 0 of 3"):
        shuffle(inputs(), None, functools.partial(reduce_fails_late_others_sleep, marks), 3,
                progress=False)
    assert time.monotonic() - t0 < 45
    started = sorted(f[len("started-"):] for f in os.listdir(marks) if f.startswith("started"))
    ended = sorted(f[len("ended-"):] for f in os.listdir(marks) if f.startswith("ended"))
    assert started, "the test needs reducers that were running when reducer 0 failed"
    assert ended == started          # all of them stopped before shuffle() raised
    assert_nothing_left()
