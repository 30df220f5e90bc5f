"""pytest's root configuration: the shared SparkSession, for tests/ and for the doctests of mnist_spark/.

``MNIST_SPARK_TEST_CONNECT=1`` makes the shared session a Spark Connect
session, served by a local[2] Spark Connect server in the test process
(``make test-connect``), and deselects the tests marked ``classic``: those
that need a SparkContext in the driver (RDDs, broadcasts, the status
tracker) or test what only classic Spark does.
"""

from __future__ import annotations

import os

import pytest
from _pytest.doctest import DoctestItem

#: The switch: run the shared session on Spark Connect.
ENV_CONNECT = "MNIST_SPARK_TEST_CONNECT"
CONNECT = os.environ.get(ENV_CONNECT, "").strip().lower() not in ("", "0", "false", "no")

#: Java options of every JVM the tests start (the shared session's, the jobs' and the Connect
#: servers' through ``SPARK_SUBMIT_OPTS``; the test cluster's daemons and executors take them
#: too). Test JVMs live seconds to minutes and do little work: with the JIT's first tier alone
#: they skip the optimising compiler's compilations, which compete with the run on 2 cores,
#: and the suite's subprocess jobs finish about 15% sooner.
TEST_JVM_OPTIONS = "-XX:TieredStopAtLevel=1"
if TEST_JVM_OPTIONS not in os.environ.get("SPARK_SUBMIT_OPTS", ""):
    os.environ["SPARK_SUBMIT_OPTS"] = " ".join(filter(None, [os.environ.get("SPARK_SUBMIT_OPTS"), TEST_JVM_OPTIONS]))


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One real local[2] SparkSession for the whole test run (Spark Connect under the switch).

    On Spark Connect, payloads too large to travel with a query (ImageNet weights) go through
    ``$MNIST_SPARK_SCRATCH``, here a temporary folder, as a Connect deployment sets it.
    """
    from mnist_spark.payloads import ENV_SCRATCH
    from mnist_spark.session import get_spark

    settings = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"}
    if CONNECT:
        os.environ.setdefault(ENV_SCRATCH, str(tmp_path_factory.mktemp("scratch")))
        session = get_spark("mnist_spark-tests", remote="local[2]", conf=settings)
    else:
        session = get_spark("mnist_spark-tests", master="local[2]", conf=settings)
    yield session
    session.stop()  # on Connect, also stops the server's SparkContext


@pytest.fixture(autouse=True)
def _spark_in_doctests(request):
    """Doctests of mnist_spark/ find the session as ``spark`` (started only for the examples that run)."""
    if isinstance(request.node, DoctestItem):
        request.node.dtest.globs["spark"] = request.getfixturevalue("spark")


def pytest_report_header(config):
    return f"shared SparkSession: {'Spark Connect (local[2] server)' if CONNECT else 'classic local[2]'}"


def pytest_collection_modifyitems(config, items):
    """Under the Connect switch, deselect the tests marked ``classic``."""
    if not CONNECT:
        return
    classic = [item for item in items if item.get_closest_marker("classic")]
    if classic:
        config.hook.pytest_deselected(items=classic)
        items[:] = [item for item in items if not item.get_closest_marker("classic")]
