"""Bundle placement of placement groups: each strategy on exact snapshots."""
import pytest

from gdfut.sched.placement_groups import (NotNow, Placement, bundle_demand, bundle_supply,
                                          check_bundles, check_strategy, demand_fits,
                                          group_resource, place_bundles)
from gdfut.sched.policy import NodeView
from gdfut.sched.resources import ResourceSet as R


def node(name, total, available=None, alive=True):
    total = R(total)
    return NodeView(name, total, total if available is None else R(available), alive=alive)


def bundles(*dicts):
    return [R(d) for d in dicts]


def test_strict_pack_puts_every_bundle_on_one_node():
    nodes = [node("a", {"CPU": 2}), node("b", {"CPU": 4})]
    d = place_bundles(bundles({"CPU": 1}, {"CPU": 2}), "STRICT_PACK", nodes)
    assert d == Placement(("b", "b"))       # only b holds 3 CPUs


def test_strict_pack_waits_when_no_single_node_fits_now():
    nodes = [node("a", {"CPU": 2}, {"CPU": 1}), node("b", {"CPU": 2}, {"CPU": 1})]
    d = place_bundles(bundles({"CPU": 1}, {"CPU": 1}), "STRICT_PACK", nodes)
    assert isinstance(d, NotNow) and not d.infeasible   # a node frees up later


def test_strict_pack_larger_than_every_node_is_infeasible():
    nodes = [node("a", {"CPU": 2}), node("b", {"CPU": 2})]
    d = place_bundles(bundles({"CPU": 2}, {"CPU": 1}), "STRICT_PACK", nodes)
    assert isinstance(d, NotNow) and d.infeasible
    assert "total" in d.reason


def test_pack_prefers_one_node_then_spills_over():
    nodes = [node("a", {"CPU": 2}), node("b", {"CPU": 2})]
    assert place_bundles(bundles({"CPU": 1}, {"CPU": 1}), "PACK", nodes) == \
        Placement(("a", "a"))
    spilled = place_bundles(bundles({"CPU": 2}, {"CPU": 1}), "PACK", nodes)
    assert isinstance(spilled, Placement) and sorted(spilled.nodes) == ["a", "b"]


def test_pack_finds_the_one_node_that_holds_all():
    # Greedy from the first bundle would start on the less loaded a; b holds all.
    nodes = [node("a", {"CPU": 8}, {"CPU": 2}), node("b", {"CPU": 4}, {"CPU": 3})]
    assert place_bundles(bundles({"CPU": 2}, {"CPU": 1}), "PACK", nodes) == \
        Placement(("b", "b"))


def test_strict_spread_needs_a_node_per_bundle():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4}), node("c", {"CPU": 4})]
    d = place_bundles(bundles({"CPU": 1}, {"CPU": 1}, {"CPU": 1}), "STRICT_SPREAD", nodes)
    assert isinstance(d, Placement) and sorted(d.nodes) == ["a", "b", "c"]
    four = place_bundles(bundles(*[{"CPU": 1}] * 4), "STRICT_SPREAD", nodes)
    assert isinstance(four, NotNow) and four.infeasible


def test_strict_spread_places_the_largest_bundle_first():
    # Only b holds the 3-CPU bundle: placing bundle 0 first on b would strand it.
    nodes = [node("a", {"CPU": 1}), node("b", {"CPU": 3})]
    assert place_bundles(bundles({"CPU": 1}, {"CPU": 3}), "STRICT_SPREAD", nodes) == \
        Placement(("a", "b"))


def test_spread_uses_distinct_nodes_then_shares():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4})]
    two = place_bundles(bundles({"CPU": 1}, {"CPU": 1}), "SPREAD", nodes)
    assert sorted(two.nodes) == ["a", "b"]
    three = place_bundles(bundles({"CPU": 1}, {"CPU": 1}, {"CPU": 1}), "SPREAD", nodes)
    assert isinstance(three, Placement) and set(three.nodes) == {"a", "b"}


def test_bundles_account_for_each_other_on_a_node():
    nodes = [node("a", {"CPU": 3})]
    d = place_bundles(bundles({"CPU": 2}, {"CPU": 2}), "PACK", nodes)
    assert isinstance(d, NotNow) and d.infeasible      # 4 CPUs never fit on a 3-CPU node


def test_gpu_and_custom_resources_choose_the_node():
    nodes = [node("cpu", {"CPU": 8}), node("gpu", {"CPU": 8, "GPU": 2, "accel": 1})]
    d = place_bundles(bundles({"CPU": 1, "GPU": 1}, {"GPU": 1, "accel": 1}), "STRICT_PACK", nodes)
    assert d == Placement(("gpu", "gpu"))
    spread = place_bundles(bundles({"CPU": 1}, {"GPU": 1}), "STRICT_SPREAD", nodes)
    assert spread == Placement(("cpu", "gpu"))


def test_dead_nodes_are_never_used():
    nodes = [node("a", {"CPU": 4}, alive=False), node("b", {"CPU": 1})]
    d = place_bundles(bundles({"CPU": 1}), "PACK", nodes)
    assert d == Placement(("b",))
    none = place_bundles(bundles({"CPU": 1}), "PACK", [node("a", {"CPU": 4}, alive=False)])
    assert isinstance(none, NotNow) and none.infeasible


def test_placed_bundles_stay_and_count_for_the_strategy():
    nodes = [node("a", {"CPU": 4}), node("b", {"CPU": 4}), node("c", {"CPU": 4})]
    d = place_bundles(bundles({"CPU": 1}, {"CPU": 1}), "STRICT_SPREAD", nodes, placed={0: "b"})
    assert d.nodes[0] == "b" and d.nodes[1] in ("a", "c")
    packed = place_bundles(bundles({"CPU": 1}, {"CPU": 1}), "STRICT_PACK", nodes,
                           placed={1: "c"})
    assert packed == Placement(("c", "c"))


def test_least_loaded_node_wins():
    nodes = [node("a", {"CPU": 4}, {"CPU": 1}), node("b", {"CPU": 4}, {"CPU": 4})]
    assert place_bundles(bundles({"CPU": 1}), "PACK", nodes) == Placement(("b",))


def test_bundle_validation_errors_name_the_problem():
    with pytest.raises(ValueError, match="non-empty list"):
        check_bundles([])
    with pytest.raises(ValueError, match="empty dictionary or resources with only 0"):
        check_bundles([{"CPU": 1}, {"CPU": 0}])
    with pytest.raises(TypeError, match="bundle 0 must be a dict"):
        check_bundles(["CPU"])
    with pytest.raises(ValueError, match="bundle 0: resource 'CPU' must be >= 0"):
        check_bundles([{"CPU": -1}])
    with pytest.raises(ValueError, match="fraction below 1 or a whole"):
        check_bundles([{"GPU": 1.5}])
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        check_strategy("PACKED")


def test_renamed_resources_follow_rays_names():
    g = "ab12"
    assert group_resource("CPU", g) == "CPU_group_ab12"
    assert group_resource("CPU", g, 0) == "CPU_group_0_ab12"
    supply = bundle_supply(R({"CPU": 2, "GPU": 1}), g, 1)
    assert supply == R({"CPU_group_1_ab12": 2, "CPU_group_ab12": 2,
                        "GPU_group_1_ab12": 1, "GPU_group_ab12": 1})
    assert bundle_demand(R({"CPU": 1}), g, -1) == R({"CPU_group_ab12": 1})
    assert bundle_demand(R({"CPU": 1}), g, 1) == R({"CPU_group_ab12": 1, "CPU_group_1_ab12": 1})
    assert bundle_demand(R({"CPU": 1}), g, 1).fits_in(supply)
    assert not bundle_demand(R({"CPU": 3}), g, 1).fits_in(supply)
    assert demand_fits(R({"CPU": 2}), [R({"CPU": 1}), R({"CPU": 2})], -1)
    assert not demand_fits(R({"CPU": 2}), [R({"CPU": 1}), R({"CPU": 2})], 0)


# -- bundles in the node's lease manager ------------------------------------------

from gdfut.sched.lease_queue import GrantLease, KillWorker, LeaseManager, Reject  # noqa: E402

G = "ab12"


def lease_manager(total, workers=("w1", "w2", "w3")):
    m = LeaseManager("n1", R(total), max_queue=100)
    for w in workers:
        m.worker_started(w)
    return m


def reserve(m, index, resources):
    resources = R(resources)
    assert m.prepare_bundle((G, index), resources, bundle_supply(resources, G, index))
    m.commit_bundle((G, index))
    m.validate()


def test_a_bundle_sets_plain_resources_aside_for_its_group_only():
    m = lease_manager({"CPU": 2})
    reserve(m, 0, {"CPU": 1})
    assert m.available == R({"CPU": 1, "CPU_group_0_ab12": 1, "CPU_group_ab12": 1})
    # A plain task gets the other CPU; a second plain one must wait.
    assert m.request_lease("plain1", R({"CPU": 1}), "c") == [GrantLease("plain1", "w3", 1)]
    assert m.request_lease("plain2", R({"CPU": 1}), "c") == []
    grant = m.request_lease("pg", bundle_demand(R({"CPU": 1}), G, 0), "c", bundle=(G, 0))
    assert grant == [GrantLease("pg", "w2", 2)]
    m.validate()
    # The group's bundle is full now: a second task in it waits.
    assert m.request_lease("pg2", bundle_demand(R({"CPU": 1}), G, -1), "c", bundle=(G, -1)) == []
    m.validate()


def test_prepare_fails_when_resources_are_not_free_and_rollback_frees_them():
    m = lease_manager({"CPU": 2})
    assert not m.prepare_bundle((G, 0), R({"CPU": 3}), bundle_supply(R({"CPU": 3}), G, 0))
    assert m.prepare_bundle((G, 0), R({"CPU": 2}), bundle_supply(R({"CPU": 2}), G, 0))
    assert m.available == R()                 # set aside, not usable by anyone yet
    m.validate()
    assert m.return_bundles(G, indexes=[0]) == []
    assert m.available == R({"CPU": 2})
    m.validate()


def test_requests_for_a_missing_bundle_are_rejected_with_the_reason():
    m = lease_manager({"CPU": 2})
    out = m.request_lease("r", bundle_demand(R({"CPU": 1}), G, 0), "c", bundle=(G, 0))
    assert len(out) == 1 and isinstance(out[0], Reject)
    assert "placement group ab12 has no bundle 0" in out[0].message


def test_removing_a_group_kills_its_workers_and_rejects_its_queue():
    m = lease_manager({"CPU": 2})
    reserve(m, 0, {"CPU": 1})
    demand = bundle_demand(R({"CPU": 1}), G, 0)
    assert m.request_lease("a", demand, "c", bundle=(G, 0)) == [GrantLease("a", "w3", 1)]
    assert m.request_lease("b", demand, "c", bundle=(G, 0)) == []
    out = m.return_bundles(G)
    assert Reject("b", "infeasible_here", "placement group ab12 was removed") in out
    assert KillWorker("w3", "placement group ab12 was removed") in out
    assert m.available == R({"CPU": 2}) and m.total == R({"CPU": 2})
    m.validate()


def test_gpu_tasks_in_a_bundle_get_the_bundles_devices():
    m = lease_manager({"CPU": 4, "GPU": 2})
    assert m.request_lease("plain", R({"CPU": 1, "GPU": 1}), "c") == \
        [GrantLease("plain", "w3", 1, (0,))]
    reserve(m, 0, {"CPU": 1, "GPU": 1})       # takes the other device, 1
    half = bundle_demand(R({"GPU": 0.5}), G, 0)
    assert m.request_lease("h1", half, "c", bundle=(G, 0)) == [GrantLease("h1", "w2", 2, (1,))]
    assert m.request_lease("h2", half, "c", bundle=(G, 0)) == [GrantLease("h2", "w1", 3, (1,))]
    m.validate()
    assert m.request_lease("h3", half, "c", bundle=(G, 0)) == []   # device 1 is full
    m.return_lease(2)
    m.validate()
    out = m.return_bundles(G)
    assert KillWorker("w1", "placement group ab12 was removed") in out
    m.validate()
    assert m.available.quantity("GPU") == 1     # device 1 back; device 0 still leased
