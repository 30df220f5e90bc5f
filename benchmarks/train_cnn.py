"""Benchmark: distributed training against plain single-process Keras, same model and data.

Measures, in one run and on the same cores:

* ``plain``: one Python process, ``model.fit`` over full MNIST for E epochs
  (same model, batch size and learning-rate schedule; TensorFlow uses every
  core), then test accuracy;
* ``distributed``: ``spark-submit jobs/train_cnn.py`` for the same epochs,
  one replica per task slot, synchronous averaging every local epoch;
  throughput counts training rounds only (Spark start-up and shard
  preparation excluded, as model compilation is for plain Keras);
* the peak memory of the whole distributed job: the resident memory of the
  spark-submit JVM, the Python driver and the Python workers, summed over the
  process tree and sampled every 0.5 s.

Targets: throughput ratio >= 0.85, accuracy gap within 0.2 points, peak
memory below 4 GiB. Writes ``benchmarks/results/train_cnn.json`` and prints it.

Run it with::

    .venv/bin/python benchmarks/train_cnn.py                 # bn_cnn, 8 epochs (about 15 minutes)
    .venv/bin/python benchmarks/train_cnn.py --model simple_cnn --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
sys.path.insert(0, str(PROJECT))

from mnist_spark import idx, models, training  # noqa: E402


def plain_keras(data_dir: Path, model_name: str, epochs: int, batch_size: int) -> dict:
    """Single-process Keras with the job's learning-rate schedule."""
    import keras

    config = training.TrainConfig(model=model_name, epochs=epochs, batch_size=batch_size)
    x = idx.read_idx(data_dir / "train-images-idx3-ubyte.gz")[..., None].astype(np.float32)
    y = idx.read_idx(data_dir / "train-labels-idx1-ubyte.gz").astype(np.int32)
    xt = idx.read_idx(data_dir / "t10k-images-idx3-ubyte.gz")[..., None].astype(np.float32)
    yt = idx.read_idx(data_dir / "t10k-labels-idx1-ubyte.gz").astype(np.int32)
    model = models.build_model(model_name, seed=config.seed, learning_rate=config.learning_rate)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch: config.learning_rate * config.lr_decay**epoch)
    model.fit(x[: batch_size * 4], y[: batch_size * 4], batch_size=batch_size, epochs=1, verbose=0)
    model = models.build_model(model_name, seed=config.seed, learning_rate=config.learning_rate)
    started = time.perf_counter()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[schedule])
    seconds = time.perf_counter() - started
    loss, accuracy = model.evaluate(xt, yt, batch_size=512, verbose=0)
    return {
        "seconds": round(seconds, 2),
        "images_per_second": round(epochs * len(y) / seconds, 1),
        "test_accuracy": float(accuracy),
        "test_loss": float(loss),
    }


def _tree_rss(root_pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def distributed(data_dir: Path, model_name: str, epochs: int, batch_size: int | None, output: Path) -> dict:
    env = dict(os.environ)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("SPARK_CONF_DIR", str(PROJECT / "conf"))
    submit = Path(sys.executable).parent / "spark-submit"
    command = [
        str(submit),
        str(PROJECT / "jobs" / "train_cnn.py"),
        "--data-dir",
        str(data_dir),
        "--arch",
        model_name,
        "--epochs",
        str(epochs),
        *(["--batch-size", str(batch_size)] if batch_size is not None else []),
        "--output",
        str(output),
        "--checkpoint-every",
        "0",
    ]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss(process.pid))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, stderr = process.communicate(timeout=5400)
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"train_cnn failed:\n{stderr[-3000:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    return {
        "wall_seconds": round(time.perf_counter() - started, 2),
        "train_seconds": metrics["train_seconds"],
        "round_seconds": round(sum(h["seconds"] for h in metrics["history"]), 2),
        "images_per_second": metrics["images_per_second"],
        "partitions": metrics["partitions"],
        "batch_size": metrics["batch_size"],
        "test_accuracy": metrics["test_accuracy"],
        "test_loss": metrics["test_loss"],
        "peak_memory_gib": round(peak[0] / 2**30, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT / "data" / "mnist"))
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--epochs", type=int, default=training.TrainConfig.epochs)
    parser.add_argument("--batch-size", type=int, help="per replica; default: the job's (128 up to 2 replicas)")
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        spark_run = distributed(data_dir, args.model, args.epochs, args.batch_size, Path(tmp) / "run")
    batch_size = spark_run["batch_size"]  # the job's, given or its default: plain Keras uses the same
    plain = plain_keras(data_dir, args.model, args.epochs, batch_size)
    result = {
        "benchmark": "train_cnn",
        "model": args.model,
        "epochs": args.epochs,
        "batch_size": batch_size,
        "cores": os.cpu_count(),
        "plain_keras": plain,
        "distributed": spark_run,
        "throughput_ratio": round(spark_run["images_per_second"] / plain["images_per_second"], 3),
        "target_throughput_ratio": 0.85,
        "accuracy_gap_points": round(100 * (spark_run["test_accuracy"] - plain["test_accuracy"]), 3),
        "target_accuracy_gap_points": 0.2,
        "peak_memory_gib": spark_run["peak_memory_gib"],
        "target_peak_memory_gib": 4.0,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_cnn.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
