"""Ray-user programs for ray.util: ActorPool, Queue and placement groups,
written as Ray's documentation writes them."""
import time

import gdfut as ray
from gdfut.util import ActorPool
from gdfut.util.placement_group import (placement_group, placement_group_table,
                                        remove_placement_group)
from gdfut.util.queue import Empty, Queue
from gdfut.util.scheduling_strategies import PlacementGroupSchedulingStrategy


def test_actor_pool_map(ray_cluster):
    @ray.remote
    class Actor:
        def double(self, v):
            return 2 * v

    a1, a2 = Actor.remote(), Actor.remote()
    pool = ActorPool([a1, a2])
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4])) == [2, 4, 6, 8]


def test_actor_pool_map_unordered_and_submit(ray_cluster):
    @ray.remote
    class Actor:
        def double(self, v):
            return 2 * v

    a1, a2 = Actor.remote(), Actor.remote()
    pool = ActorPool([a1, a2])
    results = pool.map_unordered(lambda a, v: a.double.remote(v), [1, 2, 3, 4])
    assert set(results) == {2, 4, 6, 8}
    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert (pool.get_next(), pool.get_next()) == (2, 4)
    assert not pool.has_next()


def test_actor_pool_pop_idle_and_push(ray_cluster):
    @ray.remote
    class Actor:
        def double(self, v):
            return 2 * v

    a1, a2 = Actor.remote(), Actor.remote()
    pool = ActorPool([a1])
    pool.push(a2)
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.has_free()
    assert pool.pop_idle() is not None
    assert pool.pop_idle() is None
    assert pool.get_next() == 2


def test_queue_between_tasks(ray_cluster):
    queue = Queue(maxsize=100)

    @ray.remote
    def consumer(id, queue):
        try:
            while True:
                next_item = queue.get(block=True, timeout=1)
                print(f"consumer {id} got work {next_item}")
        except Empty:
            pass

    [queue.put(i) for i in range(10)]
    consumers = [consumer.remote(id, queue) for id in range(2)]
    ray.get(consumers)
    assert queue.empty()
    queue.shutdown()


def test_queue_with_actor(ray_cluster):
    @ray.remote
    class Collector:
        def __init__(self, queue):
            self.queue = queue

        def drain(self):
            return self.queue.get_nowait_batch(self.queue.qsize())

    queue = Queue()
    queue.put_nowait_batch([1, 2, 3])
    collector = Collector.remote(queue)
    assert ray.get(collector.drain.remote()) == [1, 2, 3]
    queue.shutdown()


def test_placement_group_quickstart(ray_cluster):
    # Reserve a bundle of 1 CPU, then schedule an actor and a task on it.
    pg = placement_group([{"CPU": 1}])
    ray.get(pg.ready(), timeout=10)
    assert placement_group_table(pg)["state"] == "CREATED"

    @ray.remote(num_cpus=1)
    class Actor:
        def ready(self):
            pass

    actor = Actor.options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg)).remote()
    ray.get(actor.ready.remote(), timeout=10)

    @ray.remote(num_cpus=0)
    def f():
        return True

    assert ray.get(f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=pg, placement_group_bundle_index=0)).remote(), timeout=10)
    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"


def test_placement_group_wait_and_pending(ray_cluster):
    # The cluster has 4 CPUs: a group of 5 single-CPU bundles cannot be made now.
    pg = placement_group([{"CPU": 1}] * 5, strategy="PACK")
    assert not pg.wait(timeout_seconds=1)
    ready, unready = ray.wait([pg.ready()], timeout=0.5)
    assert ready == [] and len(unready) == 1
    remove_placement_group(pg)
    small = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert small.wait(timeout_seconds=10)
    remove_placement_group(small)


def test_placement_group_child_bundles_limit_concurrency(ray_cluster):
    pg = placement_group([{"CPU": 2}])
    ray.get(pg.ready(), timeout=10)

    @ray.remote(num_cpus=1)
    def work():
        time.sleep(0.5)
        return 1

    start = time.time()
    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    assert sum(ray.get([work.options(scheduling_strategy=strategy).remote()
                        for _ in range(4)], timeout=30)) == 4
    assert time.time() - start >= 0.9        # two at a time in a 2-CPU bundle
    remove_placement_group(pg)
