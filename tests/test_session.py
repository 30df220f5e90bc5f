"""The SparkSession builder: defaults, the driver's Python in executors, spark-submit, Java."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import PROJECT
from mnist_spark import session


def test_read_spark_defaults(tmp_path):
    conf = tmp_path / "spark-defaults.conf"
    conf.write_text("# comment\n\nspark.a   1\nspark.b\tx y\n")
    assert session.read_spark_defaults(conf) == {"spark.a": "1", "spark.b": "x y"}
    conf.write_text("spark.a 1\nspark.broken\n")
    with pytest.raises(ValueError, match=r"spark-defaults.conf:2: expected 'key value'"):
        session.read_spark_defaults(conf)


def test_session_settings(spark):
    """The session's settings (on Spark Connect, those of the server get_spark started in this process)."""
    conf = spark.conf
    assert conf.get("spark.sql.execution.arrow.pyspark.enabled") == "true"
    assert conf.get("spark.python.worker.reuse") == "true"
    # The driver's interpreter, set by get_spark unless the user (or the Makefile) chose it.
    assert conf.get("spark.pyspark.python", os.environ.get("PYSPARK_PYTHON")) == sys.executable
    # From conf/spark-defaults.conf:
    assert conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") == "10000"
    # TensorFlow threads in executors follow spark.task.cpus.
    assert conf.get("spark.executorEnv.TF_NUM_INTRAOP_THREADS") == conf.get("spark.task.cpus", "1")
    assert session.task_slots(spark) == 2


def test_executors_run_the_drivers_python(spark):
    def probe(batches):
        import sys as worker_sys

        import pandas  # (fails under the system python)

        for _ in batches:
            yield pandas.DataFrame({"python": [worker_sys.executable]})

    found = spark.range(2).repartition(2).mapInPandas(probe, "python string").distinct().collect()
    assert [row.python for row in found] == [sys.executable]


@pytest.mark.classic(reason="Spark Connect's Python functions carry no spark.executorEnv to a local server's workers")
def test_executors_python_workers_get_the_executor_env(spark):
    def probe(_):
        yield os.environ.get("TF_NUM_INTRAOP_THREADS"), os.environ.get("TF_CPP_MIN_LOG_LEVEL")

    found = set(spark.sparkContext.parallelize(range(2), 2).mapPartitions(probe).collect())
    assert found == {("1", os.environ["TF_CPP_MIN_LOG_LEVEL"])}  # spark.task.cpus; the driver's setting


def test_missing_java_is_one_clear_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "PYSPARK_GATEWAY_PORT")}
    env["PATH"] = str(tmp_path)  # no java here
    result = subprocess.run(
        [sys.executable, str(PROJECT / "jobs" / "ingest.py"), "--output", str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ingest: error: Spark needs Java 17")
    assert "apt-get install openjdk-17-jre-headless" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_java_home(monkeypatch, tmp_path):
    monkeypatch.setenv("JAVA_HOME", str(tmp_path))
    with pytest.raises(session.JavaNotFoundError, match="JAVA_HOME"):
        session.check_java()


@pytest.mark.slow
@pytest.mark.parametrize("conf_dir", [True, False], ids=["SPARK_CONF_DIR=conf", "no SPARK_CONF_DIR"])
def test_spark_submit_settings_win_and_logs_stay_quiet(tmp_path, conf_dir):
    """Under spark-submit the session keeps spark-submit's master and --conf, fills the rest.

    Without SPARK_CONF_DIR spark-submit points it at $SPARK_HOME/conf, which has
    no log4j2.properties: Spark's JVM starts at INFO and the session sets
    spark.log.level=WARN, which the SparkContext applies as it starts."""
    script = tmp_path / "probe.py"
    script.write_text(
        textwrap.dedent("""
        import os, sys
        from mnist_spark.session import get_spark
        spark = get_spark("probe")
        print("STARTED", flush=True)
        conf = spark.sparkContext.getConf()
        print("MASTER", spark.sparkContext.master)
        print("SHUFFLE", conf.get("spark.sql.shuffle.partitions"))
        print("ARROW", spark.conf.get("spark.sql.execution.arrow.pyspark.enabled"))
        print("BATCH", conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"))
        print("PYTHON", spark.sparkContext.parallelize([0], 1).map(lambda _: sys.executable).first())
        spark.stop()
    """)
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_PYTHON", "SPARK_CONF_DIR")}
    env["PYSPARK_PYTHON"] = sys.executable
    if conf_dir:
        env["SPARK_CONF_DIR"] = str(PROJECT / "conf")
    submit = Path(sys.executable).parent / "spark-submit"
    result = subprocess.run(
        [str(submit), "--master", "local[1]", "--conf", "spark.sql.shuffle.partitions=3", str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert lines["MASTER"] == "local[1]"
    assert lines["SHUFFLE"] == "3"
    assert lines["ARROW"] == "true"
    assert lines["BATCH"] == "10000"
    assert lines["PYTHON"] == sys.executable
    # Without our log4j2.properties a few lines print as the context starts, before
    # it applies spark.log.level; none after.
    quiet = result.stdout.split("STARTED", 1)[1] if not conf_dir else result.stdout
    assert " INFO " not in quiet


def test_task_device_is_the_first_gpu_spark_gave_the_task(monkeypatch):
    import pyspark
    from pyspark.resource import ResourceInformation

    class Context:
        def __init__(self, resources):
            self._resources = resources

        def resources(self):
            return self._resources

    assert session.task_gpus() == () and session.task_device() is None  # not in a task
    monkeypatch.setattr(pyspark.TaskContext, "get", staticmethod(lambda: Context({})))
    assert session.task_device() is None  # a task without GPUs: TensorFlow's default device
    monkeypatch.setattr(
        pyspark.TaskContext, "get", staticmethod(lambda: Context({"gpu": ResourceInformation("gpu", ["3", "5"])}))
    )
    assert session.task_gpus() == ("3", "5") and session.task_device() == "gpu:3"
    monkeypatch.setattr(
        pyspark.TaskContext, "get", staticmethod(lambda: Context({"gpu": ResourceInformation("gpu", ["GPU-1f2e"])}))
    )
    with pytest.raises(ValueError, match="GPU address 'GPU-1f2e', expected a GPU index"):
        session.task_device()


@pytest.mark.parametrize("keras_first", [False, True], ids=["import_keras", "keras imported before"])
def test_keras_objects_are_frozen_out_of_garbage_collection(keras_first):
    """After :func:`session.import_keras` a full collection skips TensorFlow's and Keras' objects.

    Only when it imported them itself: once other code has imported Keras, the
    process may hold that code's objects, and freezing them would keep them forever."""
    probe = textwrap.dedent(f"""
        import gc
        if {keras_first}:
            import keras
        from mnist_spark import session
        before = gc.get_freeze_count()
        session.import_keras()
        frozen = gc.get_freeze_count()
        session.import_keras()  # a second call freezes nothing more
        print(before, frozen, gc.get_freeze_count(), gc.isenabled())
    """)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    before, frozen, again, enabled = (int(value) if value.isdigit() else value for value in done.stdout.split())
    assert before == 0 and again == frozen and enabled == "True"
    assert frozen == 0 if keras_first else frozen > 100_000


def test_a_spark_worker_freezes_keras_before_its_first_model(spark):
    """A Python worker's model cache imports Keras through :func:`session.import_keras`: pyspark's
    daemon collects garbage after every task of a reused worker, which then skips Keras' objects."""
    import pyarrow as pa

    def frozen(batches):
        import gc

        from mnist_spark import evaluation, models

        for _ in batches:
            evaluation.worker_model(("freeze-probe",), lambda: models.build_model("mlp", seed=0))
            yield pa.RecordBatch.from_pydict({"frozen": [gc.get_freeze_count()]})

    rows = spark.range(2, numPartitions=2).mapInArrow(frozen, "frozen long").collect()
    assert len(rows) == 2 and all(row["frozen"] > 100_000 for row in rows), rows
