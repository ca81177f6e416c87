import pytest

import gdfut
from gdfut import protocol as P, runtime_context
from helpers import assert_no_leaks, child_processes

STORE = 512 * 1024 * 1024


@pytest.fixture
def cluster():
    """A fresh embedded cluster (2 CPUs) per test; checks for leaks after."""
    info = gdfut.init(num_cpus=2, object_store_memory=STORE)
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def node_status():
    return runtime_context.require().node_request(P.NODE_STATUS)


def store_stats():
    return node_status()["store"]
