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
    with pytest.raises(RuntimeError):
        with storage.AtomicOutput(out) as staging:
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
    (killed / "_OWNER").write_text(json.dumps({
        "writer": "mnist_spark", "host": socket.gethostname(), "pid": os.getpid(),
        "start": storage.process_start(os.getpid()) + 1}))
    unrelated = tmp_path / "other.tmp-0badf00d"
    unrelated.mkdir()
    with storage.AtomicOutput(out) as staging:
        _write(staging)
    assert sorted(os.listdir(tmp_path)) == ["other.tmp-0badf00d", "out"]


def test_a_resumable_output_keeps_its_partial_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with storage.AtomicOutput(out, resumable=True) as staging:
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
