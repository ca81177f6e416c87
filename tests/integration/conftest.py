import pytest

import gdfut
from helpers import STORE, assert_no_leaks, child_processes


@pytest.fixture
def cluster():
    """A fresh embedded cluster (2 CPUs) per test; checks for leaks after."""
    info = gdfut.init(num_cpus=2, object_store_memory=STORE)
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])

