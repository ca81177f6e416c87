"""The pure lineage machine (gdfut/lineage.py): exact event -> instruction sequences."""
import pytest

from gdfut.lineage import (ForgetSpec, Lineage, PUT, Rebuild, UNKNOWN, Unrecoverable)

A, B, C = "A", "B", "C"


def chain(lin, size=10, retries=3):
    """a -> b -> c, each taking the previous one's result."""
    assert lin.recorded(A, [], size, retries) == []
    assert lin.recorded(B, [A], size, retries) == []
    assert lin.recorded(C, [B], size, retries) == []
    lin.validate()


def test_upstream_lineage_kept_while_a_descendant_may_need_it():
    lin = Lineage()
    chain(lin)
    assert lin.returns_released(A) == []          # b's lineage needs a
    assert lin.returns_released(B) == []          # c's lineage needs b
    assert lin.stats()["lineages"] == 3
    assert lin.returns_released(C) == [ForgetSpec(C), ForgetSpec(B), ForgetSpec(A)]
    assert lin.stats()["lineages"] == 0 and lin.stats()["lineage_bytes"] == 0
    lin.validate()


def test_lost_object_rebuilds_each_task_once_at_a_time():
    lin = Lineage()
    chain(lin)
    assert lin.object_lost("c", C) == Rebuild(C, 1)
    assert lin.object_lost("c", C) is None        # already being re-run: wait
    assert lin.object_lost("b", B) == Rebuild(B, 1)
    assert lin.rebuilt(B) == [] and lin.rebuilt(C) == []
    assert lin.object_lost("c", C) == Rebuild(C, 2)
    lin.validate()


def test_rebuilds_bounded_by_max_retries():
    lin = Lineage()
    lin.recorded(A, [], 10, 1)
    assert lin.object_lost("a", A) == Rebuild(A, 1)
    assert lin.rebuilt(A) == []
    assert lin.object_lost("a", A) == Unrecoverable(
        "a", "its task was already re-run max_retries=1 time")
    lin.recorded(B, [], 10, -1)
    for i in range(1, 6):
        assert lin.object_lost("b", B) == Rebuild(B, i)
        lin.rebuilt(B)
    lin.validate()


def test_put_and_unknown_lineage_are_unrecoverable():
    lin = Lineage()
    assert lin.object_lost("p", None) == Unrecoverable("p", PUT)
    assert lin.object_lost("x", "actor-call") == Unrecoverable("x", UNKNOWN)


def test_oldest_lineage_evicted_past_max_bytes_with_a_clear_reason():
    lin = Lineage(max_bytes=25)
    assert lin.recorded(A, [], 10, 3) == []
    assert lin.recorded(B, [], 10, 3) == []
    assert lin.recorded(C, [], 10, 3) == [ForgetSpec(A)]
    assert lin.stats()["lineage_bytes"] == 20
    assert lin.object_lost("a", A) == Unrecoverable(
        "a", "its lineage was evicted (max_lineage_bytes=25)")
    assert lin.returns_released(A) == []          # the stub goes, no second ForgetSpec
    assert lin.stats()["lineages"] == 2
    lin.validate()


def test_eviction_releases_upstream_lineage_only_it_needed():
    lin = Lineage(max_bytes=25)
    lin.recorded(A, [], 10, 3)
    lin.recorded(B, [A], 10, 3)
    assert lin.returns_released(A) == []          # kept for b
    assert lin.recorded(C, [], 10, 3) == [ForgetSpec(A)]
    assert lin.stats()["lineages"] == 3           # a's stub: b's re-run would say why
    assert lin.recorded("D", [], 10, 3) == [ForgetSpec(B)]
    assert lin.stats()["lineages"] == 3           # b can never re-run: a's stub went too
    assert lin.object_lost("b", B) == Unrecoverable(
        "b", "its lineage was evicted (max_lineage_bytes=25)")
    lin.validate()


def test_a_task_being_rebuilt_is_not_evicted():
    lin = Lineage(max_bytes=15)
    lin.recorded(A, [], 10, 3)
    assert lin.object_lost("a", A) == Rebuild(A, 1)
    assert lin.recorded(B, [], 10, 3) == [ForgetSpec(B)]    # A is running again
    lin.validate()
    assert lin.rebuilt(A) == []
    lin.validate()


def test_released_while_rebuilding_is_forgotten_when_the_rebuild_ends():
    lin = Lineage()
    lin.recorded(A, [], 10, 3)
    assert lin.object_lost("a", A) == Rebuild(A, 1)
    assert lin.returns_released(A) == []
    assert lin.rebuilt(A) == [ForgetSpec(A)]
    lin.validate()


def test_bad_max_bytes_is_refused():
    with pytest.raises(ValueError, match="max_lineage_bytes must be an int >= 0"):
        Lineage(-1)
