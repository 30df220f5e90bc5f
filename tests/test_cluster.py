"""The jobs on a real Spark standalone cluster (a master and two one-core workers on 127.0.0.1),
and the faults they survive: a killed executor, a killed driver, a killed PNG export."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from standalone_cluster import StandaloneCluster

from conftest import MNIST_DIR
from mnist_spark import training

pytestmark = pytest.mark.slow

#: Three epochs of 1,500 images per replica, a round each: each round runs a few seconds on
#: one core. --limit takes 3,000 test images too.
TRAIN = (
    "--data-dir",
    str(MNIST_DIR),
    "--limit",
    "3000",
    "--epochs",
    "3",
    "--batch-size",
    "64",
    "--arch",
    "simple_cnn",
    "--validation-size",
    "0",
)
#: Each worker offers one (made-up) GPU and each task asks for one: every training run here
#: places its replicas on the GPU Spark gave their task, so the runs that are killed and the
#: undisturbed one they are compared with are scheduled alike.
GPU = {"spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1"}
ROUNDS = 3  # 24 steps an epoch: a first round of 32 steps is capped at the epoch
#: 1,000 test images and 3 variants each: 4,000 PNG files in 8 tasks, 2 at a time. The export
#: is killed once a quarter is written: the driver is gone before a task starts after the two
#: that run, so at most about half the files appear.
EXPORT = (
    "--data-dir",
    str(MNIST_DIR),
    "--splits",
    "test",
    "--limit",
    "1000",
    "--augment-variants",
    "3",
    "--partitions",
    "8",
    "--sample",
    "0",
)
EXPORT_FILES = 4_000
#: Seconds any one job may take here before the test fails.
JOB_TIMEOUT = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    started = StandaloneCluster(
        workers=2, folder=str(tmp_path_factory.mktemp("cluster")), java_options=os.environ.get("SPARK_SUBMIT_OPTS", "")
    ).start()
    yield started
    pids = [p.pid for p in started.processes]
    started.stop()
    for pid in pids:  # every process the cluster started is gone
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()


@pytest.fixture(autouse=True)
def no_job_outlives_its_test(cluster):
    """A test that fails while a job it submitted runs (held, say) ends it, so the next test
    gets the workers' cores (a fixture that fails is ended before the next test)."""
    cluster.kill_submissions()
    yield
    cluster.kill_submissions()


@pytest.fixture(scope="module")
def undisturbed(cluster, tmp_path_factory):
    """The run folder of train_cnn with TRAIN on the workers' GPUs, undisturbed."""
    out = tmp_path_factory.mktemp("undisturbed") / "run"
    result = cluster.submit("train_cnn", *TRAIN, "--output", str(out), timeout=JOB_TIMEOUT, conf=GPU)
    assert result.returncode == 0, result.stdout[-3000:]
    # The executors ran the interpreter without the checkout's mnist_spark.
    assert f"python {cluster.executor_python()})" in result.stdout
    return out


def _model_arrays(run) -> dict:
    """Every array saved in ``run/model.keras``: the weights and the optimizer's state."""
    import h5py

    with zipfile.ZipFile(run / "model.keras") as archive:
        data = archive.read("model.weights.h5")
    arrays = {}
    with h5py.File(io.BytesIO(data), "r") as weights:
        weights.visititems(
            lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return arrays


def _assert_same_model(run, reference) -> None:
    got, want = _model_arrays(run), _model_arrays(reference)
    assert len(want) > 10 and got.keys() == want.keys()
    different = [name for name in want if not np.array_equal(got[name], want[name])]
    assert not different, f"{len(different)} of {len(want)} arrays differ, e.g. {different[:3]}"
    metrics, expected = (json.loads((r / "metrics.json").read_text()) for r in (run, reference))
    assert [h["loss"] for h in metrics["history"]] == [h["loss"] for h in expected["history"]]
    # The same model scores the same; the loss is summed over partitions in no fixed order.
    assert metrics["test_accuracy"] == expected["test_accuracy"]
    assert metrics["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-12)


def test_each_replica_trains_on_the_gpu_spark_gave_its_task(undisturbed):
    """Each worker offers one (made-up) GPU; tasks that ask for one get their executor's."""
    history = json.loads((undisturbed / "metrics.json").read_text())["history"]
    devices = [device for record in history for device in record["devices"]]
    # Without GPU scheduling every replica reports "cpu"; with it, each task its own executor's GPU.
    assert set(devices) == {"gpu:0", "gpu:1"}, devices


def test_executors_get_the_library_only_from_the_zip(cluster):
    python = str(cluster.executor_python())
    found = subprocess.run(
        [python, "-c", "import numpy, pyarrow, pyspark, PIL; import mnist_spark"],
        capture_output=True,
        text=True,
        cwd=cluster.folder,
    )
    assert "No module named 'mnist_spark'" in found.stderr  # the dependencies did import
    shipped = subprocess.run(
        [python, "-c", "import mnist_spark.training as t; print(t.__file__)"],
        capture_output=True,
        text=True,
        cwd=cluster.folder,
        env={**os.environ, "PYTHONPATH": str(cluster.library_zip())},
    )
    assert shipped.returncode == 0 and "mnist_spark.zip" in shipped.stdout, shipped.stderr[-2000:]


def test_train_cnn_on_the_cluster(undisturbed):
    metrics = json.loads((undisturbed / "metrics.json").read_text())
    assert metrics["partitions"] == 2 and metrics["rounds"] == ROUNDS
    assert metrics["train_rows"] == 3000 and metrics["test_rows"] == 3000
    assert 0.9 < metrics["test_accuracy"] <= 1.0
    assert {"model.keras", "report.html", "_SUCCESS"} <= set(os.listdir(undisturbed))


def test_transfer_on_the_cluster(cluster, tmp_path):
    out = tmp_path / "transfer"
    result = cluster.submit(
        "transfer",
        "--data-dir",
        str(MNIST_DIR),
        "--weights",
        "none",
        "--image-size",
        "75",
        "--train-limit",
        "100",
        "--test-limit",
        "50",
        "--max-iter",
        "5",
        "--output",
        str(out),
        timeout=JOB_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_rows"] == 100 and metrics["test_rows"] == 50
    assert metrics["image_size"] == 75 and metrics["weights"] == "none"
    assert {"pipeline_model", "report.html", "_SUCCESS"} <= set(os.listdir(out))


def _hold(round_: int, folder) -> dict:
    """TRAIN's settings, and every replica of ``round_`` held in its task until ``folder/release`` exists."""
    return {**GPU, f"spark.executorEnv.{training.ENV_HOLD_REPLICA}": f"{round_}:{folder}"}


def _held_replica(job, round_: int, folder, timeout: float = JOB_TIMEOUT) -> int:
    """Wait until a replica of the held round runs; return its Python worker's process id."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = sorted(path for path in folder.glob("held-*") if path.suffix != ".tmp")  # not the note being written
        if held:
            return int(held[0].read_text())
        if job.process.poll() is not None:
            raise RuntimeError(f"job ended before round {round_} ran:\n{job.output[-3000:]}")
        time.sleep(0.1)
    job.kill()
    raise TimeoutError(f"no replica of round {round_} ran within {timeout} s:\n{job.output[-3000:]}")


def _executor_of(cluster, pid: int) -> str:
    """The Spark executor id whose JVM runs the Python worker ``pid``."""
    executors = {jvm: executor for executor, jvm in cluster.executor_pids().items()}
    while pid > 1:
        if pid in executors:
            return executors[pid]
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    raise AssertionError("the held replica runs in no executor of this cluster")


@pytest.fixture(scope="module")
def killed_twice(cluster, tmp_path_factory):
    """train_cnn --resume auto, its driver SIGKILLed while round 2 runs; then the same command
    re-issued, with the executor of a replica held running in round 3 SIGKILLed.

    The re-issued run resumes from round 1, so round 3 is its second round and round 4 runs
    after the loss: the executor dies as it would in a run that was never stopped.
    """
    runs = tmp_path_factory.mktemp("killed")
    out = runs / "run"
    command = (*TRAIN, "--output", str(out), "--resume", "auto")
    hold = tmp_path_factory.mktemp("hold-round-2")
    driver = cluster.submit("train_cnn", *command, wait=False, conf=_hold(2, hold))
    _held_replica(driver, 2, hold)
    driver.kill()
    (hold / "release").touch()
    cluster.wait_for_no_executors()
    partial = out.with_name("run.partial") / "checkpoints"
    after_driver = sorted(os.listdir(runs)), sorted(os.listdir(partial)) if partial.is_dir() else None
    hold = tmp_path_factory.mktemp("hold-round-3")
    resumed = cluster.submit("train_cnn", *command, wait=False, conf=_hold(3, hold))
    victim = _executor_of(cluster, _held_replica(resumed, 3, hold))
    os.kill(cluster.executor_pids()[victim], signal.SIGKILL)
    (hold / "release").touch()  # the other replica goes on; the retried one is not held
    status = resumed.wait(timeout=JOB_TIMEOUT)
    return {
        "after_driver": after_driver,
        "victim": victim,
        "status": status,
        "output": resumed.output,
        "runs": sorted(os.listdir(runs)),
        "run": out,
    }


def test_a_killed_driver_resumes_from_its_checkpoint(killed_twice, undisturbed):
    """SIGKILL spark-submit while round 2 runs: nothing appears at --output, the round-1
    checkpoint stays in <output>.partial, and the same command, re-issued, finishes with the
    undisturbed run's model (--resume auto)."""
    assert killed_twice["after_driver"] == (["run.partial"], ["round-0001.npz"])
    assert killed_twice["status"] == 0, killed_twice["output"][-3000:]
    assert "from round 1" in killed_twice["output"]
    assert killed_twice["runs"] == ["run"]
    _assert_same_model(killed_twice["run"], undisturbed)


def test_a_killed_executor_changes_nothing(killed_twice, undisturbed):
    """SIGKILL the executor of a replica held running in round 3: Spark retries the task on a
    live executor, recomputes the lost cached shard, round 4 runs on, and the final model is
    bit-identical."""
    victim, output = killed_twice["victim"], killed_twice["output"]
    assert killed_twice["status"] == 0, output[-3000:]
    assert f"Lost executor {victim}" in output
    assert "ExecutorLostFailure" in output  # the replica was running when its executor died
    _assert_same_model(killed_twice["run"], undisturbed)


def _pngs(folder) -> int:
    return sum(name.endswith(".png") for _, _, names in os.walk(folder) for name in names)


def test_a_killed_png_export_leaves_no_set_and_a_rerun_completes(cluster, tmp_path):
    out = tmp_path / "pngs"
    job = cluster.submit("export_png", *EXPORT, "--output", str(out), wait=False)
    deadline = time.monotonic() + JOB_TIMEOUT
    while _pngs(tmp_path) < EXPORT_FILES // 4:
        assert job.process.poll() is None, job.output[-3000:]
        assert time.monotonic() < deadline, "the export wrote too little in time"
        time.sleep(0.1)
    job.kill()
    cluster.wait_for_no_executors()
    written = _pngs(tmp_path)
    assert EXPORT_FILES // 4 <= written < EXPORT_FILES
    assert not out.exists()  # only the staging folder, which nobody reads
    result = cluster.submit("export_png", *EXPORT, "--output", str(out), timeout=JOB_TIMEOUT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "left behind by a run that was killed" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["pngs"]
    assert json.loads((out / "metrics.json").read_text())["files"] == EXPORT_FILES
    assert _pngs(out) == EXPORT_FILES and (out / "_SUCCESS").exists()
