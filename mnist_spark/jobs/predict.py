"""Score images with a saved model, in the executors.

Input is the IDX files (``--data-dir``) or ``--input``: an ingest output, a
PNG set, a Parquet dataset, a folder of images in class folders, or any
folder of images (read recursively; no labels). Each Python worker loads the
model once. The run folder gets ``predictions.parquet`` (origin, split,
index, label, prediction, probabilities) and ``metrics.json`` (counts, and
accuracy where labels are known). Labels and predictions are the dataset's
own: a model with ``labels.json`` beside it (train_cnn ``--labels``, or string
labels) predicts the labels it lists.

Run it with::

    spark-submit jobs/predict.py --model-file runs/cnn/model.keras --input runs/pngs --output runs/scored
    spark-submit jobs/predict.py --model-file runs/cnn --splits test --output runs/scored-idx
"""

from __future__ import annotations

import logging
import sys
import time

from mnist_spark import cli, evaluation, flags, ml, report, session, sources, storage
from mnist_spark import labels as label_subset

logger = logging.getLogger("predict")


def run(
    spark,
    *,
    model_file,
    data_dir=None,
    input=None,
    input_table=None,
    image_col="image",
    label_col="label",
    split_col="split",
    output=None,
    overwrite=False,
    splits=("test",),
    batch_size=512,
):
    """Score the images and write the run folder; return the metrics."""
    params, started = flags.run_params(locals()), time.perf_counter()
    path = evaluation.model_file(model_file)
    net = evaluation.load_model(path)
    classes = label_subset.read_labels(storage.parent(path))  # the dataset label of each class, if saved
    output = output or storage.default_output("predict")
    target = storage.AtomicOutput(output, overwrite=overwrite, job="predict")
    source = sources.read_images(spark, params, splits=splits, unlabelled=True)
    evaluation.check_classifier(net, path, len(classes) if classes else source.num_classes or None)
    # Resized and converted to the model's input as in training (Pillow, in the executors).
    decode = ml.image_decoder(net.input_shape[1:], where="predict: the images")
    scored = evaluation.predict(source.frame, net, batch_size=batch_size, decode=decode)
    scored = evaluation.with_original_labels(scored, data_classes=source.classes, model_classes=classes)
    with target as staging, session.phase(spark, "scoring"):
        scored.write.parquet(storage.join(staging, "predictions.parquet"))
        written = spark.read.parquet(storage.join(staging, "predictions.parquet"))
        labelled = written.where("label IS NOT NULL")
        count, known = written.count(), labelled.count()
        metrics = {
            "job": "predict",
            "model": path,
            "count": count,
            "labelled": known,
            "seconds": round(time.perf_counter() - started, 2),
            "params": params,
            "environment": report.environment(spark),
        }
        if known:
            metrics["accuracy"] = labelled.where("label = prediction").count() / known
        report.write_metrics(staging, metrics)
    accuracy = f", accuracy {metrics['accuracy']:.4f}" if known else ""
    logger.info("scored %d images in %.1f s%s; %s", count, metrics["seconds"], accuracy, output)
    return metrics


def arg_parser():
    return flags.job_parser(
        "predict",
        __doc__,
        run,
        "model_file input input_table image_col label_col split_col splits batch_size",
        help={
            "input": "the images to score: an ingest output, a PNG set, a Parquet dataset, a folder of images in "
            "class folders or any folder of images (unlabelled); default: the IDX files of --data-dir",
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
    inputs = cli.data_inputs(args)
    return cli.run_job(
        "predict",
        lambda spark: run(spark, **flags.run_options(run, args)),
        before=lambda: cli.prepare_output("predict", args, [("--model-file", args.model_file), *inputs]),
    )


if __name__ == "__main__":
    sys.exit(main())
