"""The transfer job: balanced sampling, the run folder, PNG input, clear failures."""

from __future__ import annotations

import json
import os

import pytest

from conftest import load_job, run_main
from mnist_spark import datasets, featurizer, ingest, pngset, sampling, weights

transfer = load_job("transfer")


def test_balanced_quotas():
    assert sampling.balanced_quotas({k: 100 for k in range(10)}, 25) == {
        0: 2,
        1: 2,
        2: 2,
        3: 2,
        4: 2,
        5: 3,
        6: 3,
        7: 3,
        8: 3,
        9: 3,
    }
    assert sampling.balanced_quotas({0: 100, 1: 100, 2: 3}, 25) == {2: 3, 0: 11, 1: 11}
    assert sampling.balanced_quotas({0: 4, 1: 5}, 100) == {0: 4, 1: 5}


def test_stratified_sample_is_balanced_and_seeded(spark, small_idx):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(small_idx), splits=("train",))
    sample, counts = sampling.stratified_sample(df, 50, 7, "train split")
    rows = sample.select("index", "label").collect()
    assert len(rows) == 50 and counts == {k: 5 for k in range(10)}
    assert sorted({r["label"] for r in rows}) == list(range(10))
    assert all(sum(r["label"] == k for r in rows) == 5 for k in range(10))
    again, _ = sampling.stratified_sample(df.repartition(3), 50, 7, "train split")
    other, _ = sampling.stratified_sample(df, 50, 8, "train split")
    picked = {r["index"] for r in rows}
    assert {r["index"] for r in again.collect()} == picked
    assert {r["index"] for r in other.collect()} != picked
    whole, counts = sampling.stratified_sample(df, 10_000, 7, "train split")
    assert whole is df and sum(counts.values()) == 600


def test_run_folder(spark, small_idx, tmp_path):
    from pyspark.ml import PipelineModel

    out = tmp_path / "run"
    metrics = transfer.run(
        spark,
        data_dir=str(small_idx),
        output=str(out),
        weights="none",
        image_size=75,
        train_limit=60,
        test_limit=20,
        max_iter=5,
        seed=3,
        partitions=2,
    )
    assert {"_SUCCESS", "pipeline_model", "metrics.json", "confusion_matrix.png", "report.html"} <= set(os.listdir(out))
    saved = json.loads((out / "metrics.json").read_text())
    for key in (
        "accuracy",
        "f1",
        "weightedPrecision",
        "weightedRecall",
        "logLoss",
        "train_rows",
        "test_rows",
        "model_name",
        "image_size",
        "weights",
        "images_per_second",
        "seconds",
        "confusion_matrix",
        "params",
        "environment",
    ):
        assert key in saved, key
    assert (
        saved["train_rows"],
        saved["test_rows"],
        saved["model_name"],
        saved["image_size"],
        saved["weights"],
        saved["feature_size"],
    ) == (60, 20, "InceptionV3", 75, "none", 2048)
    assert saved["label_counts"]["train"] == {str(k): 6 for k in range(10)}
    assert sum(map(sum, saved["confusion_matrix"])) == 20 and 0 <= saved["accuracy"] <= 1
    assert saved == metrics
    html = (out / "report.html").read_text()
    assert "confusion_matrix.png" in html and f'data-key="accuracy">{saved["accuracy"]}<' in html

    loaded = PipelineModel.load(str(out / "pipeline_model"))  # predictions after loading: test_featurizer
    assert isinstance(loaded.stages[0], featurizer.DeepImageFeaturizer)
    assert (loaded.stages[0].getImageSize(), loaded.stages[0].getWeights()) == (75, "none")
    assert loaded.stages[1].coefficientMatrix.numRows == 10
    assert loaded.stages[1].coefficientMatrix.numCols == 2048
    with pytest.raises(FileExistsError, match="--overwrite"):
        transfer.run(spark, data_dir=str(small_idx), output=str(out), weights="none")


@pytest.mark.slow
def test_tune_cross_validates_the_grid(spark, small_idx, tmp_path, capsys):
    import keras

    inputs = keras.Input((28, 28, 1))
    hidden = keras.layers.Dense(6, activation="relu", name="hidden")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(hidden)).save(tmp_path / "net.keras")
    out = tmp_path / "tuned"
    status, err = run_main(
        transfer,
        [
            "--data-dir",
            small_idx,
            "--base-model",
            tmp_path / "net.keras",
            "--train-limit",
            80,
            "--test-limit",
            20,
            "--max-iter",
            5,
            "--tune",
            "--tune-reg-params",
            "0.001,10",
            "--tune-elastic-net-params",
            "0,1",
            "--tune-folds",
            2,
            "--output",
            out,
        ],
        capsys,
    )
    assert status == 0, err
    saved = json.loads((out / "metrics.json").read_text())
    grid = saved["tuning"]
    assert [(g["regParam"], g["elasticNetParam"]) for g in grid] == [
        (0.001, 0.0),
        (0.001, 1.0),
        (10.0, 0.0),
        (10.0, 1.0),
    ]
    best = [g for g in grid if g["best"]]
    assert len(best) == 1 and best[0]["accuracy"] == max(g["accuracy"] for g in grid)
    assert (saved["reg_param"], saved["elastic_net_param"]) == (best[0]["regParam"], best[0]["elasticNetParam"])
    # An L1 penalty of 10 on 6 features leaves no coefficient: chance level, never the best.
    assert not grid[3]["best"] and grid[3]["accuracy"] < 0.3
    assert saved["params"]["tune"] is True and saved["params"]["tune_reg_params"] == [0.001, 10.0]
    assert "Tuning (cross-validated accuracy)" in (out / "report.html").read_text()


@pytest.mark.slow
def test_png_set_through_main(spark, tiny_idx, tmp_path, capsys):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(tiny_idx))
    pngset.write_png_set(df, str(tmp_path / "pngs"))
    out = tmp_path / "run"
    status = transfer.main(
        [
            "--images",
            str(tmp_path / "pngs"),
            "--output",
            str(out),
            "--weights",
            "none",
            "--train-limit",
            "20",
            "--test-limit",
            "5",
            "--max-iter",
            "3",
            "--reg-param",
            "0.1",
            "--elastic-net-param",
            "0",
            "--batch-size",
            "8",
        ]
    )
    assert status == 0, capsys.readouterr().err
    saved = json.loads((out / "metrics.json").read_text())
    assert (saved["train_rows"], saved["test_rows"]) == (20, 5)
    assert saved["params"]["input"] == str(tmp_path / "pngs")
    params = saved["params"]
    assert (params["max_iter"], params["reg_param"], params["elastic_net_param"], params["batch_size"]) == (
        3,
        0.1,
        0.0,
        8,
    )


def test_missing_imagenet_weights_stop_the_job_at_once(spark, small_idx, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(weights.ENV_OFFLINE, "0")  # downloads allowed; --offline forbids them
    out = tmp_path / "run"
    status = transfer.main(["--data-dir", str(small_idx), "--output", str(out), "--offline"])
    err = capsys.readouterr().err
    assert status == 2
    assert "transfer: error: the ImageNet weights of InceptionV3 are not on this machine" in err
    assert "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5" in err and "--weights" not in err
    assert not out.exists()


def test_bad_settings_are_clear_errors(spark, small_idx, tmp_path):
    kwargs = dict(data_dir=str(small_idx), weights="none")
    with pytest.raises(ValueError, match="--image-size 60 is below the InceptionV3 minimum of 75 px"):
        transfer.run(spark, output=str(tmp_path / "a"), image_size=60, **kwargs)
    with pytest.raises(ValueError, match=r"--elastic-net-param must lie in \[0, 1\]"):
        transfer.run(spark, output=str(tmp_path / "b"), elastic_net_param=2, **kwargs)
    with pytest.raises(ValueError, match="not both"):
        transfer.run(spark, output=str(tmp_path / "c"), input=str(tmp_path), **kwargs)
    assert not any(tmp_path.iterdir())
