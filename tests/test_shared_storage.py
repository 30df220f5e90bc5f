"""Data and run folders on S3: a local S3 server (moto) stands in for the shared storage of a
cluster. The driver finds and checksums the files, executors read their slices, and the
training job writes its run folder there, all through ``pyarrow.fs``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import MNIST_DIR, load_job
from mnist_spark import datasets, evaluation, idx, ingest, storage
from mnist_spark.session import is_connect

train_job = load_job("train_cnn")

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def s3(spark, small_idx):
    """A local S3 endpoint with bucket ``data`` holding ``mnist/`` (the real MNIST) and ``small/``
    (the 600 synthetic training images of ``small_idx``), and an empty bucket ``runs``.

    The settings reach the driver through its environment and, on classic Spark, the
    executors' Python workers through ``sc.environment``. Spark Connect has no way to give
    them to the server's executors, whose environment is the server's.
    """
    import boto3  # boto3 and moto come with the test extras
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {**S3_ENV, "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    executors = {} if is_connect(spark) else spark.sparkContext.environment
    executors.update(settings)
    client = boto3.client("s3", endpoint_url=settings["AWS_ENDPOINT_URL_S3"])
    for bucket in ("data", "runs"):
        client.create_bucket(Bucket=bucket)
    for folder, prefix in ((MNIST_DIR, "mnist"), (small_idx, "small")):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".gz"):
                client.upload_file(str(folder / name), "data", f"{prefix}/{name}")
    yield client
    for key, value in saved.items():
        executors.pop(key, None)
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


@pytest.mark.classic(reason="the executors reach S3 through settings sc.environment gives them")
def test_locate_checksums_and_executors_read_slices_from_s3(spark, s3):
    files = datasets.locate("s3://data/mnist")
    assert files.dataset is datasets.MNIST  # the published MD5s matched, streamed from S3
    assert files.images("test") == "s3://data/mnist/t10k-images-idx3-ubyte.gz"
    df, infos = ingest.idx_dataframe(spark, files, splits=("test",), limit=300, partitions=3)
    assert infos[0].count == 300
    rows = sorted(df.collect(), key=lambda r: r["index"])
    want = idx.read_idx(MNIST_DIR / "t10k-images-idx3-ubyte.gz")[:300]
    labels = idx.read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")[:300]
    assert [r["index"] for r in rows] == list(range(300))
    assert [r["label"] for r in rows] == labels.tolist()
    assert all(bytes(r["image"]["data"]) == want[i].tobytes() for i, r in enumerate(rows))


def test_missing_s3_folder_is_one_clear_error(s3):
    with pytest.raises(ValueError, match="s3://data/nothing-here: no such folder"):
        datasets.locate("s3://data/nothing-here")


@pytest.mark.slow
@pytest.mark.classic(reason="the executors reach S3 through settings sc.environment gives them")
def test_train_cnn_reads_and_writes_s3(spark, s3):
    """Hadoop's s3a:// names work too: the same URI serves Spark and pyarrow."""
    metrics = train_job.run(
        spark,
        data_dir="s3a://data/small",
        output="s3a://runs/cnn",
        arch="simple_cnn",
        epochs=3,
        batch_size=32,
        partitions=2,
        limit=200,
        validation_size=0,
    )
    assert metrics["rounds"] == 3 and metrics["train_rows"] == 200  # an epoch each (4 steps)
    keys = _keys(s3, "runs")
    assert {
        "cnn/_SUCCESS",
        "cnn/model.keras",
        "cnn/metrics.json",
        "cnn/report.html",
        "cnn/learning_curves.png",
        "cnn/checkpoints/round-0002.npz",
        "cnn/checkpoints/round-0003.npz",
    } <= set(keys)  # the two newest checkpoints
    assert "cnn/checkpoints/round-0001.npz" not in keys
    assert not [key for key in keys if not key.startswith("cnn/")]  # no staging folder left
    model = evaluation.load_model("s3a://runs/cnn/model.keras")
    assert model.count_params() > 0
    # An existing output on S3 is refused like a local one.
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_job.run(spark, data_dir="s3a://data/small", output="s3a://runs/cnn", limit=200)
    assert storage.read_bytes("s3://runs/cnn/metrics.json").startswith(b"{")
    assert np.isfinite(metrics["test_loss"])


def _files(client, bucket: str, prefix: str = "") -> list[str]:
    """The keys of files, without the empty markers pyarrow writes for folders (``name/``)."""
    return [key for key in _keys(client, bucket, prefix) if not key.endswith("/")]


@pytest.fixture
def no_copies(monkeypatch):
    """Make copying files from one folder to another fail the test."""
    from pyarrow import fs as pafs

    monkeypatch.setattr(pafs, "copy_files", lambda *a, **k: pytest.fail("files were copied"))


def test_a_new_output_on_s3_is_written_in_place_never_copied(s3, no_copies):
    target = storage.AtomicOutput("s3a://runs/in-place", job="ingest")
    assert target.in_place and target.staging == "s3a://runs/in-place"
    with target as staging:
        storage.write_bytes(storage.join(staging, "data.parquet", "part-0.parquet"), b"rows")
        assert _files(s3, "runs", "in-place/") == ["in-place/_OWNER", "in-place/data.parquet/part-0.parquet"]
        with pytest.raises(FileExistsError, match="being written by another run"):
            storage.AtomicOutput("s3a://runs/in-place")  # a second run while this one writes
    assert _files(s3, "runs", "in-place/") == [
        "in-place/_MNIST_SPARK",
        "in-place/_SUCCESS",
        "in-place/data.parquet/part-0.parquet",
    ]
    assert storage.finished_output("s3://runs/in-place")["job"] == "ingest"
    # A failed run leaves nothing.
    with pytest.raises(RuntimeError), storage.AtomicOutput("s3a://runs/failed") as staging:
        storage.write_bytes(storage.join(staging, "part-0"), b"half")
        raise RuntimeError("stopped")
    assert _files(s3, "runs", "failed") == []


def test_replacing_an_output_on_s3_keeps_the_old_one_until_the_new_one_is_complete(s3):
    with storage.AtomicOutput("s3a://runs/kept") as staging:
        storage.write_bytes(storage.join(staging, "old.txt"), b"old")
    target = storage.AtomicOutput("s3a://runs/kept", overwrite=True)
    assert not target.in_place and target.staging.startswith("s3a://runs/kept.tmp-")
    with pytest.raises(RuntimeError), target as staging:
        storage.write_bytes(storage.join(staging, "new.txt"), b"new")
        raise RuntimeError("stopped")
    assert _files(s3, "runs", "kept") == ["kept/_MNIST_SPARK", "kept/_SUCCESS", "kept/old.txt"]
    with storage.AtomicOutput("s3a://runs/kept", overwrite=True) as staging:
        storage.write_bytes(storage.join(staging, "new.txt"), b"new")
    assert _files(s3, "runs", "kept") == ["kept/_MNIST_SPARK", "kept/_SUCCESS", "kept/new.txt"]


def test_an_output_left_unfinished_in_place_by_a_killed_run_is_removed(s3):
    import json
    import socket

    gone = {
        "writer": "mnist_spark",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": storage.process_start(os.getpid()) + 1,
    }  # this pid, another start: a gone process
    s3.put_object(Bucket="runs", Key="killed/_OWNER", Body=json.dumps(gone).encode())
    s3.put_object(Bucket="runs", Key="killed/data.parquet/part-0.parquet", Body=b"half")
    s3.put_object(Bucket="runs", Key="foreign/data.csv", Body=b"a user's file")
    with storage.AtomicOutput("s3a://runs/killed") as staging:
        storage.write_bytes(storage.join(staging, "part-1"), b"rows")
    assert _files(s3, "runs", "killed/") == ["killed/_MNIST_SPARK", "killed/_SUCCESS", "killed/part-1"]
    with pytest.raises(FileExistsError, match="not written by this project"):
        storage.AtomicOutput("s3a://runs/foreign", overwrite=True)  # no _OWNER: never removed
    assert _files(s3, "runs", "foreign/") == ["foreign/data.csv"]


def test_spark_writes_an_object_store_output_in_place(spark, tiny_idx, tmp_path, monkeypatch, no_copies):
    """Spark's own writer (ingest's Parquet) writes into the output itself when folders cannot be
    renamed; a local folder stands in for the object store (Spark here has no S3 connector)."""
    from conftest import load_job

    monkeypatch.setattr(storage, "_renames_folders", lambda filesystem: False)
    out = tmp_path / "ingested"
    load_job("ingest").run(spark, data_dir=str(tiny_idx), output=str(out), limit=10)
    assert sorted(os.listdir(tmp_path)) == ["ingested"]  # no staging folder beside it
    assert {"_SUCCESS", "_MNIST_SPARK", "metrics.json", "data.parquet"} <= set(os.listdir(out))
    assert ingest.read_dataset(spark, str(out)).count() == 15
