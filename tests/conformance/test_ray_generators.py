"""Ray generators, as Ray's documentation writes them ("Ray Generators",
"Dynamic generators"), run on gdfut."""
import asyncio
import time

import numpy as np
import pytest

import gdfut as ray
from gdfut import DynamicObjectRefGenerator, ObjectRefGenerator


def test_streaming_generator_getting_started(ray_cluster):
    @ray.remote
    def task():
        for i in range(5):
            time.sleep(0.05)
            yield i

    gen = task.remote()
    assert isinstance(gen, ObjectRefGenerator)
    # Blocks for 0.05 s, then each next() returns the next ref.
    ref = next(gen)
    assert ray.get(ref) == 0
    assert [ray.get(ref) for ref in gen] == [1, 2, 3, 4]


def test_streaming_generator_error_handling(ray_cluster):
    @ray.remote
    def task():
        for i in range(5):
            time.sleep(0.05)
            if i == 1:
                raise ValueError
            yield i

    gen = task.remote()
    assert ray.get(next(gen)) == 0
    # The exception is raised on the next ref, in order.
    with pytest.raises(ValueError):
        ray.get(next(gen))
    with pytest.raises(StopIteration):
        next(gen)


def test_generator_from_actor_tasks(ray_cluster):
    @ray.remote
    class Actor:
        def f(self):
            for i in range(5):
                yield i

    @ray.remote
    class AsyncActor:
        async def f(self):
            for i in range(5):
                yield i

    @ray.remote(max_concurrency=5)
    class ThreadedActor:
        def f(self):
            for i in range(5):
                yield i

    actor = Actor.remote()
    assert [ray.get(ref) for ref in actor.f.remote()] == list(range(5))
    actor = AsyncActor.remote()
    assert [ray.get(ref) for ref in actor.f.remote()] == list(range(5))
    actor = ThreadedActor.remote()
    assert [ray.get(ref) for ref in actor.f.remote()] == list(range(5))


def test_generator_with_asyncio(ray_cluster):
    @ray.remote
    def task():
        for i in range(5):
            time.sleep(0.01)
            yield i

    async def main():
        out = []
        async for ref in task.remote():
            out.append(await ref)
        return out

    assert asyncio.run(main()) == list(range(5))


def test_generator_garbage_collection(ray_cluster):
    @ray.remote
    def task():
        for i in range(5):
            time.sleep(0.01)
            yield i

    gen = task.remote()
    ref1 = next(gen)
    del gen
    # ref1 is a normal ref: it outlives the generator; the rest are freed.
    assert ray.get(ref1) == 0


def test_wait_until_a_generator_task_completes_and_ray_wait(ray_cluster):
    @ray.remote
    def task():
        for i in range(5):
            time.sleep(0.05)
            yield i

    gen = task.remote()
    ray.get(gen.completed())        # wait until the task finishes
    assert [ray.get(ref) for ref in gen] == list(range(5))

    gen = task.remote()
    ready, unready = [], [gen]
    r = None
    while unready:
        ready, unready = ray.wait(unready)
        try:
            r = ray.get(next(gen))
        except StopIteration:
            pass
        else:
            unready.append(gen)
    assert r == 4


def test_num_returns_set_by_the_task_caller(ray_cluster):
    @ray.remote(num_returns=3)
    def return_multiple_as_generator():
        for i in range(3):
            yield i

    a, b, c = return_multiple_as_generator.remote()
    assert ray.get([a, b, c]) == [0, 1, 2]


def test_num_returns_set_by_the_task_executor(ray_cluster):
    @ray.remote(num_returns="dynamic")
    def split(array, chunk_size):
        while len(array) > 0:
            yield array[:chunk_size]
            array = array[chunk_size:]

    array_ref = ray.put(np.zeros(np.random.randint(1000, 100_000)))
    block_size = 1000
    dynamic_ref = split.remote(array_ref, block_size)
    i = -1
    ref_generator = ray.get(dynamic_ref)
    assert isinstance(ref_generator, DynamicObjectRefGenerator)
    for i, ref in enumerate(ref_generator):
        assert len(ray.get(ref)) <= block_size
    num_blocks_generated = i + 1
    array_size = len(ray.get(array_ref))
    assert array_size <= num_blocks_generated * block_size

    @ray.remote
    def get_size(ref_generator: DynamicObjectRefGenerator):
        num_elements = 0
        for ref in ref_generator:
            array = ray.get(ref)
            assert len(array) <= block_size
            num_elements += len(array)
        return num_elements

    # Pass the dynamic ref (or its value) on to another task.
    dynamic_ref = split.remote(array_ref, block_size)
    assert array_size == ray.get(get_size.remote(dynamic_ref))
    ref_generator = ray.get(dynamic_ref)
    assert array_size == ray.get(get_size.remote(ref_generator))


def test_generator_exception_handling_static_and_dynamic(ray_cluster):
    @ray.remote
    def generator():
        for i in range(2):
            yield i
        raise Exception("error")

    ref1, ref2, ref3, ref4 = generator.options(num_returns=4).remote()
    assert ray.get([ref1, ref2]) == [0, 1]
    # All remaining ObjectRefs contain the error.
    with pytest.raises(Exception, match="error"):
        ray.get([ref3, ref4])

    dynamic_ref = generator.options(num_returns="dynamic").remote()
    ref_generator = ray.get(dynamic_ref)
    ref1, ref2, ref3 = ref_generator
    assert ray.get([ref1, ref2]) == [0, 1]
    # num_returns="dynamic" stores the exception in the final ObjectRef.
    with pytest.raises(Exception, match="error"):
        ray.get(ref3)
