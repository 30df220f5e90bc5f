"""Atomic outputs: complete or absent, never half-written; leftovers of killed runs removed.

What must never be deleted (user folders, live runs) is tested in test_safety.py.
"""

from __future__ import annotations

import json
import os
import socket

import pytest

from mnist_spark import storage


def _write(staging: str, name: str = "part.txt") -> None:
    storage.write_bytes(storage.join(staging, name), b"data")


def test_a_finished_output_has_its_files_and_the_marker(tmp_path):
    out = tmp_path / "out"
    with storage.AtomicOutput(out) as staging:
        _write(staging)
        assert not out.exists()
    assert sorted(os.listdir(out)) == ["_MNIST_SPARK", "_SUCCESS", "part.txt"]
    assert os.listdir(tmp_path) == ["out"]


def test_a_failed_run_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), storage.AtomicOutput(out) as staging:
        _write(staging)
        raise RuntimeError("stopped")
    assert os.listdir(tmp_path) == []


def test_an_existing_output_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    with storage.AtomicOutput(out) as staging:
        _write(staging, "old.txt")
    with pytest.raises(FileExistsError, match="--overwrite"):
        storage.AtomicOutput(out)
    with storage.AtomicOutput(out, overwrite=True) as staging:
        _write(staging, "new.txt")
    assert sorted(os.listdir(out)) == ["_MNIST_SPARK", "_SUCCESS", "new.txt"]


def test_the_next_run_removes_what_a_killed_run_left(tmp_path):
    out = tmp_path / "out"
    killed = tmp_path / "out.tmp-0badf00d"  # a staging folder whose process was killed
    (killed / "test" / "7").mkdir(parents=True)
    (killed / "test" / "7" / "3.png").write_bytes(b"half")
    # Its owner: this process id, but another start time, so another (gone) process.
    (killed / "_OWNER").write_text(
        json.dumps(
            {
                "writer": "mnist_spark",
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "start": storage.process_start(os.getpid()) + 1,
            }
        )
    )
    unrelated = tmp_path / "other.tmp-0badf00d"
    unrelated.mkdir()
    with storage.AtomicOutput(out) as staging:
        _write(staging)
    assert sorted(os.listdir(tmp_path)) == ["other.tmp-0badf00d", "out"]


def test_a_resumable_output_keeps_its_partial_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), storage.AtomicOutput(out, resumable=True) as staging:
        _write(staging, "checkpoints/round-0001.npz")
        raise RuntimeError("stopped")
    assert os.listdir(tmp_path) == ["run.partial"]
    assert sorted(os.listdir(tmp_path / "run.partial")) == ["_OWNER", "checkpoints"]
    with pytest.raises(FileExistsError, match="--resume"):
        storage.AtomicOutput(out, resumable=True)
    with storage.AtomicOutput(out, resume=True) as staging:
        assert os.path.exists(storage.join(staging, "checkpoints", "round-0001.npz"))
    assert sorted(os.listdir(out)) == ["_MNIST_SPARK", "_SUCCESS", "checkpoints"]
    with pytest.raises(ValueError, match="nothing to resume"):
        storage.AtomicOutput(tmp_path / "never", resume=True)


@pytest.mark.parametrize(
    "location, words",
    [
        ("dbfs:/mnt/runs/a", ["dbfs: is Databricks' file system", "/dbfs/mnt/runs/a", "abfss://"]),
        ("wasbs://box@acct.blob.core.windows.net/runs", ["wasbs: locations cannot be read or written", "gs://"]),
        ("s3:bucket/runs", ["s3://<bucket or host>/<path>"]),
    ],
)
def test_locations_no_file_system_serves_are_refused_in_one_line(location, words):
    with pytest.raises(ValueError) as error:
        storage.check_location(location, "--output")
    message = str(error.value)
    assert message.startswith(f"--output {location}: ") and "\n" not in message
    for word in words:
        assert word in message
    with pytest.raises(ValueError, match="Databricks"):
        storage.resolve("dbfs:/mnt/runs/a")  # every path goes through the same check
    for served in (
        "s3a://bucket/runs",
        "gs://bucket/runs",
        "abfss://box@acct.dfs.core.windows.net/runs",
        "hdfs://namenode:8020/runs",
        "file:///tmp/runs",
        "runs/a",
        "C:/runs",
    ):
        storage.check_location(served)


@pytest.mark.parametrize("flag", ["--output", "--data-dir"])
def test_a_job_refuses_an_unserved_scheme_before_spark_starts(tmp_path, capsys, monkeypatch, flag):
    import mnist_spark.session
    from conftest import load_job, run_main

    monkeypatch.setattr(mnist_spark.session, "get_spark", lambda *a, **k: pytest.fail("Spark was started"))
    monkeypatch.chdir(tmp_path)
    argv = {
        "--output": ["--output", "dbfs:/mnt/runs/a"],
        "--data-dir": ["--data-dir", "dbfs:/mnt/mnist", "--output", "runs/a"],
    }[flag]
    status, lines = run_main(load_job("ingest"), argv, capsys)
    assert status == 2
    assert lines[-1].startswith(f"ingest: error: {flag} dbfs:/mnt/") and "/dbfs/mnt/" in lines[-1]
    assert os.listdir(tmp_path) == []  # no folder named "dbfs:" made in the working folder
