"""Transfer learning on Spark: DeepImageFeaturizer, then LogisticRegression (README "Transfer learning").

A pretrained network without its top (``--base-model``: InceptionV3 by
default, another keras.applications network, or your own .keras file) turns
every image into a vector, and a Spark ML LogisticRegression learns the
classes from them; both are saved as one PipelineModel. The images come from
the IDX files (``--data-dir``) or ``--input`` (an ingest output, a PNG set, Parquet,
a folder of images in class folders) or ``--input-table``; ``--train-limit``
and ``--test-limit`` take a sample balanced over the labels, by ``--seed``.
``--weights imagenet`` takes Keras' ImageNet file from ``$MNIST_SPARK_WEIGHTS``
or Keras' cache, else downloads it there once (``--offline`` forbids it);
``--weights none`` (random) runs offline.

Run it with::

    spark-submit jobs/transfer.py
    spark-submit jobs/transfer.py --weights none --train-limit 2000 --test-limit 500   # offline smoke run
    spark-submit jobs/transfer.py --input runs/pngs --base-model ResNet50 --image-size 64
    spark-submit jobs/transfer.py --base-model runs/digits04 --labels 5,6,7,8,9   # your own network
    spark-submit jobs/transfer.py --weights none --tune     # cross-validate the regularisation

The run folder holds ``pipeline_model/`` (``PipelineModel.load``),
``metrics.json``, ``confusion_matrix.png`` and ``report.html``.
"""

from __future__ import annotations

import logging
import sys
import time

from mnist_spark import cli, featurizer, flags, report, sampling, sources, storage, transfer, tuning
from mnist_spark import labels as label_subset
from mnist_spark import weights as weight_files
from mnist_spark.session import task_slots

logger = logging.getLogger("transfer")


def run(
    spark,
    *,
    data_dir=None,
    input=None,
    input_table=None,
    image_col="image",
    label_col="label",
    split_col="split",
    test_fraction=sources.DEFAULT_TEST_FRACTION,
    output=None,
    overwrite=False,
    seed=0,
    base_model=featurizer.DEFAULT_MODEL,
    image_size=None,
    pooling=featurizer.DEFAULT_POOLING,
    weights=weight_files.WEIGHTS_IMAGENET,
    batch_size=featurizer.DEFAULT_BATCH_SIZE,
    train_limit=transfer.DEFAULT_TRAIN_LIMIT,
    test_limit=transfer.DEFAULT_TEST_LIMIT,
    max_iter=transfer.DEFAULT_MAX_ITER,
    reg_param=transfer.DEFAULT_REG_PARAM,
    elastic_net_param=transfer.DEFAULT_ELASTIC_NET_PARAM,
    partitions=None,
    output_layer="",
    labels=None,
    tune=False,
    tune_reg_params=tuning.DEFAULT_REG_PARAMS,
    tune_elastic_net_params=tuning.DEFAULT_ELASTIC_NET_PARAMS,
    tune_folds=tuning.DEFAULT_FOLDS,
):
    """Featurize, fit LogisticRegression, score the test split and write the run folder; return the metrics."""
    params, started = flags.run_params(locals()), time.perf_counter()
    output = output or storage.default_output("transfer")
    target = storage.AtomicOutput(output, overwrite=overwrite, job="transfer")
    regression = transfer.regression_settings(params)
    stage, network = transfer.featurizer_stage(params)
    partitions = partitions or 2 * task_slots(spark)
    source = sources.read_images(spark, params)
    df, num_classes = source.frame, source.class_count
    if labels:
        df = label_subset.select_labels(df, label_subset.check_labels(labels, num_classes) if num_classes else labels)
    train, test, counts = sampling.train_test_samples(df, train_limit, test_limit, seed)

    with target as staging:
        train, test = train.repartition(partitions), test.repartition(partitions)
        model, results = transfer.fit_and_score(stage, train, test, num_classes=num_classes, seed=seed, **regression)
        transfer.save_model(spark, model, staging)
        metrics = {
            "job": "transfer",
            **results,
            "train_rows": sum(counts["train"].values()),
            "test_rows": sum(counts["test"].values()),
            "model_name": network,
            "image_size": stage.effectiveImageSize(),
            "pooling": pooling,
            "weights": weights,
            "label_counts": {split: {str(k): v for k, v in per.items()} for split, per in counts.items()},
            "params": params,
            "environment": report.environment(spark),
            "seconds": round(time.perf_counter() - started, 2),
        }
        transfer.write_report(staging, metrics)
        report.write_metrics(staging, metrics)
    logger.info("test accuracy %.4f on %d images; run folder %s", metrics["accuracy"], metrics["test_rows"], output)
    return metrics


def arg_parser():
    return flags.job_parser(
        "transfer",
        __doc__,
        run,
        "input input_table image_col label_col split_col test_fraction base_model output_layer labels image_size "
        "pooling weights offline batch_size train_limit test_limit max_iter reg_param elastic_net_param partitions",
        groups={
            "tuning": (
                "--tune cross-validates LogisticRegression over --tune-reg-params x --tune-elastic-net-params "
                "on the training features (computed once), then refits the best setting on all of them",
                "tune tune_reg_params tune_elastic_net_params tune_folds",
            )
        },
        help={
            "base_model": f"the network that featurizes: one of {', '.join(featurizer.SUPPORTED_MODELS)} "
            "(keras.applications, --weights), or your own: a .keras file or a train_cnn run folder holding model.keras",
            "image_size": "side in pixels the images are resized to (InceptionV3: 75 or more, native 299; "
            f"default {transfer.DEFAULT_IMAGE_SIZE}); with your own --base-model, the model's own input size",
            "partitions": "featurization tasks per split; default: twice the cluster's task slots",
        },
    )


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    weight_files.forbid_downloads(args.offline)
    inputs = cli.data_inputs(args)
    if args.base_model not in featurizer.ARCHITECTURES:
        inputs.append(("--base-model", args.base_model))
    if args.weights not in (weight_files.WEIGHTS_IMAGENET, weight_files.WEIGHTS_NONE):
        inputs.append(("--weights", args.weights))
    return cli.run_job(
        "transfer",
        lambda spark: run(spark, **flags.run_options(run, args)),
        before=lambda: cli.prepare_output("transfer", args, inputs),
    )


if __name__ == "__main__":
    sys.exit(main())
