"""Score images with a saved model, in the executors.

Input is a PNG set written by ``jobs/export_png.py`` (labels from the paths),
any folder of images (read recursively with Spark's image source; no labels),
or the IDX files (``--data-dir``). Each Python worker loads the model once.
The run folder gets ``predictions.parquet`` (origin, split, index, label,
prediction, probabilities) and ``metrics.json`` (counts, and accuracy and a
confusion matrix where labels are known).

Run it with::

    spark-submit jobs/predict.py --model-file runs/cnn/model.keras --images runs/pngs --output runs/scored
    spark-submit jobs/predict.py --model-file runs/cnn --splits test --output runs/scored-idx
"""

from __future__ import annotations

import logging
import sys
import time

from mnist_spark import cli, evaluation, flags, ingest, report, session, storage

logger = logging.getLogger("predict")


def run(
    spark, *, model_file, data_dir=None, images_dir=None, output=None, overwrite=False, splits=("test",), batch_size=512
):
    """Score the images and write the run folder; return the metrics."""
    params, started = flags.run_params(locals()), time.perf_counter()
    from pyspark.sql import functions as F

    path = evaluation.model_file(model_file)
    net = evaluation.load_model(path)
    output = output or storage.default_output("predict")
    target = storage.AtomicOutput(output, overwrite=overwrite, job="predict")
    df, num_classes = ingest.dataset_frame(spark, data_dir, images_dir, splits=splits)
    evaluation.check_classifier(net, path, num_classes or None)
    evaluation.check_image_size(net, df, images_dir or data_dir)
    scored = evaluation.predict(df, net, batch_size=batch_size)
    scored = scored.select(
        F.col("image.origin").alias("origin"), "split", "index", "label", "prediction", "probabilities"
    )
    with target as staging, session.phase(spark, "scoring"):
        scored.write.parquet(storage.join(staging, "predictions.parquet"))
        written = spark.read.parquet(storage.join(staging, "predictions.parquet"))
        labelled = written.where("label >= 0")
        count, known = written.count(), labelled.count()
        metrics = {
            "job": "predict",
            "model": path,
            "count": count,
            "labelled": known,
            "seconds": round(time.perf_counter() - started, 2),
            "params": params,
            "environment": report.environment(),
        }
        if known:
            correct = labelled.where("label = prediction").count()
            metrics["accuracy"] = correct / known
        report.write_metrics(staging, metrics)
    logger.info(
        "scored %d images in %.1f s%s; %s",
        count,
        metrics["seconds"],
        f", accuracy {metrics['accuracy']:.4f}" if known else "",
        output,
    )
    return metrics


def arg_parser():
    return flags.job_parser(
        "predict",
        __doc__,
        run,
        "model_file images_dir splits batch_size",
        help={
            "images_dir": "a PNG set or any folder of images; default: the IDX files of --data-dir",
            "splits": "splits to score (IDX files or a PNG set)",
            "batch_size": "images per batch",
        },
        seed=False,
    )


def main(argv=None) -> int:
    parser = arg_parser()
    args = parser.parse_args(argv)
    if not args.model_file:
        parser.error("the following arguments are required: --model-file")
    inputs = [("--images", args.images_dir)] if args.images_dir else cli.default_data_inputs(args.data_dir)
    return cli.run_job(
        "predict",
        lambda spark: run(spark, **flags.run_options(run, args)),
        before=lambda: cli.prepare_output("predict", args, [("--model-file", args.model_file), *inputs]),
    )


if __name__ == "__main__":
    sys.exit(main())
