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

from mnist_spark import cli, datasets, evaluation, images, ingest, report, storage

logger = logging.getLogger("predict")


def _arg_parser():
    parser = cli.job_parser(__doc__, "predict", seed=False)
    parser.add_argument("--model-file", default=None, help="a model.keras file, or a train_cnn run folder holding one")
    cli.deprecated_flag(parser, "--model", "--model-file")
    parser.add_argument(
        "--images", default=None, help="a PNG set or any folder of images; default: the IDX files of --data-dir"
    )
    parser.add_argument(
        "--splits", type=cli.split_list, default="test", help="splits to score (IDX files or a PNG set)"
    )
    parser.add_argument("--batch-size", type=cli.positive_int, default=512, help="images per batch")
    return parser


def _images_frame(spark, location: str, splits):
    """A PNG set in our layout, else any folder of images with unknown labels."""
    from pyspark.sql import functions as F

    if storage.exists(storage.join(location, images.MANIFEST_NAME)):
        df, _ = images.read_png_set(spark, location, splits=splits)
        return df
    if not storage.exists(location):
        raise ValueError(f"--images {location} does not exist; give a folder of PNG or JPEG files")
    df = (
        spark.read.format("image")
        .option("recursiveFileLookup", "true")
        .option("dropInvalid", "true")
        .load(storage.to_uri(location))
    )
    return df.select(
        F.lit("unlabelled").alias("split"),
        F.monotonically_increasing_id().alias("index"),
        F.lit(-1).alias("label"),
        "image",
    )


def _shape_text(shape) -> str:
    if isinstance(shape, (list, tuple)) and shape and all(isinstance(s, (list, tuple)) for s in shape):
        return "[" + ", ".join(_shape_text(s) for s in shape) + "]"  # several outputs
    return "(" + ", ".join("batch" if s is None else str(s) for s in shape) + ")"


def check_outputs(net, path: str, num_classes: int | None = None) -> None:
    """The model must give one row of class probabilities per image: output ``(batch, classes)``.

    With ``num_classes`` (the labels are known) the output size must equal it.
    """
    found = net.output_shape
    several = isinstance(found, list) or (bool(found) and isinstance(found[0], (list, tuple)))
    if several or len(found) != 2 or (num_classes is not None and found[-1] != num_classes):
        expected = f"(batch, {num_classes})" if num_classes is not None else "(batch, classes)"
        what = (
            f", one probability for each of the dataset's {num_classes} classes"
            if num_classes is not None
            else ", one probability per class"
        )
        raise ValueError(
            f"model file {path} outputs shape {_shape_text(found)}; expected {expected}{what}; "
            "give a classifier trained on this dataset"
        )


def run(
    spark, *, model_file, data_dir=None, images_dir=None, output=None, overwrite=False, splits=("test",), batch_size=512
):
    """Score the images and write the run folder; return the metrics."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    path = evaluation.model_file(model_file)
    net = evaluation.load_model(path)
    output = output or storage.default_output("predict")
    target = storage.AtomicOutput(output, overwrite=overwrite, job="predict")
    if images_dir:
        check_outputs(net, path)
        df = _images_frame(spark, images_dir, splits)
    else:
        files = datasets.locate(data_dir)
        check_outputs(net, path, files.dataset.num_classes)
        df, _ = ingest.idx_dataframe(spark, files, splits=splits)
    expected = tuple(net.input_shape[1:])
    first = df.select("image.height", "image.width", "image.nChannels").first()
    if first is None:
        raise ValueError(f"no images to score in {images_dir or data_dir}")
    if tuple(first) != expected:
        raise ValueError(
            f"the model takes images of {'x'.join(map(str, expected))} but the input holds "
            f"{'x'.join(map(str, first))}; score images of the size the model was trained on"
        )
    scored = evaluation.predict(df, net, batch_size=batch_size)
    scored = scored.select(
        F.col("image.origin").alias("origin"), "split", "index", "label", "prediction", "probabilities"
    )
    with target as staging:
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
            "params": {
                "data_dir": data_dir,
                "images": images_dir,
                "splits": list(splits),
                "batch_size": batch_size,
                "output": output,
            },
            "environment": report.environment(spark),
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


def main(argv=None) -> int:
    parser = _arg_parser()
    args = parser.parse_args(argv)
    if not args.model_file:
        parser.error("the following arguments are required: --model-file")
    return cli.run_job(
        "predict",
        lambda spark: run(
            spark,
            model_file=args.model_file,
            data_dir=args.data_dir,
            images_dir=args.images,
            output=args.output,
            overwrite=args.overwrite,
            splits=args.splits,
            batch_size=args.batch_size,
        ),
        before=lambda: cli.prepare_output(
            "predict",
            args,
            [
                ("--model-file", args.model_file),
                *([("--images", args.images)] if args.images else cli.default_data_inputs(args.data_dir)),
            ],
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
