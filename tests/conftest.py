"""Shared fixtures: one local[2] SparkSession, tiny synthetic IDX datasets, the real MNIST."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from mnist_spark import datasets, idx

PROJECT = Path(__file__).resolve().parents[1]
MNIST_DIR = PROJECT / "data" / "mnist"


#: Test files whose every test needs more than the shared local[2] session.
_FILE_MARKERS = {"test_cluster.py": "cluster", "standalone_cluster.py": "cluster", "test_report_browser.py": "browser"}
#: Fixtures that mean a test starts Spark (or a Spark job in another process).
_SPARK_FIXTURES = {"spark", "spark_submit", "cluster", "connect_server"}


def pytest_collection_modifyitems(config, items):
    """Mark every test ``unit``, ``spark``, ``cluster``, ``browser`` and/or ``slow`` by what it uses.

    ``unit``: no Spark and no subprocess job (``make test-unit``); ``spark``:
    uses the shared session or runs a job; ``cluster``: a standalone
    cluster; ``browser``: headless Chromium. ``slow`` is set by hand on long tests.
    """
    for item in items:
        kind = _FILE_MARKERS.get(item.path.name)
        if kind:
            item.add_marker(kind)
        if kind or _SPARK_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("spark"):
            item.add_marker("spark")
        elif not item.get_closest_marker("slow"):
            item.add_marker("unit")


def partition_count(df) -> int:
    """How many partitions ``df`` has: all of them on classic Spark; on Spark Connect, which has no
    RDDs to ask, those holding rows."""
    from pyspark.sql import functions as F

    from mnist_spark.session import is_connect

    if not is_connect(df.sparkSession):
        return df.rdd.getNumPartitions()
    return df.select(F.spark_partition_id().alias("partition")).distinct().count()


def load_job(name: str):
    """The job module ``mnist_spark.jobs.<name>``, so tests call its ``run`` and ``main``."""
    return importlib.import_module(f"mnist_spark.jobs.{name}")


def run_main(job_module, argv: list, capsys) -> tuple[int, list]:
    """A job module's ``main(argv)``: its exit status and its non-blank stderr lines."""
    capsys.readouterr()
    try:
        status = job_module.main([str(a) for a in argv])
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.strip()]


def write_idx_dataset(folder: Path, train: int, test: int, *, shape=(28, 28), num_classes=10, seed=0, gz=True) -> Path:
    """Write a synthetic dataset in MNIST's four-file layout; return the folder.

    Pixels are random; labels cycle through the classes so every class occurs.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for split, count in (("train", train), ("t10k", test)):
        images = rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)
        labels = (np.arange(count) % num_classes).astype(np.uint8)
        rng.shuffle(labels)
        idx.write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", images)
        idx.write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", labels)
    return folder


@pytest.fixture(scope="session")
def tiny_idx(tmp_path_factory) -> Path:
    """30 train / 5 test synthetic 28x28 images."""
    return write_idx_dataset(tmp_path_factory.mktemp("tiny") / "idx", 30, 5, seed=1)


@pytest.fixture(scope="session")
def small_idx(tmp_path_factory) -> Path:
    """600 train / 100 test synthetic 28x28 images."""
    return write_idx_dataset(tmp_path_factory.mktemp("small") / "idx", 600, 100, seed=2)


@pytest.fixture(scope="session")
def mnist_files():
    """The bundled real MNIST files."""
    return datasets.locate(MNIST_DIR, download=False)
