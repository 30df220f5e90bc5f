"""--input: every job reads the last one's output, Parquet, tables and folders of images."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from conftest import MNIST_DIR, load_job
from mnist_spark import sources

pytestmark = pytest.mark.slow  # each test trains a model end to end

train_job, predict_job = load_job("train_cnn"), load_job("predict")

#: A short run of the default model's engine on real digits: two replicas, two rounds.
TRAIN = dict(arch="simple_cnn", epochs=1, batch_size=32, partitions=2, limit=400, validation_size=0, seed=3)


def _model_arrays(run) -> list:
    import io

    import h5py

    with zipfile.ZipFile(run / "model.keras") as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as f:
        arrays = []
        f.visititems(lambda name, item: arrays.append((name, item[()])) if hasattr(item, "shape") else None)
    return arrays


def _assert_same_model(run, reference) -> None:
    got, want = _model_arrays(run), _model_arrays(reference)
    assert len(want) > 6 and [n for n, _ in got] == [n for n, _ in want]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, want, strict=True))


@pytest.fixture(scope="module")
def idx_run(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("idx") / "run"
    train_job.run(spark, data_dir=str(MNIST_DIR), output=str(out), **TRAIN)
    return out


def test_ingest_output_and_png_set_train_the_same_model_as_the_idx_files(spark, idx_run, tmp_path):
    ingested, pngs = tmp_path / "ingested", tmp_path / "pngs"
    load_job("ingest").run(spark, data_dir=str(MNIST_DIR), output=str(ingested), limit=400)
    load_job("export_png").run(spark, data_dir=str(MNIST_DIR), output=str(pngs), limit=400, sample=0)
    # export_png reads ingest's output too, and writes the same files.
    again = tmp_path / "pngs-from-ingested"
    load_job("export_png").run(spark, input=str(ingested), output=str(again), limit=400, sample=2)
    files = sorted(p.relative_to(pngs) for p in pngs.rglob("*.png"))
    assert len(files) == 800 and files == sorted(p.relative_to(again) for p in again.rglob("[0-9]*.png"))
    assert all((pngs / f).read_bytes() == (again / f).read_bytes() for f in files[::37])
    assert (again / "contact_sheet.png").exists()
    for source in (ingested, pngs):
        out = tmp_path / f"from-{source.name}"
        metrics = train_job.run(spark, input=str(source), output=str(out), **TRAIN)
        assert metrics["train_rows"] == 400 and metrics["test_rows"] == 400
        _assert_same_model(out, idx_run)
        assert metrics["params"]["input"] == str(source)


def _jpeg_folder(root, per_class: int = 24):
    """64x64 RGB JPEGs in class folders named by colour: each class a different dominant channel."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, name in enumerate(("blue", "green", "red")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 90, (64, 64, 3), dtype=np.uint8)
            pixels[..., 2 - k] += 150  # RGB order: red is channel 0
            Image.fromarray(pixels, "RGB").save(root / name / f"{i:03d}.jpg", quality=90)
    return root


def test_a_folder_of_images_is_decoded_once(spark, tmp_path):
    """The jobs' passes over a folder (training, evaluation, report) read the files once."""
    folder = _jpeg_folder(tmp_path / "photos", per_class=4)
    frame = sources.read_source(spark, str(folder)).frame
    assert frame.count() == 12
    for jpeg in folder.rglob("*.jpg"):
        jpeg.write_bytes(b"")  # spoiled after the first pass: only a kept copy still has them
    rows = frame.select("label", "image.height").collect()
    assert len(rows) == 12 and {r["height"] for r in rows} == {64}
    frame.unpersist()


def test_a_jpeg_folder_with_string_labels_trains_and_predicts_its_labels(spark, tmp_path):
    folder = _jpeg_folder(tmp_path / "photos")
    out = tmp_path / "run"
    metrics = train_job.run(
        spark,
        input=str(folder),
        output=str(out),
        arch="simple_cnn",
        epochs=3,
        batch_size=8,
        partitions=2,
        validation_size=0,
        test_fraction=0.25,
    )
    assert json.loads((out / "labels.json").read_text()) == {"labels": ["blue", "green", "red"]}
    assert metrics["train_rows"] + metrics["test_rows"] == 72 and metrics["test_rows"] > 0
    assert metrics["test_accuracy"] > 0.8  # three colours, easy to tell apart
    scored = predict_job.run(spark, model_file=str(out), input=str(folder), output=str(tmp_path / "scored"))
    rows = spark.read.parquet(str(tmp_path / "scored" / "predictions.parquet")).collect()
    assert scored["count"] == 72 and scored["labelled"] == 72 and scored["accuracy"] > 0.8
    assert {r["label"] for r in rows} == {"blue", "green", "red"}
    assert {r["prediction"] for r in rows} <= {"blue", "green", "red"}
    assert all(r["origin"].endswith(f"/{r['label']}/{r['origin'].rsplit('/', 1)[1]}") for r in rows)
    # saved_model/, for TF Serving: the same outputs as model.keras.
    import keras
    import tensorflow as tf

    batch = np.random.default_rng(1).integers(0, 256, (4, 64, 64, 3)).astype(np.float32)
    loaded = tf.saved_model.load(str(out / "saved_model"))  # kept: its variables live as long as it does
    served = loaded.serve(tf.constant(batch)).numpy()
    expected = keras.saving.load_model(out / "model.keras").predict(batch, verbose=0)
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)


def test_parquet_and_table_with_named_columns_and_a_seeded_split(spark, tmp_path):
    from pyspark.sql import functions as F

    ingested = tmp_path / "ingested"
    load_job("ingest").run(spark, data_dir=str(MNIST_DIR), output=str(ingested), splits=("test",), limit=300)
    plain = tmp_path / "plain.parquet"
    frame = spark.read.parquet(str(ingested / "data.parquet")).select(
        F.col("image").alias("picture"), F.concat(F.lit("digit-"), F.col("label")).alias("kind")
    )
    frame.write.parquet(str(plain))
    one = sources.read_source(spark, str(plain), image_col="picture", label_col="kind", seed=7)
    again = sources.read_source(spark, str(plain), image_col="picture", label_col="kind", seed=7)
    other = sources.read_source(spark, str(plain), image_col="picture", label_col="kind", seed=8)
    assert one.kind == "parquet" and one.classes == tuple(f"digit-{d}" for d in range(10))
    assert one.frame.columns == ["split", "index", "label", "image"]

    def split_of(source):
        return {r["index"]: r["split"] for r in source.frame.select("index", "split").collect()}

    assert split_of(one) == split_of(again) != split_of(other)
    share = sum(s == "test" for s in split_of(one).values()) / 300
    assert 0.1 < share < 0.3  # about the default 0.2
    frame.createOrReplaceTempView("photos_table")
    table = sources.read_source(spark, table="photos_table", image_col="picture", label_col="kind", seed=7)
    assert split_of(table) == split_of(one) and table.kind == "table"
    with pytest.raises(ValueError, match=r"has no column 'image'.*name it with --image-col"):
        sources.read_source(spark, str(plain))
    with pytest.raises(ValueError, match=r"column 'kind' is string; expected Spark's image struct"):
        sources.read_source(spark, str(plain), image_col="kind", label_col="kind")


def test_image_size_and_channels_say_what_the_network_sees(spark, tmp_path):
    import keras

    folder = _jpeg_folder(tmp_path / "photos", per_class=8)
    out = tmp_path / "run"
    common = dict(arch="simple_cnn", epochs=1, batch_size=8, partitions=2, test_fraction=0.25)
    metrics = train_job.run(
        spark, input=str(folder), output=str(out), image_size=(32, 24), channels=1, validation_size=4, **common
    )
    assert keras.saving.load_model(out / "model.keras").input_shape == (None, 32, 24, 1)
    assert 0 <= metrics["history"][-1]["val_accuracy"] <= 1  # validation images resized on the driver too
    assert metrics["params"]["image_size"] == [32, 24] and metrics["params"]["channels"] == 1
    scored = predict_job.run(spark, model_file=str(out), input=str(folder), output=str(tmp_path / "scored"))
    assert scored["count"] == 24
    args = train_job.arg_parser().parse_args(["--image-size", "32,24", "--channels", "1"])
    assert args.image_size == (32, 24) and args.channels == 1
