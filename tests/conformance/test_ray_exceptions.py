"""Ray-user programs: exceptions, wait, get timeouts, put/get, nested refs,
futures. Each is written as Ray's documentation writes it and asserts what
those docs promise."""
import asyncio
import sys
import time

import cloudpickle
import numpy as np
import pytest

import gdfut as ray
from gdfut.exceptions import GetTimeoutError, TaskError

# Workers cannot import this module; ship its definitions by value, as they
# are from a user's script.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class MyException(Exception):
    def __init__(self, code, detail):
        super().__init__(f"code {code}: {detail}")
        self.code = code


def test_application_error_is_catchable_as_its_class(ray_cluster):
    # "Ray surfaces application-level failures as Python-level exceptions":
    # the error is both a RayTaskError and the original class.
    @ray.remote
    def f():
        raise MyException(7, "boom")

    try:
        ray.get(f.remote())
    except MyException as e:
        assert isinstance(e, TaskError)
        assert e.code == 7
        assert "boom" in str(e)
    else:
        pytest.fail("no exception")


def test_errors_propagate_through_dependent_tasks(ray_cluster):
    @ray.remote
    def fail():
        raise ValueError("first")

    @ray.remote
    def consume(x):
        return x

    with pytest.raises(ValueError, match="first"):
        ray.get(consume.remote(fail.remote()))


def test_get_timeout(ray_cluster):
    @ray.remote
    def long_running_function():
        time.sleep(8)

    obj_ref = long_running_function.remote()
    try:
        ray.get(obj_ref, timeout=0.5)
    except GetTimeoutError:
        pass
    else:
        pytest.fail("get did not time out")
    ray.cancel(obj_ref, force=True)


def test_wait_returns_ready_and_pending(ray_cluster):
    @ray.remote
    def sleep_for(s):
        time.sleep(s)
        return s

    refs = [sleep_for.remote(0), sleep_for.remote(10)]
    ready, not_ready = ray.wait(refs, num_returns=1, timeout=8)
    assert ray.get(ready) == [0] and not_ready == [refs[1]]
    assert ray.wait([]) == ([], [])
    with pytest.raises(TypeError):
        ray.wait(refs[0])                # a list is needed
    ray.cancel(refs[1], force=True)


def test_put_get_and_zero_copy_numpy(ray_cluster):
    y = ray.put(np.zeros(10**6))
    arr = ray.get(y)
    assert arr.shape == (10**6,) and not arr.flags.writeable   # read-only view of the store
    assert ray.get([ray.put(i) for i in range(5)]) == list(range(5))


def test_nested_refs_are_passed_not_resolved(ray_cluster):
    # Refs inside a container are not resolved for the task: it gets refs.
    @ray.remote
    def echo(x):
        return x

    @ray.remote
    def takes_list(refs):
        return sum(ray.get(refs))

    inner = [echo.remote(i) for i in range(3)]
    assert ray.get(takes_list.remote(inner)) == 3
    outer = ray.put({"refs": inner})
    got = ray.get(outer)
    assert ray.get(got["refs"]) == [0, 1, 2]


def test_futures_and_asyncio(ray_cluster):
    @ray.remote
    def some_task():
        return 1

    fut = some_task.remote().future()             # concurrent.futures.Future
    assert fut.result(timeout=60) == 1

    async def await_obj_ref():
        await some_task.remote()
        return await asyncio.wait([asyncio.ensure_future(some_task.remote().as_future())])

    done, _pending = asyncio.run(await_obj_ref())
    assert [d.result() for d in done] == [1]


def test_arguments_are_checked_at_the_call(ray_cluster):
    @ray.remote
    def f(a, b):
        return a + b

    with pytest.raises(TypeError):
        f.remote(1)
    with pytest.raises(TypeError):
        f.remote(1, 2, c=3)
    assert ray.get(f.remote(1, b=2)) == 3


def test_out_of_memory_style_errors_do_not_crash_workers(ray_cluster):
    @ray.remote(max_retries=0)
    def oom():
        raise MemoryError("simulated")

    @ray.remote(max_retries=0)
    def group():
        raise ExceptionGroup("many", [ValueError(1), TypeError(2)])

    with pytest.raises(MemoryError):
        ray.get(oom.remote())
    with pytest.raises(ExceptionGroup) as info:
        ray.get(group.remote())
    assert len(info.value.exceptions) == 2
