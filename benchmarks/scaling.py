"""Benchmark: distributed training at 2, 4, 8 and 16 replicas against plain Keras, in one run.

For each model (default: ``bn_cnn`` for 8 epochs and ``simple_cnn`` for 3),
on the same cores and data:

* ``plain``: a separate Python process runs ``model.fit`` over full MNIST
  with the same model, batch size and per-epoch learning-rate decay
  (TensorFlow uses every core) and scores the 10,000 test images after
  every epoch;
* ``spark``: ``spark-submit jobs/train_cnn.py --partitions N`` with the
  job's defaults and ``--validation-size 10000``, so the driver scores the
  whole test split after the first round, each epoch and the last.

The machine's speed drifts over a run (plain Keras's epochs alone swing up
to 2x on 2 cores), so right before each Spark run a shorter plain Keras run
(``--probe-epochs``) measures the machine as that run finds it: ``to
adjacent plain`` divides the Spark run's images per second by that probe's
median epoch after its first (which traces the model), the steady rate a
user's ``fit`` gets at that moment.

Times are wall-clock from the launch of each process, as a user sees the
job: Python, TensorFlow and Spark start-up included. Reported per run: the
final test accuracy, the time at which test accuracy first reached 99.0% and
99.3%, images per second over the training rounds without their scoring of
the validation images (plain Keras: over ``fit`` without its scoring), the
spread of per-round images per second over the full-epoch rounds ((max -
min) / median; plain Keras: over its epochs after the first, which shows the
machine's own swings), the rounds' mean overheads, and the Python driver's
peak resident memory (VmHWM). A figure compares the learning curves.

Writes ``benchmarks/results/scaling.json`` and ``docs/scaling_<model>.png``,
and prints a Markdown table. About 30 minutes on 2 cores::

    .venv/bin/python benchmarks/scaling.py
    .venv/bin/python benchmarks/scaling.py --runs bn_cnn:8 --replicas 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
sys.path.insert(0, str(PROJECT))

THRESHOLDS = (0.990, 0.993)


def plain_keras(model_name: str, epochs: int, launched: float, seed: int = 0) -> dict:
    """Runs in its own process (``--plain``): the single-machine program a user would write."""
    import keras
    import numpy as np

    from mnist_spark import idx, models, training

    data = PROJECT / "data" / "mnist"
    x = idx.read_idx(data / "train-images-idx3-ubyte.gz")[..., None]
    y = idx.read_idx(data / "train-labels-idx1-ubyte.gz").astype(np.int32)
    xt = idx.read_idx(data / "t10k-images-idx3-ubyte.gz")[..., None].astype(np.float32)
    yt = idx.read_idx(data / "t10k-labels-idx1-ubyte.gz").astype(np.int32)
    config = training.TrainConfig(model=model_name, epochs=epochs, seed=seed)
    model = models.build_model(model_name, seed=config.seed, learning_rate=config.learning_rate)
    curve, scoring, epoch_rates = [], [0.0], []

    class Score(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            started = time.perf_counter()
            epoch_rates.append(len(y) / (started - self.began))
            accuracy = self.model.evaluate(xt, yt, batch_size=512, verbose=0)[1]
            curve.append({"epoch": epoch + 1, "accuracy": float(accuracy), "time": round(time.time() - launched, 2)})
            scoring[0] += time.perf_counter() - started

    schedule = keras.callbacks.LearningRateScheduler(lambda epoch: config.learning_rate * config.lr_decay**epoch)
    started = time.perf_counter()
    model.fit(x, y, batch_size=config.batch_size, epochs=epochs, shuffle=True, verbose=0, callbacks=[schedule, Score()])
    fit_seconds = time.perf_counter() - started - scoring[0]  # scoring is not training
    return {
        "curve": curve,
        "test_accuracy": curve[-1]["accuracy"],
        "wall_seconds": round(time.time() - launched, 2),
        "images_per_second": round(epochs * len(y) / fit_seconds, 1),
        "epoch_images_per_second": [round(rate, 1) for rate in epoch_rates],
        # As the Spark runs' full-epoch rounds: the epochs after the first (which traces the model).
        "spread_epochs": training.spread(epoch_rates[1:]),
        "batch_size": config.batch_size,
    }


def _peak_rss(pattern: str, stop: threading.Event, peak: list) -> None:
    """Poll the VmHWM of the process whose command line holds ``pattern`` (the Python driver)."""
    while not stop.is_set():
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    command = f.read()
                if pattern.encode() not in command or b"java" in command:
                    continue
                with open(f"/proc/{entry}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            peak[0] = max(peak[0], int(line.split()[1]) * 1024)
            except OSError:
                continue
        stop.wait(0.5)


def spark_run(model_name: str, epochs: int, partitions: int, output: Path, seed: int = 0) -> dict:
    env = dict(os.environ)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("SPARK_CONF_DIR", str(PROJECT / "conf"))
    submit = Path(sys.executable).parent / "spark-submit"
    command = [
        str(submit),
        str(PROJECT / "jobs" / "train_cnn.py"),
        "--arch",
        model_name,
        "--epochs",
        str(epochs),
        "--partitions",
        str(partitions),
        "--validation-size",
        "10000",
        "--checkpoint-every",
        "0",
        "--seed",
        str(seed),
        "--output",
        str(output),
    ]
    launched = time.time()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop, peak = threading.Event(), [0]
    sampler = threading.Thread(target=_peak_rss, args=("jobs/train_cnn.py", stop, peak), daemon=True)
    sampler.start()
    _, stderr = process.communicate(timeout=3600)
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"train_cnn --partitions {partitions} failed:\n{stderr[-3000:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    history = metrics["history"]
    curve = [
        {"epoch": h["epoch"], "accuracy": h["val_accuracy"], "time": round(h["time"] - launched, 2)}
        for h in history
        if "val_accuracy" in h  # the first round, each epoch's end and the last
    ]
    overheads: dict = {}
    for h in history:
        for name, seconds in h["overhead_seconds"].items():
            overheads.setdefault(name, []).append(seconds)
    return {
        "partitions": partitions,
        "batch_size": metrics["batch_size"],
        "rounds": len(history),
        "curve": curve,
        "test_accuracy": metrics["test_accuracy"],
        "round1_val_accuracy": history[0]["val_accuracy"],
        "wall_seconds": round(time.time() - launched, 2),
        "images_per_second": metrics["images_per_second"],
        "round_images_per_second": [h["images_per_second"] for h in history],
        "spread_full_rounds": metrics["round_spread"],
        "mean_overhead_seconds": {k: round(statistics.mean(v), 3) for k, v in sorted(overheads.items())},
        "driver_peak_rss_gib": round(peak[0] / 2**30, 3),
        "round_fit_seconds": [h["fit_seconds"] for h in history],
        "cold_replicas": [h["cold_replicas"] for h in history],
    }


def _plain_process(model_name: str, epochs: int, seed: int = 0) -> dict:
    """:func:`plain_keras` in a process of its own, as a user runs it."""
    launched = time.time()
    command = [sys.executable, __file__, "--plain", model_name, str(epochs), str(launched), str(seed)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(printed.strip().splitlines()[-1])


def _adjacent_ratio(run: dict) -> str:
    """The run's images per second over the median epoch after the first of the plain run just before it."""
    rates = run.get("adjacent_plain_epoch_images_per_second") or []
    return f"{run['images_per_second'] / statistics.median(rates[1:]):.2f}" if len(rates) > 1 else ""


def _time_to(curve: list, threshold: float):
    return next((point["time"] for point in curve if point["accuracy"] >= threshold), None)


def _figure(model_name: str, epochs: int, plain: dict, runs: list) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in [{"label": "plain Keras", **plain}] + [{"label": f"{r['partitions']} replicas", **r} for r in runs]:
        epochs_axis = [p["epoch"] for p in run["curve"]]
        accuracy = [100 * p["accuracy"] for p in run["curve"]]
        style = "k--" if run["label"] == "plain Keras" else "-"
        axes[0].plot(epochs_axis, accuracy, style, marker="o", markersize=3, label=run["label"])
        axes[1].plot([p["time"] for p in run["curve"]], accuracy, style, marker="o", markersize=3, label=run["label"])
    for axis, xlabel in zip(axes, ("epoch", "seconds since launch"), strict=True):
        axis.set_xlabel(xlabel)
        axis.set_ylabel("test accuracy (%)")
        axis.set_ylim(97.0, 99.7)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    figure.suptitle(
        f"{model_name}, {epochs} epochs, full MNIST, 2 cores: test accuracy after the first round and each epoch"
    )
    figure.tight_layout()
    path = PROJECT / "docs" / f"scaling_{model_name}.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="bn_cnn:8,simple_cnn:3", help="MODEL:EPOCHS, comma-separated")
    parser.add_argument("--replicas", default="2,4,8,16")
    parser.add_argument(
        "--probe-epochs",
        type=int,
        default=3,
        help="epochs of the plain Keras run before each Spark run (below 2: none), at most the run's own",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of plain Keras's model and of every job (--seed)")
    parser.add_argument("--plain", nargs=4, metavar=("MODEL", "EPOCHS", "LAUNCHED", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--table", metavar="JSON", help="print the table of a saved scaling.json and stop")
    args = parser.parse_args()
    if args.table:
        print_table(json.loads(Path(args.table).read_text())["results"])
        return
    if args.plain:
        print(json.dumps(plain_keras(args.plain[0], int(args.plain[1]), float(args.plain[2]), int(args.plain[3]))))
        return
    results = []
    for item in args.runs.split(","):
        model_name, epochs = item.split(":")
        plain = _plain_process(model_name, int(epochs), args.seed)
        runs = []
        for partitions in map(int, args.replicas.split(",")):
            probe = (
                _plain_process(model_name, min(args.probe_epochs, int(epochs)), args.seed)
                if args.probe_epochs > 1
                else None
            )
            with tempfile.TemporaryDirectory() as tmp:
                runs.append(spark_run(model_name, int(epochs), partitions, Path(tmp) / "run", args.seed))
            if probe is not None:
                runs[-1]["adjacent_plain_epoch_images_per_second"] = probe["epoch_images_per_second"]
            print(json.dumps({"model": model_name, **{k: v for k, v in runs[-1].items() if k != "curve"}}), flush=True)
        for run in runs:
            run["accuracy_gap_points"] = round(100 * (run["test_accuracy"] - plain["test_accuracy"]), 2)
            run["throughput_ratio"] = round(run["images_per_second"] / plain["images_per_second"], 3)
            for threshold in THRESHOLDS:
                run[f"seconds_to_{threshold}"] = _time_to(run["curve"], threshold)
        for threshold in THRESHOLDS:
            plain[f"seconds_to_{threshold}"] = _time_to(plain["curve"], threshold)
        figure = _figure(model_name, int(epochs), plain, runs)
        results.append(
            {
                "model": model_name,
                "epochs": int(epochs),
                "plain_keras": plain,
                "spark": runs,
                "figure": str(figure.relative_to(PROJECT)),
            }
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scaling.json").write_text(
        json.dumps({"benchmark": "scaling", "cores": os.cpu_count(), "seed": args.seed, "results": results}, indent=2)
        + "\n"
    )
    print_table(results)


def print_table(results: list[dict]) -> None:
    """The Markdown table of ``results`` (``scaling.json``'s), one row per plain and Spark run.

    ``ratio`` divides a run's images per second by plain Keras's over its
    whole ``fit``; ``to median epoch`` by plain Keras's median epoch, which
    one slow epoch does not pull down (plain Keras's epochs swing up to 2x
    on this machine).
    """
    print(
        "| model | replicas | batch | test accuracy | plain Keras | gap (points) | round-1 val | to 99.0% | "
        "to 99.3% | img/s | ratio | to median epoch | to adjacent plain | spread | driver peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        plain = result["plain_keras"]
        median_epoch = statistics.median(plain["epoch_images_per_second"])
        print(
            f"| {result['model']} ({result['epochs']} ep) | plain | {plain['batch_size']} | | "
            f"{100 * plain['test_accuracy']:.2f}% | | | "
            f"{plain['seconds_to_0.99']} s | {plain['seconds_to_0.993']} s | {plain['images_per_second']:.0f} | "
            f"1 | {plain['images_per_second'] / median_epoch:.2f} | | {plain['spread_epochs']} | |"
        )
        for run in result["spark"]:
            print(
                f"| | {run['partitions']} | {run['batch_size']} | {100 * run['test_accuracy']:.2f}% | | "
                f"{run['accuracy_gap_points']:+.2f} | "
                f"{run['round1_val_accuracy']:.3f} | {run['seconds_to_0.99']} s | {run['seconds_to_0.993']} s | "
                f"{run['images_per_second']:.0f} | {run['throughput_ratio']:.2f} | "
                f"{run['images_per_second'] / median_epoch:.2f} | {_adjacent_ratio(run)} | "
                f"{run['spread_full_rounds']:.2f} | {run['driver_peak_rss_gib']:.2f} GiB |"
            )


if __name__ == "__main__":
    main()
