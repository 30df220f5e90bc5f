"""Every job on Spark Connect: no SparkContext, no RDDs, no broadcasts in the client.

A local Spark Connect server runs in a subprocess: a local[2] Spark with Spark Connect's plugin,
as ``SparkSession.builder.remote("local[2]")`` starts one, but on a free port of its own (that
builder's client always dials the default port, 15002, which another run may hold). The jobs run
in one more subprocess, as a Connect client: pyspark keeps a process either classic or Connect,
and this test process holds the suite's classic session.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from conftest import PROJECT
from mnist_spark import session

SERVER = textwrap.dedent("""
    import sys
    from mnist_spark.session import get_spark

    spark = get_spark("connect-server", master="local[2]", conf={
        "spark.plugins": "org.apache.spark.sql.connect.SparkConnectPlugin",
        "spark.connect.grpc.binding.port": sys.argv[1], "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4"})
    print("READY", flush=True)
    sys.stdin.read()  # serve until the test closes stdin
    spark.stop()
""")

#: Runs the jobs' main() one after the other in one Connect client process; prints their exit
#: statuses, and whether this process ever started a JVM.
CLIENT = textwrap.dedent("""
    import importlib, json, sys

    def job(name):
        return importlib.import_module(f"mnist_spark.jobs.{name}")

    runs = json.loads(sys.argv[2])
    statuses = {name: job(name).main(argv) for name, argv in runs}
    from pyspark import SparkContext
    print("RESULT " + json.dumps({"statuses": statuses, "jvm": SparkContext._gateway is not None}))
""")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(token: str) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYSPARK_GATEWAY", "SPARK_REMOTE", "SPARK_CONNECT"))
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")])),
        PYSPARK_PYTHON=sys.executable,
        SPARK_CONF_DIR=str(PROJECT / "conf"),
        SPARK_CONNECT_AUTHENTICATE_TOKEN=token,
    )
    return env


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    """``sc://localhost:<port>`` of a local[2] Spark Connect server, and the token clients need."""
    port, token = _free_port(), uuid.uuid4().hex
    log = tmp_path_factory.mktemp("connect") / "server.log"
    with open(log, "wb") as sink:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(port)],
            env=_env(token),
            cwd=PROJECT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sink,
        )
    try:
        ready = server.stdout.readline()  # the server prints READY once it serves, or ends
        assert ready.strip() == b"READY", log.read_text()[-3000:]
        yield f"sc://localhost:{port}", token
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.slow
def test_train_predict_and_transfer_run_on_spark_connect(connect_server, tiny_idx, tmp_path):
    url, token = connect_server
    common = ["--remote", url, "--data-dir", str(tiny_idx)]
    runs = [
        [
            "train_cnn",
            [
                *common,
                "--arch",
                "mlp",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--validation-size",
                "5",
                "--output",
                str(tmp_path / "cnn"),
            ],
        ],
        ["predict", [*common, "--model-file", str(tmp_path / "cnn"), "--output", str(tmp_path / "scored")]],
        [
            "transfer",
            [
                *common,
                "--weights",
                "none",
                "--base-model",
                "VGG16",
                "--image-size",
                "32",
                "--train-limit",
                "20",
                "--test-limit",
                "5",
                "--max-iter",
                "2",
                "--batch-size",
                "8",
                "--output",
                str(tmp_path / "transfer"),
            ],
        ],
    ]
    log = tmp_path / "client.log"
    with open(log, "wb") as sink:
        done = subprocess.run(
            [sys.executable, "-c", CLIENT, str(PROJECT), json.dumps(runs)],
            env=_env(token),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=sink,
            timeout=600,
        )
    text = log.read_text()
    result = [line for line in done.stdout.decode().splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and result, text[-4000:]
    outcome = json.loads(result[0][len("RESULT ") :])
    assert outcome["statuses"] == {"train_cnn": 0, "predict": 0, "transfer": 0}, text[-4000:]
    assert outcome["jvm"] is False  # a Connect client only: no JVM, no SparkContext in this process
    assert text.count(f"Spark Connect session at {url}") >= 1
    for name in ("cnn", "scored", "transfer"):
        assert (tmp_path / name / "_SUCCESS").exists()
    cnn = json.loads((tmp_path / "cnn" / "metrics.json").read_text())
    assert cnn["partitions"] == 2  # the server's task slots, from its settings (local[2])
    assert cnn["rounds"] == len(cnn["history"]) >= 1 and cnn["test_rows"] == 5
    assert json.loads((tmp_path / "scored" / "metrics.json").read_text())["count"] == 5
    transfer = json.loads((tmp_path / "transfer" / "metrics.json").read_text())
    assert 0 <= transfer["accuracy"] <= 1 and (tmp_path / "transfer" / "pipeline_model").is_dir()


@pytest.mark.slow
@pytest.mark.spark
def test_spark_submit_with_api_mode_connect_runs_the_job_on_spark_connect(tiny_idx, tmp_path):
    """``spark-submit --conf spark.api.mode=connect``: the job serves itself Spark Connect and runs on it.

    spark-submit's JVM has a Connect client's classpath; the job starts a JVM with Spark Connect's
    server, with spark-submit's settings (here its master and shuffle partitions)."""
    env = _env(uuid.uuid4().hex)
    del env["SPARK_CONNECT_AUTHENTICATE_TOKEN"]
    submit = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]"]
    submit += ["--conf", "spark.api.mode=connect", "--conf", "spark.sql.shuffle.partitions=3"]
    train = [str(PROJECT / "jobs" / "train_cnn.py"), "--data-dir", str(tiny_idx), "--arch", "mlp"]
    train += ["--epochs", "1", "--batch-size", "8", "--validation-size", "0", "--output", str(tmp_path / "cnn")]
    log = tmp_path / "job.log"
    with open(log, "wb") as sink:
        done = subprocess.run(
            [*submit, *train], env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, timeout=600
        )
    text = log.read_text()
    assert done.returncode == 0, text[-4000:]
    assert "INFO mnist_spark.session: Spark 4" in text and " Connect session on local[2] " in text, text[-4000:]
    metrics = json.loads((tmp_path / "cnn" / "metrics.json").read_text())
    assert metrics["environment"]["spark_api"] == "connect"
    assert metrics["partitions"] == 2 and metrics["test_rows"] == 5
    assert (tmp_path / "cnn" / "_SUCCESS").exists() and (tmp_path / "cnn" / "model.keras").is_file()


@pytest.mark.slow
@pytest.mark.spark
def test_api_mode_connect_in_spark_defaults_gives_a_connect_session(tmp_path):
    """``spark.api.mode connect`` in the ``spark-defaults.conf`` of ``SPARK_CONF_DIR``, run with python:
    the JVM pyspark launched (a Connect client's classpath) is replaced by one that serves Connect."""
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "log4j2.properties").write_text((PROJECT / "conf" / "log4j2.properties").read_text())
    defaults = (PROJECT / "conf" / "spark-defaults.conf").read_text()
    (conf / "spark-defaults.conf").write_text(defaults + "\nspark.api.mode connect\n")
    probe = textwrap.dedent("""
        import logging
        from mnist_spark.session import get_spark, is_connect

        logging.basicConfig(level=logging.INFO)
        spark = get_spark("probe", master="local[1]")
        print("API", "connect" if is_connect(spark) else "classic", spark.range(7).count(), flush=True)
        spark.stop()
    """)
    env = dict(_env(uuid.uuid4().hex), SPARK_CONF_DIR=str(conf), MNIST_SPARK_CONF_DIR=str(conf))
    del env["SPARK_CONNECT_AUTHENTICATE_TOKEN"]
    done = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.splitlines() == ["API connect 7"], done.stderr[-4000:]
    assert "started a JVM that serves Spark Connect" in done.stderr


def test_task_slots_of_a_connect_server_come_from_its_settings():
    assert session.cores_from_conf({"spark.master": "local[2]"}.get) == 2
    assert session.cores_from_conf({"spark.master": "local[4]", "spark.default.parallelism": "6"}.get) == 6
    assert session.cores_from_conf({"spark.master": "spark://m:7077", "spark.cores.max": "16"}.get) == 16
    assert (
        session.cores_from_conf(
            {"spark.master": "k8s://x", "spark.executor.instances": "3", "spark.executor.cores": "4"}.get
        )
        == 12
    )
    assert session.cores_from_conf({"spark.master": "yarn"}.get) is None


def test_large_payloads_go_through_shared_storage_on_connect(tmp_path, monkeypatch):
    """On Spark Connect a payload above the inline limit is written once to $MNIST_SPARK_SCRATCH."""
    from mnist_spark import payloads

    monkeypatch.setattr(session, "is_connect", lambda spark: True)
    monkeypatch.setenv(payloads.ENV_INLINE_LIMIT, "100")
    monkeypatch.delenv(payloads.ENV_SCRATCH, raising=False)
    small = payloads.ship(None, b"x" * 100)
    assert isinstance(small, payloads.Inline) and small.value == b"x" * 100
    with pytest.raises(
        ValueError,
        match=r"more than the 0 MiB that travel with a Spark Connect query; "
        r"set MNIST_SPARK_SCRATCH",
    ):
        payloads.ship(None, b"y" * 101, "model state")
    monkeypatch.setenv(payloads.ENV_SCRATCH, str(tmp_path))
    large = payloads.ship(None, b"y" * 101, "model state")
    assert isinstance(large, payloads.Staged) and os.listdir(tmp_path) == [os.path.basename(large.location)]
    assert large.value == b"y" * 101
    large.destroy()
    assert os.listdir(tmp_path) == []
