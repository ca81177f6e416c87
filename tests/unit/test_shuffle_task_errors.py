"""The shuffle's task bodies name the user's function that failed (an
attribute on the error, which survives pickling to the driver), and refuse a
map block that is not an array with a TypeError naming map_fn."""
import functools
import pickle

import numpy as np
import pytest

from gdfut.shuffle import tasks


def broken_map(data):
    raise KeyError("column")


def test_the_failing_function_is_marked_and_the_mark_travels():
    with pytest.raises(KeyError) as err:
        tasks.map_task(broken_map, lambda b, n: np.zeros(len(b), np.int64), 2, np.zeros((4, 100)))
    assert getattr(err.value, tasks.FN_ATTR) == "map_fn broken_map"
    again = pickle.loads(pickle.dumps(err.value))
    assert getattr(again, tasks.FN_ATTR) == "map_fn broken_map"


def test_a_partial_is_named_by_its_function():
    assert tasks.fn_name(functools.partial(broken_map)) == "broken_map"


def test_input_and_reduce_errors_are_marked():
    def make_input():
        raise OSError("no file")
    with pytest.raises(OSError) as err:
        tasks.map_task(None, None, 2, make_input)
    assert getattr(err.value, tasks.FN_ATTR).startswith("input ")

    def reducer(blocks, r):
        raise ValueError(r)
    with pytest.raises(ValueError) as err:
        tasks.reduce_task(reducer, 3, None, np.zeros((1, 100), np.uint8))
    assert getattr(err.value, tasks.FN_ATTR).startswith("reduce_fn ")


@pytest.mark.parametrize("block", ["text", {"a": 1}, [1, 2, 3], None])
def test_a_block_that_is_not_an_array_is_named(block):
    with pytest.raises(TypeError, match=f"map_fn .*<lambda> returned {type(block).__name__}, "
                                        f"but a shuffle block must be an array"):
        tasks.map_task(lambda d: block, tasks.concat_blocks, 2, np.zeros((2, 100)))
    with pytest.raises(TypeError, match="the input \\(no map_fn\\) returned"):
        tasks.map_task(None, tasks.concat_blocks, 2, block)
