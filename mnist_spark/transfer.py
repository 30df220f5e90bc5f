"""The transfer-learning pipeline behind ``jobs/transfer.py``: features, LogisticRegression, scores.

:func:`fit_and_score` featurizes the training images once and keeps the
vectors while LogisticRegression fits (or cross-validates, :mod:`mnist_spark.tuning`),
joins the two stages into one ``PipelineModel`` and scores the test images
with ``MulticlassClassificationEvaluator``. :func:`write_report` draws the
run folder's figure and ``report.html``.
"""

from __future__ import annotations

import logging
import time

from mnist_spark import evaluation, report, storage, tuning

logger = logging.getLogger(__name__)

#: Defaults: all of MNIST at InceptionV3's minimum size, 4.5 to 10 minutes on 2 cores
#: (README "Transfer learning"); larger datasets are sampled down to this size.
DEFAULT_IMAGE_SIZE = 75
DEFAULT_TRAIN_LIMIT = 60000
DEFAULT_TEST_LIMIT = 10000
#: LogisticRegression settings.
DEFAULT_MAX_ITER, DEFAULT_REG_PARAM, DEFAULT_ELASTIC_NET_PARAM = 20, 0.05, 0.3
#: The featurizer's params by the job's flags, for its error messages.
FEATURIZER_FLAGS = {"imageSize": "--image-size", "outputLayer": "--output-layer", "base model": "--base-model"}

#: What MulticlassClassificationEvaluator reports, under its own metric names.
METRICS = ("accuracy", "f1", "weightedPrecision", "weightedRecall", "logLoss")


def check_regression_settings(max_iter: int, reg_params, elastic_net_params) -> None:
    """Fail on LogisticRegression settings it would refuse, naming the job's flags, before any data is read."""
    if max_iter <= 0:
        raise ValueError(f"--max-iter must be above 0, found {max_iter}")
    for value in reg_params:
        if value < 0:
            raise ValueError(f"--reg-param must be 0 or more, found {value}")
    for value in elastic_net_params:
        if not 0 <= value <= 1:
            raise ValueError(f"--elastic-net-param must lie in [0, 1] (0: L2, 1: L1), found {value}")


def regression_settings(options: dict) -> dict:
    """LogisticRegression's settings (:func:`mnist_spark.tuning.fit_logistic_regression`) from the job's options.

    Checked before any data is read (:func:`check_regression_settings`).
    """
    tune = options["tune"]
    reg_params, elastic_net_params = (
        (options["tune_reg_params"], options["tune_elastic_net_params"]) if tune else ((), ())
    )
    check_regression_settings(
        options["max_iter"], [options["reg_param"], *reg_params], [options["elastic_net_param"], *elastic_net_params]
    )
    return {
        "max_iter": options["max_iter"],
        "reg_param": options["reg_param"],
        "elastic_net_param": options["elastic_net_param"],
        "tune": tune,
        "reg_params": options["tune_reg_params"],
        "elastic_net_params": options["tune_elastic_net_params"],
        "folds": options["tune_folds"],
    }


def featurizer_stage(options: dict) -> tuple:
    """The checked featurizer that the job's options describe, and a description of its network.

    ``options``: ``base_model``, ``output_layer``, ``image_size``,
    ``pooling``, ``weights``, ``batch_size``. ``image_size`` None means
    :data:`DEFAULT_IMAGE_SIZE` for a keras.applications network and the input
    size of your own. The network is checked on the driver
    (:meth:`DeepImageFeaturizer.checkNetwork`); errors name the job's flags.
    """
    from mnist_spark import cli, featurizer

    base_model, output_layer, image_size = options["base_model"], options["output_layer"], options["image_size"]
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE if base_model in featurizer.ARCHITECTURES else 0
    try:
        stage = featurizer.featurizer_for(
            base_model,
            outputLayer=output_layer,
            imageSize=image_size,
            pooling=options["pooling"],
            weights=options["weights"],
            batchSize=options["batch_size"],
        )
        stage.checkNetwork()
        if not stage.getModelFile():
            return stage, base_model
        layer = featurizer.user_network(stage.getModelFile(), output_layer).output_layer
    except ValueError as error:
        raise ValueError(cli.in_flag_terms(str(error), FEATURIZER_FLAGS)) from None
    return stage, f"{stage.getModelFile()}, layer {layer}"


def fit_and_score(stage, train, test, *, num_classes: int = 0, seed: int = 0, **regression) -> tuple:
    """Featurize ``train`` once, fit LogisticRegression on the vectors, score ``test``.

    Parameters
    ----------
    stage : DeepImageFeaturizer
    train, test : DataFrame
        ``split``, ``index``, ``label`` and the stage's input column.
    num_classes : int
        Rows of the confusion matrix at least (0: from the data).
    **regression
        :func:`mnist_spark.tuning.fit_logistic_regression`'s settings
        (``max_iter``, ``reg_param``, ``elastic_net_param``, ``tune``, ...).

    Returns
    -------
    (PipelineModel, dict)
        The featurizer and the fitted LogisticRegression as one model, and
        the results: the evaluator's scores, feature size, timings,
        iterations, the chosen regularisation, the tuning grid, the
        confusion matrix and per-class scores.
    """
    from pyspark import StorageLevel
    from pyspark.ml import PipelineModel
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    from mnist_spark.session import phase

    spark = train.sparkSession
    started = time.perf_counter()
    column = stage.getOutputCol()
    features = stage.transform(train).select("split", "index", "label", column).persist(StorageLevel.MEMORY_AND_DISK)
    with phase(spark, "featurize"):
        train_rows = features.count()
        feature_seconds = time.perf_counter() - started
        feature_size = len(features.select(column).first()[0])
    logger.info(
        "featurized %d training images in %.1f s (%.1f img/s): %d values each",
        train_rows,
        feature_seconds,
        train_rows / feature_seconds,
        feature_size,
    )

    started = time.perf_counter()
    with phase(spark, "fit LR (cross-validation)" if regression.get("tune") else "fit LR"):
        fitted, grid = tuning.fit_logistic_regression(features, features_col=column, seed=seed, **regression)
    fit_seconds = time.perf_counter() - started
    features.unpersist()
    iterations = fitted.summary.totalIterations
    logger.info("fitted LogisticRegression in %.1f s (%d iterations)", fit_seconds, iterations)
    model = PipelineModel(stages=[stage, fitted])

    started = time.perf_counter()
    predictions = (
        model.transform(test)
        .select("index", "label", "prediction", "probability")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    with phase(spark, "evaluation"):
        test_rows = predictions.count()
        predict_seconds = time.perf_counter() - started
        scores = {n: float(MulticlassClassificationEvaluator(metricName=n).evaluate(predictions)) for n in METRICS}
        confusion = evaluation.confusion_from_predictions(predictions, num_classes)
    predictions.unpersist()
    logger.info(
        "scored %d test images in %.1f s: accuracy %.4f, f1 %.4f, logLoss %.4f",
        test_rows,
        predict_seconds,
        scores["accuracy"],
        scores["f1"],
        scores["logLoss"],
    )
    return model, {
        **{name: round(value, 6) for name, value in scores.items()},
        "feature_size": feature_size,
        "images_per_second": round((train_rows + test_rows) / (feature_seconds + predict_seconds), 1),
        "feature_seconds": round(feature_seconds, 2),
        "fit_seconds": round(fit_seconds, 2),
        "predict_seconds": round(predict_seconds, 2),
        "lr_iterations": iterations,
        "reg_param": fitted.getRegParam(),
        "elastic_net_param": fitted.getElasticNetParam(),
        "tuning": grid,
        "confusion_matrix": confusion.tolist(),
        "per_class": evaluation.per_class_scores(confusion),
    }


def save_model(spark, model, folder: str) -> None:
    """Save the fitted ``PipelineModel`` as ``<folder>/pipeline_model`` (Spark jobs of the phase ``save model``)."""
    from mnist_spark.session import phase

    with phase(spark, "save model"):
        model.write().save(storage.join(folder, "pipeline_model"))


def write_report(folder: str, metrics: dict) -> None:
    """``confusion_matrix.png`` and ``report.html`` of a transfer run folder."""
    report.confusion_matrix_figure(metrics["confusion_matrix"], storage.join(folder, "confusion_matrix.png"))
    headline = [
        (name, metrics[name])
        for name in (
            *METRICS,
            "train_rows",
            "test_rows",
            "model_name",
            "image_size",
            "pooling",
            "weights",
            "feature_size",
            "images_per_second",
            "seconds",
        )
    ]
    report.write_run_report(
        folder,
        title=f"transfer: DeepImageFeaturizer({metrics['model_name']}, {metrics['image_size']} px) + "
        "LogisticRegression",
        headline=headline,
        figures=[("confusion_matrix.png", "Confusion matrix on the test sample (rows: expected)")],
        sections=[
            *([report.tuning_section(metrics["tuning"])] if metrics["tuning"] else []),
            report.per_class_section(metrics["per_class"]),
            report.files_section([("metrics.json", ""), ("pipeline_model/", "(pyspark.ml.PipelineModel.load)")]),
        ],
    )
