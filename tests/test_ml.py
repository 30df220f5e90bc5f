"""Spark ML stages: KerasImageClassifier in Pipelines and tuning, KerasImageTransformer,
DeepImagePredictor, the SQL function, persistence, errors, and the README's examples.

The classifier trains on a tiny synthetic set it learns in one epoch (each of
four classes brightens one quadrant), so tuning has a best model to find. No
ImageNet file can be downloaded here: DeepImagePredictor runs ResNet50 at
32 px with random weights and a class index the test writes.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT, load_job
from mnist_spark import datasets, evaluation, featurizer, images, ingest, ml, models, training
from mnist_spark import labels as label_subset
from mnist_spark.ml import (
    DeepImagePredictor,
    KerasImageClassificationModel,
    KerasImageClassifier,
    KerasImageTransformer,
    register_keras_udf,
)

FAST = dict(modelName="simple_cnn", epochs=2, batchSize=8, partitions=2, stepsPerRound=100, learningRate=1e-3)


def _quadrants(spark, count: int, seed: int, *, index=True):
    """``count`` 28x28 gray images of 4 classes: class k has a bright quadrant k, over noise."""
    from pyspark.sql.types import IntegerType, LongType, StructField, StructType

    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 4
    pixels = rng.integers(0, 60, (count, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        row, col = divmod(int(k), 2)
        pixels[i, row * 14 : (row + 1) * 14, col * 14 : (col + 1) * 14] += 150
    fields = [StructField("label", IntegerType(), False), StructField("image", images.image_struct_type(), False)]
    rows = [(int(labels[i]), (f"q:{seed}:{i}", 28, 28, 1, 0, bytearray(pixels[i].tobytes()))) for i in range(count)]
    if index:
        fields.insert(0, StructField("index", LongType(), False))
        rows = [(i, *row) for i, row in enumerate(rows)]
    return spark.createDataFrame(rows, StructType(fields))


@pytest.fixture(scope="module")
def quadrants(spark):
    train, test = _quadrants(spark, 64, 0).cache(), _quadrants(spark, 24, 1).cache()
    train.count(), test.count()
    yield train, test
    train.unpersist(), test.unpersist()


@pytest.fixture()
def shard_count(monkeypatch):
    """How often the training images are decoded into shards (training.make_shards is called)."""
    calls = []
    real = training.make_shards

    def counted(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "make_shards", counted)
    return calls


def _accuracy(model, df) -> float:
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    return MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(df))


def _save_model(tmp_path, file_name, architecture, **kwargs) -> str:
    path = tmp_path / file_name
    models.build_model(architecture, **kwargs).save(path)
    return str(path)


# --------------------------------------------------------------------------- params and persistence


def test_defaults_setters_and_save_load_of_every_stage(spark, tmp_path):
    path = _save_model(tmp_path, "mlp.keras", "mlp", seed=0)
    values = {
        KerasImageClassifier: dict(
            modelFile=path,
            epochs=3,
            batchSize=16,
            learningRate=0.01,
            lrDecay=0.5,
            lrScaling="sqrt",
            warmupEpochs=0.5,
            partitions=3,
            stepsPerRound=7,
            firstRoundSteps=2,
            batchnormSample=100,
            barrier=True,
            imageSize=32,
            numClasses=12,
            labels=[3, 1],
            scaleHint="SCALE_SMOOTH",
            seed=5,
            inputCol="img",
            labelCol="y",
            predictionCol="p",
            probabilityCol="q",
            predictionBatchSize=64,
        ),
        KerasImageTransformer: dict(
            modelFile=path, inputCol="img", outputCol="o", batchSize=7, scaleHint="SCALE_FAST", channelOrder="RGB"
        ),
        DeepImagePredictor: dict(
            inputCol="img",
            outputCol="o",
            modelName="ResNet50",
            decodePredictions=True,
            topK=3,
            imageSize=64,
            scaleHint="SCALE_DEFAULT",
            batchSize=4,
            weights="none",
        ),
    }
    assert KerasImageClassifier().getSeed() == 0 and KerasImageClassifier().getModelName() == "bn_cnn"
    for cls, settings in values.items():
        stage = cls()
        for name, value in settings.items():
            assert getattr(stage, "set" + name[0].upper() + name[1:])(value) is stage
            assert stage.getOrDefault(name) == value, name
        stage.write().save(str(tmp_path / cls.__name__))
        loaded = cls.load(str(tmp_path / cls.__name__))
        assert loaded.uid == stage.uid
        for name, value in settings.items():
            expected = str(tmp_path / cls.__name__ / "model.keras") if name == "modelFile" else value
            assert loaded.getOrDefault(name) == expected, name
    # The model file is copied into the saved folder.
    saved = tmp_path / "KerasImageTransformer" / "model.keras"
    assert saved.read_bytes() == Path(path).read_bytes()
    with pytest.raises(ValueError, match="'Incepshun' is not a supported modelName; choose one of: InceptionV3"):
        DeepImagePredictor(modelName="Incepshun")
    with pytest.raises(ValueError, match="'resnet' is not a supported modelName; choose one of: mlp, simple_cnn"):
        KerasImageClassifier(modelName="resnet")
    with pytest.raises(ValueError, match="learningRate must be above 0, found -1.0"):
        KerasImageClassifier(learningRate=-1)
    with pytest.raises(TypeError, match="barrier must be True or False"):
        KerasImageClassifier(barrier="yes")


# --------------------------------------------------------------------------- the classifier


@pytest.mark.slow
def test_pipeline_model_predicts_the_same_in_a_fresh_process(spark, quadrants, tmp_path):
    from pyspark.ml import Pipeline

    train, test = quadrants
    pipeline = Pipeline(stages=[KerasImageClassifier(**FAST)])
    model = pipeline.fit(train)
    fitted = model.stages[0]
    assert isinstance(fitted, KerasImageClassificationModel)
    assert fitted.getNumClasses() == 4 and fitted.inputShape == (28, 28, 1) and len(fitted.history) == 1
    scored = model.transform(test)
    assert dict(scored.dtypes)["prediction"] == "double" and dict(scored.dtypes)["probability"] == "vector"
    assert _accuracy(model, test) > 0.9
    rows = scored.select("index", "prediction", "probability").collect()
    before = {r["index"]: [r["prediction"], *r["probability"].toArray().tolist()] for r in rows}
    model.write().save(str(tmp_path / "pipeline"))

    script = (
        "import json, sys\n"
        "from pyspark.ml import PipelineModel\n"
        "from mnist_spark.session import get_spark\n"
        "from pyspark.sql.types import StructType\n"
        "spark = get_spark('fresh', master='local[1]', conf={'spark.ui.enabled': 'false'})\n"
        "test = spark.read.parquet(sys.argv[2])\n"
        "rows = PipelineModel.load(sys.argv[1]).transform(test).select('index', 'prediction', 'probability')\n"
        "print(json.dumps({r['index']: [r['prediction'], *r['probability'].toArray().tolist()]\n"
        "                  for r in rows.collect()}))\n"
    )
    test.write.parquet(str(tmp_path / "test.parquet"))
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "pipeline"), str(tmp_path / "test.parquet")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    after = {int(k): v for k, v in json.loads(result.stdout.strip().splitlines()[-1]).items()}
    assert after.keys() == before.keys() and len(after) == 24
    for index, values in before.items():
        assert after[index][0] == values[0]
        np.testing.assert_allclose(after[index][1:], values[1:], rtol=1e-6, atol=1e-7)


def test_fit_multiple_decodes_once_and_equals_single_fits(spark, quadrants, shard_count):
    from pyspark.ml.tuning import ParamGridBuilder

    train, _ = quadrants
    classifier = KerasImageClassifier(**FAST)
    grid = ParamGridBuilder().addGrid(classifier.learningRate, [1e-3]).addGrid(classifier.seed, [0, 1]).build()
    fitted = dict(classifier.fitMultiple(train, grid))
    assert sorted(fitted) == [0, 1]
    assert shard_count == [2]  # two fits, one decoding of the training images
    weights = {i: m.kerasModel().get_weights() for i, m in fitted.items()}
    assert not np.array_equal(weights[0][0], weights[1][0])
    single = classifier.fit(train, grid[1])
    assert shard_count == [2, 2]
    assert all(np.array_equal(a, b) for a, b in zip(single.kerasModel().get_weights(), weights[1], strict=True))
    assert single.getSeed() == 1 and fitted[1].getSeed() == 1 and fitted[0].getSeed() == 0


@pytest.mark.slow
def test_cross_validator_returns_the_best_model(spark, quadrants, shard_count):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator

    train, test = quadrants
    classifier = KerasImageClassifier(**FAST)
    # A learning rate of 1e-7 cannot learn the quadrants in a few steps; 1e-3 does. Each point
    # sets two params, and neither is the estimator's own value (epochs=2, learningRate=1e-3).
    grid = [
        {classifier.learningRate: 1e-7, classifier.epochs: 3},
        {classifier.learningRate: 3e-3, classifier.epochs: 1},
    ]
    cv = CrossValidator(
        estimator=classifier,
        estimatorParamMaps=grid,
        numFolds=2,
        seed=3,
        evaluator=MulticlassClassificationEvaluator(metricName="accuracy"),
    )
    cv_model = cv.fit(train)
    metrics = cv_model.avgMetrics
    assert metrics[0] < 0.6 < metrics[1]  # 1e-7 stays near chance
    assert cv_model.bestModel.getLearningRate() == 3e-3 and cv_model.bestModel.getEpochs() == 1
    assert _accuracy(cv_model.bestModel, test) > 0.9
    assert shard_count == [2, 2, 2]  # once per fold for both grid points, once for the best model


def test_model_file_trains_at_its_input_size_and_index_is_optional(spark, quadrants, tmp_path):
    train, test = quadrants
    path = _save_model(tmp_path, "small.keras", "simple_cnn", input_shape=(20, 20, 1), num_classes=4, seed=2)
    no_index = train.drop("index")
    model = KerasImageClassifier(
        modelFile=path, epochs=1, batchSize=8, partitions=2, stepsPerRound=100, learningRate=3e-3
    ).fit(no_index)
    assert model.inputShape == (20, 20, 1) and model.getModelFile() == ""
    assert _accuracy(model, test) > 0.9  # 28x28 test images resized to 20x20 as in training
    trained, initial = model.kerasModel(), evaluation.load_model(path)
    assert [layer.name for layer in trained.layers] == [layer.name for layer in initial.layers]
    assert not any(np.array_equal(a, b) for a, b in zip(trained.get_weights(), initial.get_weights(), strict=True))


def test_labels_train_a_subset_and_predict_dataset_labels(spark, quadrants, tmp_path):
    train, test = quadrants
    model = KerasImageClassifier(labels=[3, 2], **FAST).fit(train)  # class 0 is label 3, class 1 label 2
    assert model.getNumClasses() == 2 and model.kerasModel().output_shape == (None, 2)
    rows = model.transform(test.where("label IN (2, 3)")).select("label", "prediction", "probability").collect()
    assert len(rows) == 12 and {r["prediction"] for r in rows} <= {2.0, 3.0}
    assert np.mean([r["label"] == r["prediction"] for r in rows]) > 0.9
    assert all(r["prediction"] == [3.0, 2.0][int(np.argmax(r["probability"]))] for r in rows)
    model.write().save(str(tmp_path / "subset"))
    assert label_subset.read_labels(str(tmp_path / "subset")) == (3, 2)  # labels.json, as train_cnn writes it
    assert KerasImageClassificationModel.load(str(tmp_path / "subset")).getLabels() == [3, 2]
    with pytest.raises(ValueError, match="label 2 is given twice"):
        KerasImageClassifier(labels=[2, 2])


def test_classifier_errors_come_from_the_driver(spark, quadrants, tmp_path):
    from pyspark.sql import functions as F

    train, _ = quadrants
    classifier = KerasImageClassifier(**FAST)
    with pytest.raises(TypeError, match="label column 'label' must be numeric .*StringIndexer first"):
        classifier.fit(train.withColumn("label", F.col("label").cast("string")))
    with pytest.raises(
        ValueError,
        match=r"labels must be whole numbers 0, 1, \.\.\. \(class numbers\), "
        r"found labels from 0.0 to 1.0, 32 of them not whole",
    ):
        classifier.fit(train.withColumn("label", F.col("label") / 3))
    with pytest.raises(TypeError, match="column 'index' must be Spark's image struct"):
        classifier.copy().setInputCol("index").fit(train)
    with pytest.raises(ValueError, match="numClasses 3 does not cover the labels 0 .. 3; set numClasses to at least 4"):
        classifier.copy().setNumClasses(3).fit(train)
    ten = _save_model(tmp_path, "ten.keras", "mlp", seed=0)
    with pytest.raises(ValueError, match="ten.keras outputs 10 values per image but the labels need 4 classes"):
        KerasImageClassifier(modelFile=ten).fit(train)
    with pytest.raises(ValueError, match="set modelName or modelFile, not both"):
        KerasImageClassifier(modelName="mlp", modelFile=ten).fit(train)
    with pytest.raises(ValueError, match="partitions 100 needs at least 100 training images, found 64"):
        classifier.copy().setPartitions(100).fit(train)


# --------------------------------------------------------------------------- scoring saved models


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    return _save_model(folder, "model.keras", "simple_cnn", seed=5)


def test_sql_function_equals_the_predict_job(spark, small_idx, digits_model, tmp_path):
    from pyspark.sql.types import ArrayType, FloatType, IntegerType

    predict_job = load_job("predict")
    predict_job.run(
        spark, model_file=digits_model, data_dir=str(small_idx), output=str(tmp_path / "scored"), splits=("test",)
    )
    expected = {
        r["index"]: (r["prediction"], r["probabilities"])
        for r in spark.read.parquet(str(tmp_path / "scored" / "predictions.parquet")).collect()
    }
    df, _ = ingest.idx_dataframe(spark, datasets.locate(small_idx), splits=("test",))
    df.createOrReplaceTempView("images")
    register_keras_udf(spark, "digit", digits_model)
    register_keras_udf(spark, "digit_scores", digits_model, output="probabilities", batch_size=7)
    rows = spark.sql("SELECT index, digit(image) AS d, digit_scores(image) AS s FROM images").collect()
    assert len(rows) == len(expected) == 100
    assert {r["index"]: r["d"] for r in rows} == {i: p for i, (p, _) in expected.items()}
    for r in rows:
        np.testing.assert_allclose(r["s"], expected[r["index"]][1], rtol=1e-5, atol=1e-6)
    # The predict_batch_udf variant, measured in the benchmark, agrees too.
    keras_file = ml.read_keras_file(digits_model, "test")
    other = ml._predict_batch_udf(spark, keras_file, "prediction", 64, "SCALE_AREA_AVERAGING", "BGR")
    assert {r["index"]: r["d"] for r in df.select("index", other("image").alias("d")).collect()} == {
        i: p for i, (p, _) in expected.items()
    }
    assert spark.sql("SELECT digit(image) FROM images").schema[0].dataType == IntegerType()
    scores_type = spark.sql("SELECT digit_scores(image) FROM images").schema[0].dataType
    assert scores_type == ArrayType(FloatType(), False)
    with pytest.raises(ValueError, match="'label' is not a supported output; choose one of: prediction, probabilities"):
        register_keras_udf(spark, "bad", digits_model, output="label")
    with pytest.raises(ValueError, match="missing.keras does not exist"):
        register_keras_udf(spark, "bad", str(tmp_path / "missing.keras"))


def _colour_frame(spark):
    """Gray 28x28 and BGR 20x24 images in one column (mixed sizes and channels)."""
    import pyarrow as pa
    from pyspark.sql.types import LongType, StructField, StructType

    rng = np.random.default_rng(4)
    pictures = [rng.integers(0, 256, (28, 28, 1), dtype=np.uint8) for _ in range(3)]
    pictures += [rng.integers(0, 256, (20, 24, 3), dtype=np.uint8) for _ in range(3)]
    pieces = [(i, images.image_struct_array(p[None], [f"c:{i}"])) for i, p in enumerate(pictures)]
    schema = StructType(
        [StructField("index", LongType(), False), StructField("image", images.image_struct_type(), True)]
    )

    def make(_):
        for i, struct in pieces:
            yield pa.RecordBatch.from_arrays([pa.array([i], pa.int64()), struct], names=["index", "image"])

    return spark.range(1, numPartitions=1).mapInArrow(make, schema).repartition(2), pictures


def test_transformer_resizes_converts_channels_and_persists(spark, tmp_path):
    import keras
    from pyspark.ml import Pipeline, PipelineModel

    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3))
    flat = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    net = keras.Model(inputs, keras.layers.Dense(5)(flat))
    net.save(tmp_path / "rgb.keras")
    df, pictures = _colour_frame(spark)
    stage = KerasImageTransformer(
        modelFile=str(tmp_path / "rgb.keras"), outputCol="v", channelOrder="RGB", batchSize=4, scaleHint="SCALE_SMOOTH"
    )
    pipeline = Pipeline(stages=[stage]).fit(df)
    pipeline.write().save(str(tmp_path / "saved"))
    (tmp_path / "rgb.keras").unlink()  # the saved pipeline holds its own copy
    loaded = PipelineModel.load(str(tmp_path / "saved"))
    got = {r["index"]: r["v"].toArray() for r in loaded.transform(df).collect()}
    fitted = np.concatenate([featurizer.resize_images(p[None], (16, 16, 3), "SCALE_SMOOTH") for p in pictures])
    expected = net.predict(fitted.astype(np.float32), verbose=0)
    assert sorted(got) == list(range(6))
    np.testing.assert_allclose(np.stack([got[i] for i in range(6)]), expected, rtol=1e-5, atol=1e-5)
    bgr = ml.fit_pixels(pictures[3][None], (16, 16, 3), scale_hint="SCALE_SMOOTH")  # channelOrder BGR
    assert np.array_equal(fitted[3], bgr[0, ..., ::-1])
    assert np.array_equal(ml.fit_pixels(pictures[0][None], (28, 28, 1)), pictures[0][None])

    conv = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    conv.save(tmp_path / "conv.keras")
    with pytest.raises(ValueError, match=r"conv.keras outputs shape \(batch, 14, 14, 2\); expected \(batch, n\)"):
        KerasImageTransformer(modelFile=str(tmp_path / "conv.keras")).transform(df)
    with pytest.raises(ValueError, match="output column 'index' already exists"):
        stage.copy().setOutputCol("index").transform(df)
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ValueError, match="broken.keras could not be loaded"):
        KerasImageTransformer(modelFile=str(tmp_path / "broken.keras")).transform(df)


# --------------------------------------------------------------------------- ImageNet predictions


@pytest.fixture()
def class_index(tmp_path, monkeypatch):
    """A class index of 1000 made-up classes in $MNIST_SPARK_WEIGHTS; Keras' cache points nowhere."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("MNIST_SPARK_WEIGHTS", str(tmp_path))
    index = {str(i): [f"n{i:08d}", f"thing {i}"] for i in range(1000)}
    (tmp_path / "imagenet_class_index.json").write_text(json.dumps(index))
    return tmp_path / "imagenet_class_index.json"


def test_deep_image_predictor_decodes_the_top_k(spark, class_index):
    from mnist_spark import featurizer

    df, pictures = _colour_frame(spark)
    stage = DeepImagePredictor(
        modelName="ResNet50", imageSize=32, weights="none", decodePredictions=True, topK=3, outputCol="top"
    )
    decoded = {r["index"]: r["top"] for r in stage.transform(df).collect()}
    vectors = {
        r["index"]: r["p"].toArray()
        for r in stage.copy().setDecodePredictions(False).setOutputCol("p").transform(df).collect()
    }
    net = ml._build_top("ResNet50", 32, None)
    inputs = np.concatenate([featurizer.preprocess_images(p[None], "ResNet50", 32) for p in pictures])
    expected = net.predict(inputs, verbose=0)
    np.testing.assert_allclose(np.stack([vectors[i] for i in range(6)]), expected, rtol=1e-4, atol=1e-6)
    for i in range(6):
        top = np.argsort(-expected[i], kind="stable")[:3]
        assert [e["class"] for e in decoded[i]] == [f"n{k:08d}" for k in top]
        assert [e["description"] for e in decoded[i]] == [f"thing {k}" for k in top]
        np.testing.assert_allclose([e["probability"] for e in decoded[i]], expected[i][top], rtol=1e-4)


def test_deep_image_predictor_errors(spark, class_index):
    df, _ = _colour_frame(spark)
    stage = DeepImagePredictor(modelName="ResNet50", imageSize=32, weights="none", decodePredictions=True)
    class_index.write_text(json.dumps({str(i): [f"n{i}", f"thing {i}"] for i in range(10)}))
    with pytest.raises(ValueError, match="names 10 classes but ResNet50 outputs 1000"):
        stage.transform(df)
    class_index.unlink()
    with pytest.raises(ValueError) as missing:
        stage.transform(df)
    text = str(missing.value)
    assert "\n" not in text
    assert text.startswith("the ImageNet class index imagenet_class_index.json is not on this machine")
    assert "MNIST_SPARK_WEIGHTS" in text and "decode_predictions" in text and "decodePredictions=False" in text
    with pytest.raises(ValueError, match="resnet50_weights_tf_dim_ordering_tf_kernels.h5, looked for in"):
        stage.copy().setWeights("imagenet").setDecodePredictions(False).transform(df)
    with pytest.raises(ValueError, match="VGG16's classifier takes 224 px images only, found imageSize 64"):
        DeepImagePredictor(modelName="VGG16", imageSize=64).transform(df)
    with pytest.raises(ValueError, match="imageSize 16 is below the ResNet50 minimum of 32 px"):
        stage.copy().setImageSize(16).transform(df)


# --------------------------------------------------------------------------- the README


def _readme_blocks() -> list[str]:
    text = (PROJECT / "README.md").read_text()
    section = text.split("\n## Spark ML API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_readme_examples_run(spark, quadrants, class_index, shard_count, tmp_path, monkeypatch):
    """Every python block of the README's "Spark ML API" section, in order, on small data."""
    train, test = quadrants
    monkeypatch.chdir(tmp_path)
    photos, _ = _colour_frame(spark)
    # ResNet50's "ImageNet" file, random weights under Keras' name, where the class index is.
    weights = class_index.parent / ml.top_imagenet_weights("ResNet50").weights_file
    ml._build_top("ResNet50", 224, None).save_weights(tmp_path / "resnet50.weights.h5")
    (tmp_path / "resnet50.weights.h5").rename(weights)
    blocks = _readme_blocks()
    assert len(blocks) == 4
    names = {"spark": spark, "train_df": train, "test_df": test, "photos_df": photos}
    for block in blocks:
        # Spark's own writers resolve a relative path in the JVM's folder, not this test's.
        block = block.replace('"runs/', f'"{tmp_path}/runs/')
        exec(compile(block, "README.md", "exec"), names)
    assert 0 <= names["accuracy"] <= 1
    assert shard_count == [2, 2]  # TrainValidationSplit: once for its two grid points, once for the best
    assert isinstance(names["best"], KerasImageClassificationModel)
    assert (tmp_path / "runs" / "digits-classifier" / "model.keras").exists()
    assert (tmp_path / "runs" / "digits-classifier" / "metadata").is_dir()  # Spark's part, here too
    assert len(names["scores"].first()["scores"]) == 4
    assert len(names["labels"].first()["predicted"]) == 3
    assert {r["digit"] for r in names["digits"].collect()} <= {0, 1, 2, 3}
