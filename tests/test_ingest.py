"""Ingest: IDX files -> DataFrame of Spark image structs -> Parquet run folder."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from conftest import MNIST_DIR, load_job, partition_count, write_idx_dataset
from mnist_spark import datasets, idx, ingest
from mnist_spark.session import is_connect

ingest_job = load_job("ingest")


def _rows(df):
    return sorted(df.collect(), key=lambda r: (r.split, r["index"]))


def test_schema_is_sparks_image_struct(spark, tiny_idx, tmp_path):
    from PIL import Image
    from pyspark.ml.image import ImageSchema

    df, _ = ingest.idx_dataframe(spark, datasets.locate(tiny_idx))
    assert df.schema["image"].dataType == ImageSchema.imageSchema["image"].dataType
    # The same struct and bytes as Spark's own reader gives for a grayscale PNG.
    first = [r for r in _rows(df) if r.split == "train"][0]
    pixels = np.frombuffer(first.image.data, np.uint8).reshape(28, 28)
    Image.fromarray(pixels, mode="L").save(tmp_path / "digit.png")
    png = spark.read.format("image").load(str(tmp_path / "digit.png")).collect()[0].image
    assert (png.height, png.width, png.nChannels, png.mode) == (28, 28, 1, 0)
    assert (first.image.height, first.image.width, first.image.nChannels, first.image.mode) == (28, 28, 1, 0)
    assert png.data == first.image.data
    assert first.image.origin == "idx:train-images-idx3-ubyte.gz#0"


def test_pixels_and_labels_equal_the_idx_files(spark, small_idx):
    df, infos = ingest.idx_dataframe(spark, datasets.locate(small_idx), partitions=5)
    assert partition_count(df) == 5
    rows = _rows(df)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        part = [r for r in rows if r.split == split]
        with gzip.open(small_idx / f"{prefix}-images-idx3-ubyte.gz") as f:
            raw = f.read()
        assert b"".join(r.image.data for r in part) == raw[16:]
        labels = idx.read_idx(small_idx / f"{prefix}-labels-idx1-ubyte.gz")
        assert [r.label for r in part] == labels.tolist()
        assert [r["index"] for r in part] == list(range(len(labels)))
    assert [i.count for i in infos] == [600, 100]
    assert sum(infos[0].label_counts) == 600


def test_partitioning_does_not_change_the_data(spark, small_idx):
    files = datasets.locate(small_idx)
    one, _ = ingest.idx_dataframe(spark, files, partitions=1)
    many, _ = ingest.idx_dataframe(spark, files, partitions=7)
    assert _rows(one) == _rows(many)


def test_limit_and_splits(spark, small_idx):
    df, infos = ingest.idx_dataframe(spark, datasets.locate(small_idx), splits=("test",), limit=17)
    rows = _rows(df)
    assert len(rows) == 17 and {r.split for r in rows} == {"test"}
    assert [r["index"] for r in rows] == list(range(17))
    assert infos[0].count == 17


def test_other_sizes_and_colour(spark, tmp_path):
    """Any dataset in the four-file layout: 20x32 grayscale, and RGB stored as Spark's BGR."""
    gray = write_idx_dataset(tmp_path / "gray", 12, 4, shape=(20, 32), num_classes=3, gz=False)
    df, _ = ingest.idx_dataframe(spark, datasets.locate(gray), num_classes=3)
    row = _rows(df)[0]
    assert (row.image.height, row.image.width, row.image.nChannels) == (20, 32, 1)

    rgb = write_idx_dataset(tmp_path / "rgb", 6, 2, shape=(5, 7, 3))
    df, _ = ingest.idx_dataframe(spark, datasets.locate(rgb))
    row = [r for r in _rows(df) if r.split == "train"][0]
    source = idx.read_idx(rgb / "train-images-idx3-ubyte.gz")[0]
    stored = np.frombuffer(row.image.data, np.uint8).reshape(5, 7, 3)
    assert row.image.mode == 16 and row.image.nChannels == 3
    np.testing.assert_array_equal(stored, source[..., ::-1])


@pytest.mark.parametrize(
    "defect, message",
    [
        ("uint16", "must be uint8"),
        ("count", "60"),
        ("label", "outside"),
    ],
)
def test_bad_datasets_fail_on_the_driver(spark, tmp_path, defect, message):
    folder = write_idx_dataset(tmp_path / "bad", 6, 2)
    if defect == "uint16":
        idx.write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((6, 28, 28), np.int16))
    elif defect == "count":
        idx.write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(60, np.uint8))
    else:
        idx.write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(6, 12, np.uint8))
    # On Spark Connect a ValueError can only come from the driver (a task's error arrives as the
    # server's exception); classic Spark's status tracker also shows that no Spark job ran.
    tracker = None if is_connect(spark) else spark.sparkContext.statusTracker()
    jobs_before = tracker and tracker.getJobIdsForGroup()
    with pytest.raises(ValueError, match=message):
        ingest.idx_dataframe(spark, datasets.locate(folder))
    if tracker is not None:
        assert tracker.getJobIdsForGroup() == jobs_before


def test_job_writes_parquet_metrics_and_marker(spark, small_idx, tmp_path):
    out = tmp_path / "run"
    metrics = ingest_job.run(spark, data_dir=str(small_idx), output=str(out), partitions=3)
    assert sorted(os.listdir(out)) == ["_MNIST_SPARK", "_SUCCESS", "data.parquet", "metrics.json"]
    assert sorted(p for p in os.listdir(out / "data.parquet") if not p.startswith((".", "_"))) == [
        "split=test",
        "split=train",
    ]
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["rows"] == {"train": 600, "test": 100}
    back = ingest.read_dataset(spark, str(out))
    assert back.columns == ["split", "index", "label", "image"]
    fresh, _ = ingest.idx_dataframe(spark, datasets.locate(small_idx))
    assert _rows(back) == _rows(fresh)
    counts = {r.label: r["count"] for r in back.where("split = 'train'").groupBy("label").count().collect()}
    assert [counts[c] for c in range(10)] == metrics["label_counts"]["train"]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_job_refuses_an_existing_output_and_overwrites_on_request(spark, tiny_idx, tmp_path):
    out = tmp_path / "run"
    ingest_job.run(spark, data_dir=str(tiny_idx), output=str(out))
    stamp = (out / "metrics.json").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="--overwrite"):
        ingest_job.run(spark, data_dir=str(tiny_idx), output=str(out))
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    ingest_job.run(spark, data_dir=str(tiny_idx), output=str(out), overwrite=True, limit=3)
    assert json.loads((out / "metrics.json").read_text())["rows"] == {"train": 3, "test": 3}
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_job_on_bad_input_exits_2_with_one_line_and_no_output(spark, tmp_path, capsys):
    folder = write_idx_dataset(tmp_path / "bad", 6, 2)
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as f:
        data = f.read()
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(data[:-100])
    out = tmp_path / "run"
    status = ingest_job.main(["--data-dir", str(folder), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith("ingest: error: ")
    assert "t10k-images-idx3-ubyte.gz" in err[-1] and "truncated" in err[-1]
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["bad"]


@pytest.mark.parametrize("argv", [["--limit", "0"], ["--partitions", "-2"], ["--seed", "x"]])
def test_job_rejects_bad_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ingest_job.main(argv)
    assert exit_info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_seed_is_gone_with_a_warning(caplog):
    args = ingest_job.arg_parser().parse_args(["--seed", "3"])
    assert not hasattr(args, "seed")
    assert "--seed is deprecated and will be removed in the next release; ingest is deterministic" in caplog.text


def test_full_mnist(spark, tmp_path):
    """All 70,000 MNIST images: row and class counts, and the pixels byte for byte."""
    out = tmp_path / "mnist"
    metrics = ingest_job.run(spark, data_dir=str(MNIST_DIR), output=str(out))
    assert metrics["rows"] == {"train": 60000, "test": 10000}
    assert metrics["label_counts"]["train"] == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert metrics["label_counts"]["test"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    df = ingest.read_dataset(spark, str(out))
    counts = {(r.split, r.label): r["count"] for r in df.groupBy("split", "label").count().collect()}
    assert [counts[("test", c)] for c in range(10)] == metrics["label_counts"]["test"]
    assert [counts[("train", c)] for c in range(10)] == metrics["label_counts"]["train"]
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pdf = df.where(f"split = '{split}'").select("index", "image.data").toPandas()
        pdf = pdf.sort_values("index")
        assert pdf["index"].tolist() == list(range(len(pdf)))
        with gzip.open(MNIST_DIR / f"{prefix}-images-idx3-ubyte.gz") as f:
            raw = f.read()
        assert b"".join(pdf["data"]) == raw[16:]
