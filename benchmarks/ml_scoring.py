"""Benchmark: scoring with the Spark ML API against ``jobs/predict.py``, same images and cores.

Trains a ``bn_cnn`` with plain Keras for one epoch on the MNIST training
images (setup, not timed), saves it, and then scores the 10,000 MNIST test
images (read from the IDX files, as ``jobs/predict.py`` reads them) four
ways, each the whole job a user runs, Parquet written at the end:

* ``predict_job``: ``jobs/predict.py``'s ``run`` (model load, scoring, the
  run folder with ``predictions.parquet`` and ``metrics.json``);
* ``sql_udf``: :func:`mnist_spark.ml.register_keras_udf` (the worker-cached
  Arrow UDF), then ``SELECT index, label, digit(image) ...`` written to Parquet;
* ``sql_predict_batch_udf``: the same SQL on ``pyspark.ml.functions.predict_batch_udf``;
* ``transformer``: ``KerasImageTransformer.transform`` written to Parquet.

The four alternate, ``--repeats`` times; each one's best run counts (the
first round also starts the Python workers). The SQL function's
predictions must equal ``predict_job``'s on all 10,000 images and the
transformer's outputs its probabilities. The target is a throughput of at
least 0.9 of ``predict_job``.

Then the two ways to build the SQL function are compared on their own, at
a steady state and on more images (``--udf-splits``, default all 70,000):
each is registered once, run once to load the model in every Python worker,
then ``--repeats`` times into Spark's ``noop`` sink; the best run counts.

Writes ``benchmarks/results/ml_scoring.json`` and prints it.

Run it with::

    .venv/bin/python benchmarks/ml_scoring.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
sys.path.insert(0, str(PROJECT))

from mnist_spark import datasets, idx, ingest, ml, models  # noqa: E402


def _load_predict_job():
    import importlib

    return importlib.import_module("mnist_spark.jobs.predict")


def train_model(files, folder: Path, epochs: int) -> str:
    """A bn_cnn trained with plain Keras on the training images, saved as ``folder/model.keras``."""
    images = idx.read_idx(files.images("train"))[..., None]
    labels = idx.read_idx(files.labels("train")).astype(np.int32)
    model = models.build_model("bn_cnn", seed=0)
    model.fit(images.astype(np.float32), labels, batch_size=128, epochs=epochs, verbose=0)
    path = folder / "model.keras"
    model.save(path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT / "data" / "mnist"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1, help="plain-Keras epochs of the scored model")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--udf-splits", default="train,test", help="splits scored in the UDF comparison")
    parser.add_argument("--master", default="local[*]")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_CONF_DIR", str(PROJECT / "conf"))
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    from mnist_spark.session import get_spark, task_slots

    predict_job = _load_predict_job()
    files = datasets.locate(args.data_dir)
    work = Path(tempfile.mkdtemp(prefix="ml_scoring-"))
    started = time.perf_counter()
    model = train_model(files, work, args.epochs)
    train_seconds = time.perf_counter() - started
    spark = get_spark("ml-scoring-benchmark", master=args.master, conf={"spark.ui.enabled": "false"})
    slots = task_slots(spark)
    count = idx.read_idx(files.labels("test")).shape[0]

    def test_frame():
        df, _ = ingest.idx_dataframe(spark, files, splits=("test",))
        return df

    def run_predict_job(out):
        predict_job.run(
            spark,
            model_file=model,
            data_dir=args.data_dir,
            output=str(out),
            splits=("test",),
            batch_size=args.batch_size,
        )

    def run_sql(out, build=ml._worker_cached_udf):
        keras_file = ml._udf_model(model, "prediction", args.batch_size, "SCALE_AREA_AVERAGING", "BGR")
        udf = build(spark, keras_file, "prediction", args.batch_size, "SCALE_AREA_AVERAGING", "BGR")
        spark.udf.register("digit", udf)
        test_frame().createOrReplaceTempView("images")
        spark.sql("SELECT split, index, label, digit(image) AS prediction FROM images").write.parquet(str(out))

    def run_transformer(out):
        stage = ml.KerasImageTransformer(modelFile=model, outputCol="probabilities", batchSize=args.batch_size)
        stage.transform(test_frame()).select("split", "index", "label", "probabilities").write.parquet(str(out))

    ways = {
        "predict_job": run_predict_job,
        "sql_udf": run_sql,
        "sql_predict_batch_udf": lambda out: run_sql(out, ml._predict_batch_udf),
        "transformer": run_transformer,
    }
    seconds = {name: [] for name in ways}
    for repeat in range(args.repeats):
        for name, run in ways.items():
            out = work / f"{name}-{repeat}"
            began = time.perf_counter()
            run(out)
            seconds[name].append(round(time.perf_counter() - began, 3))
            print(f"{name} run {repeat + 1}: {seconds[name][-1]:.2f} s", file=sys.stderr)

    last = args.repeats - 1
    job = {
        r["index"]: (r["prediction"], r["probabilities"])
        for r in spark.read.parquet(str(work / f"predict_job-{last}" / "predictions.parquet")).collect()
    }
    checks = {}
    for name in ("sql_udf", "sql_predict_batch_udf"):
        rows = spark.read.parquet(str(work / f"{name}-{last}")).collect()
        checks[f"{name}_equal_predictions"] = sum(job[r["index"]][0] == r["prediction"] for r in rows)
    rows = spark.read.parquet(str(work / f"transformer-{last}")).collect()
    checks["transformer_max_abs_difference"] = float(
        max(np.abs(r["probabilities"].toArray() - np.asarray(job[r["index"]][1])).max() for r in rows)
    )
    labels = idx.read_idx(files.labels("test"))
    checks["test_accuracy"] = float(np.mean([job[i][0] == labels[i] for i in range(count)]))

    # The SQL function's two builds at a steady state, on more images.
    everything, infos = ingest.idx_dataframe(spark, files, splits=tuple(args.udf_splits.split(",")))
    everything.createOrReplaceTempView("all_images")
    udf_images = sum(info.count for info in infos)
    steady = {}
    keras_file = ml._udf_model(model, "prediction", args.batch_size, "SCALE_AREA_AVERAGING", "BGR")
    for name, build in (("sql_udf", ml._worker_cached_udf), ("sql_predict_batch_udf", ml._predict_batch_udf)):
        spark.udf.register(
            "digit", build(spark, keras_file, "prediction", args.batch_size, "SCALE_AREA_AVERAGING", "BGR")
        )
        runs = []
        for _ in range(args.repeats + 1):  # the first loads the model in every worker
            began = time.perf_counter()
            query = spark.sql("SELECT index, digit(image) AS d FROM all_images")
            query.write.format("noop").mode("overwrite").save()
            runs.append(round(time.perf_counter() - began, 3))
        steady[name] = {"seconds": runs, "images_per_second": round(udf_images / min(runs[1:]), 1)}
        print(f"{name} on {udf_images} images: {runs}", file=sys.stderr)
    spark.stop()
    shutil.rmtree(work)

    best = {name: min(values) for name, values in seconds.items()}
    baseline = count / best["predict_job"]
    result = {
        "benchmark": "ml_scoring",
        "model": "bn_cnn",
        "images": count,
        "batch_size": args.batch_size,
        "cores": os.cpu_count(),
        "task_slots": slots,
        "model_train_seconds": round(train_seconds, 1),
        "seconds": seconds,
        "images_per_second": {name: round(count / s, 1) for name, s in best.items()},
        "ratio_to_predict_job": {name: round(count / s / baseline, 3) for name, s in best.items()},
        "checks": checks,
        "target_ratio": 0.9,
        "udf_steady_state": {
            "images": udf_images,
            **steady,
            "worker_cached_over_predict_batch_udf": round(
                steady["sql_udf"]["images_per_second"] / steady["sql_predict_batch_udf"]["images_per_second"], 3
            ),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ml_scoring.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
