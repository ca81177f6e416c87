"""The ``cluster`` fixture: an embedded cluster (2 CPUs) for one test.

A module that sets ``SHARE_CLUSTER = True`` shares one cluster between its
consecutive ``cluster`` tests instead of starting one per test (a start is
about a second of CPU on the CI machine: head, node and two workers). What a
fresh cluster guarantees is checked between them instead: after each test the
node holds no object, no lease, no queued request and no placement group
bundle, and every resource is free again (the test's objects, actors and
placement groups are gone), else the test fails. The shared cluster is
stopped, and checked for leaked processes, shared memory and spill files, at
the end of the module, after a failed test, and before any test that does
not use ``cluster`` (it may start its own). Only modules whose tests leave
no lasting state in the cluster (environment variables read at start, killed
daemons) may opt in; a test in one that does (a named actor lives until its
job ends, as in Ray) is marked ``own_cluster`` and gets a fresh cluster.
"""
import gc

import pytest

import gdfut
from helpers import STORE, assert_no_leaks, node_status, wait_until


class _Shared:
    info = None          # init()'s answer while a shared cluster runs
    module = None        # the module it serves


def _stop_shared():
    info, _Shared.info, _Shared.module = _Shared.info, None, None
    if info is not None:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def _cluster_is_clean() -> bool:
    """Nothing of the last test is left in the node: no object, no lease (an
    actor with num_cpus=0 holds one but no resource), no queued request, no
    placement group bundle, every resource free, also in the head's view
    (a heartbeat old: what ``available_resources`` answers). Garbage is
    collected first: a test's frame can be held by a cycle (an exception
    kept in a local holds its traceback), and with it an actor handle."""
    gc.collect()
    st = node_status()
    leases = st["leases"]
    return (st["store"]["num_objects"] == 0 and leases["num_leases"] == 0
            and leases["queued_requests"] == 0 and leases["bundles"] == 0
            and st["resources_available"] == st["resources_total"]
            and gdfut.available_resources() == gdfut.cluster_resources())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        item._gdfut_failed = True


@pytest.fixture(autouse=True)
def _shared_cluster_only_for_its_tests(request):
    if "cluster" not in request.fixturenames:
        _stop_shared()
    yield


@pytest.fixture(scope="module", autouse=True)
def _shared_cluster_ends_with_its_module():
    yield
    _stop_shared()


@pytest.fixture
def cluster(request):
    """A fresh embedded cluster (2 CPUs) per test, or the module's shared
    one (``SHARE_CLUSTER``); checks for leaks after."""
    if (not getattr(request.module, "SHARE_CLUSTER", False)
            or request.node.get_closest_marker("own_cluster")):
        _stop_shared()
        info = gdfut.init(num_cpus=2, object_store_memory=STORE)
        try:
            yield info
        finally:
            gdfut.shutdown()
            assert_no_leaks(info["session_dir"])
        return
    if _Shared.module is not request.module or not gdfut.is_initialized():
        _stop_shared()
        _Shared.info = gdfut.init(num_cpus=2, object_store_memory=STORE)
        _Shared.module = request.module
    yield _Shared.info
    if getattr(request.node, "_gdfut_failed", False) or not gdfut.is_initialized():
        _stop_shared()      # a failed test may have left anything behind
        return
    try:
        wait_until(_cluster_is_clean, timeout=10,
                   what="the test's objects, actors and placement groups to be freed")
    except AssertionError as exc:
        status = _status_text()
        _stop_shared()
        raise AssertionError(f"{exc} (node status: {status})") from None
    except BaseException:
        _stop_shared()
        raise


def _status_text() -> str:
    st = node_status()
    leases = st["leases"]
    return (f"{st['store']['num_objects']} objects, {leases['num_leases']} leases "
            f"({leases['num_actor_leases']} of actors), {leases['queued_requests']} queued "
            f"requests, {leases['bundles']} bundles, available {st['resources_available']} "
            f"of {st['resources_total']}; the head's view: available "
            f"{gdfut.available_resources()} of {gdfut.cluster_resources()}")
