"""Train a Keras CNN on MNIST data-parallel on Spark, and evaluate it.

The training images are split into N partitions (default: the cluster's task
slots). Each round the driver broadcasts the model's weights and Adam's
state; every partition trains a replica on its shard for one local epoch (or
``--steps-per-round`` steps); the driver averages the replicas, weighted by
sample count, optimizer state included. Then the test split is scored in the
executors, and the run folder gets the model, metrics, figures and a report:

    <output>/model.keras              the averaged model
    <output>/model_summary.txt        model.summary()
    <output>/metrics.json             test accuracy and loss, history per round, params, versions
    <output>/learning_curves.png, confusion_matrix.png, misclassified.png, probabilities.png
    <output>/report.html

Run it with::

    spark-submit jobs/train_cnn.py                      # bn_cnn, full MNIST, local Spark
    spark-submit jobs/train_cnn.py --model simple_cnn --epochs 3 --partitions 4
    spark-submit jobs/train_cnn.py --checkpoint-every 1 --output runs/cnn
    spark-submit jobs/train_cnn.py --resume runs/cnn    # continue a stopped run
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

import numpy as np

from mnist_spark import cli, datasets, evaluation, ingest, models, report, storage, training

logger = logging.getLogger("train_cnn")

#: Misclassified digits drawn in the grid, and with their probabilities.
GRID_SIZE, PROBABILITY_ROWS = 24, 4


def _arg_parser():
    parser = cli.job_parser(__doc__, "train_cnn")
    parser.add_argument("--model", default=models.DEFAULT_MODEL, choices=sorted(models.ARCHITECTURES),
                        help="architecture")
    parser.add_argument("--epochs", type=cli.positive_int, default=training.TrainConfig.epochs)
    parser.add_argument("--batch-size", type=cli.positive_int, default=training.TrainConfig.batch_size,
                        help="per-replica batch size")
    parser.add_argument("--partitions", type=cli.positive_int, default=None,
                        help="replicas; default: the cluster's task slots")
    parser.add_argument("--steps-per-round", type=cli.positive_int, default=None,
                        help="steps between averagings; default: one local epoch, after shorter first rounds")
    parser.add_argument("--first-round-steps", type=cli.positive_int, default=None,
                        help="steps of the first round; each next round doubles up to a full round "
                        "(default: a quarter of a local epoch)")
    parser.add_argument("--lr-scaling", choices=sorted(training.LR_SCALING),
                        default=training.TrainConfig.lr_scaling,
                        help="peak learning rate against the replicas: learning rate x partitions, "
                        "x sqrt(partitions) or unchanged")
    parser.add_argument("--warmup-epochs", type=cli.finite_float, default=training.TrainConfig.warmup_epochs,
                        help="epochs of linear warm-up from --learning-rate to the scaled peak")
    parser.add_argument("--batchnorm-sample", type=cli.non_negative_int,
                        default=training.TrainConfig.batchnorm_sample,
                        help="training images on which BatchNorm statistics are re-estimated after "
                        "averaging (0: off)")
    parser.add_argument("--learning-rate", type=cli.finite_float, default=training.TrainConfig.learning_rate)
    parser.add_argument("--lr-decay", type=cli.finite_float, default=training.TrainConfig.lr_decay,
                        help="learning rate factor per epoch")
    parser.add_argument("--barrier", action="store_true",
                        help="schedule all replicas of a round together (rdd.barrier())")
    parser.add_argument("--limit", type=cli.positive_int, default=None,
                        help="use only the first N images of each split")
    parser.add_argument("--validation-size", type=cli.non_negative_int, default=2000,
                        help="test images the driver scores after each round (0: none)")
    parser.add_argument("--checkpoint-every", type=cli.non_negative_int, default=1,
                        help="save the averaged model and optimizer every K rounds (0: never)")
    parser.add_argument("--resume", metavar="RUN", default=None,
                        help="continue the stopped run RUN (its --output) from its last checkpoint; "
                        "'auto': continue the run at --output if it left a checkpoint, else start it")
    group = parser.add_argument_group(
        "augmentation", "--augment trains on a new random variant of every image each epoch, the "
        "same variant whichever task draws it; each transform applies with its probability P")
    group.add_argument("--augment", action="store_true", help="augment the training images on the fly")
    cli.add_transform_flags(group)
    return parser


def _numpy_split(df, limit: int):
    """The first ``limit`` images of a DataFrame as numpy, collected to the driver (small)."""
    from mnist_spark.images import struct_frame_to_numpy

    rows = df.where(df["index"] < limit).select("index", "label", "image").toPandas()
    rows = rows.sort_values("index")
    images = struct_frame_to_numpy(rows["image"].apply(_fields))
    return images, rows["label"].to_numpy(np.int32), rows["index"].to_numpy(np.int64)


def _fields(struct):
    import pandas as pd

    return pd.Series(struct.asDict() if hasattr(struct, "asDict") else struct)


def run(spark, *, data_dir=None, output=None, overwrite=False, seed=0, model=models.DEFAULT_MODEL,
        epochs=training.TrainConfig.epochs, batch_size=training.TrainConfig.batch_size,
        partitions=None, steps_per_round=None, learning_rate=training.TrainConfig.learning_rate,
        lr_decay=training.TrainConfig.lr_decay, first_round_steps=None,
        lr_scaling=training.TrainConfig.lr_scaling, warmup_epochs=training.TrainConfig.warmup_epochs,
        batchnorm_sample=training.TrainConfig.batchnorm_sample, barrier=False, limit=None, validation_size=2000,
        checkpoint_every=1, resume=None, augment=None):
    """Train, evaluate and write the run folder; return the metrics."""
    from mnist_spark.session import task_slots

    started = time.perf_counter()
    resume = _resume_target(resume, output)
    if resume:
        output = resume
    output = output or storage.default_output("train_cnn")
    target = storage.AtomicOutput(output, overwrite=overwrite, resumable=True, resume=bool(resume),
                                  job="train_cnn")
    checkpoints = storage.join(target.staging, storage.CHECKPOINT_FOLDER)
    state = None
    if resume:
        state, config, saved = training.load_checkpoint(checkpoints)
        data_dir, limit, validation_size, checkpoint_every = (
            saved.get("data_dir"), saved.get("limit"), saved.get("validation_size", 0),
            saved.get("checkpoint_every", 1))
        logger.info("resuming %s from round %d with its saved settings", output, state.round)
    else:
        config = training.TrainConfig(
            model=model, epochs=epochs, batch_size=batch_size, partitions=partitions or task_slots(spark),
            seed=seed, steps_per_round=steps_per_round, learning_rate=learning_rate, lr_decay=lr_decay,
            first_round_steps=first_round_steps, lr_scaling=lr_scaling, warmup_epochs=warmup_epochs,
            batchnorm_sample=batchnorm_sample,
            barrier=barrier, augment=augment, inject_failure=_injected_failure(),
        )
    files = datasets.locate(data_dir)
    train_df, infos = ingest.idx_dataframe(spark, files, splits=("train",), limit=limit)
    _check_partitions(config.partitions, infos[0].count, given=bool(partitions or resume))
    test_df, test_infos = ingest.idx_dataframe(spark, files, splits=("test",), limit=limit)
    # Small; cached so scoring it runs one Python worker per task, the ones that trained.
    test_df = test_df.cache()
    shape = infos[0].image_shape
    config = dataclasses.replace(config, input_shape=tuple(shape) if len(shape) == 3 else (*shape, 1),
                              num_classes=files.dataset.num_classes)
    validation = None
    if validation_size:
        images, labels, _ = _numpy_split(test_df, validation_size)
        validation = (images.reshape(len(images), *config.input_shape), labels)

    with target as staging:
        from mnist_spark.tracking import TensorBoardScalars

        scalars = TensorBoardScalars(storage.join(staging, "tensorboard"))

        def on_round(state, schedule):
            scalars.add(state.history[-1])
            if checkpoint_every and (state.round % checkpoint_every == 0 or state.round == schedule.rounds):
                training.save_checkpoint(checkpoints, state, config, extra={
                    "data_dir": data_dir, "limit": limit, "validation_size": validation_size,
                    "checkpoint_every": checkpoint_every})

        trained, state = training.train(spark, train_df, config, validation=validation, state=state,
                                        on_round=on_round)
        scalars.close()
        train_seconds = time.perf_counter() - started
        trained.compile(optimizer=trained.optimizer, loss="sparse_categorical_crossentropy",
                        metrics=["accuracy"])
        storage.write_bytes(storage.join(staging, "model.keras"), evaluation.model_bytes(trained))
        summary = models.summary_text(trained)
        print(summary)
        storage.write_bytes(storage.join(staging, "model_summary.txt"), (summary + "\n").encode())
        scores = evaluation.evaluate(test_df, trained, num_classes=config.num_classes)
        images_trained = sum(h["images"] for h in state.history)
        metrics = {
            "job": "train_cnn",
            "model": config.model,
            "test_accuracy": scores["accuracy"],
            "test_loss": scores["loss"],
            "epochs": config.epochs,
            "rounds": state.round,
            "partitions": config.partitions,
            "train_rows": infos[0].count,
            "test_rows": test_infos[0].count,
            "images_per_second": round(images_trained / sum(h["seconds"] for h in state.history), 1),
            "seconds": round(time.perf_counter() - started, 2),
            "train_seconds": round(train_seconds, 2),
            "history": state.history,
            "evaluation": scores,
            "params": {**config.to_dict(), "data_dir": data_dir, "output": output, "limit": limit,
                       "validation_size": validation_size, "checkpoint_every": checkpoint_every,
                       "resume": resume},
            "environment": report.environment(),
        }
        _figures(test_df, staging, metrics)
        report.write_metrics(staging, metrics)
    logger.info("test accuracy %.4f, loss %.4f; run folder %s (%.0f s)", metrics["test_accuracy"],
                metrics["test_loss"], output, metrics["seconds"])
    return metrics


def _check_partitions(partitions: int, rows: int, *, given: bool = True) -> None:
    """Every replica needs at least one training image; checked from the IDX headers, before any work."""
    if partitions > rows:
        flag = f"--partitions {partitions}" + ("" if given else " (the cluster's task slots)")
        raise ValueError(f"{flag} needs at least {partitions} training images, found {rows}; "
                         "use fewer --partitions")


def _injected_failure():
    value = os.environ.get(training.ENV_INJECT_FAILURE)
    if not value:
        return None
    partition, _, round_ = value.partition(":")
    return int(partition), int(round_)


def _figures(test_df, staging: str, metrics: dict) -> None:
    scores = metrics["evaluation"]
    report.learning_curves(metrics["history"], storage.join(staging, "learning_curves.png"))
    report.confusion_matrix_figure(scores["confusion_matrix"], storage.join(staging, "confusion_matrix.png"))
    figures = [("learning_curves.png", "Loss and accuracy per round"),
               ("confusion_matrix.png", "Confusion matrix on the test split (rows: expected)")]
    wrong = scores["misclassified"][:GRID_SIZE]
    if wrong:
        wanted = [w["index"] for w in wrong]
        rows = {r["index"]: r for r in test_df.where(test_df["index"].isin(wanted))
                .select("index", "image").collect()}
        from mnist_spark.images import struct_to_array

        pictures = [struct_to_array(rows[i]["image"]) for i in wanted]
        titles = [f"p: {w['predicted']}; e: {w['expected']}" for w in wrong]
        report.contact_sheet(pictures, titles, storage.join(staging, "misclassified.png"),
                             title="Misclassified test digits (p: predicted; e: expected)")
        report.probability_bars(pictures[:PROBABILITY_ROWS],
                                [w["probabilities"] for w in wrong[:PROBABILITY_ROWS]],
                                titles[:PROBABILITY_ROWS], storage.join(staging, "probabilities.png"))
        figures += [("misclassified.png", "Misclassified test digits"),
                    ("probabilities.png", "Predicted probabilities of some misclassified digits")]
    report.write_run_report(
        staging,
        title=f"train_cnn: {metrics['model']}",
        headline=[("test_accuracy", metrics["test_accuracy"]), ("test_loss", metrics["test_loss"]),
                  ("epochs", metrics["epochs"]), ("partitions", metrics["partitions"]),
                  ("images_per_second", metrics["images_per_second"]), ("seconds", metrics["seconds"])],
        figures=figures,
        sections=[report.per_class_section(scores["per_class"]),
                  report.files_section([("metrics.json", ""), ("model.keras", ""),
                                        ("model_summary.txt", "")])],
    )


def main(argv=None) -> int:
    args = _arg_parser().parse_args(argv)
    return cli.run_job("train_cnn", lambda spark: run(
        spark, data_dir=args.data_dir, output=args.output, overwrite=args.overwrite, seed=args.seed,
        model=args.model, epochs=args.epochs, batch_size=args.batch_size, partitions=args.partitions,
        steps_per_round=args.steps_per_round, learning_rate=args.learning_rate, lr_decay=args.lr_decay,
        first_round_steps=args.first_round_steps, lr_scaling=args.lr_scaling,
        warmup_epochs=args.warmup_epochs, batchnorm_sample=args.batchnorm_sample,
        barrier=args.barrier, limit=args.limit, validation_size=args.validation_size,
        checkpoint_every=args.checkpoint_every, resume=args.resume,
        augment=dataclasses.asdict(cli.augment_params(args)) if args.augment else None,
    ), before=lambda: _prepare(args))


def _resume_target(resume, output):
    """The run to continue: ``resume`` itself, or for ``auto`` ``output`` when it left a checkpoint.

    ``auto`` makes the command a scheduler re-issues after a stopped driver
    finish the run, and start it when there is nothing to continue.
    """
    if resume != "auto":
        return resume
    if output is None:
        raise ValueError("--resume auto continues the run at --output; give --output")
    if storage.has_checkpoint(output):
        return output
    logger.info("--resume auto: %s left no checkpoint; starting the run", output)
    return None


def _prepare(args) -> bool:
    """The output checks before Spark starts (cli.prepare_output); True when there is nothing to do."""
    args.resume = _resume_target(args.resume, args.output)
    if args.resume:
        args.output = args.resume
    inputs = [] if args.resume else cli.default_data_inputs(args.data_dir)
    return cli.prepare_output("train_cnn", args, inputs, resumable=True, resume=bool(args.resume))


if __name__ == "__main__":
    sys.exit(main())
