"""Distributed inference and the metrics of a trained classifier.

Inference follows the ``pyspark.ml.functions.predict_batch_udf`` pattern: the
saved model reaches executors once as a broadcast, each Python worker loads it
once and keeps it (worker reuse is on), and it runs over Arrow batches of
explicit size. Metrics are aggregated by Spark; only the confusion matrix and
the few misclassified examples come back to the driver.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time

import numpy as np

logger = logging.getLogger(__name__)

#: The model this Python worker keeps between batches and tasks, by key (one at a time).
_MODELS: dict = {}
#: Models this Python worker has built or loaded into :data:`_MODELS` since it started.
_BUILDS = 0


def worker_model(key, build):
    """The model cached in this Python worker under ``key``, built by ``build()`` on first use.

    The ``predict_batch_udf`` pattern: with Python worker reuse on, a worker
    builds or loads a model once and keeps it for later batches and tasks.
    TensorFlow's threads are set to the task's ``spark.task.cpus`` before the
    first build, and the model is built on the task's GPU when Spark assigned
    one (:func:`mnist_spark.session.device_scope`). One model is kept at a
    time, which bounds a worker's memory;
    :func:`load_model_bytes` and :mod:`mnist_spark.featurizer` share the cache.

    Parameters
    ----------
    key : hashable
        Everything that decides the model, e.g. a content hash of its weights.
    build : callable
        Called with no arguments when ``key`` is not cached; returns the model.

    Returns
    -------
    keras.Model
    """
    from mnist_spark.session import configure_tensorflow_threads, device_scope, task_device

    key = (key, task_device())  # a worker serving tasks on another GPU builds the model there
    global _BUILDS
    model = _MODELS.get(key)
    if model is None:
        _BUILDS += 1
        configure_tensorflow_threads()
        with device_scope():
            model = build()
        _MODELS.clear()  # one model per worker at a time bounds memory
        _MODELS[key] = model
    return model


def worker_builds() -> int:
    """How many models this Python worker has built or loaded (:func:`worker_model`) since it started."""
    return _BUILDS


def model_bytes(model) -> bytes:
    """A Keras model as the bytes of a ``.keras`` file."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def model_from_bytes(payload: bytes, *, compile: bool):
    """Keras' safe-mode load of ``.keras`` bytes (it reads models by path only)."""
    import keras

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        with open(path, "wb") as f:
            f.write(payload)
        return keras.saving.load_model(path, compile=compile, safe_mode=True)


def load_model_bytes(payload: bytes):
    """Load a model from ``.keras`` bytes, once per Python worker (cached by content hash).

    Loading uses Keras' safe mode: no Python code in the file is executed.
    """
    return worker_model(
        ("keras", hashlib.sha256(payload).hexdigest()), lambda: model_from_bytes(payload, compile=False)
    )


def model_file(location: str) -> str:
    """The ``model.keras`` of a run folder, or ``location`` itself when it is the file."""
    from mnist_spark import storage

    inside = storage.join(location, "model.keras")
    return inside if storage.exists(inside) else location


def load_model(location: str):
    """Load a saved ``.keras`` model (a local path or URI) in safe mode, with a clear error
    for a missing or damaged file."""
    from mnist_spark import storage
    from mnist_spark.session import require_tensorflow

    require_tensorflow()
    try:
        payload = storage.read_bytes(location)
    except OSError:
        raise ValueError(f"model file {location} does not exist; give the model.keras of a training run") from None
    try:
        return model_from_bytes(payload, compile=True)
    except Exception as error:  # Keras raises several types for a damaged file
        raise ValueError(
            f"model file {location} could not be loaded ({type(error).__name__}: {error}); it is not "
            "a complete .keras file: train again or copy it again"
        ) from None


def check_classifier(net, path: str, num_classes: int | None = None) -> None:
    """The model must give one row of class probabilities per image: output ``(batch, classes)``.

    With ``num_classes`` (the labels are known) the output size must equal it.
    """
    from mnist_spark.models import shape_text

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
            f"model file {path} outputs shape {shape_text(found)}; expected {expected}{what}; "
            "give a classifier trained on this dataset"
        )


def with_original_labels(scored, *, data_classes=None, model_classes=None):
    """``origin, split, index, label, prediction, probabilities`` in the dataset's own labels.

    ``label`` is the data's label (its name when the labels were indexed from
    ``data_classes``; null when unknown, -1), ``prediction`` the model's class
    as the label it stands for (``model_classes``, its ``labels.json``), so the
    two compare wherever the class numbers of data and model differ.
    """
    from pyspark.sql import functions as F

    def named(column, classes):
        if not classes:
            return column
        return F.element_at(F.array(*[F.lit(v) for v in classes]), column + 1)

    label = F.when(F.col("label") >= 0, named(F.col("label"), data_classes))
    prediction = named(F.col("prediction"), model_classes)
    if bool(data_classes) != bool(model_classes):  # names on one side, numbers on the other
        label, prediction = label.cast("string"), prediction.cast("string")
    return scored.select(
        F.col("image.origin").alias("origin"),
        "split",
        "index",
        label.alias("label"),
        prediction.alias("prediction"),
        "probabilities",
    )


def predict(
    df,
    model,
    *,
    batch_size: int = 512,
    input_col: str = "image",
    output_col: str = "probabilities",
    prediction_col: str | None = "prediction",
    decode=None,
):
    """Add the model's class probabilities (``array<float>``) to an image DataFrame.

    Parameters
    ----------
    df : DataFrame
        With an image-struct column ``input_col``.
    model : keras.Model or bytes
        The model, or the bytes of its ``.keras`` file.
    batch_size : int
        Images per ``predict_on_batch`` call.
    prediction_col : str or None
        Name of the argmax column (int); ``None`` adds none.
    decode : callable, optional
        Turns an Arrow array of image structs into the model's input batch
        (e.g. resizing); default :func:`mnist_spark.images.struct_array_to_numpy`.
        The model's output is flattened to one row of values per image.

    Returns
    -------
    DataFrame
        ``df`` with ``output_col`` added; also ``prediction_col`` (int), the argmax.
    """
    import pyarrow as pa
    from pyspark.sql.types import ArrayType, FloatType, IntegerType, StructField, StructType

    if input_col not in df.columns:
        raise ValueError(f"no column {input_col!r} to predict from; found {df.columns}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be above 0, found {batch_size}")
    payload = model if isinstance(model, bytes) else model_bytes(model)
    from mnist_spark.payloads import ship

    broadcast = ship(df.sparkSession, payload, "model")  # a broadcast, or on Spark Connect the closure
    schema = StructType(
        df.schema.fields
        + [StructField(output_col, ArrayType(FloatType(), False), False)]
        + ([StructField(prediction_col, IntegerType(), False)] if prediction_col else [])
    )

    def infer(batches):
        from mnist_spark.session import device_scope

        net = load_model_bytes(broadcast.value)
        with device_scope():
            yield from _score(net, batches)

    def _score(net, batches):
        from mnist_spark.images import struct_array_to_numpy

        to_numpy = decode or (lambda column: struct_array_to_numpy(column, input_col))
        for batch in batches:
            for start in range(0, batch.num_rows, batch_size):
                part = batch.slice(start, batch_size)
                images = to_numpy(part.column(input_col))
                probabilities = np.asarray(net.predict_on_batch(images.astype(np.float32)), np.float32)
                probabilities = probabilities.reshape(len(images), -1)
                classes = probabilities.shape[1]
                flat = pa.array(probabilities.reshape(-1))
                offsets = pa.array(np.arange(0, (len(images) + 1) * classes, classes, dtype=np.int32))
                columns = [pa.ListArray.from_arrays(offsets, flat)]
                fields = [pa.field(output_col, pa.list_(pa.field("element", pa.float32(), False)), False)]
                if prediction_col:
                    columns.append(pa.array(probabilities.argmax(axis=1).astype(np.int32)))
                    fields.append(pa.field(prediction_col, pa.int32(), False))
                yield pa.RecordBatch.from_arrays(part.columns + columns, schema=pa.schema(list(part.schema) + fields))

    return df.mapInArrow(infer, schema)


def evaluate(df, model, *, num_classes: int = 10, batch_size: int = 512, misclassified_limit: int = 100, decode=None):
    """Score a model on a labelled image DataFrame, inference in the executors.

    ``decode`` (:func:`mnist_spark.ml.image_decoder`) makes the images the
    model's input where they differ from it.

    Returns
    -------
    dict
        ``accuracy``, ``loss`` (mean cross-entropy), ``count``,
        ``confusion_matrix`` (rows: expected, columns: predicted),
        ``per_class`` (precision, recall, f1, support) and ``misclassified``
        (up to ``misclassified_limit`` of: split, index, expected, predicted,
        probabilities), plus ``seconds`` and ``images_per_second``.
    """
    from pyspark.sql import functions as F

    from mnist_spark.session import phase

    started = time.perf_counter()
    scored = predict(df, model, batch_size=batch_size, decode=decode)
    scored = (
        scored.withColumn("nll", -F.log(F.greatest(F.element_at("probabilities", F.col("label") + 1), F.lit(1e-7))))
        .select("split", "index", "label", "prediction", "probabilities", "nll")
        .cache()
    )
    with phase(df.sparkSession, "evaluation"):
        try:
            cells = (
                scored.groupBy("label", "prediction").agg(F.count("*").alias("n"), F.sum("nll").alias("nll")).collect()
            )
            wrong = scored.where("label != prediction").orderBy("split", "index").limit(misclassified_limit).collect()
        finally:
            scored.unpersist()
    confusion = np.zeros((num_classes, num_classes), np.int64)
    total_nll = 0.0
    for cell in cells:
        if not (0 <= cell["label"] < num_classes):
            raise ValueError(f"label {cell['label']} is outside the {num_classes} classes")
        confusion[cell["label"], cell["prediction"]] = cell["n"]
        total_nll += cell["nll"]
    count = int(confusion.sum())
    if count == 0:
        raise ValueError("no rows to evaluate")
    seconds = time.perf_counter() - started
    metrics = {
        "count": count,
        "accuracy": float(np.trace(confusion) / count),
        "loss": float(total_nll / count),
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class_scores(confusion),
        "misclassified": [
            {
                "split": r["split"],
                "index": int(r["index"]),
                "expected": int(r["label"]),
                "predicted": int(r["prediction"]),
                "probabilities": [round(float(p), 5) for p in r["probabilities"]],
            }
            for r in wrong
        ],
        "seconds": round(seconds, 3),
        "images_per_second": round(count / seconds, 1),
    }
    logger.info(
        "evaluated %d images in %.1f s (%.0f img/s): accuracy %.4f, loss %.4f",
        count,
        seconds,
        count / seconds,
        metrics["accuracy"],
        metrics["loss"],
    )
    return metrics


def confusion_from_predictions(
    predictions, num_classes: int = 0, *, label_col: str = "label", prediction_col: str = "prediction"
) -> np.ndarray:
    """The confusion matrix (rows: expected) of a DataFrame of labels and predictions, counted in Spark.

    It has ``num_classes`` rows, or more when a label or prediction lies beyond.
    """
    cells = predictions.groupBy(label_col, prediction_col).count().collect()
    classes = max([num_classes] + [int(c[label_col]) + 1 for c in cells] + [int(c[prediction_col]) + 1 for c in cells])
    confusion = np.zeros((classes, classes), np.int64)
    for cell in cells:
        confusion[int(cell[label_col]), int(cell[prediction_col])] = int(cell["count"])
    return confusion


def per_class_scores(confusion: np.ndarray) -> list[dict]:
    """Precision, recall, F1 and support per class from a confusion matrix.

    Examples
    --------
    >>> per_class_scores(np.array([[3, 1], [0, 2]]))[0]
    {'class': 0, 'precision': 1.0, 'recall': 0.75, 'f1': 0.857143, 'support': 4}
    """
    scores = []
    for k in range(len(confusion)):
        true_positive = confusion[k, k]
        predicted = confusion[:, k].sum()
        support = confusion[k, :].sum()
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores.append(
            {
                "class": k,
                "precision": round(float(precision), 6),
                "recall": round(float(recall), 6),
                "f1": round(float(f1), 6),
                "support": int(support),
            }
        )
    return scores
