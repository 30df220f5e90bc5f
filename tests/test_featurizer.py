"""DeepImageFeaturizer: parity with plain Keras, PNG sets, colour, validation, weights, persistence.

ImageNet weights cannot be downloaded where these tests run, so they use
random weights (``weights="none"``, a fixed seed) or weight files they save
themselves, loaded through the same code as Keras' published files. Every
Spark test runs InceptionV3 at 75 px, its minimum, to stay fast.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import PROJECT
from mnist_spark import datasets, featurizer, idx, images, ingest
from mnist_spark import weights as weight_files
from mnist_spark.featurizer import DeepImageFeaturizer

SIZE = 75


def _features(df, stage, key=("split", "index")):
    """``{key: vector}`` of a transformed DataFrame, collected without a sort (no second pass)."""
    rows = stage.transform(df).select(*key, stage.getOutputCol()).collect()
    return {tuple(r[k] for k in key): r[stage.getOutputCol()].toArray() for r in rows}


def _image_frame(spark, pixels, origins=None):
    """A DataFrame[index, image] of Spark image structs holding ``pixels`` (Spark's channel order).

    ``pixels`` is a list of ``(height, width, channels)`` uint8 arrays, sizes may differ.
    """
    import pyarrow as pa
    from pyspark.sql.types import LongType, StructField, StructType

    origins = origins or [f"test:{i}" for i in range(len(pixels))]
    schema = StructType(
        [StructField("index", LongType(), False), StructField("image", images.image_struct_type(), True)]
    )
    pieces = [(i, images.image_struct_array(p[None], [origins[i]])) for i, p in enumerate(pixels)]

    def make(_):
        for i, struct in pieces:
            yield pa.RecordBatch.from_arrays([pa.array([i], pa.int64()), struct], names=["index", "image"])

    return spark.range(1, numPartitions=1).mapInArrow(make, schema).repartition(2)


@pytest.fixture(scope="module")
def test_df(spark, small_idx):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(small_idx), splits=("test",), limit=40)
    df = df.cache()
    df.count()  # read now: a featurizing task then runs no other Python step beside it
    return df


@pytest.fixture(scope="module")
def test_images(small_idx):
    return idx.read_idx(small_idx / "t10k-images-idx3-ubyte.gz")[:40, ..., None]


@pytest.fixture(scope="module")
def plain_model():
    """The featurizer's default network at 75 px with its random weights, in this process."""
    return featurizer.build_model("InceptionV3", SIZE, "avg", "none")


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    """InceptionV3 (no top) with random weights of its own, saved like Keras' files and by save_weights."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    folder = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(5)
    model = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3), pooling="avg")
    legacy = folder / weight_files.IMAGENET_WEIGHTS["InceptionV3"].weights_file
    with h5py.File(legacy, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    modern = folder / "inception.weights.h5"
    model.save_weights(modern)
    return {"model": model, "legacy": legacy, "modern": modern, "folder": folder}


# --------------------------------------------------------------------------- import and params


def test_import_does_not_load_tensorflow():
    code = (
        "import sys, mnist_spark; assert 'tensorflow' not in sys.modules; "
        "from mnist_spark import DeepImageFeaturizer; assert 'tensorflow' not in sys.modules; "
        "print(DeepImageFeaturizer.__module__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "mnist_spark.featurizer"


def test_defaults_and_choices():
    stage = DeepImageFeaturizer()
    assert (
        stage.getInputCol(),
        stage.getOutputCol(),
        stage.getModelName(),
        stage.getScaleHint(),
        stage.getPooling(),
        stage.getImageSize(),
        stage.getBatchSize(),
        stage.getWeights(),
    ) == ("image", "features", "InceptionV3", "SCALE_AREA_AVERAGING", "avg", 0, 32, "imagenet")
    assert stage.effectiveImageSize() == 299
    assert DeepImageFeaturizer(modelName="VGG16").effectiveImageSize() == 224
    with pytest.raises(
        ValueError,
        match="'Incepshun' is not a supported modelName; choose one of: InceptionV3, Xception, ResNet50, VGG16, VGG19",
    ):
        DeepImageFeaturizer(modelName="Incepshun")
    with pytest.raises(ValueError, match="'Incepshun' is not a supported modelName"):
        stage.setModelName("Incepshun")
    with pytest.raises(
        ValueError,
        match="'SCALE_BEST' is not a supported scaleHint; choose one of: SCALE_AREA_AVERAGING, SCALE_DEFAULT",
    ):
        stage.setScaleHint("SCALE_BEST")
    with pytest.raises(ValueError, match="'mean' is not a supported pooling; choose one of: avg, max, none"):
        stage.setPooling("mean")
    with pytest.raises(ValueError, match="batchSize must be 1 or more, found 0"):
        stage.setBatchSize(0)
    with pytest.raises(ValueError, match="imageSize must be 0 or more, found -3"):
        stage.setImageSize(-3)
    with pytest.raises(TypeError, match="imageSize"):
        stage.setImageSize("big")
    with pytest.raises(ValueError, match="weights must be 'imagenet', 'none' or the path"):
        stage.setWeights(" ")


def test_every_setter_survives_save_and_load(spark, tmp_path):
    stage = (
        DeepImageFeaturizer()
        .setInputCol("picture")
        .setOutputCol("vec")
        .setModelName("Xception")
        .setScaleHint("SCALE_SMOOTH")
        .setPooling("none")
        .setImageSize(71)
        .setBatchSize(5)
        .setWeights("/data/xception.h5")
    )
    stage.write().save(str(tmp_path / "featurizer"))
    loaded = DeepImageFeaturizer.load(str(tmp_path / "featurizer"))
    assert loaded.uid == stage.uid
    for name in ("InputCol", "OutputCol", "ModelName", "ScaleHint", "Pooling", "ImageSize", "BatchSize", "Weights"):
        assert getattr(loaded, f"get{name}")() == getattr(stage, f"get{name}")(), name
    assert loaded.getOutputCol() == "vec" and loaded.getImageSize() == 71
    # Defaults are fixed strings, also after loading (not derived from the uid).
    fresh = DeepImageFeaturizer()
    fresh.write().save(str(tmp_path / "defaults"))
    assert DeepImageFeaturizer.load(str(tmp_path / "defaults")).getOutputCol() == "features"


# --------------------------------------------------------------------------- parity


def test_matches_plain_keras(spark, test_df, test_images, plain_model):
    stage = DeepImageFeaturizer(imageSize=SIZE, weights="none", batchSize=7)
    got = _features(test_df, stage)
    want = plain_model.predict(featurizer.preprocess_images(test_images, "InceptionV3", SIZE), verbose=0)
    assert len(got) == 40 and all(len(v) == 2048 for v in got.values())
    vectors = np.stack([got[("test", i)] for i in range(40)])
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(vectors, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_colour_structs_are_bgr(spark, plain_model):
    """Structs hold BGR; the network must see the RGB image, as plain Keras would be given it."""
    import keras
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(3)]
    rgb += [rng.integers(0, 256, (50, 50, 3), dtype=np.uint8) for _ in range(2)]  # mixed sizes
    rgb[0][..., 0], rgb[0][..., 2] = 255, 0  # strongly red: a swap would change everything
    df = _image_frame(spark, [p[..., ::-1] for p in rgb])  # Spark's order
    stage = DeepImageFeaturizer(imageSize=SIZE, weights="none")
    got = _features(df, stage, key=("index",))

    def plain(arrays):
        resized = np.stack(
            [np.asarray(Image.fromarray(a).resize((SIZE, SIZE), Image.Resampling.BOX)) for a in arrays]
        ).astype(np.float32)
        return plain_model.predict(keras.applications.inception_v3.preprocess_input(resized), verbose=0)

    want, swapped = plain(rgb), plain([p[..., ::-1] for p in rgb])
    vectors = np.stack([got[(i,)] for i in range(5)])
    scale = np.abs(want).max()
    np.testing.assert_allclose(vectors, want, rtol=1e-4, atol=1e-4 * scale)
    assert np.abs(vectors[0] - swapped[0]).max() > 100 * 1e-4 * scale


def test_gray_becomes_three_equal_channels():
    gray = np.arange(28 * 28, dtype=np.uint8).reshape(1, 28, 28, 1)
    x = featurizer.preprocess_images(gray, "VGG16", 32, "SCALE_FAST")
    assert x.shape == (1, 32, 32, 3)
    # VGG's caffe preprocessing subtracts a different mean per channel from the same gray value.
    means = np.array([103.939, 116.779, 123.68], np.float32)
    np.testing.assert_allclose(x[0] + means, np.repeat((x[0] + means)[..., :1], 3, axis=2), atol=1e-4)


# --------------------------------------------------------------------------- validation


def test_validation_errors_come_from_the_driver(spark, test_df, monkeypatch, tmp_path):
    stage = DeepImageFeaturizer(imageSize=SIZE, weights="none")
    with pytest.raises(ValueError, match="no input column 'picture' .*set inputCol"):
        stage.copy({stage.inputCol: "picture"}).transform(test_df)
    with pytest.raises(TypeError, match="column 'split' must be Spark's image struct .* found string"):
        stage.copy({stage.inputCol: "split"}).transform(test_df)
    with pytest.raises(ValueError, match="output column 'label' already exists"):
        stage.copy({stage.outputCol: "label"}).transform(test_df)
    with pytest.raises(ValueError, match="imageSize 74 is below the InceptionV3 minimum of 75 px"):
        stage.copy({stage.imageSize: 74}).transform(test_df)
    with pytest.raises(ValueError, match="imageSize 70 is below the Xception minimum of 71 px"):
        DeepImageFeaturizer(modelName="Xception", imageSize=70, weights="none").transform(test_df)
    with pytest.raises(ValueError, match=r"weights file /nowhere/w\.h5 does not exist"):
        stage.copy({stage.weights: "/nowhere/w.h5"}).transform(test_df)
    not_weights = tmp_path / "notes.h5"
    not_weights.write_text("hello")
    with pytest.raises(ValueError, match="is not an HDF5 weights file"):
        stage.copy({stage.weights: str(not_weights)}).transform(test_df)


def test_missing_imagenet_weights_say_what_to_do(spark, test_df, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(weight_files.ENV_WEIGHTS, raising=False)
    monkeypatch.setenv(weight_files.ENV_OFFLINE, "1")
    with pytest.raises(ValueError) as caught:
        DeepImageFeaturizer(imageSize=SIZE).transform(test_df)
    message = str(caught.value)
    for part in (
        "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "$MNIST_SPARK_WEIGHTS (not set)",
        str(tmp_path / "keras" / "models"),
        "keras.applications.InceptionV3(include_top=False)",
        "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/",
        "weights='none'",
    ):
        assert part in message, part
    monkeypatch.setenv(weight_files.ENV_WEIGHTS, str(tmp_path / "offline"))
    with pytest.raises(
        ValueError,
        match=r"resnet50_weights_tf_dim_ordering_tf_kernels_notop\.h5.*"
        r"\$MNIST_SPARK_WEIGHTS \(.*offline\)",
    ):
        DeepImageFeaturizer(modelName="ResNet50").transform(test_df)


# --------------------------------------------------------------------------- other networks


def test_unpooled_output_is_sparkdls_flat_vector(spark, test_df, test_images):
    """pooling="none" keeps the last block's whole output, flattened (height, width, channels)."""
    stage = DeepImageFeaturizer(
        modelName="VGG16", imageSize=64, pooling="none", weights="none", scaleHint="SCALE_DEFAULT", outputCol="flat"
    )
    got = _features(test_df.limit(6), stage)
    model = featurizer.build_model("VGG16", 64, "none", "none")
    assert model.output_shape == (None, 2, 2, 512)
    want = model.predict(featurizer.preprocess_images(test_images, "VGG16", 64, "SCALE_DEFAULT"), verbose=0)
    assert len(got) == 6
    for (_, i), vector in got.items():
        assert vector.shape == (2 * 2 * 512,)
        np.testing.assert_allclose(vector, want[i].reshape(-1), rtol=1e-4, atol=1e-4 * np.abs(want).max())


# --------------------------------------------------------------------------- weights files


def test_weights_from_files(spark, test_df, test_images, saved_weights, monkeypatch, tmp_path):
    want = saved_weights["model"].predict(featurizer.preprocess_images(test_images, "InceptionV3", SIZE), verbose=0)
    scale = np.abs(want).max()

    def check(stage):
        got = _features(test_df, stage)
        np.testing.assert_allclose(np.stack([got[("test", i)] for i in range(40)]), want, rtol=1e-4, atol=1e-4 * scale)

    # Keras' published layout, found by name as "imagenet" in $MNIST_SPARK_WEIGHTS (air-gapped clusters).
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv(weight_files.ENV_WEIGHTS, str(saved_weights["folder"]))
    check(DeepImageFeaturizer(imageSize=SIZE))
    # ... and in Keras' own cache.
    monkeypatch.delenv(weight_files.ENV_WEIGHTS)
    cache = tmp_path / "keras" / "models"
    cache.mkdir(parents=True)
    (cache / saved_weights["legacy"].name).write_bytes(saved_weights["legacy"].read_bytes())
    weights = weight_files.resolve_weights("imagenet", "InceptionV3")
    assert weights.source == "keras cache" and weights.suffix == ".h5"
    # A file from save_weights, by path, loads through the same code; a folder holding Keras' file name.
    modern = weight_files.resolve_weights(str(saved_weights["modern"]), "InceptionV3")
    assert modern.suffix == ".weights.h5"
    loaded = featurizer.build_model("InceptionV3", SIZE, "avg", str(saved_weights["modern"]))
    assert all(
        np.array_equal(a, b) for a, b in zip(loaded.get_weights(), saved_weights["model"].get_weights(), strict=True)
    )
    assert weight_files.resolve_weights(str(saved_weights["folder"]), "InceptionV3").location == str(
        saved_weights["legacy"]
    )


def test_bad_weight_files(spark, test_df, saved_weights, tmp_path):
    import keras

    data = saved_weights["legacy"].read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    stage = DeepImageFeaturizer(imageSize=SIZE)
    with pytest.raises(ValueError, match=r"weights file .*truncated\.h5 is damaged or truncated .*copy"):
        stage.copy({stage.weights: str(truncated)}).transform(test_df)
    vgg = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    vgg.save_weights(tmp_path / "vgg16.weights.h5")
    with pytest.raises(
        ValueError,
        match=r"vgg16\.weights\.h5 does not fit InceptionV3 without its top .*"
        "set modelName to the network they belong to",
    ):
        stage.copy({stage.weights: str(tmp_path / "vgg16.weights.h5")}).transform(test_df)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="is empty"):
        stage.copy({stage.weights: str(empty)}).transform(test_df)
    folder = tmp_path / "no_weights_here"
    folder.mkdir()
    with pytest.raises(ValueError, match="has no inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        stage.copy({stage.weights: str(folder)}).transform(test_df)


# --------------------------------------------------------------------------- pipelines


@pytest.mark.slow
def test_pipeline_saves_loads_and_predicts_the_same(spark, tiny_idx, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.classification import LogisticRegression

    df, _ = ingest.idx_dataframe(spark, datasets.locate(tiny_idx))
    df = df.cache()
    df.count()
    train, test = df.where("split = 'train'"), df.where("split = 'test'")
    stage = DeepImageFeaturizer(imageSize=SIZE, weights="none", outputCol="deep", batchSize=16)
    pipeline = Pipeline(stages=[stage, LogisticRegression(featuresCol="deep", maxIter=5, regParam=0.05)])
    model = pipeline.fit(train)
    model.write().save(str(tmp_path / "pipeline"))
    loaded = PipelineModel.load(str(tmp_path / "pipeline"))
    assert isinstance(loaded.stages[0], DeepImageFeaturizer)
    assert loaded.stages[0].uid == stage.uid
    assert loaded.stages[0].extractParamMap() == stage.extractParamMap()

    def predictions(m):
        rows = m.transform(test).select("index", "prediction", "probability").collect()
        return {r["index"]: (r["prediction"], r["probability"].toArray()) for r in rows}

    before, after = predictions(model), predictions(loaded)
    assert len(before) == 5 and before.keys() == after.keys()
    for index, (prediction, probability) in before.items():
        assert after[index][0] == prediction
        np.testing.assert_allclose(after[index][1], probability, rtol=1e-6, atol=1e-9)
