"""pytest's root configuration: the shared SparkSession, for tests/ and for the doctests of mnist_spark/."""

from __future__ import annotations

import pytest
from _pytest.doctest import DoctestItem


@pytest.fixture(scope="session")
def spark():
    """One real local[2] SparkSession for the whole test run."""
    from mnist_spark.session import get_spark

    session = get_spark(
        "mnist_spark-tests",
        master="local[2]",
        conf={"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"},
    )
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _spark_in_doctests(request):
    """Doctests of mnist_spark/ find the session as ``spark`` (started only for the examples that run)."""
    if isinstance(request.node, DoctestItem):
        request.node.dtest.globs["spark"] = request.getfixturevalue("spark")
