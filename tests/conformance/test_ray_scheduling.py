"""Ray-user programs: resources and scheduling, as Ray's documentation
writes them ("Resources", "Scheduling", "Placement strategies")."""
import time

import gdfut as ray
from gdfut.scheduling_strategies import NodeAffinitySchedulingStrategy


def _eventually(pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def test_cluster_resources_lists_the_cpus(ray_cluster):
    assert ray.cluster_resources()["CPU"] == 4


def test_num_cpus_limits_how_many_tasks_run_at_once(ray_cluster):
    @ray.remote(num_cpus=2)
    def heavy():
        time.sleep(0.5)
        return ray.get_runtime_context().get_node_id()

    start = time.monotonic()
    refs = [heavy.remote() for _ in range(4)]
    assert len(ray.get(refs)) == 4
    # 4 CPUs, 2 per task: at most two run at a time, so two rounds
    assert time.monotonic() - start >= 1.0


def test_fractional_cpus(ray_cluster):
    @ray.remote(num_cpus=0.5)
    def half(x):
        return x * 2

    assert ray.get([half.remote(i) for i in range(8)]) == [i * 2 for i in range(8)]


def test_spread_strategy(ray_cluster):
    @ray.remote(scheduling_strategy="SPREAD")
    def spread_func():
        return 2

    assert ray.get([spread_func.remote() for _ in range(10)]) == [2] * 10


def test_node_affinity_to_the_current_node(ray_cluster):
    @ray.remote
    def where():
        return ray.get_runtime_context().get_node_id()

    node_id = ray.get_runtime_context().get_node_id()
    ref = where.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    ).remote()
    assert ray.get(ref) == node_id


def test_available_resources_return_after_tasks(ray_cluster):
    @ray.remote
    def f():
        return 1

    assert sum(ray.get([f.remote() for _ in range(8)])) == 8
    assert _eventually(lambda: ray.available_resources().get("CPU") == 4)


def test_an_actor_holds_its_cpus_while_it_lives(ray_cluster):
    @ray.remote(num_cpus=1)
    class Actor:
        def ping(self):
            return "pong"

    actor = Actor.remote()
    assert ray.get(actor.ping.remote()) == "pong"
    assert _eventually(lambda: ray.available_resources().get("CPU") == 3)
    del actor
    assert _eventually(lambda: ray.available_resources().get("CPU") == 4)


def test_nodes_lists_this_node_with_rays_keys(ray_cluster):
    # Ray docs: "ray.nodes() ... Get a list of the nodes in the cluster"
    alive = [n for n in ray.nodes() if n["Alive"]]
    me = ray.get_runtime_context().get_node_id()
    assert me in [n["NodeID"] for n in alive]
    row = next(n for n in alive if n["NodeID"] == me)
    assert row["Resources"]["CPU"] == ray.cluster_resources()["CPU"]
    assert isinstance(row["NodeManagerAddress"], str) and row["NodeManagerPort"] > 0
