"""Train a Keras CNN on MNIST data-parallel on Spark, and evaluate it.

The training images are split into N partitions (default: the cluster's task slots). Each
round the driver broadcasts the model's weights and Adam's state; every partition trains a
replica on its shard for one local epoch (or ``--steps-per-round`` steps); the driver averages
the replicas, weighted by sample count, optimizer state included. Then the test split is scored
in the executors. The images come from the IDX files (``--data-dir``), ``--input`` (an ingest
output, a PNG set, Parquet, a folder of images) or ``--input-table``. The run folder gets
``model.keras``, ``saved_model/`` (TF Serving), ``labels.json`` (with ``--labels`` or indexed
string labels), ``metrics.json``, figures and ``report.html``.

Run it with::

    spark-submit jobs/train_cnn.py                      # bn_cnn, full MNIST, local Spark
    spark-submit jobs/train_cnn.py --input photos/ --image-size 64,64 --channels 3 --arch simple_cnn
    spark-submit jobs/train_cnn.py --output runs/cnn --resume auto   # continue the run if it was stopped
    spark-submit jobs/train_cnn.py --labels 0,1,2,3,4 --output runs/digits04   # a base network for transfer
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

from mnist_spark import cli, flags, ingest, ml, models, report, sources, storage, tracking, training
from mnist_spark.session import task_slots

logger = logging.getLogger("train_cnn")

#: The run's settings beside the TrainConfig that a checkpoint keeps, so --resume reads the same data.
RUN_SETTINGS = (*sources.SOURCE_OPTIONS, *ml.IMAGE_OPTIONS, "data_dir", "limit", "validation_size", "checkpoint_every")


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
    image_size=None,
    channels=None,
    arch=training.TrainConfig.model,
    model_file=None,
    epochs=training.TrainConfig.epochs,
    batch_size=None,
    partitions=None,
    steps_per_round=None,
    learning_rate=training.TrainConfig.learning_rate,
    lr_decay=training.TrainConfig.lr_decay,
    first_round_steps=None,
    lr_scaling=training.TrainConfig.lr_scaling,
    warmup_epochs=training.TrainConfig.warmup_epochs,
    batchnorm_sample=training.TrainConfig.batchnorm_sample,
    barrier=False,
    limit=None,
    validation_size=2000,
    checkpoint_every=1,
    resume=None,
    augment=None,
    labels=None,
):
    """Train (ml.KerasImageClassifier), evaluate and write the run folder; return the metrics."""
    options, started = flags.run_params(locals()), time.perf_counter()
    resume = cli.resume_target(resume, output)
    output = resume or output or storage.default_output("train_cnn")
    target = storage.AtomicOutput(output, overwrite=overwrite, resumable=True, resume=bool(resume), job="train_cnn")
    checkpoints, state = storage.join(target.staging, storage.CHECKPOINT_FOLDER), None
    settings = {name: options[name] for name in RUN_SETTINGS}
    if resume:
        defaults = flags.run_defaults(run)
        state, config, settings = training.resume_from(checkpoints, resume, options, defaults, RUN_SETTINGS)
        logger.info("resuming %s from round %d with its saved settings", output, state.round)
    else:
        slots = partitions or task_slots(spark)
        config = training.TrainConfig.from_options(options, model=arch, partitions=slots, augment=augment)
    data, labels = ingest.train_test_frames(spark, settings), settings["labels"]
    estimator = ml.KerasImageClassifier.fromTrainConfig(config, **ml.image_params(settings, data.num_classes))
    if data.train_rows is not None:  # from the IDX headers, before any work (else the estimator counts)
        training.check_partitions(config.partitions, data.train_rows, given=bool(partitions or resume))
    # Once the input is checked, TensorFlow starts up in the executors' Python workers and in the driver
    # while the data's Spark jobs run; the model, known once the data is, warms up later
    # (ml.KerasImageClassifier). The run waits for the workers' job before it ends.
    models.start_keras_import()
    with training.WarmUp(spark), target as staging:
        scalars = tracking.TensorBoardScalars(storage.join(staging, "tensorboard"))
        on_round = training.checkpointer(checkpoints, settings["checkpoint_every"], settings, also=scalars.add)
        model, state, config = estimator.fitRun(
            data.train,
            validation=lambda: data.validation(settings["validation_size"]),  # while the workers warm up
            state=state,
            on_round=on_round,
            augment=config.augment,
        )
        scalars.close()
        train_seconds = time.perf_counter() - started
        model.writeRunFiles(staging, classes=data.classes)
        scores = model.evaluate(data.test)
        metrics = {
            **report.training_metrics("train_cnn", config, state, scores, data),
            "labels": labels or (list(data.classes) if data.classes else None),
            "seconds": round(time.perf_counter() - started, 2),
            "train_seconds": round(train_seconds, 2),
            "params": {**config.to_dict(), **options, "output": output, "resume": resume},
        }
        report.write_training_report(staging, metrics, data.test)
        report.write_metrics(staging, metrics)
    logger.info("test accuracy %.4f, loss %.4f; run folder %s", scores["accuracy"], scores["loss"], output)
    return metrics


def arg_parser():
    return flags.job_parser(
        "train_cnn",
        __doc__,
        run,
        "input input_table image_col label_col split_col test_fraction image_size channels arch model_file epochs "
        "batch_size partitions steps_per_round first_round_steps lr_scaling warmup_epochs batchnorm_sample "
        "learning_rate lr_decay barrier limit labels validation_size checkpoint_every resume",
        groups={
            "augmentation": (
                "--augment-on-the-fly trains on a new random variant of every image each epoch, the "
                "same variant whichever task draws it; each transform applies with its probability P",
                "augment_on_the_fly transforms",
            )
        },
        help={
            "partitions": "replicas; default: the cluster's task slots",
            "batch_size": "per-replica batch size; default: 128 up to 2 replicas, 64 beyond",
            "labels": "train on these labels only (e.g. 0,1,2,3,4); class k of the model is the k-th "
            "label, as labels.json in the run folder records",
        },
    )


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    augment = dataclasses.asdict(flags.augment_params(args)) if args.augment_on_the_fly else None
    return cli.run_job(
        "train_cnn",
        lambda spark: run(spark, **flags.run_options(run, args), augment=augment),
        before=lambda: cli.prepare_resumable_output("train_cnn", args),
    )


if __name__ == "__main__":
    sys.exit(main())
