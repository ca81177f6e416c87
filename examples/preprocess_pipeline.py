"""A GPU ML preprocessing pipeline with gdfut.data (Ray Data's API).

Synthetic sensor readings in Parquet files → normalise each feature with
statistics computed in a first streaming pass → an embedding "model" on an
actor pool with a GPU share each → shuffled-order training batches for a
linear regression trained with SGD in the driver.

    python examples/preprocess_pipeline.py                 # 8 files x 20k rows
    python examples/preprocess_pipeline.py --files 2 --rows 2000 --epochs 2

On a machine with GPUs the model stage runs on them (CuPy, when installed);
without one, gdfut emulates a GPU and the same code runs with numpy.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import gdfut
import gdfut.data as gd

FEATURES = [f"f{i}" for i in range(8)]
EMBED = 16


def write_sensor_files(directory: str, files: int, rows: int) -> None:
    """Readings with different scales per feature, and a target that depends
    on them (so training has something to learn)."""
    true_w = np.linspace(-1, 1, len(FEATURES))
    for i in range(files):
        rng = np.random.default_rng(i)
        scale = np.logspace(-2, 3, len(FEATURES))
        x = rng.standard_normal((rows, len(FEATURES))) * scale + 10 * scale
        z = (x - 10 * scale) / scale
        y = z @ true_w + 0.01 * rng.standard_normal(rows)
        cols = {f: x[:, j] for j, f in enumerate(FEATURES)} | {"target": y}
        pq.write_table(pa.table(cols), os.path.join(directory, f"sensors-{i:03d}.parquet"))


def partial_moments(batch: dict) -> dict:
    """Count, sum and sum of squares per feature (one row per batch)."""
    out = {"n": np.array([len(batch["target"])])}
    for f in FEATURES:
        out[f"s_{f}"] = np.array([batch[f].sum()])
        out[f"q_{f}"] = np.array([(batch[f] ** 2).sum()])
    return out


def feature_stats(ds) -> dict:
    parts = ds.map_batches(partial_moments, batch_size=None).take_all()
    n = sum(p["n"] for p in parts)
    stats = {}
    for f in FEATURES:
        mean = sum(p[f"s_{f}"] for p in parts) / n
        var = sum(p[f"q_{f}"] for p in parts) / n - mean ** 2
        stats[f] = (mean, float(np.sqrt(max(var, 1e-12))))
    return stats


def normalise(batch: dict, stats: dict) -> dict:
    out = {f: (batch[f] - stats[f][0]) / stats[f][1] for f in FEATURES}
    out["target"] = batch["target"]
    return out


class Embedder:
    """The model stage: a fixed random feature map, on the actor's GPU when
    there is a real one, else numpy. Built once per actor."""

    def __init__(self, seed: int = 0):
        w = np.random.default_rng(seed).standard_normal((len(FEATURES), EMBED)) / 3
        self.xp = np
        if gdfut.get_gpu_ids():
            try:
                import cupy
                if cupy.cuda.runtime.getDeviceCount() > 0:
                    self.xp = cupy
            except Exception:          # no CUDA here: an emulated GPU
                pass
        self.w = self.xp.asarray(w)

    def __call__(self, batch: dict) -> dict:
        xp = self.xp
        x = xp.stack([xp.asarray(batch[f]) for f in FEATURES], axis=1)
        h = xp.concatenate([x, xp.tanh(x @ self.w)], axis=1)
        h = h.get() if xp is not np else h
        return {"features": h, "target": batch["target"]}


def train(ds, epochs: int, batch_size: int, lr: float = 0.05) -> list[float]:
    w = None
    losses = []
    for _ in range(epochs):
        total, rows = 0.0, 0
        for batch in ds.iter_batches(batch_size=batch_size, prefetch_batches=2):
            x, y = batch["features"], batch["target"]
            if w is None:
                w = np.zeros(x.shape[1])
            err = x @ w - y
            w -= lr * x.T @ err / len(y)
            total += float(err @ err)
            rows += len(y)
        losses.append(total / rows)
    return losses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="gdfut.data preprocessing example")
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=512)
    args = ap.parse_args(argv)

    info = gdfut.init()
    if not gdfut.cluster_resources().get("GPU"):
        gdfut.shutdown()
        print("no GPU found: emulating one (the model stage runs with numpy)")
        info = gdfut.init(num_gpus=1)
    print(f"session: {info['session_dir']}")
    try:
        with tempfile.TemporaryDirectory(prefix="gdfut-example-") as tmp:
            write_sensor_files(tmp, args.files, args.rows)
            raw = gd.read_parquet(tmp)
            stats = feature_stats(raw)
            ds = (raw.map_batches(normalise, fn_kwargs={"stats": stats})
                  .map_batches(Embedder, num_gpus=0.5, concurrency=2,
                               fn_constructor_kwargs={"seed": 0}))
            t0 = time.perf_counter()
            losses = train(ds, args.epochs, args.batch_size)
            elapsed = time.perf_counter() - t0
            print(f"epoch losses: {', '.join(f'{x:.4f}' for x in losses)}")
            rows = args.files * args.rows * args.epochs
            print(f"{rows} training rows in {elapsed:.2f} s ({rows / elapsed:,.0f} rows/s)")
            print(ds.stats())
    finally:
        gdfut.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
