"""MLflow runs of jobs (params, per-round and final metrics, figures, the model) read back with
MLflow's client from a ``file:`` store, and TensorBoard scalars of train_cnn's rounds."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import load_job, run_main
from mnist_spark import tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty MLflow ``file:`` tracking store; MLflow's file backend is allowed, its telemetry off."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv(tracking.ENV_TRACKING_URI, raising=False)
    monkeypatch.delenv(tracking.ENV_EXPERIMENT, raising=False)
    uri = f"file:{tmp_path / 'mlruns'}"
    yield uri
    tracking.request(None)


def _one_run(uri: str):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.mark.slow
def test_train_cnn_logs_params_rounds_metrics_figures_and_model(spark, tiny_idx, tmp_path, store, capsys):
    import mlflow
    from tensorflow.compat.v1.train import summary_iterator

    out = tmp_path / "run"
    status, lines = run_main(
        load_job("train_cnn"),
        [
            "--data-dir",
            tiny_idx,
            "--arch",
            "mlp",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--validation-size",
            "5",
            "--output",
            out,
            "--mlflow",
            store,
        ],
        capsys,
    )
    assert status == 0, lines
    written = json.loads((out / "metrics.json").read_text())
    client, run = _one_run(store)
    assert run.info.status == "FINISHED" and run.data.tags["mnist_spark.job"] == "train_cnn"
    assert run.data.params["model"] == "mlp" and run.data.params["epochs"] == "1"
    assert run.data.params["output"] == str(out)
    assert run.data.metrics["test_accuracy"] == pytest.approx(written["test_accuracy"])
    assert run.data.metrics["evaluation.loss"] == pytest.approx(written["evaluation"]["loss"])
    # One value per round, at step = round.
    for key in ("loss", "val_accuracy", "learning_rate"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [r["round"] for r in written["history"]]
        assert [m.value for m in history] == pytest.approx([r[key] for r in written["history"]])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {
        "metrics.json",
        "report.html",
        "model.keras",
        "learning_curves.png",
        "confusion_matrix.png",
        "tensorboard",
    } <= artifacts
    assert not {"checkpoints", "_SUCCESS", "_MNIST_SPARK"} & artifacts
    # The model as an MLflow Keras model, with the run folder's weights.
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert [m.source_run_id for m in models] == [run.info.run_id]
    loaded = mlflow.keras.load_model(models[0].model_uri)
    import keras

    saved = keras.saving.load_model(out / "model.keras")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), saved.get_weights(), strict=True))
    # TensorBoard scalars in the run folder: the same losses per round.
    events = [out / "tensorboard" / name for name in os.listdir(out / "tensorboard")]
    losses = {
        e.step: float(np.frombuffer(v.tensor.tensor_content, np.float32)[0])
        if v.tensor.tensor_content
        else v.tensor.float_val[0]
        for path in events
        for e in summary_iterator(str(path))
        for v in e.summary.value
        if v.tag == "loss"
    }
    assert losses == pytest.approx({r["round"]: r["loss"] for r in written["history"]})


def test_the_tracking_variable_alone_logs_any_job(spark, tiny_idx, tmp_path, store, monkeypatch, capsys):
    monkeypatch.setenv(tracking.ENV_TRACKING_URI, store)
    out = tmp_path / "ingested"
    status, lines = run_main(load_job("ingest"), ["--data-dir", tiny_idx, "--output", out, "--limit", "7"], capsys)
    assert status == 0, lines
    client, run = _one_run(store)
    assert run.data.tags["mnist_spark.job"] == "ingest" and run.data.params["limit"] == "7"
    assert run.data.metrics["rows.train"] == 7 and run.data.metrics["rows.test"] == 5
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"metrics.json"}  # the Parquet data is not copied to MLflow


def test_tracking_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv(tracking.ENV_TRACKING_URI, raising=False)
    tracking.request(None)
    assert tracking.tracking_uri() is None
    monkeypatch.setenv(tracking.ENV_TRACKING_URI, "http://mlflow:5000")
    assert tracking.tracking_uri() == "http://mlflow:5000"
    tracking.request("file:/tmp/elsewhere")  # --mlflow URI wins
    assert tracking.tracking_uri() == "file:/tmp/elsewhere"
    tracking.request("")  # --mlflow alone: the variable's URI
    assert tracking.tracking_uri() == "http://mlflow:5000"
    tracking.request(None)
