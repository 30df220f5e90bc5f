"""Logs a scheduler can keep: one dated line per event, no progress bars redrawn with \\r."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import PROJECT

#: ``YYYY-MM-DD HH:MM:SS LEVEL name: message``, as README "Logs" documents.
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S.*")
#: Where one of this project's loggers is named in a line: ``mnist_spark.<module>:`` or the job's.
OURS = re.compile(r"\b(mnist_spark\.\w+|train_cnn):")


def job_env(**extra) -> dict:
    """The environment of a job run as a scheduler runs it: the checkout's library and conf/."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "TF_CPP_MIN_LOG_LEVEL")
    }
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")])),
        PYSPARK_PYTHON=sys.executable,
        SPARK_CONF_DIR=str(PROJECT / "conf"),
        **extra,
    )
    return env


@pytest.mark.slow
def test_a_job_logged_to_a_file_has_dated_lines_and_no_progress_bars(tiny_idx, tmp_path):
    """train_cnn's stages take long enough for Spark's console progress bar to appear on a terminal."""
    log = tmp_path / "job.log"
    with open(log, "wb") as stderr:
        done = subprocess.run(
            [
                sys.executable,
                str(PROJECT / "jobs" / "train_cnn.py"),
                "--data-dir",
                str(tiny_idx),
                "--arch",
                "mlp",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--validation-size",
                "0",
                "--output",
                str(tmp_path / "run"),
            ],
            env=job_env(),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            timeout=300,
        )
    text = log.read_bytes()
    assert done.returncode == 0, text.decode(errors="replace")[-3000:]
    assert b"\r" not in text
    lines = text.decode().splitlines()
    ours = [line for line in lines if OURS.search(line)]
    assert len(ours) >= 6  # session, data, rounds, evaluation, output, result
    assert [line for line in ours if not LINE.fullmatch(line)] == []
    # The settings conf/spark-defaults.conf gave the session, logged once.
    conf_lines = [line for line in ours if "settings from " in line]
    assert len(conf_lines) == 1
    assert str(PROJECT / "conf" / "spark-defaults.conf") in conf_lines[0]
    assert "spark.sql.execution.arrow.maxRecordsPerBatch=10000" in conf_lines[0]
