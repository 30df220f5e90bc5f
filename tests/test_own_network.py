"""Transfer from your own network: DeepImageFeaturizer(modelFile=...), train_cnn --labels, transfer --base-model.

The networks are tiny Keras models built here (or by a one-epoch
``train_cnn`` run), saved as ``.keras`` files, so every test runs in seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import load_job, run_main
from mnist_spark import datasets, featurizer, idx, ingest, labels, persistence, pngset
from mnist_spark.featurizer import DeepImageFeaturizer


def _tiny_cnn(input_shape=(28, 28, 1), classes=3):
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    x = keras.layers.Dropout(0.5)(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="classifier")(x))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("own") / "tiny.keras"
    _tiny_cnn().save(path)
    return path


@pytest.fixture(scope="module")
def test_df(spark, small_idx):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(small_idx), splits=("test",), limit=30)
    return df.cache()


@pytest.fixture(scope="module")
def test_images(small_idx):
    return idx.read_idx(small_idx / "t10k-images-idx3-ubyte.gz")[:30, ..., None]


def _vectors(stage, df):
    rows = stage.transform(df).select("index", stage.getOutputCol()).collect()
    ordered = sorted(rows, key=lambda r: r["index"])
    return np.stack([r[stage.getOutputCol()].toArray() for r in ordered])


def test_default_layer_is_the_last_before_the_classifier(model_file):
    network = featurizer.user_network(str(model_file))
    assert network.output_layer == "hidden"  # past the Dropout in front of the classifier
    assert network.input_shape == (28, 28, 1)
    import keras

    from mnist_spark import models

    bn_cnn = models.build_model("bn_cnn")  # ... dense, BN, activation, dropout, classifier
    assert isinstance(bn_cnn.layers[-2], keras.layers.Dropout)
    assert isinstance(bn_cnn.layers[-3], keras.layers.Activation)
    assert featurizer.default_feature_layer(bn_cnn) == bn_cnn.layers[-3].name


@pytest.mark.parametrize("layer, pooling, width", [("", "avg", 8), ("conv", "avg", 4), ("conv", "none", 2704)])
def test_features_match_plain_keras(spark, test_df, test_images, model_file, layer, pooling, width):
    import keras

    stage = DeepImageFeaturizer(modelFile=str(model_file), outputLayer=layer, pooling=pooling)
    got = _vectors(stage, test_df)
    net = featurizer.feature_model(keras.saving.load_model(model_file), layer or "hidden", pooling)
    expected = net.predict(test_images.astype(np.float32), verbose=0).reshape(len(test_images), -1)
    assert got.shape == (30, width)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_colour_images_are_converted_and_resized_for_the_model(spark, tmp_path):
    """A 3-channel 20x20 model gets RGB from Spark's BGR; a 1-channel one gets Pillow's luma."""
    import keras
    from PIL import Image
    from test_featurizer import _image_frame

    rng = np.random.default_rng(0)
    bgr = [rng.integers(0, 256, (24, 30, 3), dtype=np.uint8) for _ in range(3)]
    df = _image_frame(spark, bgr)
    for channels, mode in ((3, "RGB"), (1, "L")):
        inputs = keras.Input((20, 20, channels))
        model = keras.Model(inputs, keras.layers.Flatten(name="pixels")(inputs))
        path = tmp_path / f"identity{channels}.keras"
        model.save(path)
        got = _vectors(DeepImageFeaturizer(modelFile=str(path), outputLayer="pixels"), df)
        expected = [
            np.asarray(
                Image.fromarray(p[..., ::-1]).convert(mode).resize((20, 20), Image.Resampling.BOX), np.float32
            ).reshape(-1)
            for p in bgr
        ]
        np.testing.assert_array_equal(got, np.stack(expected))


def test_png_set_gives_the_same_vectors_as_its_idx_files(spark, tiny_idx, model_file, tmp_path):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(tiny_idx))
    df = df.cache()
    df.count()
    pngset.write_png_set(df, str(tmp_path / "pngs"))
    back, bad = pngset.read_png_set(spark, str(tmp_path / "pngs"))
    assert bad == []
    stage = DeepImageFeaturizer(modelFile=str(model_file), outputLayer="conv", pooling="none")

    def vectors(frame) -> dict:
        rows = stage.transform(frame).select("split", "index", "features").collect()
        return {(r["split"], r["index"]): r["features"].toArray() for r in rows}

    from_idx, from_png = vectors(df), vectors(back)
    assert len(from_idx) == 35 and from_idx.keys() == from_png.keys()
    assert any(vector.any() for vector in from_idx.values())
    for name, vector in from_idx.items():
        np.testing.assert_allclose(from_png[name], vector, rtol=1e-5, atol=1e-7)


def test_pipeline_carries_the_model_inside_its_folder(spark, test_df, model_file, tmp_path):
    """Saved, the original file removed, loaded again: the same probabilities, from the copy inside."""
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.classification import LogisticRegression

    own = tmp_path / "own.keras"
    own.write_bytes(model_file.read_bytes())
    stage = DeepImageFeaturizer(modelFile=str(own), outputLayer="hidden")
    model = Pipeline(stages=[stage, LogisticRegression(maxIter=5)]).fit(test_df)
    before = {r["index"]: r["probability"].toArray() for r in model.transform(test_df).collect()}
    saved = tmp_path / "pipeline"
    model.write().save(str(saved))
    own.unlink()
    loaded = PipelineModel.load(str(saved))
    inside = saved / "stages" / f"0_{stage.uid}" / persistence.MODEL_FILE
    assert loaded.stages[0].getModelFile() == str(inside) and inside.read_bytes() == model_file.read_bytes()
    assert loaded.stages[0].getOutputLayer() == "hidden"
    after = {r["index"]: r["probability"].toArray() for r in loaded.transform(test_df).collect()}
    assert sorted(after) == sorted(before)
    for key, value in before.items():
        np.testing.assert_allclose(after[key], value, rtol=1e-6)


def test_clear_errors_for_layers_and_models_that_do_not_fit(spark, test_df, model_file, tmp_path):
    import keras

    with pytest.raises(ValueError, match=r"has no layer 'nope'; set outputLayer to one of: .*hidden"):
        DeepImageFeaturizer(modelFile=str(model_file), outputLayer="nope").transform(test_df)
    tabular = keras.Sequential([keras.Input((10,)), keras.layers.Dense(2)])
    tabular.save(tmp_path / "tabular.keras")
    with pytest.raises(ValueError, match=r"does not take images: its input is \(batch, 10\)"):
        DeepImageFeaturizer(modelFile=str(tmp_path / "tabular.keras")).transform(test_df)
    with pytest.raises(ValueError, match="imageSize 40 does not fit"):
        DeepImageFeaturizer(modelFile=str(model_file), imageSize=40).transform(test_df)
    (tmp_path / "not.keras").write_bytes(b"plain text")
    with pytest.raises(ValueError, match="is not a .keras file"):
        DeepImageFeaturizer(modelFile=str(tmp_path / "not.keras")).transform(test_df)
    with pytest.raises(ValueError, match="does not exist"):
        DeepImageFeaturizer(modelFile=str(tmp_path / "missing.keras")).transform(test_df)


def test_safe_mode_refuses_code_in_the_file(spark, test_df, tmp_path):
    import keras

    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0, name="double")(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="could not be loaded in safe mode"):
        DeepImageFeaturizer(modelFile=str(tmp_path / "lambda.keras")).transform(test_df)


def test_parse_labels():
    assert labels.parse_labels("5,6, 7") == (5, 6, 7)
    for bad, message in (
        ("", "expected labels"),
        ("1,x", "whole numbers"),
        ("1,-2", "whole numbers"),
        ("3,3", "given twice"),
    ):
        with pytest.raises(ValueError, match=message):
            labels.parse_labels(bad)
    with pytest.raises(ValueError, match="label 12 is not in the dataset"):
        labels.check_labels((1, 12), 10)


@pytest.mark.slow
def test_train_cnn_on_a_label_subset_then_transfer(spark, small_idx, tmp_path, capsys):
    base = tmp_path / "base"
    metrics = load_job("train_cnn").run(
        spark,
        data_dir=str(small_idx),
        output=str(base),
        arch="simple_cnn",
        epochs=1,
        labels=[0, 1, 2],
        validation_size=20,
        checkpoint_every=0,
    )
    assert json.loads((base / labels.LABELS_FILE).read_text()) == {"labels": [0, 1, 2]}
    assert labels.read_labels(str(base)) == (0, 1, 2)
    import keras

    assert keras.saving.load_model(base / "model.keras").output_shape == (None, 3)
    counts = np.bincount(idx.read_idx(small_idx / "train-labels-idx1-ubyte.gz"), minlength=10)
    assert metrics["train_rows"] == counts[:3].sum() and metrics["labels"] == [0, 1, 2]
    assert len(metrics["evaluation"]["confusion_matrix"]) == 3

    run = tmp_path / "transfer"
    status, err = run_main(
        load_job("transfer"),
        [
            "--data-dir",
            small_idx,
            "--base-model",
            base,
            "--labels",
            "5,6,7",
            "--train-limit",
            60,
            "--test-limit",
            20,
            "--output",
            run,
        ],
        capsys,
    )
    assert status == 0, err
    result = json.loads((run / "metrics.json").read_text())
    layer = featurizer.default_feature_layer(keras.saving.load_model(base / "model.keras"))
    assert layer.startswith("dense") and result["model_name"].endswith(f"model.keras, layer {layer}")
    assert result["feature_size"] == 128
    assert set(result["label_counts"]["train"]) == {"5", "6", "7"} and result["test_rows"] == 20
    assert result["params"]["labels"] == [5, 6, 7]


def test_bad_subset_and_base_model_flags_are_one_line(spark, small_idx, model_file, tmp_path, capsys):
    status, err = run_main(
        load_job("train_cnn"), ["--data-dir", small_idx, "--labels", "3,12", "--output", tmp_path / "a"], capsys
    )
    assert status == 2 and err == [
        "train_cnn: error: --labels 3,12: label 12 is not in the dataset, whose labels are 0 to 9"
    ]
    status, err = run_main(
        load_job("transfer"),
        ["--data-dir", small_idx, "--base-model", model_file, "--output-layer", "nope", "--output", tmp_path / "b"],
        capsys,
    )
    assert status == 2 and len(err) == 1 and "has no layer 'nope'" in err[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
