"""Transfer learning on Spark: DeepImageFeaturizer, then LogisticRegression (README "Transfer learning").

A pretrained network without its top (``--base-model``: InceptionV3 by
default, another keras.applications network, or your own .keras file) turns
every image into a vector, and a Spark ML LogisticRegression learns the
classes from them; both are saved as one PipelineModel. The images come from
the IDX files (``--data-dir``) or a PNG set (``--images``); ``--train-limit``
and ``--test-limit`` take a sample balanced over the labels, by ``--seed``.
``--weights imagenet`` takes Keras' ImageNet file from ``$MNIST_SPARK_WEIGHTS``
or Keras' cache, else downloads it there once (``--offline`` forbids it);
``--weights none`` (random) runs offline.

Run it with::

    spark-submit jobs/transfer.py
    spark-submit jobs/transfer.py --weights none --train-limit 2000 --test-limit 500   # offline smoke run
    spark-submit jobs/transfer.py --images runs/pngs --base-model ResNet50 --image-size 64
    spark-submit jobs/transfer.py --base-model runs/digits04 --labels 5,6,7,8,9   # your own network
    spark-submit jobs/transfer.py --weights none --tune     # cross-validate the regularisation

The run folder holds ``pipeline_model/`` (``PipelineModel.load``),
``metrics.json``, ``confusion_matrix.png`` and ``report.html``.
"""

from __future__ import annotations

import logging
import sys
import time

from mnist_spark import cli, featurizer, ingest, report, sampling, storage, transfer, tuning
from mnist_spark import labels as label_subset

logger = logging.getLogger("transfer")

#: Defaults: all of MNIST at InceptionV3's minimum size, 4.5 to 10 minutes on 2 cores
#: (README "Transfer learning"); larger datasets are sampled down to this size.
DEFAULT_IMAGE_SIZE = 75
DEFAULT_TRAIN_LIMIT = 60000
DEFAULT_TEST_LIMIT = 10000
#: LogisticRegression settings.
DEFAULT_MAX_ITER, DEFAULT_REG_PARAM, DEFAULT_ELASTIC_NET_PARAM = 20, 0.05, 0.3
#: The featurizer's params by this job's flags, for its error messages.
FEATURIZER_FLAGS = {"imageSize": "--image-size", "outputLayer": "--output-layer", "base model": "--base-model"}


def _arg_parser():
    parser = cli.job_parser(__doc__, "transfer")
    parser.add_argument(
        "--images",
        dest="images_dir",
        metavar="DIR",
        default=None,
        help="a PNG set (<split>/<label>/<index>.png) to read instead of the IDX files",
    )
    parser.add_argument(
        "--base-model",
        metavar="NAME_OR_FILE",
        default=featurizer.DEFAULT_MODEL,
        help="the network that featurizes: one of "
        + ", ".join(featurizer.SUPPORTED_MODELS)
        + " (keras.applications, --weights), or your own: a .keras file or a train_cnn run "
        "folder holding model.keras",
    )
    cli.deprecated_flag(parser, "--model", "--base-model")
    parser.add_argument(
        "--output-layer",
        default="",
        help="with your own --base-model: the layer whose output is the feature vector; default: the "
        "last layer before the classifier",
    )
    parser.add_argument(
        "--labels",
        type=cli.label_list,
        default=None,
        metavar="L1,L2,...",
        help="use only the images of these labels (e.g. 5,6,7,8,9)",
    )
    parser.add_argument(
        "--image-size",
        type=cli.positive_int,
        default=None,
        help="side in pixels the images are resized to (InceptionV3: 75 or more, native 299; "
        f"default {DEFAULT_IMAGE_SIZE}); with your own --base-model, the model's own input size",
    )
    parser.add_argument(
        "--pooling",
        default=featurizer.DEFAULT_POOLING,
        choices=featurizer.POOLING_CHOICES,
        help="avg or max: one value per channel; none: sparkdl's flat output",
    )
    parser.add_argument(
        "--weights",
        default=featurizer.WEIGHTS_IMAGENET,
        help="imagenet (Keras' cache or $MNIST_SPARK_WEIGHTS), none (random, offline "
        "smoke runs) or the path of a weights file",
    )
    parser.add_argument(
        "--offline", action="store_true", help="never download ImageNet weights (also $MNIST_SPARK_OFFLINE=1)"
    )
    parser.add_argument(
        "--batch-size",
        type=cli.positive_int,
        default=featurizer.DEFAULT_BATCH_SIZE,
        help="images per call of the network",
    )
    parser.add_argument(
        "--train-limit",
        type=cli.positive_int,
        default=DEFAULT_TRAIN_LIMIT,
        help="training images, balanced over the labels",
    )
    parser.add_argument(
        "--test-limit", type=cli.positive_int, default=DEFAULT_TEST_LIMIT, help="test images, balanced over the labels"
    )
    parser.add_argument(
        "--max-iter", type=cli.positive_int, default=DEFAULT_MAX_ITER, help="LogisticRegression maxIter"
    )
    parser.add_argument(
        "--reg-param", type=cli.finite_float, default=DEFAULT_REG_PARAM, help="LogisticRegression regParam"
    )
    parser.add_argument(
        "--elastic-net-param",
        type=cli.finite_float,
        default=DEFAULT_ELASTIC_NET_PARAM,
        help="LogisticRegression elasticNetParam (0: L2, 1: L1)",
    )
    parser.add_argument(
        "--partitions",
        type=cli.positive_int,
        default=None,
        help="featurization tasks per split; default: twice the cluster's task slots",
    )
    group = parser.add_argument_group(
        "tuning",
        "--tune cross-validates LogisticRegression over --tune-reg-params x --tune-elastic-net-params "
        "on the training features (computed once), then refits the best setting on all of them",
    )
    group.add_argument("--tune", action="store_true", help="pick regParam and elasticNetParam by cross-validation")
    group.add_argument(
        "--tune-reg-params", type=cli.float_list, default=tuning.DEFAULT_REG_PARAMS, help="regParam values of the grid"
    )
    group.add_argument(
        "--tune-elastic-net-params",
        type=cli.float_list,
        default=tuning.DEFAULT_ELASTIC_NET_PARAMS,
        help="elasticNetParam values of the grid",
    )
    group.add_argument(
        "--tune-folds", type=cli.positive_int, default=tuning.DEFAULT_FOLDS, help="cross-validation folds"
    )
    return parser


def run(
    spark,
    *,
    data_dir=None,
    images_dir=None,
    output=None,
    overwrite=False,
    seed=0,
    base_model=featurizer.DEFAULT_MODEL,
    image_size=None,
    pooling=featurizer.DEFAULT_POOLING,
    weights=featurizer.WEIGHTS_IMAGENET,
    batch_size=featurizer.DEFAULT_BATCH_SIZE,
    train_limit=DEFAULT_TRAIN_LIMIT,
    test_limit=DEFAULT_TEST_LIMIT,
    max_iter=DEFAULT_MAX_ITER,
    reg_param=DEFAULT_REG_PARAM,
    elastic_net_param=DEFAULT_ELASTIC_NET_PARAM,
    partitions=None,
    output_layer="",
    labels=None,
    tune=False,
    tune_reg_params=tuning.DEFAULT_REG_PARAMS,
    tune_elastic_net_params=tuning.DEFAULT_ELASTIC_NET_PARAMS,
    tune_folds=tuning.DEFAULT_FOLDS,
):
    """Featurize, fit LogisticRegression, score the test split and write the run folder; return the metrics."""
    params, started = cli.run_params(locals()), time.perf_counter()
    from pyspark.sql import functions as F

    from mnist_spark.session import task_slots

    output = output or storage.default_output("transfer")
    target = storage.AtomicOutput(output, overwrite=overwrite, job="transfer")
    transfer.check_regression_settings(
        max_iter,
        [reg_param, *(tune_reg_params if tune else ())],
        [elastic_net_param, *(tune_elastic_net_params if tune else ())],
    )
    try:
        stage, network = transfer.featurizer_stage(
            base_model,
            output_layer=output_layer,
            pooling=pooling,
            weights=weights,
            batch_size=batch_size,
            image_size=(DEFAULT_IMAGE_SIZE if base_model in featurizer.ARCHITECTURES else 0)
            if image_size is None
            else image_size,
        )
    except ValueError as error:
        raise ValueError(cli.in_flag_terms(str(error), FEATURIZER_FLAGS)) from None
    partitions = partitions or 2 * task_slots(spark)

    df, num_classes = ingest.dataset_frame(spark, data_dir, images_dir)
    if labels:
        if num_classes:
            label_subset.check_labels(labels, num_classes)
        df = label_subset.select_labels(df, labels)
    train, train_counts = sampling.stratified_sample(
        df.where(F.col("split") == "train"), train_limit, seed, "train split"
    )
    test, test_counts = sampling.stratified_sample(df.where(F.col("split") == "test"), test_limit, seed, "test split")
    logger.info(
        "sampled %d training and %d test images (seed %d), %d tasks each",
        sum(train_counts.values()),
        sum(test_counts.values()),
        seed,
        partitions,
    )

    with target as staging:
        model, results = transfer.fit_and_score(
            stage,
            train.repartition(partitions),
            test.repartition(partitions),
            num_classes=num_classes,
            seed=seed,
            max_iter=max_iter,
            reg_param=reg_param,
            elastic_net_param=elastic_net_param,
            tune=tune,
            reg_params=tune_reg_params,
            elastic_net_params=tune_elastic_net_params,
            folds=tune_folds,
        )
        model.write().save(storage.join(staging, "pipeline_model"))
        metrics = {
            "job": "transfer",
            **results,
            "train_rows": sum(train_counts.values()),
            "test_rows": sum(test_counts.values()),
            "model_name": network,
            "image_size": stage.effectiveImageSize(),
            "pooling": pooling,
            "weights": weights,
            "label_counts": {
                "train": {str(k): v for k, v in train_counts.items()},
                "test": {str(k): v for k, v in test_counts.items()},
            },
            "params": params,
            "environment": report.environment(spark),
            "seconds": round(time.perf_counter() - started, 2),
        }
        transfer.write_report(staging, metrics)
        report.write_metrics(staging, metrics)
    logger.info(
        "test accuracy %.4f on %d images; run folder %s (%.0f s)",
        metrics["accuracy"],
        metrics["test_rows"],
        output,
        metrics["seconds"],
    )
    return metrics


def main(argv=None) -> int:
    args = _arg_parser().parse_args(argv)
    featurizer.forbid_downloads(args.offline)
    return cli.run_job(
        "transfer",
        lambda spark: run(spark, **cli.run_options(run, args)),
        before=lambda: cli.prepare_output(
            "transfer",
            args,
            [
                *([("--images", args.images_dir)] if args.images_dir else cli.default_data_inputs(args.data_dir)),
                *([("--base-model", args.base_model)] if args.base_model not in featurizer.ARCHITECTURES else []),
                *(
                    [("--weights", args.weights)]
                    if args.weights not in (featurizer.WEIGHTS_IMAGENET, featurizer.WEIGHTS_NONE)
                    else []
                ),
            ],
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
