"""Issue 9, point 8: an executor that dies between its borrower registrations
and its reply leaks no registration. The executor returns a ref owned by a
third process (an actor) nested in its result; it dies (fault injection)
after the owner acked "the submitter borrows it" and before its reply. The
owner must still free the object once nobody holds it."""
import numpy as np
import pytest

import gdfut
from gdfut.exceptions import WorkerCrashedError
from helpers import STORE, assert_no_leaks, wait_until


@pytest.fixture
def faulty_cluster(monkeypatch):
    monkeypatch.setenv("GDFUT_FAULT_EXIT_BEFORE_REPLY", "1")
    info = gdfut.init(num_cpus=3, object_store_memory=STORE)
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


@gdfut.remote
class Holder:
    def make(self):
        return [gdfut.put(np.zeros(10))]        # a ref this actor owns, in a list

    def owned(self):
        from gdfut import runtime_context as ctx
        rt = ctx.require()

        async def owned_rows():         # the table lives on the io thread
            return [r["oid"] for r in rt.table.summary() if r["owned"]]
        return rt.io.run(owned_rows(), timeout=10)


@gdfut.remote(max_retries=0)
def hand_back(box):
    return box          # the ref in the list goes back nested in the result


def test_executor_dying_before_its_reply_leaks_no_registration(faulty_cluster):
    q = Holder.remote()
    box = gdfut.get(q.make.remote())
    (inner,) = box
    assert len(gdfut.get(q.owned.remote())) == 1
    with pytest.raises(WorkerCrashedError):
        gdfut.get(hand_back.remote(box))
    del box, inner                    # nobody holds the actor's object any more
    wait_until(lambda: gdfut.get(q.owned.remote()) == [], timeout=20,
               what="the actor to free its object (no registration left for the driver)")
