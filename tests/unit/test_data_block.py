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


# ------------------------------------------------------------ device blocks
# No cupy here: kernels.array_module() is numpy, so numpy arrays are the
# emulated device arrays (the rule of block.device_block).

def _device(n=6):
    return B.from_batch({"id": np.arange(n), "emb": np.ones((n, 2), np.float32)}, "GPU",
                        device=True)


def test_gpu_stage_numpy_output_is_a_device_block_and_host_output_is_arrow():
    blk = _device()
    assert type(blk) is B.DeviceBlock and blk.num_rows == 6 and blk.num_columns == 2
    assert blk.nbytes == 6 * 8 + 6 * 2 * 4
    assert B.metadata(blk) == {"num_rows": 6, "size_bytes": blk.nbytes, "device": True}
    # not a GPU stage, strings, or a DataFrame-like: Arrow on the host
    assert isinstance(B.from_batch({"id": np.arange(3)}, "CPU"), pa.Table)
    assert isinstance(B.from_batch({"s": np.array(["a", "b"])}, "GPU", device=True), pa.Table)
    assert isinstance(B.from_batch({"a": [1, 2]}, "GPU", device=True), pa.Table)
    with pytest.raises(BatchFormatError, match=r"GPU: .*different lengths"):
        B.from_batch({"a": np.arange(3), "b": np.arange(2)}, "GPU", device=True)


def test_device_block_slices_selects_takes_and_concats_on_the_device():
    blk = _device()
    part = blk.slice(2, 3)
    assert type(part) is B.DeviceBlock and np.shares_memory(part["id"], blk["id"])
    np.testing.assert_array_equal(part["id"], [2, 3, 4])
    np.testing.assert_array_equal(blk.slice(4)["id"], [4, 5])
    assert blk.select(["emb"]).column_names == ["emb"]
    np.testing.assert_array_equal(blk.take([5, 0])["id"], [5, 0])
    joined = B.concat([blk.slice(0, 2), blk.slice(2)])
    assert type(joined) is B.DeviceBlock
    np.testing.assert_array_equal(joined["emb"], blk["emb"])
    mixed = B.concat([blk.slice(0, 2), blk.slice(2).to_arrow()])   # a mix goes to Arrow
    assert isinstance(mixed, pa.Table) and mixed.num_rows == 6
    np.testing.assert_array_equal(B.to_batch(mixed, "numpy")["emb"], blk["emb"])
    with pytest.raises(ColumnNotFoundError):
        B.select(blk, ["nope"], "Select")


def test_device_block_batches_and_conversions():
    blk = _device()
    batch = B.to_batch(blk, "numpy", host=False)       # a GPU stage: its device arrays
    assert type(batch) is dict and batch["id"] is blk["id"]
    host = B.to_batch(blk, "numpy")
    np.testing.assert_array_equal(host["emb"], blk["emb"])
    assert B.to_batch(blk, "pandas")["id"].tolist() == list(range(6))
    table = B.to_batch(blk, "pyarrow")
    assert isinstance(table, pa.Table) and table.column_names == ["id", "emb"]
    assert B.block_schema(blk) == table.schema
    # a plain dict is a device block whose structure the runtime rebuilt
    assert type(B.as_block(dict(blk))) is B.DeviceBlock
    assert B.to_table(dict(blk)).equals(table)
    with pytest.raises(TypeError, match="internal"):
        B.as_block([1])
    out = list(B.rebatch([blk.slice(0, 4), blk.slice(4)], 3))
    assert [type(b) for b in out] == [B.DeviceBlock] * 2
    assert [b.num_rows for b in out] == [3, 3]
    shuffled = list(B.shuffle_rebatch([blk], 2, 2, seed=0))
    assert sorted(np.concatenate([b["id"] for b in shuffled]).tolist()) == list(range(6))


def test_gpu_map_batches_keeps_device_blocks_and_row_transforms_get_arrow():
    double = S.MapBatches(lambda b: {"id": b["id"] * 2}, None, "numpy", device=True)
    out = S.apply_chain([double], _device())
    assert type(out) is B.DeviceBlock
    np.testing.assert_array_equal(out["id"], np.arange(6) * 2)
    # a row transform fused after it takes Arrow; SelectColumns keeps the device block
    rows = S.apply_chain([double, S.RowTransform("Map", lambda r: {"v": r["id"] + 1})],
                         _device())
    assert isinstance(rows, pa.Table) and rows.column("v").to_pylist() == [1, 3, 5, 7, 9, 11]
    sel = S.apply_chain([S.SelectColumns(["emb"])], _device())
    assert type(sel) is B.DeviceBlock and sel.column_names == ["emb"]
    # a bundle across device blocks stays on the device
    blk = _device()
    bundle = S.bundle_table([(4, 6), (0, 1)], [blk, dict(blk)])
    assert type(bundle) is B.DeviceBlock
    np.testing.assert_array_equal(bundle["id"], [4, 5, 0])


class FakeCupyArray:
    """A device array as gdfut.kernels sees one, over a numpy array."""

    def __init__(self, arr):
        self.arr = np.asarray(arr)
        self.__cuda_array_interface__ = {"shape": self.arr.shape, "version": 3}
        self.ndim, self.dtype, self.shape = self.arr.ndim, self.arr.dtype, self.arr.shape
        self.nbytes = self.arr.nbytes

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, key):
        return FakeCupyArray(self.arr[key.arr if isinstance(key, FakeCupyArray) else key])


class FakeCupy:
    """The few CuPy functions block.py calls (asarray, asnumpy, concatenate)."""
    host_to_device = 0

    @classmethod
    def asarray(cls, x):
        if isinstance(x, FakeCupyArray):
            return x
        cls.host_to_device += 1
        return FakeCupyArray(x)

    @staticmethod
    def asnumpy(x):
        return x.arr.copy()

    @staticmethod
    def concatenate(arrays):
        return FakeCupyArray(np.concatenate([a.arr for a in arrays]))


def test_device_blocks_on_a_real_gpu_through_a_cupy_stand_in(monkeypatch):
    """The real-GPU branch of the rule, with a CuPy stand-in as the array
    module: numpy alone stays on the host; device columns make a device
    block, whose host columns go to the device; host consumers copy down."""
    import types
    fake = types.SimpleNamespace(
        is_device_array=lambda x: hasattr(x, "__cuda_array_interface__"),
        array_module=lambda x=None: FakeCupy if x is None or hasattr(
            x, "__cuda_array_interface__") else np)
    monkeypatch.setattr(B, "kernels", fake)
    assert isinstance(B.from_batch({"id": np.arange(4)}, "GPU", device=True), pa.Table)
    blk = B.from_batch({"id": np.arange(4), "emb": FakeCupyArray(np.ones((4, 2)))}, "GPU",
                       device=True)
    assert type(blk) is B.DeviceBlock and FakeCupy.host_to_device == 1
    assert all(isinstance(c, FakeCupyArray) for c in blk.values())
    joined = B.concat([blk.slice(0, 1), blk.slice(1)])
    assert type(joined) is B.DeviceBlock and isinstance(joined["id"], FakeCupyArray)
    host = B.to_batch(joined, "numpy")
    assert type(host["emb"]) is np.ndarray and host["emb"].shape == (4, 2)
    np.testing.assert_array_equal(host["id"], np.arange(4))
    assert isinstance(B.to_batch(blk, "numpy", host=False)["id"], FakeCupyArray)
    assert B.to_table(blk).column("id").to_pylist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(blk.take(np.array([3, 1]))["id"].arr, [3, 1])
    # a device column in a host (CPU) stage's result is copied down, not refused
    assert B.from_batch({"id": FakeCupyArray(np.arange(2))}, "CPU").num_rows == 2


def test_parquet_read_of_a_row_range_reads_only_its_row_groups(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    path = str(tmp_path / "f.parquet")
    pq.write_table(pa.table({"a": np.arange(100)}), path, row_group_size=20)
    read = S.ReadParquetFile(path, None, None, [20] * 5)
    seen = []
    real = S.ReadParquetFile.__call__
    monkeypatch.setattr(S.ReadParquetFile, "__call__",
                        lambda self: seen.append(self.row_groups) or real(self))
    assert read.read_rows(25, 61).column("a").to_pylist() == list(range(25, 61))
    assert seen[-1] == [1, 2, 3]
    assert read.read_rows(40, 60).column("a").to_pylist() == list(range(40, 60))
    assert seen[-1] == [2]
    assert read.read_rows(0, 100).num_rows == 100 and seen[-1] == [0, 1, 2, 3, 4]
    # a read of some row groups (a file over the target) counts rows from its first
    part = S.ReadParquetFile(path, None, [3, 4], [20, 20])
    assert part.read_rows(10, 30).column("a").to_pylist() == list(range(70, 90))
    assert seen[-1] == [3, 4]
    assert S.ReadRange(10, 20).read_rows(2, 5).column("id").to_pylist() == [12, 13, 14]
