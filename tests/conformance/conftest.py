"""The "Ray user" conformance set.

Each test is a small program written the way Ray's documentation writes it,
with ``import gdfut as ray``, so a Ray user's code is what is checked. One
embedded cluster serves a whole module (the programs are independent and
clean up after themselves); leaks are checked when the module is done.
"""
import pytest

import gdfut
from helpers import STORE, assert_no_leaks


@pytest.fixture(scope="module")
def ray_cluster():
    info = gdfut.init(num_cpus=4, object_store_memory=STORE)
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])
