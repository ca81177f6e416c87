"""gdfut.data blocks and batches (pure), and progress bars off without a terminal."""
import io

import numpy as np
import pyarrow as pa
import pytest

from gdfut.data import block as B
from gdfut.data import progress, stages as S
from gdfut.data.errors import BatchFormatError, ColumnNotFoundError, UserCodeException


def test_numpy_batches_round_trip_with_tensor_columns():
    images = np.arange(24, dtype=np.float32).reshape(4, 3, 2)
    table = B.table_from_numpy({"img": images, "label": np.array([1, 2, 3, 4])})
    batch = B.to_batch(table, "numpy")
    np.testing.assert_array_equal(batch["img"], images)
    assert batch["img"].shape == (4, 3, 2)
    rows = B.table_to_rows(table)
    np.testing.assert_array_equal(rows[2]["img"], images[2])


def test_from_batch_names_the_operator_and_the_problem():
    with pytest.raises(BatchFormatError, match=r"MapBatches\(f\): .*returned list"):
        B.from_batch([1, 2], "MapBatches(f)")
    with pytest.raises(BatchFormatError, match="different lengths"):
        B.from_batch({"a": np.arange(3), "b": np.arange(2)}, "MapBatches(f)")
    assert B.from_batch(pa.table({"a": [1]}), "x").num_rows == 1


def test_select_missing_column():
    with pytest.raises(ColumnNotFoundError, match=r"\['z'\] not found.*\['a'\]"):
        B.select(pa.table({"a": [1]}), ["z"], "SelectColumns(['z'])")


def test_map_batches_cuts_blocks_into_batch_size():
    seen = []

    def fn(batch):
        seen.append(len(batch["a"]))
        return batch

    out = S.MapBatches(fn, 4, "numpy")(pa.table({"a": np.arange(10)}))
    assert seen == [4, 4, 2] and out.column("a").to_pylist() == list(range(10))


def test_user_error_keeps_operator_and_cause_and_pickles():
    import pickle

    def bad(batch):
        raise ValueError("nope")

    with pytest.raises(UserCodeException) as info:
        S.MapBatches(bad, None, "numpy")(pa.table({"a": [1]}))
    assert "MapBatches(bad): ValueError: nope" in str(info.value)
    assert isinstance(info.value.__cause__, ValueError)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value) and again.operator == "MapBatches(bad)"


def test_filter_must_return_bool_and_rows_must_be_dicts():
    table = pa.table({"a": [1, 2]})
    with pytest.raises(Exception, match=r"Filter\(<lambda>\).*must return a bool"):
        S.RowTransform("Filter", lambda r: 1)(table)
    with pytest.raises(BatchFormatError, match=r"Map\(<lambda>\).*a row must be a dict"):
        S.RowTransform("Map", lambda r: 5)(table)
    assert S.RowTransform("Filter", lambda r: r["a"] > 5)(table).num_rows == 0


def test_progress_off_without_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress.wanted(True) is False
    assert progress.wanted(False) is False
    assert progress.fmt_bytes(3 * 2**20) == "3.0 MiB"


def _tables(sizes):
    start = 0
    for n in sizes:
        yield pa.table({"a": np.arange(start, start + n)})
        start += n


def test_rebatch_cuts_across_tables():
    out = list(B.rebatch(_tables([3, 5, 1, 7]), 4))
    assert [t.num_rows for t in out] == [4, 4, 4, 4]
    assert np.concatenate([t.column("a").to_numpy() for t in out]).tolist() == list(range(16))
    assert [t.num_rows for t in B.rebatch(_tables([3, 4]), 5)] == [5, 2]
    assert [t.num_rows for t in B.rebatch(_tables([3, 4]), 5, drop_last=True)] == [5]
    assert [t.num_rows for t in B.rebatch(_tables([3, 0, 4]), None)] == [3, 4]


def test_shuffle_rebatch_keeps_every_row_once_and_mixes_them():
    out = list(B.shuffle_rebatch(_tables([10] * 10), 8, 30, seed=1))
    rows = np.concatenate([t.column("a").to_numpy() for t in out])
    assert sorted(rows.tolist()) == list(range(100))
    assert rows.tolist() != list(range(100))
    assert all(t.num_rows == 8 for t in out[:-1]) and out[-1].num_rows == 100 % 8
    again = np.concatenate([t.column("a").to_numpy()
                            for t in B.shuffle_rebatch(_tables([10] * 10), 8, 30, seed=1)])
    assert again.tolist() == rows.tolist()             # seeded: the same order
    dropped = list(B.shuffle_rebatch(_tables([10] * 10), 8, 30, seed=1, drop_last=True))
    assert all(t.num_rows == 8 for t in dropped) and len(dropped) == 12
