"""Distributed reference counting end to end (issue 3)."""
import gc
import time

import numpy as np
import pytest

import gdfut
from gdfut.exceptions import ObjectLostError, OwnerDiedError
from helpers import store_stats
from helpers import wait_until

SHARE_CLUSTER = True     # one cluster for its tests (integration/conftest.py checks between them)


MB = 1024 * 1024


def stored_objects():
    return store_stats()["num_objects"]


def summary_ids():
    return {row["oid"] for row in gdfut.memory_summary()}


@gdfut.remote
def slow_sum(arr, t):
    time.sleep(t)
    return float(arr.sum())


def test_array_freed_when_last_task_ends(cluster):
    ref = gdfut.put(np.ones(4 * MB // 8))
    outs = [slow_sum.remote(ref, 0.5 + 0.2 * i) for i in range(3)]
    del ref
    gc.collect()
    time.sleep(0.2)
    assert stored_objects() == 1                 # tasks still hold it
    assert gdfut.get(outs) == [4 * MB / 8] * 3
    wait_until(lambda: stored_objects() == 0, timeout=5, what="array freed")


def test_dropping_ref_frees_store_and_summary(cluster):
    ref = gdfut.put(np.zeros(MB))
    oid = ref.id
    assert oid in summary_ids()
    del ref
    gc.collect()
    wait_until(lambda: stored_objects() == 0, timeout=5, what="freed from store")
    assert oid not in summary_ids()


def test_object_held_inside_another_lives_until_outer_freed(cluster):
    inner = gdfut.put(np.arange(MB // 8))
    inner_id = inner.id
    outer = gdfut.put({"payload": [inner]})
    del inner
    gc.collect()
    time.sleep(0.3)
    assert inner_id in summary_ids()
    got = gdfut.get(outer)["payload"][0]
    assert gdfut.get(got)[5] == 5
    del got
    del outer
    gc.collect()
    wait_until(lambda: inner_id not in summary_ids() and stored_objects() == 0, timeout=5,
               what="inner freed after outer")


def test_ref_returned_inside_task_result(cluster):
    @gdfut.remote
    def make_inner():
        return [gdfut.put(np.full(MB // 8, 3.0))]

    holder = make_inner.remote()
    inner_ref = gdfut.get(holder)[0]
    assert gdfut.get(inner_ref)[0] == 3.0
    del holder
    gc.collect()
    time.sleep(0.3)
    assert gdfut.get(inner_ref)[1] == 3.0       # still borrowed by the driver
    del inner_ref
    gc.collect()
    wait_until(lambda: stored_objects() == 0, timeout=5, what="inner freed")


def test_borrowed_ref_kept_by_actor(cluster):
    @gdfut.remote
    class Keeper:
        def keep(self, refs):
            self.ref = refs[0]
            return True

        def read(self):
            return float(gdfut.get(self.ref).sum())

        def drop(self):
            self.ref = None
            return True

    k = Keeper.remote()
    ref = gdfut.put(np.ones(MB // 8))
    oid = ref.id
    assert gdfut.get(k.keep.remote([ref]))
    del ref
    gc.collect()
    time.sleep(0.3)
    assert stored_objects() == 1
    assert gdfut.get(k.read.remote()) == MB / 8
    assert gdfut.get(k.drop.remote())
    wait_until(lambda: stored_objects() == 0, timeout=5, what="freed after actor drop")
    assert oid not in summary_ids()


def test_summary_rows_describe_objects(cluster):
    ref = gdfut.put(np.ones(MB // 8))
    rows = [r for r in gdfut.memory_summary() if r["oid"] == ref.id]
    assert len(rows) == 1
    row = rows[0]
    assert row["size"] >= MB
    assert "test_ownership_integration.py" in row["call_site"]
    assert row["local"] == 1


def test_everything_freed_after_program(cluster):
    @gdfut.remote
    def chain(x):
        return x + 1

    refs = [gdfut.put(np.ones(MB // 8)) for _ in range(5)]
    outs = [slow_sum.remote(r, 0) for r in refs]
    c = chain.remote(0)
    for _ in range(20):
        c = chain.remote(c)
    assert gdfut.get(c) == 21
    gdfut.get(outs)
    del refs, outs, c
    gc.collect()
    wait_until(lambda: not gdfut.memory_summary() and stored_objects() == 0, timeout=10,
               what="every object freed")


def test_freed_object_cannot_be_fetched(cluster):
    @gdfut.remote
    def fetch_later(box):
        time.sleep(1.0)
        return gdfut.get(box[0])

    # a ref smuggled out without the borrower protocol (pickled by hand) is lost
    import pickle
    ref = gdfut.put(np.ones(MB // 8))
    blob = pickle.dumps(ref)
    del ref
    gc.collect()
    wait_until(lambda: stored_objects() == 0, timeout=5, what="freed")
    with pytest.raises(ObjectLostError, match="freed"):
        gdfut.get(fetch_later.remote([pickle.loads(blob)]), timeout=20)


def test_owner_death_fails_borrowed_refs_clearly(cluster):
    @gdfut.remote
    class Maker:
        def make(self):
            return [gdfut.put(np.ones(MB // 8))]   # the actor owns the inner object

    m = Maker.remote()
    inner = gdfut.get(m.make.remote())[0]
    assert gdfut.get(inner).sum() == MB / 8
    gdfut.kill(m)
    time.sleep(1.0)
    with pytest.raises(OwnerDiedError, match="owner"):
        gdfut.get(inner, timeout=20)


@gdfut.remote
class Reader:
    def read(self, box):
        return sum(gdfut.get(box[0]))       # refs nested in an argument: borrowed here

    def cached_values(self):
        from gdfut import runtime_context
        return len(runtime_context.require().values)


def test_a_borrowers_value_cache_is_bounded_by_the_refs_it_holds(cluster):
    """A long-lived borrower that reads many objects and drops their refs
    keeps nothing of them (their cached values went with the last ref)."""
    reader = Reader.remote()
    baseline = gdfut.get(reader.cached_values.remote())
    for round_ in range(5):
        refs = [gdfut.put(i) for i in range(100)]
        assert gdfut.get(reader.read.remote([refs])) == sum(range(100))
        del refs
    assert gdfut.get(reader.cached_values.remote()) <= baseline + 10
