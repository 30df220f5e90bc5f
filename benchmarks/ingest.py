"""Benchmark: the ingest job against starting Spark, and against plain numpy parsing.

Measures, in one run and on the same machine:

* ``spark_start``: wall time of ``spark-submit`` running a job that only starts
  a session (through :func:`mnist_spark.session.get_spark`) and counts one row;
* ``ingest_job``: wall time of ``spark-submit jobs/ingest.py`` on the same data,
  writing Parquet;
* ``numpy_parse``: gunzip and parse of the four IDX files with plain gzip + numpy,
  and with :func:`mnist_spark.idx.read_idx`.

The target is ``ingest_job / spark_start <= 1.6``: ingesting full MNIST costs
less than starting Spark does. Each Spark measurement is the best of
``--repeats`` runs, alternating, to damp the noise of a shared machine.
Writes ``benchmarks/results/ingest.json`` and prints it.

Run it with::

    .venv/bin/python benchmarks/ingest.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"

START_ONLY = """
from mnist_spark.session import get_spark
spark = get_spark("spark-start")
print(spark.range(1).count())
spark.stop()
"""


def spark_env() -> dict:
    env = dict(os.environ)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("SPARK_CONF_DIR", str(PROJECT / "conf"))
    return env


def timed_submit(args: list[str]) -> float:
    submit = Path(sys.executable).parent / "spark-submit"
    started = time.perf_counter()
    subprocess.run([str(submit), *args], env=spark_env(), check=True, capture_output=True, timeout=900)
    return time.perf_counter() - started


def numpy_parse(data_dir: Path) -> float:
    started = time.perf_counter()
    for name in sorted(data_dir.glob("*-ubyte.gz")):
        with gzip.open(name) as f:
            raw = f.read()
        ndim = raw[3]
        shape = np.frombuffer(raw, ">u4", count=ndim, offset=4)
        np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return time.perf_counter() - started


def idx_parse(data_dir: Path) -> float:
    from mnist_spark import idx

    started = time.perf_counter()
    for name in sorted(data_dir.glob("*-ubyte.gz")):
        idx.read_idx(name)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT / "data" / "mnist"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    data_dir = Path(args.data_dir)

    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "start_only.py"
        script.write_text(START_ONLY)
        start_times, ingest_times = [], []
        for repeat in range(args.repeats):
            start_times.append(timed_submit([str(script)]))
            ingest_times.append(
                timed_submit(
                    [
                        str(PROJECT / "jobs" / "ingest.py"),
                        "--data-dir",
                        str(data_dir),
                        "--output",
                        str(Path(tmp) / f"ingest-{repeat}"),
                    ]
                )
            )
        metrics = json.loads((Path(tmp) / "ingest-0" / "metrics.json").read_text())

    numpy_seconds = min(numpy_parse(data_dir) for _ in range(3))
    idx_seconds = min(idx_parse(data_dir) for _ in range(3))
    rows = sum(metrics["rows"].values())
    result = {
        "benchmark": "ingest",
        "rows": rows,
        "cores": os.cpu_count(),
        "spark_start_seconds": round(min(start_times), 2),
        "ingest_job_seconds": round(min(ingest_times), 2),
        "ingest_over_spark_start": round(min(ingest_times) / min(start_times), 3),
        "target_ingest_over_spark_start": 1.6,
        "ingest_in_job_seconds": metrics["seconds"],
        "numpy_parse_seconds": round(numpy_seconds, 3),
        "mnist_spark_idx_parse_seconds": round(idx_seconds, 3),
        "all_spark_start_seconds": [round(t, 2) for t in start_times],
        "all_ingest_job_seconds": [round(t, 2) for t in ingest_times],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
