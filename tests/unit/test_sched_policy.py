"""Resource sets and the cluster placement policy (pure, exact decisions)."""

from __future__ import annotations

import pytest

from gdfut.sched.policy import (
    DEFAULT,
    SPREAD,
    NodeAffinity,
    NodeView,
    Place,
    PlacementRequest,
    Unschedulable,
    Wait,
    choose_for_spillback,
    choose_node,
    utilisation_after,
)
from gdfut.sched.resources import ResourceSet, actor_resources

R = ResourceSet


def node(node_id, total, used=None, queue=0, alive=True):
    total_set = R(total)
    return NodeView(
        node_id,
        total_set,
        total_set.subtract(R(used or {})),
        queue_length=queue,
        alive=alive,
    )


def req(resources, local="a", args=None, strategy=DEFAULT):
    return PlacementRequest(R(resources), local, dict(args or {}), strategy)


# -- ResourceSet ----------------------------------------------------------------


def test_integer_units_do_not_drift():
    total = R({"CPU": 1})
    tenth = R({"CPU": 0.1})
    left = total
    for _ in range(10):
        left = left.subtract(tenth)
    assert left.is_empty()
    for _ in range(10):
        left = left.add(tenth)
    assert left == total
    with pytest.raises(AssertionError):
        left.subtract(R({"CPU": 1.0001}))


def test_from_options_defaults_and_validation():
    assert R.from_options() == R({"CPU": 1})
    assert R.from_options(num_cpus=0, num_gpus=0.25).to_dict() == {"GPU": 0.25}
    assert R.from_options(num_gpus=2, resources={"GPU_memory": 2**34}).to_dict() == {
        "CPU": 1,
        "GPU": 2,
        "GPU_memory": 2**34,
    }
    assert R.from_options(default_cpus=0).is_empty()
    with pytest.raises(ValueError, match="'CPU'"):
        R.from_options(num_cpus=-1)
    with pytest.raises(ValueError, match="'GPU'"):
        R.from_options(num_gpus=1.5)
    with pytest.raises(ValueError, match="'disk'"):
        R.from_options(resources={"disk": "lots"})
    with pytest.raises(ValueError, match="'flag'"):
        R.from_options(resources={"flag": True})
    with pytest.raises(ValueError, match="num_gpus"):
        R.from_options(resources={"GPU": 1})
    with pytest.raises(ValueError, match="'CPU'"):
        R.from_options(num_cpus=float("nan"))


def test_fits_missing_and_dict_round_trip():
    need = R({"CPU": 2, "GPU": 1})
    have = R({"CPU": 4})
    assert not need.fits_in(have)
    assert need.missing_from(have) == {"GPU": 1}
    assert R({"CPU": 0.5}).missing_from(R({"CPU": 0.25})) == {"CPU": 0.25}
    assert R().fits_in(R())
    assert R.from_dict(need.to_dict()) == need
    assert R({"GPU": 0}) == R() and hash(R({"GPU": 0})) == hash(R())
    assert dict(need) == {"CPU": 2, "GPU": 1}


def test_subtract_clamped_reports_shortfall():
    left, short = R({"CPU": 1}).subtract_clamped(R({"CPU": 3, "GPU": 1}))
    assert left.is_empty()
    assert short == R({"CPU": 2, "GPU": 1})


def test_actor_resources_place_with_one_cpu_hold_none():
    placement, held = actor_resources()
    assert placement == R({"CPU": 1}) and held.is_empty()
    placement, held = actor_resources(num_cpus=2, num_gpus=1)
    assert placement == held == R({"CPU": 2, "GPU": 1})
    placement, held = actor_resources(num_gpus=1)
    assert placement == R({"CPU": 1, "GPU": 1}) and held == R({"GPU": 1})


# -- feasibility ----------------------------------------------------------------


def test_unschedulable_names_missing_resource():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 8})]
    decision = choose_node(req({"CPU": 1, "GPU": 1}), nodes)
    assert isinstance(decision, Unschedulable)
    assert decision.missing == {"GPU": 1}
    assert "no node has GPU" in decision.message
    assert "'CPU': 12" in decision.message  # cluster totals
    assert "GPU" in decision.explain()


def test_unschedulable_too_big_for_any_single_node():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 8})]
    decision = choose_node(req({"CPU": 16}), nodes)
    assert isinstance(decision, Unschedulable)
    assert decision.missing == {"CPU": 8}
    assert "largest node has 8" in decision.message


def test_unschedulable_when_no_node_has_the_combination():
    nodes = [node("a", {"CPU": 8}), node("g", {"CPU": 1, "GPU": 1})]
    decision = choose_node(req({"CPU": 4, "GPU": 1}), nodes)
    assert isinstance(decision, Unschedulable)
    assert "no single node" in decision.message
    assert decision.missing in ({"CPU": 3}, {"GPU": 1})


def test_dead_nodes_are_not_feasible():
    nodes = [node("a", {"CPU": 4}), node("g", {"CPU": 4, "GPU": 1}, alive=False)]
    decision = choose_node(req({"GPU": 1}), nodes)
    assert isinstance(decision, Unschedulable) and decision.missing == {"GPU": 1}
    all_dead = [node("a", {"CPU": 1}, alive=False)]
    decision = choose_node(req({"CPU": 1}), all_dead)
    assert isinstance(decision, Unschedulable) and "no node is alive" in decision.message


# -- DEFAULT --------------------------------------------------------------------


def test_locality_wins_over_local_node():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4}), node("c", {"CPU": 4})]
    decision = choose_node(req({"CPU": 1}, local="a", args={"b": 10, "c": 5000}), nodes)
    assert decision == Place("c", "locality", decision.detail)
    assert "5000 bytes" in decision.explain()


def test_locality_loses_to_a_much_longer_queue():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4}, queue=20)]
    decision = choose_node(req({"CPU": 1}, local="a", args={"b": 1 << 20}), nodes)
    assert isinstance(decision, Place) and decision.node_id == "a"
    # A modestly longer queue does not outweigh locality.
    nodes = [node("a", {"CPU": 4}, queue=1), node("b", {"CPU": 4}, queue=6)]
    assert choose_node(req({"CPU": 1}, local="a", args={"b": 1}), nodes).node_id == "b"


def test_locality_ignores_busy_nodes():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4}, used={"CPU": 4})]
    decision = choose_node(req({"CPU": 1}, local="a", args={"b": 1 << 30}), nodes)
    assert decision.node_id == "a"


def test_tie_goes_to_local_node():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4}), node("c", {"CPU": 4})]
    assert choose_node(req({"CPU": 1}, local="b"), nodes) == Place(
        "b", "local", "local node at 25% after placing"
    )
    # Equal locality bytes: still the local node.
    decision = choose_node(req({"CPU": 1}, local="c", args={"a": 7, "c": 7}), nodes)
    assert decision == Place("c", "locality", decision.detail)


def test_pack_local_until_half_then_least_loaded():
    # Local node at 50% after placing: still packs locally.
    nodes = [node("a", {"CPU": 4}, used={"CPU": 1}), node("b", {"CPU": 4})]
    assert choose_node(req({"CPU": 1}), nodes).node_id == "a"
    # Local node would go to 75%: spread to the emptier node.
    nodes = [node("a", {"CPU": 4}, used={"CPU": 2}), node("b", {"CPU": 4}, used={"CPU": 1})]
    decision = choose_node(req({"CPU": 1}), nodes)
    assert decision == Place("b", "hybrid", "least loaded: 50% after placing")
    # Both above half: least utilised wins.
    nodes = [
        node("a", {"CPU": 4}, used={"CPU": 3}),
        node("b", {"CPU": 8}, used={"CPU": 6}),
        node("c", {"CPU": 8}, used={"CPU": 4}),
    ]
    assert choose_node(req({"CPU": 1}), nodes).node_id == "c"


def test_remote_nodes_under_half_load_are_ties_broken_by_queue_then_order():
    nodes = [
        node("a", {"CPU": 2}, used={"CPU": 2}),
        node("b", {"CPU": 8}, queue=3),
        node("c", {"CPU": 8}, queue=1),
        node("d", {"CPU": 8}, queue=1),
    ]
    assert choose_node(req({"CPU": 1}), nodes).node_id == "c"


def test_gpu_tasks_only_on_gpu_nodes():
    nodes = [
        node("a", {"CPU": 8}),
        node("g1", {"CPU": 8, "GPU": 2, "GPU_memory": 2 * 16 * 2**30}),
        node("g2", {"CPU": 8, "GPU": 2, "GPU_memory": 2 * 16 * 2**30}, used={"GPU": 2}),
    ]
    decision = choose_node(req({"CPU": 1, "GPU": 1}, local="a"), nodes)
    assert decision.node_id == "g1"
    decision = choose_node(req({"GPU": 0.5, "GPU_memory": 2**30}, local="g2"), nodes)
    assert decision.node_id == "g1"


def test_cpu_tasks_prefer_non_gpu_nodes_when_load_is_equal():
    nodes = [node("g", {"CPU": 8, "GPU": 1}), node("a", {"CPU": 8})]
    assert choose_node(req({"CPU": 1}, local="g"), nodes).node_id == "a"
    # ...but not when the CPU node is loaded.
    nodes = [node("g", {"CPU": 8, "GPU": 1}), node("a", {"CPU": 8}, used={"CPU": 7})]
    assert choose_node(req({"CPU": 1}, local="g"), nodes).node_id == "g"


def test_wait_when_every_feasible_node_is_busy():
    nodes = [node("a", {"CPU": 2}, used={"CPU": 2}), node("b", {"CPU": 2}, used={"CPU": 1.5})]
    decision = choose_node(req({"CPU": 1}, local="a"), nodes)
    assert isinstance(decision, Wait)
    assert "queueing at local node a" in decision.explain()


def test_spillback_when_local_node_can_never_run_it():
    nodes = [
        node("a", {"CPU": 8}),
        node("g1", {"CPU": 4, "GPU": 1}, used={"GPU": 1}, queue=5),
        node("g2", {"CPU": 4, "GPU": 1}, used={"GPU": 1}, queue=2),
    ]
    decision = choose_node(req({"GPU": 1}, local="a"), nodes)
    assert decision.node_id == "g2" and decision.reason == "spillback"
    decision = choose_node(req({"GPU": 1}, local="a", args={"g1": 100}), nodes)
    assert decision.node_id == "g1"


def test_choose_for_spillback_excludes_local_node():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4}, used={"CPU": 3})]
    decision = choose_for_spillback(req({"CPU": 1}, local="a"), nodes)
    assert decision.node_id == "b"
    busy = [node("a", {"CPU": 4}), node("b", {"CPU": 4}, used={"CPU": 4})]
    assert isinstance(choose_for_spillback(req({"CPU": 1}, local="a"), busy), Wait)
    # Local node infeasible and everyone busy: queue at the best other node.
    gpu = [node("a", {"CPU": 4}), node("g", {"GPU": 1}, used={"GPU": 1})]
    assert choose_for_spillback(req({"GPU": 1}, local="a"), gpu).node_id == "g"


def test_utilisation_after_counts_requested_resources_and_cpu():
    n = node("g", {"CPU": 4, "GPU": 4}, used={"CPU": 1, "GPU": 3})
    assert utilisation_after(R({"GPU": 1}), n) == 1.0
    assert utilisation_after(R({"CPU": 1}), n) == 0.5


# -- SPREAD ---------------------------------------------------------------------


def test_spread_round_robin():
    nodes = [node(n, {"CPU": 4}) for n in "abc"]
    picks = [choose_node(req({"CPU": 1}, strategy=SPREAD), nodes, i).node_id for i in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


def test_spread_skips_busy_and_infeasible_nodes():
    nodes = [
        node("a", {"CPU": 4}),
        node("b", {"CPU": 4}, used={"CPU": 4}),
        node("g", {"CPU": 4, "GPU": 1}),
        node("h", {"CPU": 4, "GPU": 1}, alive=False),
    ]
    picks = [choose_node(req({"CPU": 1}, strategy=SPREAD), nodes, i).node_id for i in range(3)]
    assert picks == ["a", "g", "g"]
    gpu = [choose_node(req({"GPU": 1}, strategy=SPREAD), nodes, i).node_id for i in range(2)]
    assert gpu == ["g", "g"]
    full = [node("a", {"CPU": 1}, used={"CPU": 1})]
    assert isinstance(choose_node(req({"CPU": 1}, strategy=SPREAD), full, 0), Wait)


# -- node affinity ----------------------------------------------------------------


def test_hard_affinity():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4}, used={"CPU": 4})]
    hard_a = req({"CPU": 1}, local="b", strategy=NodeAffinity("a"))
    assert choose_node(hard_a, nodes) == Place("a", "affinity", choose_node(hard_a, nodes).detail)
    hard_b = req({"CPU": 1}, local="a", strategy=NodeAffinity("b"))
    # b is busy: the request queues at b, never at a node that must not run it
    assert choose_node(hard_b, nodes).node_id == "b"
    assert choose_for_spillback(hard_b, nodes).node_id == "b"
    hard_b_at_b = req({"CPU": 1}, local="b", strategy=NodeAffinity("b"))
    assert isinstance(choose_node(hard_b_at_b, nodes), Wait)
    too_big = req({"CPU": 8}, strategy=NodeAffinity("a"))
    decision = choose_node(too_big, nodes)
    assert isinstance(decision, Unschedulable) and decision.missing == {"CPU": 4}
    gone = choose_node(req({"CPU": 1}, strategy=NodeAffinity("zzz")), nodes)
    assert isinstance(gone, Unschedulable) and "unknown" in gone.message
    dead = [node("a", {"CPU": 4}, alive=False), node("b", {"CPU": 4})]
    decision = choose_node(req({"CPU": 1}, strategy=NodeAffinity("a")), dead)
    assert isinstance(decision, Unschedulable) and "dead" in decision.message


def test_soft_affinity_falls_back_to_default():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4}, used={"CPU": 4}), node("c", {"CPU": 4})]
    soft_c = req({"CPU": 1}, local="a", strategy=NodeAffinity("c", soft=True))
    assert choose_node(soft_c, nodes).node_id == "c"
    soft_b = req({"CPU": 1}, local="a", strategy=NodeAffinity("b", soft=True))
    assert choose_node(soft_b, nodes).node_id == "a"
    soft_dead = req({"CPU": 1}, local="a", strategy=NodeAffinity("zzz", soft=True))
    assert choose_node(soft_dead, nodes).node_id == "a"


def test_messages_name_nodes_by_hex_id():
    a, b = bytes.fromhex("aa01" * 8), bytes.fromhex("bb02" * 8)
    nodes = [node(a, {"CPU": 4}), node(b, {"GPU": 1})]
    split = choose_node(PlacementRequest(R({"CPU": 1, "GPU": 1}), a, {}, DEFAULT), nodes)
    assert isinstance(split, Unschedulable)
    assert a.hex() in split.message or b.hex() in split.message
    assert "b'" not in split.message
    hard = PlacementRequest(R({"GPU": 1}), a, {}, NodeAffinity(a, soft=False))
    lacks = choose_node(hard, nodes)
    assert isinstance(lacks, Unschedulable) and a.hex() in lacks.message
    assert "b'" not in lacks.message


def test_memory_option_is_a_resource():
    assert R.from_options(memory=2**30).to_dict() == {"CPU": 1, "memory": 2**30}
    with pytest.raises(ValueError, match="not both"):
        R.from_options(memory=1, resources={"memory": 2})
    with pytest.raises(ValueError, match="memory"):
        R.from_options(memory="lots")
