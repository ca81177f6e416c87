"""gdfut.util: ActorPool, Queue and placement groups (issue 7 point 11)."""
import time

import pytest

import gdfut
from gdfut.exceptions import ActorDiedError
from gdfut.util import ActorPool
from gdfut.util.queue import Empty, Full, Queue


SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


@gdfut.remote
class Doubler:
    def double(self, v):
        return 2 * v

    def slow_double(self, v, delay):
        time.sleep(delay)
        return 2 * v

    def die(self):
        import os
        os._exit(1)


# ---------------------------------------------------------------- ActorPool
def test_pool_map_keeps_order_and_map_unordered_gives_every_result(cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    delays = [0.4, 0.0, 0.2, 0.0]
    ordered = pool.map(lambda a, v: a.slow_double.remote(v[0], v[1]), list(zip(range(4), delays)))
    assert list(ordered) == [0, 2, 4, 6]
    unordered = list(pool.map_unordered(lambda a, v: a.double.remote(v), range(6)))
    assert sorted(unordered) == [0, 2, 4, 6, 8, 10]


def test_pool_unordered_returns_the_first_finished(cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(lambda a, v: a.slow_double.remote(v, 2.0), 1)
    pool.submit(lambda a, v: a.slow_double.remote(v, 0.0), 2)
    assert pool.get_next_unordered(timeout=30) == 4
    assert pool.get_next_unordered(timeout=30) == 2
    assert not pool.has_next()


def test_pool_queues_submits_beyond_its_actors(cluster):
    a = Doubler.remote()
    pool = ActorPool([a])
    for v in range(3):
        pool.submit(lambda actor, x: actor.double.remote(x), v)
    assert not pool.has_free()          # one running, two waiting for the actor
    assert pool.pop_idle() is None
    assert [pool.get_next() for _ in range(3)] == [0, 2, 4]
    assert pool.has_free() and not pool.has_next()
    with pytest.raises(StopIteration, match="No more results"):
        pool.get_next()
    assert pool.pop_idle() == a
    assert not pool.has_free()


def test_pool_push_and_errors(cluster):
    a, b = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a])
    pool.push(b)
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a)
    pool.submit(lambda actor, v: actor.slow_double.remote(v, 3.0), 1)
    with pytest.raises(TimeoutError, match="Timed out waiting for result"):
        pool.get_next(timeout=0.1)
    assert pool.has_next()              # not ignored: still the next result
    pool.submit(lambda actor, v: actor.double.remote(v), 5)
    assert pool.get_next_unordered(timeout=30) == 10
    with pytest.raises(ValueError, match="after get_next_unordered"):
        pool.get_next()
    assert pool.get_next_unordered(timeout=30) == 2


def test_pool_ignored_timeout_frees_the_actor(cluster):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda actor, v: actor.slow_double.remote(v, 1.0), 1)
    with pytest.raises(TimeoutError, match="has been ignored"):
        pool.get_next(timeout=0, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()


def test_pool_drops_a_dead_actor(cluster):
    dead, alive = Doubler.remote(), Doubler.remote()
    pool = ActorPool([alive, dead])     # submit takes the last idle actor first
    pool.submit(lambda actor, v: actor.die.remote(), None)
    with pytest.raises(ActorDiedError):
        pool.get_next(timeout=30)
    assert list(pool.map(lambda actor, v: actor.double.remote(v), [1, 2, 3])) == [2, 4, 6]
    assert pool.pop_idle() == alive and pool.pop_idle() is None


# -------------------------------------------------------------------- Queue
def test_queue_bounds_and_nonblocking_errors(cluster):
    q = Queue(maxsize=2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put(1)
    q.put_nowait(2)
    assert q.full() and len(q) == 2
    with pytest.raises(Full):
        q.put_nowait(3)
    started = time.monotonic()
    with pytest.raises(Full):
        q.put(3, timeout=0.3)
    assert time.monotonic() - started >= 0.25
    with pytest.raises(Full, match="Cannot add 1 items"):
        q.put_nowait_batch([3])
    assert q.get() == 1 and q.get_nowait() == 2
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    q.shutdown()


def test_queue_batches(cluster):
    q = Queue()
    q.put_nowait_batch(range(5))
    with pytest.raises(Empty, match="Cannot get 6 items"):
        q.get_nowait_batch(6)
    assert q.qsize() == 5               # all or nothing
    assert q.get_nowait_batch(3) == [0, 1, 2]
    with pytest.raises(TypeError, match="must be an int"):
        q.get_nowait_batch("2")
    with pytest.raises(TypeError, match="must be an Iterable"):
        q.put_nowait_batch(7)
    assert q.get_nowait_batch(2) == [3, 4]
    q.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(1)


@gdfut.remote
def consume(q, n):
    return [q.get(timeout=30) for _ in range(n)]


@gdfut.remote
def produce(q, items):
    for item in items:
        q.put(item)
    return True


def test_queue_shared_by_tasks_and_actors(cluster):
    q = Queue(maxsize=1)                # producer blocks until the consumer takes
    got = consume.remote(q, 4)
    assert gdfut.get(produce.remote(q, ["a", "b", "c", "d"]), timeout=60)
    assert gdfut.get(got, timeout=60) == ["a", "b", "c", "d"]

    @gdfut.remote
    class Consumer:
        def __init__(self, queue):
            self.queue = queue

        def take(self):
            return self.queue.get(timeout=30)

    c = Consumer.remote(q)
    ref = c.take.remote()               # blocks in the queue actor until a put
    time.sleep(0.2)
    q.put({"x": 1})
    assert gdfut.get(ref, timeout=60) == {"x": 1}
    q.shutdown()


def test_queue_async_api(cluster):
    import asyncio
    q = Queue()

    async def roundtrip():
        await q.put_async(3)
        return await q.get_async(timeout=10)
    assert asyncio.run(roundtrip()) == 3
    q.shutdown()


# --------------------------------------------------------- placement groups
from gdfut.exceptions import UnschedulableError  # noqa: E402
from gdfut.util import (get_placement_group, placement_group,  # noqa: E402
                        placement_group_table, remove_placement_group)
from gdfut.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: E402
from helpers import wait_until  # noqa: E402


@gdfut.remote
def node_and_gpus(delay=0.0):
    time.sleep(delay)
    return gdfut.get_runtime_context().get_node_id(), gdfut.get_gpu_ids()


def in_pg(pg, index=-1):
    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)


def test_pg_lifecycle_table_and_lookup(cluster):
    pg = placement_group([{"CPU": 1}], strategy="STRICT_PACK", name="trainers")
    assert gdfut.get(pg.ready(), timeout=30) == pg
    assert pg.wait(timeout_seconds=5)
    row = placement_group_table(pg)
    assert row["state"] == "CREATED" and row["strategy"] == "STRICT_PACK"
    assert row["bundles"] == {0: {"CPU": 1}} and row["name"] == "trainers"
    assert row["bundles_to_node_id"] == {0: cluster["node_id"]}
    assert pg.id.hex() in placement_group_table()
    assert get_placement_group("trainers") == pg
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 1}], name="trainers")
    # The reserved CPU is the group's: the node's plain CPUs drop by one.
    wait_until(lambda: gdfut.available_resources().get("CPU") == 1, timeout=10,
               what="the heartbeat to show the reservation")
    assert gdfut.cluster_resources()[f"CPU_group_{pg.id.hex()}"] == 1
    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"
    with pytest.raises(ValueError, match="Failed to look up placement group with name"):
        get_placement_group("trainers")
    wait_until(lambda: gdfut.available_resources().get("CPU") == 2, timeout=10,
               what="the bundle's CPU back")


def test_pg_tasks_run_only_inside_their_bundle(cluster):
    pg = placement_group([{"CPU": 1}])
    gdfut.get(pg.ready(), timeout=30)
    started = time.monotonic()
    refs = [node_and_gpus.options(scheduling_strategy=in_pg(pg, 0)).remote(0.5) for _ in range(3)]
    gdfut.get(refs, timeout=60)
    assert time.monotonic() - started >= 1.4      # one CPU in the bundle: one at a time
    with pytest.raises(ValueError, match="cannot fit into bundle 0"):
        node_and_gpus.options(num_cpus=2, scheduling_strategy=in_pg(pg, 0)).remote()
    with pytest.raises(ValueError, match="out of range"):
        in_pg(pg, 1)
    remove_placement_group(pg)
    with pytest.raises(UnschedulableError, match="removed"):
        gdfut.get(node_and_gpus.options(scheduling_strategy=in_pg(pg)).remote(), timeout=30)


@gdfut.remote
def current_group_hex():
    from gdfut.util import get_current_placement_group
    pg = get_current_placement_group()
    return None if pg is None else pg.id.hex()


@gdfut.remote
class GroupReporter:
    def group(self):
        from gdfut.util import get_current_placement_group
        pg = get_current_placement_group()
        return None if pg is None else pg.id.hex()


@gdfut.remote
def parent_reports_children():
    from gdfut.util import get_current_placement_group
    mine = get_current_placement_group()
    child = gdfut.get(current_group_hex.options(num_cpus=0).remote(), timeout=60)
    actor = GroupReporter.options(num_cpus=0).remote()
    in_actor = gdfut.get(actor.group.remote(), timeout=60)
    return None if mine is None else mine.id.hex(), child, in_actor


def test_pg_capture_child_tasks_puts_children_in_the_group(cluster):
    # One of the node's two CPUs is the group's: the parent holds it, and its
    # children need none, so they could run inside the group or outside it.
    pg = placement_group([{"CPU": 1}])
    gdfut.get(pg.ready(), timeout=30)
    assert gdfut.util.get_current_placement_group() is None      # a driver is in none
    captured = PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True)
    mine, child, in_actor = gdfut.get(
        parent_reports_children.options(scheduling_strategy=captured).remote(), timeout=60)
    assert mine == child == in_actor == pg.id.hex()
    # Without capture the parent is in the group but its children are not.
    mine, child, in_actor = gdfut.get(
        parent_reports_children.options(scheduling_strategy=in_pg(pg)).remote(), timeout=60)
    assert mine == pg.id.hex() and child is None and in_actor is None
    remove_placement_group(pg)


def test_pg_waits_for_resources_then_is_created(cluster):
    @gdfut.remote(num_cpus=1)
    class Holder:
        def ping(self):
            return 1
    holder = Holder.remote()
    gdfut.get(holder.ping.remote(), timeout=30)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    assert not pg.wait(timeout_seconds=1.5)      # one of the two CPUs is the actor's
    assert placement_group_table(pg)["state"] == "PENDING"
    ready = pg.ready()
    # A task queued in the pending group starts once the group exists.
    queued = node_and_gpus.options(scheduling_strategy=in_pg(pg, 1)).remote()
    gdfut.kill(holder)
    assert gdfut.get(ready, timeout=30) == pg
    assert gdfut.get(queued, timeout=30)[0] == cluster["node_id"]
    remove_placement_group(pg)


def test_pg_remove_kills_its_actors(cluster):
    pg = placement_group([{"CPU": 1}])
    gdfut.get(pg.ready(), timeout=30)

    @gdfut.remote(num_cpus=1)
    class Worker:
        def ping(self):
            return "pong"
    actor = Worker.options(scheduling_strategy=in_pg(pg, 0)).remote()
    assert gdfut.get(actor.ping.remote(), timeout=30) == "pong"
    remove_placement_group(pg)
    with pytest.raises(ActorDiedError):
        for _ in range(100):
            gdfut.get(actor.ping.remote(), timeout=30)
            time.sleep(0.05)


def test_pg_bad_arguments_say_what_is_wrong(cluster):
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        placement_group([{"CPU": 1}], strategy="pack")
    with pytest.raises(ValueError, match="non-empty list"):
        placement_group([])
    with pytest.raises(ValueError, match="empty dictionary"):
        placement_group([{"CPU": 0}])
    with pytest.raises(TypeError, match="PlacementGroup"):
        PlacementGroupSchedulingStrategy("not a group")


@pytest.fixture
def gpu_cluster():
    info = gdfut.init(num_cpus=2, num_gpus=2)    # emulated GPUs in CPU mode
    try:
        yield info
    finally:
        gdfut.shutdown()
        from helpers import assert_no_leaks
        assert_no_leaks(info["session_dir"])


def test_pg_gpu_bundle_gives_its_device_to_actors_and_tasks(gpu_cluster):
    pg = placement_group([{"CPU": 1, "GPU": 1}])
    gdfut.get(pg.ready(), timeout=30)

    @gdfut.remote(num_gpus=1, num_cpus=1)
    class Trainer:
        def gpus(self):
            return gdfut.get_gpu_ids()
    trainer = Trainer.options(scheduling_strategy=in_pg(pg, 0)).remote()
    (bundle_gpu,) = gdfut.get(trainer.gpus.remote(), timeout=30)
    # The node's other GPU is free for plain work; the bundle's is not.
    _, plain = gdfut.get(node_and_gpus.options(num_gpus=1).remote(), timeout=30)
    assert plain != [bundle_gpu] and len(plain) == 1
    gdfut.kill(trainer)
    halves = [node_and_gpus.options(num_cpus=0, num_gpus=0.5,
                                    scheduling_strategy=in_pg(pg, 0)).remote() for _ in range(2)]
    assert [g for _, g in gdfut.get(halves, timeout=30)] == [[bundle_gpu], [bundle_gpu]]
    remove_placement_group(pg)


# ------------------------------------------------ placement groups, multi-node
from gdfut.testing import Cluster  # noqa: E402
from helpers import assert_no_leaks, shm_files  # noqa: E402


@pytest.fixture
def three_nodes():
    c = Cluster()
    try:
        nodes = [c.add_node(num_cpus=2, wait=False) for _ in range(2)]
        nodes.append(c.add_node(num_cpus=2))
        c.connect()
        yield c, nodes
    finally:
        c.shutdown()
        assert not shm_files(c.session_dir)
        assert_no_leaks(c.session_dir)


def bundle_nodes(pg):
    return placement_group_table(pg)["bundles_to_node_id"]


def test_pg_strategies_across_nodes(three_nodes):
    c, nodes = three_nodes
    spread = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    gdfut.get(spread.ready(), timeout=60)
    placed = bundle_nodes(spread)
    assert sorted(placed.values()) == sorted(n.node_id for n in nodes)
    # A task in bundle i runs on bundle i's node.
    ran = gdfut.get([node_and_gpus.options(scheduling_strategy=in_pg(spread, i)).remote()
                     for i in range(3)], timeout=60)
    assert [node for node, _ in ran] == [placed[i] for i in range(3)]
    remove_placement_group(spread)

    packed = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_PACK")
    gdfut.get(packed.ready(), timeout=60)
    assert len(set(bundle_nodes(packed).values())) == 1
    soft = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
    gdfut.get(soft.ready(), timeout=60)
    assert len(set(bundle_nodes(soft).values())) == 2


def test_pg_pending_until_a_node_joins_and_rescheduled_when_one_dies(three_nodes):
    c, nodes = three_nodes
    pg = placement_group([{"CPU": 1}] * 4, strategy="STRICT_SPREAD")
    assert not pg.wait(timeout_seconds=2)         # only three nodes
    fourth = c.add_node(num_cpus=2)
    assert pg.wait(timeout_seconds=30)
    assert fourth.node_id in bundle_nodes(pg).values()
    # A node with a bundle dies: the bundle moves to a node that joins.
    victim = nodes[0]
    c.remove_node(victim)
    wait_until(lambda: placement_group_table(pg)["state"] == "RESCHEDULING", timeout=30,
               what="the head to notice the dead node")
    c.add_node(num_cpus=2)
    assert pg.wait(timeout_seconds=30)
    assert victim.node_id not in bundle_nodes(pg).values()
    assert len(set(bundle_nodes(pg).values())) == 4


def test_pg_ends_with_the_driver_that_created_it(three_nodes):
    c, _ = three_nodes
    mine = placement_group([{"CPU": 1}], name="mine")
    kept = placement_group([{"CPU": 1}], name="kept", lifetime="detached")
    assert mine.wait(30) and kept.wait(30)
    gdfut.shutdown()
    c.connected = False
    c.connect()
    wait_until(lambda: placement_group_table(mine)["state"] == "REMOVED", timeout=10,
               what="the group to end with its driver")
    assert get_placement_group("kept") == kept
    remove_placement_group(kept)
