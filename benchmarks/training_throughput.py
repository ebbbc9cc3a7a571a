"""Training throughput of the trainer's torch MLP: CPU vs GPU on the same data.

Run: ``.venv/bin/python benchmarks/training_throughput.py [--rows 1000000] [--features 20]``.
The same synthetic classification set (float32, 3 classes) is fitted by
``TorchMLPClassifier`` on every device present, for a fixed number of epochs
(no early stop), with the trainer's defaults otherwise: hidden (64, 32), AdamW,
batch 4,096 here, mixed precision (bf16 autocast) on CUDA. Reported: training
examples per second (rows × epochs ÷ seconds of the epoch loop, data already
on the device), and each device's speed-up over CPU. Also the single-row
prediction latency of a full saved pipeline (encoder + MLP), which serving pays.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from services.trainer.core import TrainingConfig, train
from shared.datasets import generate_customers
from shared.spec import load_spec
from shared.torch_mlp import TorchMLPClassifier


def _data(rows: int, features: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features)).astype(np.float32)
    weights = rng.normal(size=(features, 3)).astype(np.float32)
    y = np.argmax(x @ weights + rng.normal(scale=0.5, size=(rows, 3)), axis=1)
    return x, np.array(["a", "b", "c"])[y]


def _fit(device: str, x: np.ndarray, y: np.ndarray, epochs: int, batch: int) -> dict[str, float]:
    model = TorchMLPClassifier(
        max_epochs=epochs, patience=epochs + 1, batch_size=batch, device=device
    )
    model.fit(x, y)
    report = model.fit_report_
    accuracy = float((model.predict(x[:100_000]) == y[:100_000]).mean())
    return {
        "examples_per_s": float(report["examples_per_s"]),
        "seconds": float(report["seconds"]),
        "accuracy": accuracy,
    }


def _single_row_latency_ms() -> tuple[float, float]:
    spec = load_spec()
    frame = generate_customers(3000, 1)
    pipeline = train(frame, spec, TrainingConfig(candidates=("torch_mlp",), device="cpu")).pipeline
    rows = [frame[list(spec.feature_names)].iloc[[i]] for i in range(500)]
    for row in rows[:50]:
        pipeline.predict_proba(row)
    samples = []
    for row in rows:
        started = time.perf_counter()
        pipeline.predict_proba(row)
        samples.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def main() -> None:
    """Fit on each device present and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args()
    x, y = _data(args.rows, args.features)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(
        f"{args.rows:,} rows × {args.features} features, {args.epochs} epochs, "
        f"batch {args.batch_size}; torch {torch.__version__}"
    )
    print(f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    else:
        print("GPU: none (torch.cuda.is_available() is False): GPU figures pending a GPU host")
    results = {device: _fit(device, x, y, args.epochs, args.batch_size) for device in devices}
    baseline = results["cpu"]["examples_per_s"]
    print(f"{'device':8} {'examples/s':>14} {'seconds':>9} {'accuracy':>9} {'vs cpu':>8}")
    for device, r in results.items():
        print(
            f"{device:8} {r['examples_per_s']:14,.0f} {r['seconds']:9.2f} "
            f"{r['accuracy']:9.3f} {r['examples_per_s'] / baseline:7.1f}×"
        )
    p50, p95 = _single_row_latency_ms()
    print(
        f"single-row predict_proba of the saved pipeline (CPU): p50 {p50:.3f} ms, p95 {p95:.3f} ms"
    )


if __name__ == "__main__":
    main()
