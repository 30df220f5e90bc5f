"""Train a Keras CNN on MNIST data-parallel on Spark, and evaluate it.

The training images are split into N partitions (default: the cluster's task
slots). Each round the driver broadcasts the model's weights and Adam's
state; every partition trains a replica on its shard for one local epoch (or
``--steps-per-round`` steps); the driver averages the replicas, weighted by
sample count, optimizer state included. Then the test split is scored in the
executors, and the run folder gets the model, metrics, figures and a report:

    <output>/model.keras              the averaged model
    <output>/model_summary.txt        model.summary()
    <output>/labels.json              with --labels: the dataset label of each class of the model
    <output>/metrics.json             test accuracy and loss, history per round, params, versions
    <output>/learning_curves.png, confusion_matrix.png, misclassified.png, probabilities.png
    <output>/report.html

Run it with::

    spark-submit jobs/train_cnn.py                      # bn_cnn, full MNIST, local Spark
    spark-submit jobs/train_cnn.py --arch simple_cnn --epochs 3 --partitions 4
    spark-submit jobs/train_cnn.py --checkpoint-every 1 --output runs/cnn
    spark-submit jobs/train_cnn.py --resume runs/cnn    # continue a stopped run
    spark-submit jobs/train_cnn.py --labels 0,1,2,3,4 --output runs/digits04   # a base network for transfer
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time

from mnist_spark import cli, datasets, evaluation, images, ingest, ml, models, report, storage, tracking, training
from mnist_spark import labels as label_subset

logger = logging.getLogger("train_cnn")


def _arg_parser():
    parser = cli.job_parser(__doc__, "train_cnn")
    parser.add_argument(
        "--arch", default=models.DEFAULT_MODEL, choices=sorted(models.ARCHITECTURES), help="architecture"
    )
    cli.deprecated_flag(parser, "--model", "--arch", choices=sorted(models.ARCHITECTURES))
    parser.add_argument("--epochs", type=cli.positive_int, default=training.TrainConfig.epochs)
    parser.add_argument(
        "--batch-size", type=cli.positive_int, default=training.TrainConfig.batch_size, help="per-replica batch size"
    )
    parser.add_argument(
        "--partitions", type=cli.positive_int, default=None, help="replicas; default: the cluster's task slots"
    )
    parser.add_argument(
        "--steps-per-round",
        type=cli.positive_int,
        default=None,
        help="steps between averagings; default: one local epoch, after shorter first rounds",
    )
    parser.add_argument(
        "--first-round-steps",
        type=cli.positive_int,
        default=None,
        help="steps of the first round; each next round doubles up to a full round "
        "(default: a quarter of a local epoch)",
    )
    parser.add_argument(
        "--lr-scaling",
        choices=sorted(training.LR_SCALING),
        default=training.TrainConfig.lr_scaling,
        help="peak learning rate against the replicas: learning rate x partitions, x sqrt(partitions) or unchanged",
    )
    parser.add_argument(
        "--warmup-epochs",
        type=cli.finite_float,
        default=training.TrainConfig.warmup_epochs,
        help="epochs of linear warm-up from --learning-rate to the scaled peak",
    )
    parser.add_argument(
        "--batchnorm-sample",
        type=cli.non_negative_int,
        default=training.TrainConfig.batchnorm_sample,
        help="training images on which BatchNorm statistics are re-estimated after averaging (0: off)",
    )
    parser.add_argument("--learning-rate", type=cli.finite_float, default=training.TrainConfig.learning_rate)
    parser.add_argument(
        "--lr-decay",
        type=cli.finite_float,
        default=training.TrainConfig.lr_decay,
        help="learning rate factor per epoch",
    )
    parser.add_argument(
        "--barrier", action="store_true", help="schedule all replicas of a round together (rdd.barrier())"
    )
    parser.add_argument(
        "--limit", type=cli.positive_int, default=None, help="use only the first N images of each split"
    )
    parser.add_argument(
        "--labels",
        type=cli.label_list,
        default=None,
        metavar="L1,L2,...",
        help="train on these labels only (e.g. 0,1,2,3,4); class k of the model is the k-th "
        "label, as labels.json in the run folder records",
    )
    parser.add_argument(
        "--validation-size",
        type=cli.non_negative_int,
        default=2000,
        help="test images the driver scores after each round (0: none)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=cli.non_negative_int,
        default=1,
        help="save the averaged model and optimizer every K rounds (0: never)",
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue the stopped run RUN (its --output) from its last checkpoint; "
        "'auto': continue the run at --output if it left a checkpoint, else start it",
    )
    group = parser.add_argument_group(
        "augmentation",
        "--augment-on-the-fly trains on a new random variant of every image each epoch, the "
        "same variant whichever task draws it; each transform applies with its probability P",
    )
    group.add_argument("--augment-on-the-fly", action="store_true", help="augment the training images on the fly")
    cli.deprecated_flag(group, "--augment", "--augment-on-the-fly", switch=True)
    cli.add_transform_flags(group)
    return parser


def run(
    spark,
    *,
    data_dir=None,
    output=None,
    overwrite=False,
    seed=0,
    arch=models.DEFAULT_MODEL,
    epochs=training.TrainConfig.epochs,
    batch_size=training.TrainConfig.batch_size,
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
    options, started = cli.run_params(locals()), time.perf_counter()
    from mnist_spark.session import task_slots

    resume = cli.resume_target(resume, output)
    output = resume or output or storage.default_output("train_cnn")
    target = storage.AtomicOutput(output, overwrite=overwrite, resumable=True, resume=bool(resume), job="train_cnn")
    checkpoints, state = storage.join(target.staging, storage.CHECKPOINT_FOLDER), None
    if resume:
        state, config, saved = training.load_checkpoint(checkpoints)
        training.check_resume_settings(
            resume, {**config.to_dict(), "arch": config.model, **saved}, options, cli.run_defaults(run)
        )
        data_dir, limit, validation_size, checkpoint_every, labels, augment = (
            saved.get("data_dir"),
            saved.get("limit"),
            saved.get("validation_size", 0),
            saved.get("checkpoint_every", 1),
            saved.get("labels"),
            config.augment,
        )
        logger.info("resuming %s from round %d with its saved settings", output, state.round)
        estimator = ml.KerasImageClassifier.fromTrainConfig(config, labels=labels or [])
    else:
        estimator = ml.KerasImageClassifier(
            modelName=arch,
            epochs=epochs,
            batchSize=batch_size,
            partitions=partitions or task_slots(spark),
            seed=seed,
            stepsPerRound=steps_per_round or 0,
            learningRate=learning_rate,
            lrDecay=lr_decay,
            firstRoundSteps=first_round_steps or 0,
            lrScaling=lr_scaling,
            warmupEpochs=warmup_epochs,
            batchnormSample=batchnorm_sample,
            barrier=barrier,
            labels=list(labels or []),
        )
    files = datasets.locate(data_dir)
    train_df, infos = ingest.idx_dataframe(spark, files, splits=("train",), limit=limit)
    test_df, test_infos = ingest.idx_dataframe(spark, files, splits=("test",), limit=limit)
    if labels:
        labels = list(label_subset.check_labels(labels, files.dataset.num_classes))
        test_df = label_subset.select_labels(test_df, labels, index=True)
    else:  # from the IDX headers, before any work (with labels the estimator counts)
        training.check_partitions(estimator.getPartitions(), infos[0].count, given=bool(partitions or resume))
    test_df = test_df.cache()  # small; scored by the Python workers that trained
    validation = None
    if validation_size:
        pixels, expected, _ = images.first_rows_numpy(test_df, validation_size)
        validation = (pixels if pixels.ndim == 4 else pixels[..., None], expected)

    with target as staging:
        scalars = tracking.TensorBoardScalars(storage.join(staging, "tensorboard"))

        def on_round(done, schedule, config):
            scalars.add(done.history[-1])
            if checkpoint_every and (done.round % checkpoint_every == 0 or done.round == schedule.rounds):
                training.save_checkpoint(
                    checkpoints,
                    done,
                    config,
                    extra={
                        "data_dir": data_dir,
                        "limit": limit,
                        "validation_size": validation_size,
                        "checkpoint_every": checkpoint_every,
                        "labels": labels,
                    },
                )

        model, state, config = estimator.fitRun(
            train_df, validation=validation, state=state, on_round=on_round, augment=augment
        )
        scalars.close()
        train_seconds = time.perf_counter() - started
        storage.write_bytes(storage.join(staging, "model.keras"), model.modelBytes())
        if labels:
            label_subset.write_labels(staging, labels)
        trained = model.kerasModel()
        summary = models.summary_text(trained)
        print(summary)
        storage.write_bytes(storage.join(staging, "model_summary.txt"), (summary + "\n").encode())
        scores = evaluation.evaluate(test_df, trained, num_classes=config.num_classes)
        metrics = {
            "job": "train_cnn",
            "model": config.model,
            "test_accuracy": scores["accuracy"],
            "test_loss": scores["loss"],
            "epochs": config.epochs,
            "rounds": state.round,
            "partitions": config.partitions,
            "labels": labels,
            "train_rows": label_subset.select_labels(train_df, labels).count() if labels else infos[0].count,
            "test_rows": test_df.count() if labels else test_infos[0].count,
            "images_per_second": round(
                sum(h["images"] for h in state.history) / sum(h["seconds"] for h in state.history), 1
            ),
            "seconds": round(time.perf_counter() - started, 2),
            "train_seconds": round(train_seconds, 2),
            "history": state.history,
            "evaluation": scores,
            "params": {**config.to_dict(), **options, "output": output, "resume": resume},
            "environment": report.environment(spark),
        }
        wrong = [w["index"] for w in scores["misclassified"][: report.GRID_SIZE]]
        report.write_training_report(staging, metrics, images.images_by_index(test_df, wrong))
        report.write_metrics(staging, metrics)
    logger.info(
        "test accuracy %.4f, loss %.4f; run folder %s (%.0f s)",
        metrics["test_accuracy"],
        metrics["test_loss"],
        output,
        metrics["seconds"],
    )
    return metrics


def main(argv=None) -> int:
    args = _arg_parser().parse_args(argv)
    augment = dataclasses.asdict(cli.augment_params(args)) if args.augment_on_the_fly else None
    return cli.run_job(
        "train_cnn",
        lambda spark: run(spark, **cli.run_options(run, args), augment=augment),
        before=lambda: _prepare(args),
    )


def _prepare(args) -> bool:
    """The output checks before Spark starts (cli.prepare_output); True when there is nothing to do."""
    args.resume = cli.resume_target(args.resume, args.output)
    if args.resume:
        args.output = args.resume
    inputs = [] if args.resume else cli.default_data_inputs(args.data_dir)
    return cli.prepare_output("train_cnn", args, inputs, resumable=True, resume=bool(args.resume))


if __name__ == "__main__":
    sys.exit(main())
