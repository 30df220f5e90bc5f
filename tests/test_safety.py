"""Safe to schedule: no data lost, one line per failure, exit codes a scheduler can act on.

One group per defect class:

- outputs: ``--overwrite`` replaces only run folders this project wrote, and
  no output may be, contain or lie inside an input, the working folder, the
  home folder or a filesystem root; refused before Spark starts;
- staging folders: only ``<output>.tmp-<8 hex>`` folders whose ``_OWNER`` is
  gone are swept; a live run's staging folder makes a second run fail; a
  ``.partial`` folder without a checkpoint never blocks a run;
- re-runs: ``--if-exists error|overwrite|skip``, ``skip`` without starting Spark;
- exit codes: 0 done, 2 a retry cannot help, 1 it may, 130 SIGINT, 143 SIGTERM;
- one line: errors raised in Spark tasks (Python and Java) reach stderr as
  ``<job>: error: <message>``;
- checked up front: float flags finite, a split list not empty, metrics.json
  strict JSON.

Every data-safety case writes user files first and checks afterwards that
they are all still there, byte for byte. The job-level cases run a job's
``main`` with ``mnist_spark.session.get_spark`` replaced by a function that
fails the test, so they also show that the refusal came before Spark started.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import conftest
from conftest import load_job
from mnist_spark import cli, report, storage

JOB_NAMES = ("ingest", "export_png", "train_cnn", "predict", "transfer")
JOBS = {name: load_job(name) for name in JOB_NAMES}


# --------------------------------------------------------------------------- helpers


def snapshot(root: Path) -> dict:
    """Every file under ``root`` (or ``root`` itself, a file) with its bytes."""
    root = Path(root)
    if root.is_file():
        return {".": root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def user_files(folder: Path) -> dict:
    """A folder of a user's own files (no marker of this project); returns its snapshot."""
    (folder / "notes").mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_bytes(b"\\section{Results} months of work\n")
    (folder / "notes" / "data.csv").write_bytes(bytes(range(256)) * 3)
    return snapshot(folder)


@pytest.fixture
def no_spark(monkeypatch):
    """Make starting Spark fail the test: what these cases check happens before it."""
    import mnist_spark.session

    def refuse(*args, **kwargs):
        raise AssertionError("a SparkSession was started")

    monkeypatch.setattr(mnist_spark.session, "get_spark", refuse)


def run_main(job: str, argv: list, capsys) -> tuple[int, list]:
    """``jobs/<job>.py``'s main: its exit status and stderr lines."""
    return conftest.run_main(JOBS[job], argv, capsys)


def assert_one_line(job: str, lines: list, *names: str) -> str:
    """Exactly one error line, last on stderr, naming each of ``names``; no traceback."""
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1, f"expected one error line, found {lines}"
    assert lines[-1].startswith((f"{job}: error:", f"{job}.py: error:")), lines
    assert "Traceback" not in "\n".join(lines)
    for name in names:
        assert name in lines[-1], f"{name!r} is not in {lines[-1]!r}"
    return lines[-1]


def job_argv(job: str, data: Path, model: Path | None = None) -> list:
    """Arguments every job accepts here: a data folder, and a model for predict."""
    argv = ["--data-dir", data]
    if job == "predict":
        argv += ["--model-file", model or data / "model.keras"]
    if job == "transfer":
        argv += ["--weights", "none"]
    return argv


def finished(folder: Path, job: str, files: dict | None = None) -> dict:
    """A complete output of ``job`` written the way the jobs write theirs; returns its snapshot."""
    with storage.AtomicOutput(folder, job=job) as staging:
        for name, data in (files or {"metrics.json": b'{"rows": 3}\n'}).items():
            storage.write_bytes(storage.join(staging, name), data)
    return snapshot(folder)


def owner(pid: int, start, host: str | None = None) -> bytes:
    return json.dumps(
        {
            "writer": "mnist_spark",
            "host": host or socket.gethostname(),
            "pid": pid,
            "start": start,
            "boot": None,
            "created": "2024-01-01T03:00:00+00:00",
        }
    ).encode()


def gone_owner() -> bytes:
    """The owner record of a process that is gone: this pid, but another start time (a reused pid)."""
    return owner(os.getpid(), storage.process_start(os.getpid()) + 1)


@pytest.fixture
def live_process():
    """Another live process on this host, stopped at the end."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield process
    process.kill()
    process.wait()


# --------------------------------------------------------------------------- outputs


@pytest.mark.parametrize("job", JOB_NAMES)
def test_overwrite_never_replaces_a_folder_this_project_did_not_write(tmp_path, capsys, no_spark, job):
    data = tmp_path / "data"
    data.mkdir()
    output = tmp_path / "mine"
    before = user_files(output)
    status, lines = run_main(job, [*job_argv(job, data), "--output", output, "--overwrite"], capsys)
    assert status == 2
    assert_one_line(job, lines, str(output), "_MNIST_SPARK")
    assert snapshot(output) == before


@pytest.mark.parametrize("job", JOB_NAMES)
def test_an_existing_output_is_refused_before_spark_starts(tmp_path, capsys, no_spark, job):
    output = tmp_path / "done"
    before = finished(output, job)
    status, lines = run_main(job, [*job_argv(job, tmp_path / "data"), "--output", output], capsys)
    assert status == 2
    assert_one_line(job, lines, str(output), "already exists", "--if-exists skip", "--overwrite")
    assert snapshot(output) == before


@pytest.mark.parametrize("job", ["ingest", "train_cnn"])
def test_overwrite_never_replaces_a_plain_file(tmp_path, capsys, no_spark, job):
    output = tmp_path / "results.csv"
    output.write_bytes(b"a,b\n1,2\n")
    status, lines = run_main(job, [*job_argv(job, tmp_path / "data"), "--output", output, "--overwrite"], capsys)
    assert status == 2
    assert_one_line(job, lines, str(output), "is a file")
    assert output.read_bytes() == b"a,b\n1,2\n"


def _data_with_user_files(tmp_path: Path) -> tuple[Path, dict]:
    data = tmp_path / "project" / "data" / "mnist"
    data.mkdir(parents=True)
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really, but the user's own")
    (data / "README").write_bytes(b"where the files came from\n")
    return data, snapshot(tmp_path / "project")


@pytest.mark.parametrize("where", ["the data folder", "its parent", "inside it"])
@pytest.mark.parametrize("job", ["ingest", "export_png", "train_cnn", "transfer"])
def test_an_output_on_the_data_folder_is_refused(tmp_path, capsys, no_spark, job, where):
    data, before = _data_with_user_files(tmp_path)
    output = {"the data folder": data, "its parent": data.parent, "inside it": data / "out"}[where]
    relation = {"the data folder": "is", "its parent": "contains", "inside it": "lies inside"}[where]
    status, lines = run_main(job, [*job_argv(job, data), "--output", output, "--overwrite"], capsys)
    assert status == 2
    assert_one_line(job, lines, f"{relation} the input --data-dir")
    assert snapshot(tmp_path / "project") == before


def test_the_default_data_folder_is_an_input_too(tmp_path, capsys, no_spark, monkeypatch):
    data, before = _data_with_user_files(tmp_path)
    monkeypatch.chdir(tmp_path / "project")  # data/mnist of the working folder is where jobs look first
    monkeypatch.delenv("MNIST_SPARK_DATA", raising=False)
    status, lines = run_main("ingest", ["--output", "data", "--overwrite"], capsys)
    assert status == 2
    assert_one_line("ingest", lines, "contains the input the data folder")
    assert snapshot(tmp_path / "project") == before


def test_predict_never_writes_over_its_images_or_its_model(tmp_path, capsys, no_spark):
    images = tmp_path / "pngs"
    before_images = user_files(images)
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"PK\x03\x04 a trained model")
    before_run = snapshot(run)
    for output, name in ((images, "--input"), (run, "--model-file")):
        argv = ["--model-file", run / "model.keras", "--input", images, "--output", output, "--overwrite"]
        status, lines = run_main("predict", argv, capsys)
        assert status == 2
        assert_one_line("predict", lines, f"the input {name}")
    assert snapshot(images) == before_images
    assert snapshot(run) == before_run


def test_transfer_never_writes_over_its_png_set(tmp_path, capsys, no_spark):
    images = tmp_path / "pngs"
    before = user_files(images)
    status, lines = run_main("transfer", ["--images", images, "--weights", "none", "--output", images / "out"], capsys)
    assert status == 2  # --images: the old spelling of --input
    assert_one_line("transfer", lines, "lies inside the input --input")
    assert snapshot(images) == before


@pytest.mark.parametrize("where", ["the working folder", "the home folder"])
def test_an_output_on_the_working_or_home_folder_is_refused(tmp_path, capsys, no_spark, monkeypatch, where):
    work, home = tmp_path / "work", tmp_path / "home"
    before = {"work": user_files(work), "home": user_files(home)}
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    for output in (".", str(tmp_path)) if where == "the working folder" else ("~", str(home)):
        status, lines = run_main(
            "ingest", ["--data-dir", tmp_path / "elsewhere", "--output", output, "--overwrite"], capsys
        )
        assert status == 2
        assert_one_line("ingest", lines, where)
    assert {"work": snapshot(work), "home": snapshot(home)} == before


def test_a_filesystem_root_is_refused():
    with pytest.raises(ValueError, match="filesystem root"):
        storage.check_output_location("/")
    mounted = next((p for p in ("/proc", "/dev", "/sys") if os.path.ismount(p)), None)
    if mounted:
        with pytest.raises(ValueError, match="filesystem root"):
            storage.check_output_location(mounted)
    with pytest.raises(ValueError, match="root of a file system or bucket"):
        storage.check_output_location("s3://bucket")


def test_a_symbolic_link_to_an_input_is_the_input(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(ValueError, match="is the input --data-dir"):
        storage.check_output_location(tmp_path / "link", [("--data-dir", data)])
    storage.check_output_location(tmp_path / "runs" / "a", [("--data-dir", data)])


def test_overwrite_replaces_a_run_folder_this_project_wrote(tmp_path):
    output = tmp_path / "run"
    finished(output, "ingest", {"old.txt": b"old"})
    assert storage.output_marker(output)["job"] == "ingest"
    with storage.AtomicOutput(output, overwrite=True, job="ingest") as staging:
        storage.write_bytes(storage.join(staging, "new.txt"), b"new")
    assert sorted(os.listdir(output)) == ["_MNIST_SPARK", "_SUCCESS", "new.txt"]
    assert os.listdir(tmp_path) == ["run"]


# --------------------------------------------------------------------------- staging folders


def test_the_sweep_keeps_folders_without_a_valid_owner_record(tmp_path):
    output = tmp_path / "out"
    kept = {}
    for name in ("out.tmp-whatever", "out.tmp-0badf00d", "out.tmp-0badf00d.bak", "out.tmp-ABCDEF12"):
        kept[name] = user_files(tmp_path / name)
    (tmp_path / "out.tmp-12345678").mkdir()
    (tmp_path / "out.tmp-12345678" / "_OWNER").write_bytes(b"not JSON, and not ours")
    kept["out.tmp-12345678"] = snapshot(tmp_path / "out.tmp-12345678")
    killed = tmp_path / "out.tmp-deadbeef"  # a staging folder of a run that was killed
    (killed / "test").mkdir(parents=True)
    (killed / "test" / "3.png").write_bytes(b"half")
    (killed / "_OWNER").write_bytes(gone_owner())
    finished(output, "ingest")
    assert not killed.exists()
    assert {name: snapshot(tmp_path / name) for name in kept} == kept


def test_a_second_run_fails_while_the_first_writes(tmp_path, capsys, no_spark, live_process):
    output = tmp_path / "out"
    first = storage.AtomicOutput(output, job="ingest")
    with first as staging:
        storage.write_bytes(storage.join(staging, "part-0.parquet"), b"rows")
        writing = snapshot(Path(first.staging_path))
        with pytest.raises(FileExistsError, match="being written by another run"):
            storage.AtomicOutput(output, job="ingest")
        assert snapshot(Path(first.staging_path)) == writing
    assert sorted(os.listdir(output)) == ["_MNIST_SPARK", "_SUCCESS", "part-0.parquet"]

    # The same when the other run is another process, found through its _OWNER record.
    other = tmp_path / "out2.tmp-0123abcd"
    other.mkdir()
    (other / "part-0.parquet").write_bytes(b"rows")
    (other / "_OWNER").write_bytes(owner(live_process.pid, storage.process_start(live_process.pid)))
    before = snapshot(other)
    status, lines = run_main("ingest", ["--data-dir", tmp_path / "data", "--output", tmp_path / "out2"], capsys)
    assert status == 2
    assert_one_line("ingest", lines, "being written by another run", str(live_process.pid))
    assert snapshot(other) == before
    # A reused process id (same pid, another start time) is not the owner: that folder is swept.
    (other / "_OWNER").write_bytes(owner(live_process.pid, storage.process_start(live_process.pid) + 1))
    finished(tmp_path / "out2", "ingest")
    assert not other.exists()


def test_a_staging_folder_of_an_ended_process_is_swept(tmp_path):
    """An owner that has ended but is not yet reaped (a zombie, whose pid still exists) is gone."""
    ended = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        killed = tmp_path / "out.tmp-0123abcd"
        killed.mkdir()
        (killed / "_OWNER").write_bytes(owner(ended.pid, storage.process_start(ended.pid)))
        ended.stdin.close()
        os.waitid(os.P_PID, ended.pid, os.WEXITED | os.WNOWAIT)  # ended, left unreaped
        assert storage.process_start(ended.pid) is not None
        finished(tmp_path / "out", "ingest")
        assert not killed.exists()
    finally:
        ended.wait()


def test_a_staging_folder_of_another_host_is_left_alone(tmp_path):
    other = tmp_path / "out.tmp-0123abcd"
    other.mkdir()
    (other / "_OWNER").write_bytes(owner(1, 1, host="another-host.example"))
    before = snapshot(other)
    finished(tmp_path / "out", "ingest")
    assert snapshot(other) == before


def test_a_partial_folder_without_a_checkpoint_never_blocks_a_run(tmp_path):
    empty = tmp_path / "a.partial"  # a run stopped by a configuration error before its first round
    empty.mkdir()
    stopped = tmp_path / "b.partial"  # a run killed before it saved a checkpoint
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "model_summary.txt").write_bytes(b"summary")
    (stopped / "_OWNER").write_bytes(gone_owner())
    for name in ("a", "b"):
        with storage.AtomicOutput(tmp_path / name, resumable=True, job="train_cnn") as staging:
            storage.write_bytes(storage.join(staging, "model.keras"), b"model")
        assert sorted(os.listdir(tmp_path / name)) == ["_MNIST_SPARK", "_SUCCESS", "model.keras"]
    assert sorted(os.listdir(tmp_path)) == ["a", "b"]


def test_a_partial_folder_of_user_files_is_kept_and_named(tmp_path):
    partial = tmp_path / "c.partial"
    before = user_files(partial)
    with pytest.raises(FileExistsError, match="c.partial"):
        storage.AtomicOutput(tmp_path / "c", resumable=True, overwrite=True)
    assert snapshot(partial) == before


def test_a_partial_folder_with_a_checkpoint_still_waits_for_resume(tmp_path):
    partial = tmp_path / "d.partial"
    (partial / "checkpoints").mkdir(parents=True)
    (partial / "checkpoints" / "round-0001.npz").write_bytes(b"weights")
    (partial / "_OWNER").write_bytes(gone_owner())
    before = snapshot(partial)
    with pytest.raises(FileExistsError, match="--resume"):
        storage.AtomicOutput(tmp_path / "d", resumable=True)
    assert snapshot(partial) == before
    with storage.AtomicOutput(tmp_path / "d", resume=True, job="train_cnn") as staging:
        assert os.path.exists(storage.join(staging, "checkpoints", "round-0001.npz"))


# --------------------------------------------------------------------------- re-runs


@pytest.mark.parametrize("job", JOB_NAMES)
def test_if_exists_skip_leaves_a_complete_output_without_starting_spark(tmp_path, capsys, caplog, no_spark, job):
    output = tmp_path / "done"
    before = finished(output, job)
    caplog.set_level(logging.INFO)
    status, lines = run_main(
        job, [*job_argv(job, tmp_path / "data"), "--output", output, "--if-exists", "skip"], capsys
    )
    assert status == 0, lines
    assert not lines
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and str(output) in skipped[0]
    assert snapshot(output) == before


def test_if_exists_skip_does_not_take_another_folder_for_a_finished_run(tmp_path, capsys, no_spark):
    mine = tmp_path / "mine"
    before = user_files(mine)
    other_job = tmp_path / "pngs"
    before_pngs = finished(other_job, "export_png")
    for output in (mine, other_job):
        status, lines = run_main(
            "ingest", ["--data-dir", tmp_path / "data", "--output", output, "--if-exists", "skip"], capsys
        )
        assert status == 2
        assert_one_line("ingest", lines, str(output))
    assert snapshot(mine) == before and snapshot(other_job) == before_pngs


def test_if_exists_flags(capsys):
    parser = JOBS["ingest"].arg_parser()
    assert (parser.parse_args([]).if_exists, parser.parse_args([]).overwrite) == ("error", False)
    assert parser.parse_args(["--overwrite"]).if_exists == "overwrite"
    assert parser.parse_args(["--if-exists", "overwrite"]).overwrite is True
    assert parser.parse_args(["--if-exists", "skip"]).overwrite is False
    for argv in (["--if-exists", "replace"], ["--overwrite", "--if-exists", "skip"]):
        with pytest.raises(SystemExit) as stop:
            parser.parse_args(argv)
        assert stop.value.code == 2
    assert "--if-exists" in capsys.readouterr().err


# --------------------------------------------------------------------------- exit codes


def _raise(error):
    def work(spark):
        raise error

    return work


@pytest.mark.parametrize(
    "error, status",
    [
        (ValueError("--limit 0 is below 1"), 2),
        (FileExistsError("output runs/a already exists"), 2),
        (NotADirectoryError("runs is a file"), 2),
        (PermissionError("runs is not writable"), 2),
        (ConnectionRefusedError(111, "Connection refused: namenode:8020"), 1),
        (OSError("When reading s3://runs/a: AWS error SERVICE_UNAVAILABLE"), 1),
        (RuntimeError("the manifest lists 30 files, expected 35"), 1),
        (MemoryError(), 1),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_exit_status_says_whether_a_retry_can_help(capsys, error, status):
    assert cli.run_job("job", _raise(error), spark=object()) == status
    lines = capsys.readouterr().err.strip().splitlines()
    message = assert_one_line("job", lines, str(error).split(":")[0] if str(error) else type(error).__name__)
    assert message.endswith("a retry may help") == (status == 1)


def test_ctrl_c_is_130_in_one_line(capsys):
    try:
        status = cli.run_job("job", _raise(KeyboardInterrupt()), spark=object())
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped run_job")
    assert status == 130
    assert capsys.readouterr().err.strip().splitlines() == ["job: error: stopped by SIGINT (Ctrl-C)"]


class _Escaped(Exception):
    """Raised by the test's own SIGTERM handler: run_job did not handle the signal."""


def _escaped(signum, frame):
    raise _Escaped()


def test_sigterm_is_143_in_one_line_and_cleans_up(tmp_path, capsys):
    output = tmp_path / "out"
    user = user_files(tmp_path / "user")

    def work(spark):
        with storage.AtomicOutput(output, job="job") as staging:
            storage.write_bytes(storage.join(staging, "half.png"), b"half")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop the job")

    previous = signal.signal(signal.SIGTERM, _escaped)
    try:
        status = cli.run_job("job", work, spark=object())
        assert signal.getsignal(signal.SIGTERM) is _escaped  # run_job restores the handler it found
    except _Escaped:
        pytest.fail("run_job did not handle SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert status == 143
    assert capsys.readouterr().err.strip().splitlines()[-1:] == ["job: error: stopped by SIGTERM"]
    assert sorted(os.listdir(tmp_path)) == ["user"]
    assert snapshot(tmp_path / "user") == user


def test_a_complete_job_is_0(capsys):
    assert cli.run_job("job", lambda spark: None, spark=object()) == 0
    assert "error" not in capsys.readouterr().err


# --------------------------------------------------------------------------- one line


def test_errors_in_spark_tasks_are_one_line(spark, capsys, monkeypatch):
    """A Python exception in a task becomes its own message and exit status; Java's checks exit 2."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.linalg import Vectors

    monkeypatch.delenv("MNIST_SPARK_DEBUG", raising=False)

    def check_size(batches):
        for batch in batches:
            raise ValueError("image 7 of test-images.idx is 0x0 pixels;\nexpected 28x28")
            yield batch

    def lose_storage(batches):
        for batch in batches:
            raise ConnectionResetError(104, "Connection reset by peer: s3://data/mnist")
            yield batch

    def nan_lr(spark):
        frame = spark.createDataFrame([(1.0, Vectors.dense([1.0])), (0.0, Vectors.dense([0.0]))], ["label", "features"])
        LogisticRegression(regParam=float("nan")).fit(frame)

    cases = [
        (
            lambda spark: spark.range(2).mapInArrow(check_size, "id long").collect(),
            2,
            "job: error: image 7 of test-images.idx is 0x0 pixels; expected 28x28",
        ),
        (
            lambda spark: spark.range(1).mapInArrow(lose_storage, "id long").collect(),
            1,
            "job: error: ConnectionResetError: [Errno 104] Connection reset by peer: s3://data/mnist; a retry may help",
        ),
        (nan_lr, 2, "regParam given invalid value NaN"),
    ]
    for work, status, line in cases:
        capsys.readouterr()
        assert cli.run_job("job", work, spark=spark) == status
        lines = capsys.readouterr().err.strip().splitlines()
        assert_one_line("job", lines)
        assert len(lines) == 1 and line in lines[0], lines


def test_the_innermost_python_error_of_a_task_is_found():
    text = (
        "An error occurred while calling o88.collect.\n: org.apache.spark.SparkException: Job aborted: "
        "org.apache.spark.api.python.PythonException: Traceback (most recent call last):\n"
        '  File "worker.py", line 4, in main\n    process()\n'
        "KeyError: 'label'\n\nDuring handling of the above exception, another exception occurred:\n\n"
        "Traceback (most recent call last):\n"
        '  File "images.py", line 80, in decode\n    raise IdxError(...)\n'
        "mnist_spark.idx.IdxError: train-images: header says 60000 images, found 59999\n\n"
        "\tat org.apache.spark.api.python.BasePythonRunner.handlePythonException(PythonRunner.scala:1)\n"
    )
    assert cli.python_error_in(text) == (
        "mnist_spark.idx.IdxError",
        "train-images: header says 60000 images, found 59999",
    )
    assert cli.python_error_in("java.lang.OutOfMemoryError: Java heap space") is None


def test_debug_keeps_the_traceback(capsys, caplog, monkeypatch):
    monkeypatch.setenv("MNIST_SPARK_DEBUG", "1")
    assert cli.run_job("job", _raise(ValueError("bad")), spark=object()) == 2
    assert "Traceback" in caplog.text  # logged on stderr outside pytest
    assert capsys.readouterr().err.strip().splitlines()[-1] == "job: error: bad"


# --------------------------------------------------------------------------- checked up front


FLOAT_CASES = [
    ("train_cnn", ["--learning-rate", "nan"], "--learning-rate"),
    ("train_cnn", ["--learning-rate", "inf"], "--learning-rate"),
    ("train_cnn", ["--lr-decay=-inf"], "--lr-decay"),
    ("train_cnn", ["--augment-on-the-fly", "--rotate", "0.5,nan,10"], "--rotate"),
    ("export_png", ["--augment-variants", "2", "--zoom", "0.5,1,inf"], "--zoom"),
    ("transfer", ["--reg-param", "nan"], "--reg-param"),
    ("transfer", ["--elastic-net-param", "inf"], "--elastic-net-param"),
]


@pytest.mark.parametrize("job, flags, name", FLOAT_CASES, ids=[f"{j}{' '.join(f)}" for j, f, _ in FLOAT_CASES])
def test_float_flags_must_be_finite(tmp_path, capsys, no_spark, job, flags, name):
    status, lines = run_main(job, [*job_argv(job, tmp_path / "data"), *flags, "--output", tmp_path / "out"], capsys)
    assert status == 2
    assert_one_line(job, lines, name)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("job", ["ingest", "export_png", "predict"])
def test_an_empty_split_list_is_refused(tmp_path, capsys, no_spark, job):
    status, lines = run_main(
        job, [*job_argv(job, tmp_path / "data"), "--splits", ",", "--output", tmp_path / "out"], capsys
    )
    assert status == 2
    assert_one_line(job, lines, "--splits")
    assert not (tmp_path / "out").exists()


def test_metrics_json_is_strict_and_a_nan_metric_is_an_error(tmp_path):
    report.write_metrics(str(tmp_path), {"accuracy": 0.98, "history": [{"loss": 0.1}]})
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"] == 0.98
    (tmp_path / "metrics.json").unlink()
    with pytest.raises(ValueError, match=r"history\[1\]\.loss is nan"):
        report.write_metrics(str(tmp_path), {"accuracy": 0.1, "history": [{"loss": 2.3}, {"loss": float("nan")}]})
    with pytest.raises(ValueError, match="test_loss is inf"):
        report.write_metrics(str(tmp_path), {"test_loss": float("inf")})
    assert not (tmp_path / "metrics.json").exists()


def test_a_nan_metric_fails_the_run_and_writes_nothing(tmp_path, capsys):
    output = tmp_path / "run"

    def work(spark):
        with storage.AtomicOutput(output, job="train_cnn") as staging:
            report.write_metrics(staging, {"test_loss": float("nan")})

    assert cli.run_job("train_cnn", work, spark=object()) == 2
    assert_one_line("train_cnn", capsys.readouterr().err.strip().splitlines(), "test_loss is nan")
    assert os.listdir(tmp_path) == []


def test_partitions_are_checked_against_the_training_rows_before_training(
    tiny_idx, spark, tmp_path, capsys, monkeypatch
):
    train_cnn = JOBS["train_cnn"]

    def refuse(*args, **kwargs):
        raise AssertionError("work on the training data started")

    monkeypatch.setattr(train_cnn.training, "train", refuse)
    monkeypatch.setattr(train_cnn.training, "make_shards", refuse)
    output = tmp_path / "out"
    status, lines = run_main(
        "train_cnn",
        ["--data-dir", tiny_idx, "--partitions", 8, "--limit", 5, "--validation-size", 0, "--output", output],
        capsys,
    )
    assert status == 2
    assert_one_line(
        "train_cnn", lines, "--partitions 8 needs at least 8 training images, found 5; use fewer --partitions"
    )
    assert not output.exists()
    assert not list(tmp_path.glob("out.*"))


def _keras_model(path: Path, outputs: str) -> Path:
    """A small untrained model on 28x28x1 images: ``classes-5`` gives 5 classes, ``rank-4`` a map."""
    import keras

    inputs = keras.Input((28, 28, 1))
    if outputs == "rank-4":
        result = keras.layers.Conv2D(10, 3, padding="same")(inputs)
    else:
        result = keras.layers.Dense(int(outputs.split("-")[1]), activation="softmax")(keras.layers.Flatten()(inputs))
    keras.Model(inputs, result).save(path)
    return path


@pytest.mark.parametrize("outputs, found", [("classes-5", "(batch, 5)"), ("rank-4", "(batch, 28, 28, 10)")])
def test_predict_refuses_a_model_whose_outputs_are_not_the_classes(
    spark, tiny_idx, tmp_path, capsys, monkeypatch, outputs, found
):
    predict = JOBS["predict"]

    def refuse(*args, **kwargs):
        raise AssertionError("scoring started")

    monkeypatch.setattr(predict.evaluation, "predict", refuse)
    model = _keras_model(tmp_path / "model.keras", outputs)
    output = tmp_path / "out"
    status, lines = run_main("predict", ["--data-dir", tiny_idx, "--model-file", model, "--output", output], capsys)
    assert status == 2
    assert_one_line("predict", lines, str(model), f"outputs shape {found}", "expected (batch, 10)")
    assert not output.exists()


@pytest.mark.parametrize("side, kind", [(40, "warning"), (50, "error")])
def test_a_decompression_bomb_png_is_refused_in_one_line(monkeypatch, side, kind):
    """Pillow warns above MAX_IMAGE_PIXELS and fails above twice that; both are refused, naming the file."""
    import warnings

    import numpy as np
    from PIL import Image

    from mnist_spark import pngset

    png = pngset.encode_png(np.zeros((side, side), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the refusal must not depend on the caller's warning filters
        with pytest.raises(ValueError) as refused:
            pngset.decode_png(png, where="test/3/bomb.png")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("test/3/bomb.png: refused as a possible decompression bomb")
    assert str(side * side) in message and "at most 1000 pixels" in message
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    assert pngset.decode_png(png).shape == (side, side, 1)


def _png_set_with_bad_numbers(folder: Path) -> dict:
    """A PNG set with one good image and files whose numbers are not ASCII or out of range."""
    import numpy as np

    from mnist_spark import pngset

    png = pngset.encode_png(np.zeros((28, 28), np.uint8))
    reasons = {
        "train/\u0663/1.png": "ASCII digits 0-9",  # an Arabic-Indic three
        "train/3/\u0662.png": "ASCII digits 0-9",
        "train/3/4_\u0661.png": "ASCII digits 0-9",
        "train/3/99999999999999999999.png": "does not fit in a 64-bit integer",
        "train/3/5_9999999999.png": "does not fit in a 32-bit integer",
        "train/12/6.png": "label 12 is outside 0..9",
    }
    for relative in [*reasons, "train/3/2.png"]:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(png)
    return reasons


def test_numbers_in_png_paths_must_be_ascii_digits_in_range(tmp_path):
    from mnist_spark import pngset

    reasons = _png_set_with_bad_numbers(tmp_path / "pngs")
    for relative, reason in reasons.items():
        assert reason in pngset.png_path_problem(relative, num_classes=10), relative
    assert pngset.parse_png_path("train/\u0663/1.png") is None
    assert pngset.parse_png_path("train/3/\u0662.png") is None
    assert pngset.png_path_problem("train/3/2.png", num_classes=10) is None
    assert pngset.png_path_problem("train/12/6.png") is None  # no class count given: any 32-bit label
    with pytest.raises(ValueError) as refused:  # refused from the listing, before Spark reads a file
        pngset.read_png_set(None, str(tmp_path / "pngs"), num_classes=10)
    message = str(refused.value)
    assert message.startswith("6 bad file(s) in PNG set")
    for relative, reason in reasons.items():
        assert f"{relative}: " in message and reason in message, relative


def test_png_files_with_bad_numbers_are_left_out_with_on_bad_skip(spark, tmp_path):
    from mnist_spark import pngset

    reasons = _png_set_with_bad_numbers(tmp_path / "pngs")
    df, bad = pngset.read_png_set(spark, str(tmp_path / "pngs"), on_bad="skip", num_classes=10)
    assert sorted(b.path for b in bad) == sorted(reasons)
    assert [tuple(r) for r in df.select("split", "label", "index").collect()] == [("train", 3, 2)]
