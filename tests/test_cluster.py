"""The jobs on a real Spark standalone cluster: a master and two one-core workers on 127.0.0.1."""

from __future__ import annotations

import json
import os

import pytest

from conftest import MNIST_DIR
from standalone_cluster import StandaloneCluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = StandaloneCluster(workers=2, folder=str(tmp_path_factory.mktemp("cluster"))).start()
    yield started
    pids = [p.pid for p in started.processes]
    started.stop()
    for pid in pids:  # every process the cluster started is gone
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_train_cnn_on_the_cluster(cluster, tmp_path):
    out = tmp_path / "train"
    result = cluster.submit("train_cnn", "--data-dir", str(MNIST_DIR), "--limit", "2000", "--epochs", "2",
                            "--model", "simple_cnn", "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["partitions"] == 2 and metrics["rounds"] == 2
    assert metrics["test_rows"] == 2000 and 0.5 < metrics["test_accuracy"] <= 1.0
    assert {"model.keras", "report.html", "_SUCCESS"} <= set(os.listdir(out))


def test_transfer_on_the_cluster(cluster, tmp_path):
    out = tmp_path / "transfer"
    result = cluster.submit("transfer", "--data-dir", str(MNIST_DIR), "--weights", "none",
                            "--image-size", "75", "--train-limit", "200", "--test-limit", "100",
                            "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_rows"] == 200 and metrics["test_rows"] == 100
    assert metrics["image_size"] == 75 and metrics["weights"] == "none"
    assert {"pipeline_model", "report.html", "_SUCCESS"} <= set(os.listdir(out))
