"""Experiment tracking: every job's run in MLflow, and training rounds as TensorBoard scalars.

MLflow is on for a job given ``--mlflow [URI]``, or whenever
``MLFLOW_TRACKING_URI`` is set. After the job's run folder is complete,
:func:`log_job` (called by :func:`mnist_spark.cli.run_job`, the one place)
records one MLflow run in the experiment ``$MLFLOW_EXPERIMENT_NAME``
(default ``mnist_spark``):

* params: the job's ``params`` from ``metrics.json``, nested values as dotted
  keys, lists as JSON;
* per-round metrics: each record of ``history`` (train_cnn: loss, accuracy,
  validation scores, learning rate, images per second), at step = round and
  at the time the round ended;
* final metrics: every other number of ``metrics.json`` (``test_accuracy``,
  ``evaluation.loss``, ``rows.train``, ``seconds``...);
* artifacts: the files at the top of the run folder (``metrics.json``,
  ``report.html``, the PNG figures, ``model.keras``...) and its
  ``pipeline_model/`` and ``tensorboard/`` folders; data folders are left out;
* the model: ``model.keras`` also as an MLflow Keras model (``mlflow.keras``,
  loadable with ``mlflow.pyfunc.load_model``).

MLflow is the optional extra ``pip install 'mnist_spark[mlflow]'``
(``mlflow-skinny``); it is imported only when tracking is on. MLflow's own
log lines are left in this project's format (``MLFLOW_CONFIGURE_LOGGING``).

:class:`TensorBoardScalars` writes training rounds as TensorBoard scalars
with TensorFlow alone (``tf.summary.write`` with the scalars plugin's
metadata, as ``tf.summary.scalar`` does without needing the ``tensorboard``
package), locally or through a local folder copied to the run folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import posixpath
import shutil
import tempfile
import time

logger = logging.getLogger(__name__)

#: MLflow's own variable: set, it turns tracking on for every job.
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
#: MLflow's own variable naming the experiment; default :data:`DEFAULT_EXPERIMENT`.
ENV_EXPERIMENT = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "mnist_spark"
#: Folders of a run folder logged as artifacts (beside its top-level files).
ARTIFACT_FOLDERS = ("pipeline_model", "tensorboard")
#: Top-level files of a run folder that are bookkeeping, not results.
_MARKERS = ("_SUCCESS", "_MNIST_SPARK", "_OWNER")
#: Keys of metrics.json that are not final metrics.
_NOT_METRICS = ("params", "environment", "history")
#: Per-round values logged from ``history``.
ROUND_METRICS = (
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "epoch",
    "images_per_second",
    "train_seconds",
    "seconds",
)
#: MLflow's longest param value.
_MAX_PARAM = 6000

#: ``--mlflow`` of the job command line parsed last: None (not given), "" (no URI) or a URI.
_requested: str | None = None


def request(uri: str | None) -> None:
    """Record the ``--mlflow`` of a parsed job command line (None when it was not given)."""
    global _requested
    _requested = uri


def tracking_uri() -> str | None:
    """The MLflow tracking URI to log to; "" for MLflow's default; None when tracking is off."""
    if _requested is not None:
        return _requested or os.environ.get(ENV_TRACKING_URI, "")
    return os.environ.get(ENV_TRACKING_URI) or None


def check_available() -> None:
    """Raise one clear line when tracking is on and MLflow is not installed (before Spark starts)."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ValueError(
            "--mlflow (or MLFLOW_TRACKING_URI) needs MLflow, which is not installed: "
            "pip install 'mnist_spark[mlflow]' (mlflow-skinny), or unset MLFLOW_TRACKING_URI"
        )


# --------------------------------------------------------------------------- what is logged


def flat_params(params: dict, prefix: str = "") -> dict[str, str]:
    """MLflow params from a job's ``params``: nested dicts as dotted keys, other values as text.

    Examples
    --------
    >>> flat_params({"epochs": 2, "augment": {"rotate": [0.9, 15]}, "limit": None})
    {'epochs': '2', 'augment.rotate': '[0.9, 15]', 'limit': 'None'}
    """
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{name}."))
            continue
        text = (
            value if isinstance(value, str) else (json.dumps(value) if isinstance(value, (list, tuple)) else str(value))
        )
        flat[name] = text[:_MAX_PARAM]
    return flat


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def final_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Every finite number of ``metrics.json`` outside params, environment and history, by dotted key.

    Examples
    --------
    >>> final_metrics({"test_accuracy": 0.98, "rows": {"train": 30}, "model": "mlp", "params": {"e": 1}})
    {'test_accuracy': 0.98, 'rows.train': 30.0}
    """
    found = {}
    for key, value in metrics.items():
        if not prefix and key in _NOT_METRICS:
            continue
        if isinstance(value, dict):
            found.update(final_metrics(value, f"{prefix}{key}."))
        elif _number(value) is not None:
            found[f"{prefix}{key}"] = _number(value)
    return found


def round_metrics(history: list) -> list[tuple[str, float, int, int]]:
    """``(key, value, timestamp in ms, step)`` of each round of a training ``history``."""
    rows = []
    for record in history:
        step = int(record["round"])
        stamp = int(record.get("time", time.time()) * 1000)
        for key in ROUND_METRICS:
            value = _number(record.get(key))
            if value is not None:
                rows.append((key, value, stamp, step))
    return rows


def _local_copy(run_folder: str, into: str) -> list[str]:
    """Copy what of a run folder is logged as artifacts into a local folder; return the names."""
    from pyarrow import fs as pafs

    from mnist_spark import storage

    filesystem, root = storage.resolve(run_folder)
    copied = []
    for info in filesystem.get_file_info(pafs.FileSelector(root)):
        if info.type == pafs.FileType.File and info.base_name not in _MARKERS:
            files = [info]
        elif info.type == pafs.FileType.Directory and info.base_name in ARTIFACT_FOLDERS:
            files = [
                f
                for f in filesystem.get_file_info(pafs.FileSelector(info.path, recursive=True))
                if f.type == pafs.FileType.File
            ]
        else:
            continue
        for item in files:
            relative = posixpath.relpath(item.path, root)
            target = os.path.join(into, *relative.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with filesystem.open_input_stream(item.path) as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
        copied.append(info.base_name)
    return sorted(copied)


def _pip_requirements() -> list[str]:
    """What an MLflow Keras model needs: this Keras and whichever TensorFlow is installed."""
    from importlib import metadata

    found = []
    for name in ("keras", "tensorflow-cpu", "tensorflow"):
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def log_job(job: str, metrics: dict, uri: str | None = None) -> str:
    """Log a finished job's run (``metrics`` as written to its ``metrics.json``) to MLflow.

    Parameters
    ----------
    job : str
        The job's name, a tag of the run.
    metrics : dict
        What the job's ``run`` returned; ``params["output"]`` names the run folder.
    uri : str, optional
        The tracking URI; default ``$MLFLOW_TRACKING_URI`` (then MLflow's default).

    Returns
    -------
    str
        The MLflow run id.
    """
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    import mlflow
    from mlflow.entities import Metric

    from mnist_spark import __version__, storage

    started = time.perf_counter()
    if uri:
        mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(os.environ.get(ENV_EXPERIMENT) or DEFAULT_EXPERIMENT)
    params = dict(metrics.get("params") or {})
    output = params.get("output")
    run_folder = storage.to_uri(output) if output else None
    tags = {"mnist_spark.job": job, "mnist_spark.version": __version__}
    if run_folder:
        tags["mnist_spark.output"] = run_folder
    name = f"{job} {posixpath.basename(run_folder.rstrip('/'))}" if run_folder else job
    with mlflow.start_run(run_name=name, tags=tags) as run:
        mlflow.log_params(flat_params(params))
        rounds = round_metrics(metrics.get("history") or [])
        client = mlflow.MlflowClient()
        if rounds:
            client.log_batch(run.info.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in rounds])
        mlflow.log_metrics(final_metrics(metrics))
        logged = []
        if run_folder:
            with tempfile.TemporaryDirectory(prefix="mnist_spark-mlflow-") as local:
                logged = _local_copy(run_folder, local)
                mlflow.log_artifacts(local)
                if "model.keras" in logged:
                    import keras

                    model = keras.saving.load_model(os.path.join(local, "model.keras"))
                    mlflow.keras.log_model(model, name="model", pip_requirements=_pip_requirements())
    logger.info(
        "logged %s to MLflow %s: run %s (%d params, %d round values, %d artifacts) in %.1f s",
        job,
        mlflow.get_tracking_uri(),
        run.info.run_id,
        len(params),
        len(rounds),
        len(logged),
        time.perf_counter() - started,
    )
    return run.info.run_id


# --------------------------------------------------------------------------- TensorBoard


class TensorBoardScalars:
    """Training rounds as TensorBoard scalars in ``folder`` (``<run folder>/tensorboard``).

    :meth:`add` writes one round's values (:data:`ROUND_METRICS` of a
    ``history`` record) at step = round. TensorFlow writes event files only
    to local folders here, so for a URI the events go to a local folder and
    :meth:`close` copies them to ``folder``. Read them with
    ``tensorboard --logdir <run folder>/tensorboard``.

    Examples
    --------
    >>> scalars = TensorBoardScalars("runs/cnn/tensorboard")  # doctest: +SKIP
    >>> scalars.add({"round": 1, "loss": 0.3, "accuracy": 0.91})  # doctest: +SKIP
    >>> scalars.close()  # doctest: +SKIP
    """

    def __init__(self, folder: str):
        from mnist_spark import storage

        self.folder = folder
        self._remote = storage.is_uri(folder) and not folder.startswith("file://")
        self._local = (
            tempfile.mkdtemp(prefix="mnist_spark-tensorboard-") if self._remote else (storage.resolve(folder)[1])
        )
        self._writer = None

    def add(self, record: dict) -> None:
        import tensorflow as tf
        from tensorflow.core.framework import summary_pb2

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self._local)
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        with self._writer.as_default():
            for key in ROUND_METRICS:
                value = _number(record.get(key))
                if value is not None:
                    tf.summary.write(key, tf.constant(value, tf.float32), step=int(record["round"]), metadata=metadata)
        self._writer.flush()

    def close(self) -> None:
        from mnist_spark import storage

        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._remote:
            for name in sorted(os.listdir(self._local)):
                with open(os.path.join(self._local, name), "rb") as stream:
                    storage.write_bytes(storage.join(self.folder, name), stream.read())
            shutil.rmtree(self._local, ignore_errors=True)
