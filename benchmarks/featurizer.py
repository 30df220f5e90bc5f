"""Benchmark: DeepImageFeaturizer on Spark against plain Keras ``model.predict``, same images and cores.

Measures, in one run, for InceptionV3 at each image size (75, 139 and 299 px
by default) on the same MNIST test images:

* ``spark``: ``DeepImageFeaturizer.transform`` on a cached DataFrame of the
  images, run to the end with the ``noop`` writer, on ``local[N]`` (one
  TensorFlow thread per task, ``spark.task.cpus=1``);
* ``plain``: one Python process, :func:`mnist_spark.featurizer.preprocess_images`
  (the same resize and ``preprocess_input``) then ``model.predict`` with the
  same batch size, TensorFlow using every core.

Spark start-up and model building are excluded: both sides are warmed on
the same images first (every Spark Python worker builds its model then), and
each measurement is the best of ``--repeats`` runs. Random weights
(``weights="none"``) cost the same as ImageNet's. The target is a throughput
ratio (Spark / plain) of at least 0.9. Writes
``benchmarks/results/featurizer.json`` and prints it.

Run it with::

    .venv/bin/python benchmarks/featurizer.py                 # about 5 minutes on 2 cores
    .venv/bin/python benchmarks/featurizer.py --sizes 75 --images 4000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
sys.path.insert(0, str(PROJECT))

from mnist_spark import datasets, featurizer, idx, ingest  # noqa: E402

#: Images per size: about 20 s of work for each side at the rates of 2 cores.
DEFAULT_COUNTS = {75: 4000, 139: 1200, 299: 240}


def _best(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(spark, df, pixels: np.ndarray, size: int, batch_size: int, repeats: int) -> dict:
    """Images per second of the Spark featurizer and of plain Keras at one size."""
    count = len(pixels)
    stage = featurizer.DeepImageFeaturizer(
        modelName="InceptionV3", imageSize=size, weights="none", batchSize=batch_size
    )

    def spark_run():
        stage.transform(df).write.format("noop").mode("overwrite").save()

    spark_run()  # every worker builds its model; shapes traced
    spark_seconds = _best(spark_run, repeats)

    model = featurizer.build_model("InceptionV3", size, "avg", "none")
    warm = featurizer.preprocess_images(pixels[: batch_size * 2], "InceptionV3", size)
    model.predict(warm, batch_size=batch_size, verbose=0)
    timings = {}

    def plain_run():
        started = time.perf_counter()
        inputs = featurizer.preprocess_images(pixels, "InceptionV3", size)
        middle = time.perf_counter()
        model.predict(inputs, batch_size=batch_size, verbose=0)
        timings.setdefault("preprocess", []).append(middle - started)
        timings.setdefault("predict", []).append(time.perf_counter() - middle)

    plain_seconds = _best(plain_run, repeats)
    result = {
        "images": count,
        "spark_seconds": round(spark_seconds, 3),
        "spark_images_per_second": round(count / spark_seconds, 1),
        "plain_seconds": round(plain_seconds, 3),
        "plain_images_per_second": round(count / plain_seconds, 1),
        "plain_predict_only_images_per_second": round(count / min(timings["predict"]), 1),
        "ratio": round(plain_seconds / spark_seconds, 3),
    }
    print(f"{size} px: {json.dumps(result)}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT / "data" / "mnist"))
    parser.add_argument("--sizes", default="75,139,299", help="comma-separated image sizes")
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="images per size; default: " + ", ".join(f"{k} px: {v}" for k, v in DEFAULT_COUNTS.items()),
    )
    parser.add_argument("--batch-size", type=int, default=featurizer.DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_CONF_DIR", str(PROJECT / "conf"))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from mnist_spark.session import get_spark, task_slots

    sizes = [int(s) for s in args.sizes.split(",")]
    spark = get_spark("featurizer-benchmark", master=args.master, conf={"spark.ui.enabled": "false"})
    slots = task_slots(spark)
    files = datasets.locate(args.data_dir)
    all_pixels = idx.read_idx(files.images("test"))[..., None]
    results = {}
    for size in sizes:
        count = args.images or DEFAULT_COUNTS.get(size, 1000)
        df, _ = ingest.idx_dataframe(spark, files, splits=("test",), limit=count)
        df = df.repartition(slots).cache()
        df.count()
        results[str(size)] = measure(spark, df, all_pixels[:count], size, args.batch_size, args.repeats)
        df.unpersist()
    spark.stop()
    result = {
        "benchmark": "featurizer",
        "model": "InceptionV3",
        "weights": "none",
        "pooling": "avg",
        "batch_size": args.batch_size,
        "cores": os.cpu_count(),
        "task_slots": slots,
        "sizes": results,
        "min_ratio": min(r["ratio"] for r in results.values()),
        "target_ratio": 0.9,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "featurizer.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
