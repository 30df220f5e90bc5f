"""Benchmark: training from Parquet and from a folder of images against training from the IDX files.

One run, on the same cores, of ``spark-submit jobs/train_cnn.py`` on full
MNIST with the same seed, model and partitions, reading:

* ``idx``: the four IDX files (``--data-dir``), the baseline;
* ``parquet``: ingest's output (``--input runs/.../ingest``);
* ``pngs``: export_png's PNG set, a folder of images (``--input runs/.../pngs``);
* ``folder``: the same files without the set's manifest, a plain
  ``<split>/<class>/<file>`` folder of images such as a user brings
  (indexed by path, so its shards, and its model, differ from the others').

Reports the training throughput (images per second over the rounds, as
``metrics.json`` has it), the whole job's wall time as a user sees it
(Spark start, reading, decoding, training, evaluation, report), the ratio of
each to the IDX run and whether the models are bit-identical. Target: the
Parquet, PNG-set and image-folder runs reach at least 0.95x the IDX run's images per
second. The ingest and export that make the inputs run first and are timed
apart. Writes ``benchmarks/results/inputs.json`` and prints it.

Run it with::

    .venv/bin/python benchmarks/inputs.py                          # simple_cnn, 1 epoch, full MNIST
    .venv/bin/python benchmarks/inputs.py --arch bn_cnn --epochs 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
DATA = PROJECT / "data" / "mnist"


def submit(job: str, *args: str) -> float:
    """``spark-submit jobs/<job>.py args``; returns its wall time in seconds."""
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_CONF_DIR=str(PROJECT / "conf"))
    command = [str(Path(sys.executable).parent / "spark-submit"), str(PROJECT / "jobs" / f"{job}.py"), *args]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def weights_digest(run: Path) -> str:
    with zipfile.ZipFile(run / "model.keras") as archive:
        return hashlib.sha256(archive.read("model.weights.h5")).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="simple_cnn")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--partitions", default="2")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        prepare = {
            "ingest": submit("ingest", "--data-dir", str(DATA), "--output", str(work / "ingest")),
            "export_png": submit("export_png", "--input", str(work / "ingest"), "--output", str(work / "pngs")),
        }
        train = ["--arch", options.arch, "--epochs", options.epochs, "--partitions", options.partitions]
        train += ["--validation-size", "0", "--checkpoint-every", "0", "--seed", "0"]
        sources = {"idx": ["--data-dir", str(DATA)], "parquet": ["--input", str(work / "ingest")]}
        sources["pngs"] = ["--input", str(work / "pngs")]
        for split in ("train", "test"):
            shutil.copytree(work / "pngs" / split, work / "folder" / split)
        sources["folder"] = ["--input", str(work / "folder")]
        runs = {}
        for name, given in sources.items():
            out = work / f"run-{name}"
            seconds = submit("train_cnn", *given, *train, "--output", str(out))
            metrics = json.loads((out / "metrics.json").read_text())
            runs[name] = {
                "job_seconds": round(seconds, 1),
                "images_per_second": metrics["images_per_second"],
                "test_accuracy": metrics["test_accuracy"],
                "weights": weights_digest(out),
            }
    base = dict(runs["idx"])
    for run in runs.values():
        run["throughput_ratio"] = round(run["images_per_second"] / base["images_per_second"], 3)
        run["job_time_ratio"] = round(run["job_seconds"] / base["job_seconds"], 3)
        run["same_model_as_idx"] = run.pop("weights") == base["weights"]
    result = {
        "arch": options.arch,
        "epochs": int(options.epochs),
        "partitions": int(options.partitions),
        "prepare_seconds": {k: round(v, 1) for k, v in prepare.items()},
        "runs": runs,
        "target_met": all(r["throughput_ratio"] >= 0.95 for r in runs.values()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inputs.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
