"""Transfer learning on Spark: DeepImageFeaturizer(InceptionV3), then LogisticRegression.

A pretrained network without its top turns every image into a vector
(``mnist_spark.DeepImageFeaturizer``, sparkdl's API on today's stack), and a
Spark ML ``LogisticRegression`` learns the classes from those vectors. The
two stages are saved together as one ``PipelineModel``, which scores image
DataFrames directly; ``MulticlassClassificationEvaluator`` scores the test split.

The images come from the IDX files (``--data-dir``, default the bundled MNIST)
or a PNG set written by ``jobs/export_png.py`` (``--images``, labels from the
paths). ``--train-limit`` and ``--test-limit`` take a sample balanced over the
labels, chosen by a hash of ``--seed`` and each image's index. The training
features are computed once and kept (``persist``) while LogisticRegression
iterates over them.

Defaults: InceptionV3 at 75 px (its minimum, about 19 times cheaper than its
native 299 px) on up to 60,000 training and 10,000 test images, all of MNIST:
about 4.5 minutes on 2 cores at 350 images per second (10 minutes at 140).
``--weights imagenet`` takes Keras' ImageNet file from ``$MNIST_SPARK_WEIGHTS``
or Keras' cache (``~/.keras/models``), else downloads it there once;
with ``--offline`` a missing file stops the job at once, saying which file to
get and where to put it. ``--weights none`` (random weights) runs offline as a
smoke test.

Run it with::

    spark-submit jobs/transfer.py
    spark-submit jobs/transfer.py --weights none                 # offline smoke run, random weights
    spark-submit jobs/transfer.py --weights none --train-limit 2000 --test-limit 500
    spark-submit jobs/transfer.py --images runs/pngs --model ResNet50 --image-size 64
    spark-submit jobs/transfer.py --weights /data/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5

The run folder holds ``pipeline_model/`` (load it with
``pyspark.ml.PipelineModel.load``), ``metrics.json``, ``confusion_matrix.png``
and ``report.html``.
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np

from mnist_spark import cli, datasets, evaluation, featurizer, images, ingest, report, storage

logger = logging.getLogger("transfer")

#: Defaults: all of MNIST at InceptionV3's minimum size, 4.5 to 10 minutes on 2 cores
#: (README "Transfer learning"); larger datasets are sampled down to this size.
DEFAULT_IMAGE_SIZE = 75
DEFAULT_TRAIN_LIMIT = 60000
DEFAULT_TEST_LIMIT = 10000
#: LogisticRegression settings.
DEFAULT_MAX_ITER, DEFAULT_REG_PARAM, DEFAULT_ELASTIC_NET_PARAM = 20, 0.05, 0.3
#: What MulticlassClassificationEvaluator reports, under its own metric names.
METRICS = ("accuracy", "f1", "weightedPrecision", "weightedRecall", "logLoss")


def _arg_parser():
    parser = cli.job_parser(__doc__, "transfer")
    parser.add_argument("--images", metavar="DIR", default=None,
                        help="a PNG set (<split>/<label>/<index>.png) to read instead of the IDX files")
    parser.add_argument("--model", default=featurizer.DEFAULT_MODEL, choices=featurizer.SUPPORTED_MODELS,
                        help="pretrained network (DeepImageFeaturizer modelName)")
    parser.add_argument("--image-size", type=cli.positive_int, default=DEFAULT_IMAGE_SIZE,
                        help="side in pixels the images are resized to (InceptionV3: 75 or more, native 299)")
    parser.add_argument("--pooling", default=featurizer.DEFAULT_POOLING, choices=featurizer.POOLING_CHOICES,
                        help="avg or max: one value per channel; none: sparkdl's flat output")
    parser.add_argument("--weights", default=featurizer.WEIGHTS_IMAGENET,
                        help="imagenet (Keras' cache or $MNIST_SPARK_WEIGHTS), none (random, offline "
                        "smoke runs) or the path of a weights file")
    parser.add_argument("--offline", action="store_true",
                        help="never download ImageNet weights (also $MNIST_SPARK_OFFLINE=1)")
    parser.add_argument("--batch-size", type=cli.positive_int, default=featurizer.DEFAULT_BATCH_SIZE,
                        help="images per call of the network")
    parser.add_argument("--train-limit", type=cli.positive_int, default=DEFAULT_TRAIN_LIMIT,
                        help="training images, balanced over the labels")
    parser.add_argument("--test-limit", type=cli.positive_int, default=DEFAULT_TEST_LIMIT,
                        help="test images, balanced over the labels")
    parser.add_argument("--max-iter", type=cli.positive_int, default=DEFAULT_MAX_ITER,
                        help="LogisticRegression maxIter")
    parser.add_argument("--reg-param", type=cli.finite_float, default=DEFAULT_REG_PARAM,
                        help="LogisticRegression regParam")
    parser.add_argument("--elastic-net-param", type=cli.finite_float, default=DEFAULT_ELASTIC_NET_PARAM,
                        help="LogisticRegression elasticNetParam (0: L2, 1: L1)")
    parser.add_argument("--partitions", type=cli.positive_int, default=None,
                        help="featurization tasks per split; default: twice the cluster's task slots")
    return parser


# --------------------------------------------------------------------------- sampling


def balanced_quotas(counts: dict, limit: int) -> dict:
    """Rows to take per label so that ``limit`` rows are spread as evenly as the labels allow.

    Labels with fewer rows than an even share give all they have and the
    rest is shared among the others.

    Examples
    --------
    >>> balanced_quotas({0: 100, 1: 100, 2: 3}, 25)
    {2: 3, 0: 11, 1: 11}
    """
    quotas, remaining = {}, limit
    ordered = sorted(counts, key=lambda label: (counts[label], label))
    for position, label in enumerate(ordered):
        quotas[label] = min(counts[label], remaining // (len(ordered) - position))
        remaining -= quotas[label]
    return quotas


def stratified_sample(df, limit: int | None, seed: int, where: str):
    """Up to ``limit`` rows of ``df``, balanced over ``label``, chosen by a hash of ``(seed, split, index)``.

    The same seed always picks the same rows, whatever the partitioning.

    Returns
    -------
    (DataFrame, dict)
        The sample and its rows per label.

    Raises
    ------
    ValueError
        When ``df`` has no rows.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts = {int(r["label"]): int(r["count"]) for r in df.groupBy("label").count().collect()}
    total = sum(counts.values())
    if total == 0:
        raise ValueError(f"the {where} has no images; check --data-dir or --images")
    if limit is None or limit >= total:
        if limit is not None and limit > total:
            logger.warning("the %s has %d images, fewer than the %d asked for; using them all", where,
                           total, limit)
        return df, dict(sorted(counts.items()))
    quotas = balanced_quotas(counts, limit)
    order = Window.partitionBy("label").orderBy(F.xxhash64(F.lit(seed), "split", "index"), "index")
    wanted = F.create_map(*[F.lit(value) for pair in sorted(quotas.items()) for value in pair])
    sample = (df.withColumn("_rank", F.row_number().over(order))
              .where(F.col("_rank") <= wanted[F.col("label")]).drop("_rank"))
    return sample, dict(sorted(quotas.items()))


# --------------------------------------------------------------------------- the job


def _check_settings(model, image_size, weights, max_iter, reg_param, elastic_net_param):
    """Fail on bad settings (and missing weights) before any data is read."""
    if max_iter <= 0:
        raise ValueError(f"--max-iter must be above 0, found {max_iter}")
    if reg_param < 0:
        raise ValueError(f"--reg-param must be 0 or more, found {reg_param}")
    if not 0 <= elastic_net_param <= 1:
        raise ValueError(f"--elastic-net-param must lie in [0, 1] (0: L2, 1: L1), found {elastic_net_param}")
    architecture = featurizer.ARCHITECTURES.get(model)
    if architecture is None:
        raise ValueError(f"{model!r} is not a supported --model; choose one of: "
                         f"{', '.join(featurizer.SUPPORTED_MODELS)}")
    if image_size < architecture.min_size:
        raise ValueError(f"--image-size {image_size} is below the {model} minimum of {architecture.min_size} "
                         f"px; use {architecture.min_size} or more (native: {architecture.native_size})")
    found = featurizer.resolve_weights(weights, model)
    if found is not None:
        featurizer.check_weights(found, model)


def _load_images(spark, data_dir, images_dir):
    """The whole dataset (both splits) and its number of classes, as the DataFrame of an ingest."""
    if images_dir and data_dir:
        raise ValueError("give --data-dir (IDX files) or --images (a PNG set), not both")
    if images_dir:
        df, _ = images.read_png_set(spark, images_dir, splits=("train", "test"))
        return df, None
    files = datasets.locate(data_dir)
    df, _ = ingest.idx_dataframe(spark, files)
    return df, files.dataset.num_classes


def run(spark, *, data_dir=None, images_dir=None, output=None, overwrite=False, seed=0,
        model=featurizer.DEFAULT_MODEL, image_size=DEFAULT_IMAGE_SIZE, pooling=featurizer.DEFAULT_POOLING,
        weights=featurizer.WEIGHTS_IMAGENET, batch_size=featurizer.DEFAULT_BATCH_SIZE,
        train_limit=DEFAULT_TRAIN_LIMIT, test_limit=DEFAULT_TEST_LIMIT, max_iter=DEFAULT_MAX_ITER,
        reg_param=DEFAULT_REG_PARAM, elastic_net_param=DEFAULT_ELASTIC_NET_PARAM, partitions=None):
    """Featurize, fit LogisticRegression, score the test split and write the run folder.

    Returns
    -------
    dict
        The metrics written to ``metrics.json``.
    """
    from pyspark import StorageLevel
    from pyspark.ml import PipelineModel
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.sql import functions as F

    from mnist_spark.session import task_slots

    started = time.perf_counter()
    output = output or storage.default_output("transfer")
    target = storage.AtomicOutput(output, overwrite=overwrite, job="transfer")
    _check_settings(model, image_size, weights, max_iter, reg_param, elastic_net_param)
    stage = featurizer.DeepImageFeaturizer(modelName=model, imageSize=image_size, pooling=pooling,
                                           weights=weights, batchSize=batch_size)
    partitions = partitions or 2 * task_slots(spark)

    df, num_classes = _load_images(spark, data_dir, images_dir)
    train, train_counts = stratified_sample(df.where(F.col("split") == "train"), train_limit, seed,
                                            "train split")
    test, test_counts = stratified_sample(df.where(F.col("split") == "test"), test_limit, seed, "test split")
    train, test = train.repartition(partitions), test.repartition(partitions)
    train_rows, test_rows = sum(train_counts.values()), sum(test_counts.values())
    logger.info("sampled %d training and %d test images (seed %d), %d tasks each", train_rows, test_rows,
                seed, partitions)

    with target as staging:
        phase = time.perf_counter()
        features = (stage.transform(train).select("split", "index", "label", stage.getOutputCol())
                    .persist(StorageLevel.MEMORY_AND_DISK))
        features.count()
        feature_seconds = time.perf_counter() - phase
        feature_size = len(features.select(stage.getOutputCol()).first()[0])
        logger.info("featurized %d training images in %.1f s (%.1f img/s): %d values each", train_rows,
                    feature_seconds, train_rows / feature_seconds, feature_size)

        phase = time.perf_counter()
        classifier = LogisticRegression(featuresCol=stage.getOutputCol(), labelCol="label",
                                        maxIter=max_iter, regParam=reg_param,
                                        elasticNetParam=elastic_net_param)
        fitted = classifier.fit(features)
        fit_seconds = time.perf_counter() - phase
        iterations = fitted.summary.totalIterations
        features.unpersist()
        logger.info("fitted LogisticRegression in %.1f s (%d iterations)", fit_seconds, iterations)
        pipeline_model = PipelineModel(stages=[stage, fitted])

        phase = time.perf_counter()
        predictions = (pipeline_model.transform(test)
                       .select("index", "label", "prediction", "probability")
                       .persist(StorageLevel.MEMORY_AND_DISK))
        predictions.count()
        predict_seconds = time.perf_counter() - phase
        scores = {}
        for name in METRICS:
            evaluator = MulticlassClassificationEvaluator(labelCol="label", predictionCol="prediction",
                                                          probabilityCol="probability", metricName=name)
            scores[name] = float(evaluator.evaluate(predictions))
        cells = predictions.groupBy("label", "prediction").count().collect()
        predictions.unpersist()
        classes = max([num_classes or 0] + [int(c["label"]) + 1 for c in cells]
                      + [int(c["prediction"]) + 1 for c in cells])
        confusion = np.zeros((classes, classes), np.int64)
        for cell in cells:
            confusion[int(cell["label"]), int(cell["prediction"])] = int(cell["count"])
        logger.info("scored %d test images in %.1f s: accuracy %.4f, f1 %.4f, logLoss %.4f", test_rows,
                    predict_seconds, scores["accuracy"], scores["f1"], scores["logLoss"])

        pipeline_model.write().save(storage.join(staging, "pipeline_model"))
        extract_seconds = feature_seconds + predict_seconds
        metrics = {
            "job": "transfer",
            **{name: round(value, 6) for name, value in scores.items()},
            "train_rows": train_rows,
            "test_rows": test_rows,
            "model_name": model,
            "image_size": image_size,
            "pooling": pooling,
            "weights": weights,
            "feature_size": feature_size,
            "images_per_second": round((train_rows + test_rows) / extract_seconds, 1),
            "seconds": None,
            "feature_seconds": round(feature_seconds, 2),
            "fit_seconds": round(fit_seconds, 2),
            "predict_seconds": round(predict_seconds, 2),
            "lr_iterations": iterations,
            "label_counts": {"train": {str(k): v for k, v in train_counts.items()},
                             "test": {str(k): v for k, v in test_counts.items()}},
            "confusion_matrix": confusion.tolist(),
            "per_class": evaluation.per_class_scores(confusion),
            "params": {"data_dir": data_dir, "images": images_dir, "output": output, "overwrite": overwrite,
                       "seed": seed, "model": model, "image_size": image_size, "pooling": pooling,
                       "weights": weights, "batch_size": batch_size, "train_limit": train_limit,
                       "test_limit": test_limit, "max_iter": max_iter, "reg_param": reg_param,
                       "elastic_net_param": elastic_net_param, "partitions": partitions},
            "environment": report.environment(),
        }
        metrics["seconds"] = round(time.perf_counter() - started, 2)
        _report(staging, metrics)
        report.write_metrics(staging, metrics)
    logger.info("test accuracy %.4f on %d images; run folder %s (%.0f s)", metrics["accuracy"], test_rows,
                output, metrics["seconds"])
    return metrics


def _report(staging: str, metrics: dict) -> None:
    report.confusion_matrix_figure(metrics["confusion_matrix"], storage.join(staging, "confusion_matrix.png"))
    headline = [(name, metrics[name]) for name in (
        *METRICS, "train_rows", "test_rows", "model_name", "image_size", "pooling", "weights", "feature_size",
        "images_per_second", "seconds")]
    report.write_run_report(
        staging,
        title=f"transfer: DeepImageFeaturizer({metrics['model_name']}, {metrics['image_size']} px) + "
              "LogisticRegression",
        headline=headline,
        figures=[("confusion_matrix.png", "Confusion matrix on the test sample (rows: expected)")],
        sections=[report.per_class_section(metrics["per_class"]),
                  report.files_section([("metrics.json", ""),
                                        ("pipeline_model/", "(pyspark.ml.PipelineModel.load)")])],
    )


def main(argv=None) -> int:
    args = _arg_parser().parse_args(argv)
    featurizer.forbid_downloads(args.offline)
    return cli.run_job("transfer", lambda spark: run(
        spark, data_dir=args.data_dir, images_dir=args.images, output=args.output, overwrite=args.overwrite,
        seed=args.seed, model=args.model, image_size=args.image_size, pooling=args.pooling,
        weights=args.weights, batch_size=args.batch_size, train_limit=args.train_limit,
        test_limit=args.test_limit, max_iter=args.max_iter, reg_param=args.reg_param,
        elastic_net_param=args.elastic_net_param, partitions=args.partitions,
    ), before=lambda: cli.prepare_output("transfer", args, [
        *([("--images", args.images)] if args.images else cli.default_data_inputs(args.data_dir)),
        *([("--weights", args.weights)] if args.weights not in (featurizer.WEIGHTS_IMAGENET,
                                                                featurizer.WEIGHTS_NONE) else [])]))


if __name__ == "__main__":
    sys.exit(main())
