"""gdfut.data against pandas/numpy results on small data, on one cluster
with two emulated GPUs. After every test: no object left in the store, no
actor lease, every resource free (nothing left running); at the end, no
process, shared memory or spill file left."""
import gc
import os
import sys

import cloudpickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gdfut
import gdfut.data as gd
from helpers import STORE, assert_no_leaks, node_status, wait_until

pd = pytest.importorskip("pandas")
cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import this file


@pytest.fixture(scope="module")
def data_cluster():
    info = gdfut.init(num_cpus=2, num_gpus=2, object_store_memory=STORE)
    try:
        yield info
    finally:
        gdfut.shutdown()
        assert_no_leaks(info["session_dir"])


def _nothing_left():
    s = node_status()
    return (s["store"]["num_objects"] == 0 and s["leases"]["num_actor_leases"] == 0
            and s["resources_available"] == s["resources_total"])


@pytest.fixture(autouse=True)
def no_leftovers(data_cluster):
    yield
    gc.collect()
    wait_until(_nothing_left, timeout=20, what="no objects, actors or leases left")


def df_of(ds):
    return ds.to_pandas().reset_index(drop=True)


ITEMS = [{"a": i, "b": float(i) / 2, "s": f"r{i}"} for i in range(50)]


# ------------------------------------------------------------ sources
def test_range_count_take_schema_take_all():
    ds = gd.range(100, override_num_blocks=4)
    assert ds.count() == 100
    assert ds.take(5) == [{"id": i} for i in range(5)]
    assert [r["id"] for r in ds.take_all()] == list(range(100))
    assert ds.schema().names == ["id"]
    pd.testing.assert_frame_equal(df_of(ds), pd.DataFrame({"id": np.arange(100, dtype=np.int64)}))
    assert ds.materialize().num_blocks() == 4


def test_from_items_pandas_arrow_numpy():
    expected = pd.DataFrame(ITEMS)
    pd.testing.assert_frame_equal(df_of(gd.from_items(ITEMS)), expected)
    pd.testing.assert_frame_equal(df_of(gd.from_pandas(expected, override_num_blocks=3)),
                                  expected)
    pd.testing.assert_frame_equal(df_of(gd.from_arrow(pa.Table.from_pandas(expected))), expected)
    assert gd.from_items([1, 2, 3]).take_all() == [{"item": 1}, {"item": 2}, {"item": 3}]
    images = np.arange(2 * 4 * 3 * 3, dtype=np.float32).reshape(8, 3, 3)
    batches = list(gd.from_numpy(images).iter_batches(batch_size=None))
    np.testing.assert_array_equal(np.concatenate([b["data"] for b in batches]), images)


def test_read_parquet_csv_numpy(tmp_path):
    frames = [pd.DataFrame({"x": np.arange(i * 10, i * 10 + 10), "y": np.random.rand(10)})
              for i in range(3)]
    pdir = tmp_path / "pq"
    pdir.mkdir()
    for i, f in enumerate(frames):
        pq.write_table(pa.Table.from_pandas(f, preserve_index=False), pdir / f"part{i}.parquet")
        f.to_csv(tmp_path / f"part{i}.csv", index=False)
        np.save(tmp_path / f"part{i}.npy", f["y"].to_numpy())
    expected = pd.concat(frames, ignore_index=True)
    pd.testing.assert_frame_equal(df_of(gd.read_parquet(str(pdir))), expected)
    pd.testing.assert_frame_equal(df_of(gd.read_parquet(str(pdir), columns=["y"])),
                                  expected[["y"]])
    csvs = [str(tmp_path / f"part{i}.csv") for i in range(3)]
    pd.testing.assert_frame_equal(df_of(gd.read_csv(csvs)), expected)
    npys = [str(tmp_path / f"part{i}.npy") for i in range(3)]
    np.testing.assert_allclose(df_of(gd.read_numpy(npys))["data"].to_numpy(),
                               expected["y"].to_numpy())


def test_write_parquet_round_trip(tmp_path):
    ds = gd.range(30, override_num_blocks=3).map(lambda r: {"id": r["id"], "sq": r["id"] ** 2})
    ds.write_parquet(str(tmp_path / "out"))
    assert len(os.listdir(tmp_path / "out")) == 3
    back = pd.read_parquet(tmp_path / "out").sort_values("id").reset_index(drop=True)
    expected = pd.DataFrame({"id": np.arange(30), "sq": np.arange(30) ** 2})
    pd.testing.assert_frame_equal(back, expected)


# ------------------------------------------------------------ transforms
def test_map_filter_flat_map_match_pandas():
    ds = (gd.from_items(ITEMS)
          .map(lambda r: {**r, "c": r["a"] * 3})
          .filter(lambda r: r["a"] % 4 != 0)
          .flat_map(lambda r: [r, {**r, "c": -r["c"]}]))
    expected = pd.DataFrame(ITEMS)
    expected["c"] = expected["a"] * 3
    expected = expected[expected["a"] % 4 != 0]
    neg = expected.assign(c=-expected["c"])
    expected = pd.concat([expected, neg]).sort_index(kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(df_of(ds), expected)


@pytest.mark.parametrize("batch_format", ["numpy", "pyarrow", "pandas"])
def test_map_batches_formats_and_batch_size(batch_format):
    def double(batch):
        if batch_format == "numpy":
            assert isinstance(batch, dict) and isinstance(batch["a"], np.ndarray)
            return {"a": batch["a"] * 2, "n": np.full(len(batch["a"]), len(batch["a"]))}
        if batch_format == "pyarrow":
            assert isinstance(batch, pa.Table)
            a = batch.column("a").to_numpy()
            return pa.table({"a": a * 2, "n": np.full(len(a), len(a))})
        assert isinstance(batch, pd.DataFrame)
        return pd.DataFrame({"a": batch["a"] * 2, "n": len(batch)})

    out = df_of(gd.from_items(ITEMS, override_num_blocks=2)
                .map_batches(double, batch_size=7, batch_format=batch_format))
    np.testing.assert_array_equal(out["a"].to_numpy(), np.arange(50) * 2)
    assert out["n"].max() <= 7 and out["n"].min() >= 1


def test_add_column_and_select_columns():
    ds = gd.from_items(ITEMS).add_column("z", lambda df: df["a"] + df["b"])
    ds = ds.add_column("w", lambda b: b["a"] * 10, batch_format="numpy")
    out = df_of(ds.select_columns(["z", "a", "w"]))
    expected = pd.DataFrame(ITEMS)
    expected = pd.DataFrame({"z": expected["a"] + expected["b"], "a": expected["a"],
                             "w": expected["a"] * 10})
    pd.testing.assert_frame_equal(out, expected)


def test_repartition_random_shuffle_split():
    ds = gd.range(60, override_num_blocks=4)
    rep = ds.repartition(3).materialize()
    assert rep.num_blocks() == 3 and [r["id"] for r in rep.take_all()] == list(range(60))
    shuffled = [r["id"] for r in ds.random_shuffle(seed=7).take_all()]
    assert sorted(shuffled) == list(range(60)) and shuffled != list(range(60))
    assert shuffled == [r["id"] for r in ds.random_shuffle(seed=7).take_all()]
    parts = ds.split(2)
    ids = [sorted(r["id"] for r in p.take_all()) for p in parts]
    assert sorted(ids[0] + ids[1]) == list(range(60)) and ids[0] and ids[1]
    equal = gd.range(61, override_num_blocks=4).split(3, equal=True)
    assert [p.count() for p in equal] == [20, 20, 20]
    del rep, parts, equal


# ------------------------------------------------------------ consumers
def test_iter_batches_sizes_formats_drop_last():
    ds = gd.range(50, override_num_blocks=3)
    sizes = [len(b["id"]) for b in ds.iter_batches(batch_size=8, prefetch_batches=2)]
    assert sizes == [8] * 6 + [2]
    assert [len(b["id"]) for b in ds.iter_batches(batch_size=8, drop_last=True)] == [8] * 6
    got = np.concatenate([b["id"] for b in ds.iter_batches(batch_size=8)])
    np.testing.assert_array_equal(got, np.arange(50))
    tables = list(ds.iter_batches(batch_size=20, batch_format="pyarrow"))
    assert all(isinstance(t, pa.Table) for t in tables) and sum(len(t) for t in tables) == 50
    frames = list(ds.iter_batches(batch_size=None, batch_format="pandas"))
    assert sum(len(f) for f in frames) == 50 and len(frames) == 3
    with pytest.raises(ValueError, match="batch_format"):
        ds.iter_batches(batch_format="arrow")


def test_to_arrow_refs_and_materialize():
    ds = gd.from_items(ITEMS).map_batches(lambda b: {"a": b["a"] + 1})
    refs = ds.to_arrow_refs()
    table = pa.concat_tables(gdfut.get(refs))
    np.testing.assert_array_equal(table.column("a").to_numpy(), np.arange(50) + 1)
    mat = ds.materialize()
    assert mat.count() == 50 and mat.take(2) == [{"a": 1}, {"a": 2}]
    del refs, table, mat


def test_iter_torch_batches():
    ds = gd.range(10, override_num_blocks=2)
    try:
        import torch
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch"):
            next(iter(ds.iter_torch_batches(batch_size=4)))
        return
    batches = list(ds.iter_torch_batches(batch_size=4, dtypes=torch.float32, device="cpu"))
    assert [b["id"].shape[0] for b in batches] == [4, 4, 2]
    assert batches[0]["id"].dtype == torch.float32
    assert torch.equal(torch.cat([b["id"] for b in batches]), torch.arange(10).float())


def test_stats_report_operators_rows_and_consumer_wait():
    ds = gd.range(200, override_num_blocks=4).map_batches(lambda b: {"id": b["id"] * 2})
    assert "not run yet" in ds.stats()
    assert sum(len(b["id"]) for b in ds.iter_batches(batch_size=50)) == 200
    st = ds.stats()
    assert isinstance(st, str) and "ReadRange->MapBatches(<lambda>)" in st
    (op,) = st.operators
    assert op["rows"] == 200 and op["blocks"] == 4 and op["bytes_out"] == 200 * 8
    assert op["rows_per_s"] > 0 and st.wall_s > 0 and st.consumer_wait_s >= 0


# ------------------------------------------------------------ class stages, emulated GPUs
def make_tagger():
    """The class, made here so that workers get it by value (this test
    module is not importable in a worker)."""
    return _tagger_class()


def _tagger_class():
    class Tagger:
        def __init__(self, offset):
            self.offset = offset
            self.pid = os.getpid()
            self.gpus = gdfut.get_gpu_ids()

        def __call__(self, batch):
            n = len(batch["id"])
            return {"id": batch["id"] + self.offset, "pid": np.full(n, self.pid),
                    "gpu": np.full(n, self.gpus[0] if self.gpus else -1)}
    return Tagger


def test_class_stage_gets_its_own_emulated_gpu():
    ds = gd.range(64, override_num_blocks=8).map_batches(
        make_tagger(), num_gpus=1, concurrency=2, fn_constructor_kwargs={"offset": 1000})
    out = df_of(ds)
    np.testing.assert_array_equal(out["id"].to_numpy(), np.arange(64) + 1000)
    assert out["pid"].nunique() == 2                     # the pool started at its full size
    assert sorted(out.groupby("pid")["gpu"].nunique()) == [1, 1]
    assert sorted(out["gpu"].unique()) == [0, 1]         # each actor its own GPU
    (read, pool) = ds.stats().operators
    assert pool["actors"] == 2 and pool["rows"] == 64


def test_fractional_gpus_and_autoscaling_pool():
    ds = gd.range(40, override_num_blocks=8).map_batches(
        make_tagger(), num_gpus=0.5, concurrency=(1, 3), fn_constructor_kwargs={"offset": 0})
    out = df_of(ds)
    np.testing.assert_array_equal(out["id"].to_numpy(), np.arange(40))
    assert 1 <= out["pid"].nunique() <= 3
    assert 1 <= ds.stats().operators[1]["actors"] <= 3


# ------------------------------------------------------------ bad input
def test_batch_function_returning_wrong_type():
    ds = gd.range(20, override_num_blocks=2).map_batches(lambda b: 5)
    with pytest.raises(gd.BatchFormatError, match=r"MapBatches\(<lambda>\).*returned int"):
        ds.take_all()


def test_error_in_batch_function_names_operator():
    def boom(batch):
        if batch["id"][0] >= 10:
            raise ValueError("boom at ten")
        return batch

    with pytest.raises(gd.UserCodeException,
                       match=r"MapBatches\(.*boom\).*ValueError: boom at ten"):
        for _ in gd.range(40, override_num_blocks=4).map_batches(boom).iter_batches():
            pass


def test_error_in_class_stage_kills_its_actors():
    class Bad:
        def __call__(self, batch):
            raise RuntimeError("model exploded")

    ds = gd.range(20, override_num_blocks=4).map_batches(Bad, num_gpus=1, concurrency=2)
    with pytest.raises(gd.UserCodeException, match="MapBatches\\(.*Bad\\).*model exploded"):
        ds.count()
    # no_leftovers then checks that the actors are gone and the GPUs free


def test_missing_column_and_missing_path(tmp_path):
    with pytest.raises(gd.ColumnNotFoundError, match=r"SelectColumns\(\['nope'\]\).*'nope'"):
        gd.from_items(ITEMS).select_columns(["nope"]).take_all()
    with pytest.raises(FileNotFoundError, match="read_parquet: path .*missing does not exist"):
        gd.read_parquet(str(tmp_path / "missing"))
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "a.parquet")
    with pytest.raises(gd.ColumnNotFoundError, match=r"ReadParquet: column\(s\) \['y'\]"):
        gd.read_parquet(str(tmp_path / "a.parquet"), columns=["y"]).count()
    ds = gd.read_parquet(str(tmp_path / "a.parquet"))
    os.remove(tmp_path / "a.parquet")           # gone after listing: raised at the consumer
    with pytest.raises(gd.DataError, match=r"ReadParquet: .*a.parquet does not exist"):
        ds.take_all()


def test_take_stops_pipeline_early():
    def slow(batch):
        import time
        time.sleep(0.2)
        return batch

    ds = gd.range(400, override_num_blocks=20).map_batches(slow)
    assert ds.take(3) == [{"id": 0}, {"id": 1}, {"id": 2}]
    assert ds.stats().operators[0]["blocks"] < 20        # it did not run to the end


def test_function_stage_options_and_bad_arguments():
    def scale(batch, k, *, offset=0):
        return {"id": batch["id"] * k + offset,
                "gpu": np.full(len(batch["id"]), (gdfut.get_gpu_ids() or [-1])[0])}

    ds = gd.range(30, override_num_blocks=3).map_batches(
        scale, fn_args=(3,), fn_kwargs={"offset": 1}, num_gpus=1, concurrency=1)
    out = df_of(ds)
    np.testing.assert_array_equal(out["id"].to_numpy(), np.arange(30) * 3 + 1)
    assert set(out["gpu"]) <= {0, 1}                     # a GPU task sees its GPU
    with pytest.raises(ValueError, match=r"concurrency must be an int >= 1 \(a \(min, max\)"):
        gd.range(3).map_batches(scale, concurrency=(1, 2))
    with pytest.raises(ValueError, match="num_gpus must be a number >= 0"):
        gd.range(3).map_batches(scale, num_gpus=-1)
    with pytest.raises(ValueError, match="fn_constructor_args/kwargs are for a class"):
        gd.range(3).map_batches(scale, fn_constructor_kwargs={"a": 1})
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        gd.range(3).map_batches(scale, batch_size=0)


def test_iter_batches_is_reiterable_local_shuffle_and_early_break():
    ds = gd.range(64, override_num_blocks=4)
    batches = ds.iter_batches(batch_size=16)
    assert [len(b["id"]) for b in batches] == [16] * 4
    assert [len(b["id"]) for b in batches] == [16] * 4        # iterable again, as Ray's
    mixed = np.concatenate([b["id"] for b in ds.iter_batches(
        batch_size=8, local_shuffle_buffer_size=20, local_shuffle_seed=3)])
    assert sorted(mixed.tolist()) == list(range(64)) and mixed.tolist() != list(range(64))
    slow = gd.range(200, override_num_blocks=20).map_batches(make_tagger(), num_gpus=1,
                                                             concurrency=2,
                                                             fn_constructor_kwargs={"offset": 0})
    for batch in slow.iter_batches(batch_size=5):
        break                      # no_leftovers then checks the pool's actors are gone


def test_dead_actor_names_its_stage_and_nothing_is_left():
    class Crash:
        def __call__(self, batch):
            os._exit(1)

    ds = gd.range(20, override_num_blocks=4).map_batches(Crash, num_gpus=1, concurrency=2)
    with pytest.raises(gd.DataError, match=r"MapBatches\(Crash\): ActorDiedError"):
        ds.count()


# ------------------------------------------------------------ bundling, block splitting
@pytest.fixture
def data_ctx():
    ctx = gd.DataContext.get_current()
    old = dict(vars(ctx))
    try:
        yield ctx
    finally:
        vars(ctx).update(old)


def with_batch_len(batch):
    n = len(batch["a"])
    return {"a": batch["a"] * 2, "n": np.full(n, n)}


class BatchLen:
    def __call__(self, batch):
        return with_batch_len(batch)


def batch_lengths(ns) -> list[int]:
    """The batch lengths, in order, from each row's ``n`` (rows of a batch are consecutive)."""
    out, i = [], 0
    while i < len(ns):
        out.append(int(ns[i]))
        i += int(ns[i])
    return out


@pytest.mark.parametrize("stage", ["function", "class"])
def test_map_batches_batch_size_is_exact_across_small_blocks(stage):
    fn = with_batch_len if stage == "function" else BatchLen
    extra = {} if stage == "function" else {"concurrency": 2}
    # 8 blocks of 6-7 rows: batches of 16 need rows of 3 blocks
    out = df_of(gd.from_items(ITEMS, override_num_blocks=8).map_batches(fn, batch_size=16,
                                                                         **extra))
    np.testing.assert_array_equal(out["a"].to_numpy(), np.arange(50) * 2)
    assert batch_lengths(out["n"].to_numpy()) == [16, 16, 16, 2]


def test_map_batches_batch_size_exact_after_a_read_and_a_fused_map(tmp_path):
    for i in range(5):                            # files of 7 rows
        pq.write_table(pa.table({"a": np.arange(i * 7, i * 7 + 7)}), tmp_path / f"{i}.parquet")
    ds = (gd.read_parquet(str(tmp_path))
          .map(lambda r: {"a": r["a"] + 1})
          .map_batches(with_batch_len, batch_size=10)
          .map_batches(with_batch_len, batch_size=4))
    out = df_of(ds)
    np.testing.assert_array_equal(out["a"].to_numpy(), (np.arange(35) + 1) * 4)
    assert batch_lengths(out["n"].to_numpy()) == [4] * 8 + [3]
    names = [op["name"] for op in ds.stats().operators]
    assert names == ["ReadParquet->Map(<lambda>)", "MapBatches(with_batch_len)",
                     "MapBatches(with_batch_len)"]


def test_exact_batch_size_fuses_with_a_parquet_read_of_known_rows(tmp_path, data_ctx):
    """Footers give the rows, so map_batches(batch_size=N) runs in the read's
    task: its bundles are rows of the files (across file ends), each task
    reading only the row groups it needs, and at most the target max block
    size of them."""
    for i in range(4):                            # files of 2,500 rows, 5 row groups each
        pq.write_table(pa.table({"a": np.arange(i * 2500, (i + 1) * 2500)}),
                       tmp_path / f"{i}.parquet", row_group_size=500)
    for target, blocks in ((1 << 30, 4), (12 * 1024, 10)):
        # whole batches cut as the files come (2, 3, 2, 3 of them); under a
        # target of 1.5 batches of input (8 KB each), one batch a task
        data_ctx.target_max_block_size = target
        ds = gd.read_parquet(str(tmp_path)).map_batches(with_batch_len, batch_size=1000)
        out = df_of(ds)
        np.testing.assert_array_equal(out["a"].to_numpy(), np.arange(10_000) * 2)
        assert batch_lengths(out["n"].to_numpy()) == [1000] * 10
        op, = ds.stats().operators
        assert op["name"] == "ReadParquet->MapBatches(with_batch_len)"
        assert op["blocks"] == blocks, target
    # a read whose rows are unknown (CSV) keeps a stage of its own
    with open(tmp_path / "x.csv", "w") as f:
        f.write("a\n" + "\n".join(str(i) for i in range(25)) + "\n")
    csv = gd.read_csv(str(tmp_path / "x.csv")).map_batches(with_batch_len, batch_size=10)
    assert batch_lengths(df_of(csv)["n"].to_numpy()) == [10, 10, 5]
    assert [o["name"] for o in csv.stats().operators] == ["ReadCSV",
                                                         "MapBatches(with_batch_len)"]


def test_oversized_block_is_split_at_the_target_max_block_size(data_ctx):
    data_ctx.target_max_block_size = 8 * 1024            # 1024 int64 rows
    ds = gd.from_numpy(np.arange(10_000, dtype=np.int64)).map_batches(
        lambda b: {"data": b["data"], "n": np.full(len(b["data"]), len(b["data"]))},
        batch_size=None)
    out = df_of(ds)
    np.testing.assert_array_equal(out["data"].to_numpy(), np.arange(10_000))
    lengths = batch_lengths(out["n"].to_numpy())
    assert len(lengths) == 10 and max(lengths) <= 1024 and sum(lengths) == 10_000
    assert ds.stats().operators[0]["blocks"] == 10


def test_large_parquet_file_is_read_as_row_group_blocks(tmp_path, data_ctx):
    table = pa.table({"x": np.arange(20_000, dtype=np.int64), "y": np.ones(20_000)})
    pq.write_table(table, tmp_path / "big.parquet", row_group_size=2_000)   # ~32 KB a group
    data_ctx.target_max_block_size = 70 * 1024
    ds = gd.read_parquet(str(tmp_path / "big.parquet"))
    mat = ds.materialize()
    sizes = [m["size_bytes"] for _, m in mat._source.blocks]
    assert 3 <= len(sizes) <= 6 and max(sizes) <= 70 * 1024, sizes    # 10 groups of 32 KB
    pd.testing.assert_frame_equal(df_of(mat), table.to_pandas())
    del mat
    data_ctx.target_max_block_size = 1 << 30
    assert gd.read_parquet(str(tmp_path / "big.parquet")).materialize().num_blocks() == 1


# ------------------------------------------------------------ dead workers
def _kill_when_started(marker: str, timeout: float = 30.0):
    """A thread that SIGKILLs the pid written to ``marker`` once it appears."""
    import signal
    import threading
    import time

    def run():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(marker) as f:
                    pid = int(f.read())
                break
            except (OSError, ValueError):
                time.sleep(0.02)
        else:
            return
        os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _hang_first_time(marker: str):
    """The first caller writes its pid to ``marker`` and hangs (to be killed)."""
    import time
    try:
        os.close(os.open(marker + ".first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    time.sleep(60)


class HangOnce:
    def __init__(self, marker):
        self.marker = marker
        self.pid = os.getpid()

    def __call__(self, batch):
        _hang_first_time(self.marker)
        return {"id": batch["id"] * 3, "pid": np.full(len(batch["id"]), self.pid)}


def test_killed_stage_actor_is_restarted_and_its_block_redone(tmp_path):
    marker = str(tmp_path / "pid")
    killer = _kill_when_started(marker)
    ds = gd.range(200, override_num_blocks=10).map_batches(
        HangOnce, concurrency=2, num_cpus=0.5, fn_constructor_kwargs={"marker": marker})
    out = df_of(ds)
    killer.join(timeout=5)
    np.testing.assert_array_equal(out["id"].to_numpy(), np.arange(200) * 3)
    killed = int(open(marker).read())
    assert out["pid"].nunique() >= 2 and killed not in set(out["pid"])   # a new process
    assert ds.stats().operators[1]["rows"] == 200


def test_killed_function_stage_worker_is_retried(tmp_path):
    marker = str(tmp_path / "pid")
    killer = _kill_when_started(marker)

    def plus_one(batch):
        _hang_first_time(marker)
        return {"id": batch["id"] + 1, "pid": np.full(len(batch["id"]), os.getpid())}

    ds = gd.range(100, override_num_blocks=5).map_batches(plus_one)
    out = df_of(ds)
    killer.join(timeout=5)
    np.testing.assert_array_equal(out["id"].to_numpy(), np.arange(100) + 1)
    assert int(open(marker).read()) not in set(out["pid"])


# ------------------------------------------------------------ random_shuffle on gdfut.shuffle
def test_random_shuffle_is_a_seeded_permutation_of_the_rows(monkeypatch):
    import gdfut.shuffle as SH
    calls = []
    real = SH.shuffle
    monkeypatch.setattr(SH, "shuffle", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    base = gd.from_items(ITEMS, override_num_blocks=5).map(lambda r: {**r, "c": r["a"] * 10})
    expected = df_of(base)
    one = df_of(base.random_shuffle(seed=3))
    # the same multiset of rows (each row whole), in another order
    pd.testing.assert_frame_equal(one.sort_values("a").reset_index(drop=True), expected)
    assert not one["a"].equals(expected["a"])
    pd.testing.assert_frame_equal(df_of(base.random_shuffle(seed=3)), one)     # reproducible
    other = df_of(base.random_shuffle(seed=4))
    assert not other["a"].equals(one["a"])
    mat = base.random_shuffle(seed=3, num_blocks=3).materialize()
    assert mat.num_blocks() == 3 and mat.count() == 50
    blocks = mat._source.blocks                # each of 5 blocks of 10 rows gives 4, 3, 3
    assert [m["num_rows"] for _, m in blocks] == [20, 15, 15]
    assert [gdfut.get(ref).num_rows for ref, _ in blocks] == [20, 15, 15]
    del blocks
    assert sorted(df_of(mat)["a"]) == list(range(50))
    assert calls == [5, 5, 5, 3]               # every shuffle ran on gdfut.shuffle
    del mat
