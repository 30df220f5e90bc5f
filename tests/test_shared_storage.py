"""Data and run folders on S3: a local S3 server (moto) stands in for the shared storage of a
cluster. The driver finds and checksums the files, executors read their slices, and the
training job writes its run folder there, all through ``pyarrow.fs``."""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import MNIST_DIR, load_job
from mnist_spark import datasets, evaluation, idx, ingest, storage

train_job = load_job("train_cnn")

S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
          "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3(spark):
    """A local S3 endpoint with bucket ``data`` holding ``mnist/`` and an empty bucket ``runs``.

    The settings reach the driver through its environment and the executors'
    Python workers through ``spark.executorEnv`` (``sc.environment``).
    """
    import boto3  # boto3 and moto come with the test extras
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {**S3_ENV, "AWS_ENDPOINT_URL_S3": f"http://{host}:{port}"}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    spark.sparkContext.environment.update(settings)
    client = boto3.client("s3", endpoint_url=settings["AWS_ENDPOINT_URL_S3"])
    for bucket in ("data", "runs"):
        client.create_bucket(Bucket=bucket)
    for name in sorted(os.listdir(MNIST_DIR)):
        if name.endswith(".gz"):
            client.upload_file(str(MNIST_DIR / name), "data", f"mnist/{name}")
    yield client
    for key, value in saved.items():
        spark.sparkContext.environment.pop(key, None)
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


def _keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


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


def test_train_cnn_reads_and_writes_s3(spark, s3):
    """Hadoop's s3a:// names work too: the same URI serves Spark and pyarrow."""
    metrics = train_job.run(spark, data_dir="s3a://data/mnist", output="s3a://runs/cnn", arch="simple_cnn",
                            epochs=2, batch_size=32, partitions=2, limit=200, validation_size=0)
    assert metrics["rounds"] == 3 and metrics["train_rows"] == 200  # a quarter epoch, the rest, an epoch
    keys = _keys(s3, "runs")
    assert {"cnn/_SUCCESS", "cnn/model.keras", "cnn/metrics.json", "cnn/report.html",
            "cnn/learning_curves.png", "cnn/checkpoints/round-0002.npz",
            "cnn/checkpoints/round-0003.npz"} <= set(keys)  # the two newest checkpoints
    assert not [key for key in keys if not key.startswith("cnn/")]  # no staging folder left
    model = evaluation.load_model("s3a://runs/cnn/model.keras")
    assert model.count_params() > 0
    # An existing output on S3 is refused like a local one.
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_job.run(spark, data_dir="s3a://data/mnist", output="s3a://runs/cnn", limit=200)
    assert storage.read_bytes("s3://runs/cnn/metrics.json").startswith(b"{")
    assert np.isfinite(metrics["test_loss"])
