"""Every Spark job of a run names its job and phase in the Spark UI, and only while the phase lasts.

ingest, then train_cnn and transfer on its output (``--input``), run through their ``main`` in one
subprocess whose session writes Spark's event log: the UI's (and the History Server's) record of
each job, description included. The subprocess also notes which Spark jobs each library step
started (Spark's job numbers before and after the call), so each job's description is checked
against the step that really ran it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import PROJECT
from mnist_spark import session

#: Runs the jobs in one local[2] session with an event log; prints the Spark jobs each step started.
SCRIPT = textwrap.dedent("""
    import json, sys
    from mnist_spark import evaluation, images, ingest, ml, report, sampling, sources, training, transfer, tuning
    from mnist_spark.jobs import ingest as ingest_job, train_cnn, transfer as transfer_job
    from mnist_spark.session import get_spark

    events, runs = sys.argv[1], json.loads(sys.argv[2])
    spark = get_spark("job-phases", master="local[2]", conf={
        "spark.eventLog.enabled": "true", "spark.eventLog.dir": events, "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false", "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4"})
    # Spark numbers its jobs 0, 1, ... as they are submitted, before the call that runs them returns.
    scheduler, steps, running = spark.sparkContext._jsc.sc().dagScheduler(), [], []

    def watch(owner, name, step):
        real = getattr(owner, name)

        def watched(*args, **kwargs):
            first = scheduler.numTotalJobs()
            try:
                return real(*args, **kwargs)
            finally:
                steps.append([running[-1], step, list(range(first, scheduler.numTotalJobs()))])

        setattr(owner, name, watched)

    watch(ingest, "write_dataset", "write Parquet")
    watch(sources, "read_source", "read images")
    watch(images, "validation_arrays", "validation set")
    watch(ml.KerasImageClassifier, "_prepare", "shards")
    watch(training, "tree_average", "training round")
    watch(evaluation, "evaluate", "evaluation")
    watch(ingest.TrainTest, "train_count", "counts")
    watch(ingest.TrainTest, "test_count", "counts")
    watch(report, "write_training_report", "figures")
    watch(sampling, "train_test_samples", "sample")
    watch(transfer, "fit_and_score", "fit and score")
    watch(tuning, "fit_logistic_regression", "fit LR")
    watch(transfer, "save_model", "save model")
    statuses = []
    for job, module in (("ingest", ingest_job), ("train_cnn", train_cnn), ("transfer", transfer_job)):
        running.append(job)
        statuses.append(module.main(runs[job]))
    first = scheduler.numTotalJobs()
    spark.range(3).count()  # a Spark job after the runs
    after = list(range(first, scheduler.numTotalJobs()))
    print("STEPS " + json.dumps({"statuses": statuses, "steps": steps, "after": after}))
    spark.stop()
""")


def _job_descriptions(events) -> dict:
    """``{job id: spark.job.description}`` (None when unset) of every job in the event log in ``events``."""
    (log,) = [path for path in events.iterdir() if not path.name.startswith(".")]
    jobs = {}
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event["Event"] == "SparkListenerJobStart":
            jobs[event["Job ID"]] = event.get("Properties", {}).get("spark.job.description")
    return jobs


@pytest.mark.spark
@pytest.mark.slow  # three jobs in a new process: about 35 s on 2 cores
def test_every_spark_job_carries_the_name_of_its_job_and_phase(tiny_idx, tmp_path):
    events, data = tmp_path / "events", str(tmp_path / "ingested")
    events.mkdir()
    cnn = ["--input", data, "--partitions", "2", "--arch", "simple_cnn", "--epochs", "1", "--batch-size", "8"]
    cnn += ["--steps-per-round", "1", "--validation-size", "5", "--checkpoint-every", "0"]
    transfer = ["--input", data, "--partitions", "2", "--weights", "none", "--base-model", "VGG16", "--image-size"]
    transfer += ["32", "--batch-size", "8", "--train-limit", "20", "--test-limit", "5", "--max-iter", "2"]
    runs = {
        "ingest": ["--data-dir", str(tiny_idx), "--output", data],
        "train_cnn": [*cnn, "--output", str(tmp_path / "cnn")],
        "transfer": [*transfer, "--output", str(tmp_path / "transfer")],
    }
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYSPARK_GATEWAY", "SPARK_REMOTE"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")])),
        PYSPARK_PYTHON=sys.executable,
        SPARK_CONF_DIR=str(PROJECT / "conf"),
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(events), json.dumps(runs)],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    printed = [line for line in done.stdout.splitlines() if line.startswith("STEPS ")]
    assert done.returncode == 0 and printed, done.stderr[-4000:]
    outcome = json.loads(printed[0][len("STEPS ") :])
    assert outcome["statuses"] == [0, 0, 0], done.stderr[-4000:]
    jobs = _job_descriptions(events)
    steps = [(job, step, ids) for job, step, ids in outcome["steps"] if ids]  # a step without Spark jobs names none

    # What each step's Spark jobs must be called; transfer's fit_and_score featurizes, fits, then scores.
    assert {(job, step) for job, step, _ in steps} == {
        ("ingest", "write Parquet"),
        *[("train_cnn", step) for step in ("read images", "validation set", "shards", "training round")],
        *[("train_cnn", step) for step in ("evaluation", "counts", "figures")],
        *[("transfer", step) for step in ("read images", "sample", "fit and score", "fit LR", "save model")],
    }
    rounds = [ids for _, step, ids in steps if step == "training round"]
    assert len(rounds) == len(json.loads((tmp_path / "cnn" / "metrics.json").read_text())["history"]) >= 2
    (fit,) = [ids for _, step, ids in steps if step == "fit LR"]
    expected = {}
    for job, step, ids in steps:
        for number in ids:
            if step == "fit and score":
                phase = "featurize" if number < min(fit) else "fit LR" if number <= max(fit) else "evaluation"
            elif step == "training round":
                phase = f"training round {rounds.index(ids) + 1}/{len(rounds)}"
            else:
                phase = step
            expected[number] = f"{job}: {phase}"
    assert {number: jobs[number] for number in expected} == expected

    # Every other Spark job of the runs is in a phase too, and a job after the runs carries no name.
    after = set(outcome["after"])
    assert after and {jobs[number] for number in after} == {None}
    others = {number: name or "" for number, name in jobs.items() if number not in after and number not in expected}
    assert {
        n: name for n, name in others.items() if not name.startswith(("ingest: ", "train_cnn: ", "transfer: "))
    } == {}


def test_phases_nest_and_restore_the_name_before_them(spark):
    """The shared session's own names: its jobs' description on classic Spark, its operation tags on Connect."""

    def names():
        if session.is_connect(spark):
            return spark.getTags()
        described = spark.sparkContext.getLocalProperty("spark.job.description")
        return {described} if described else set()

    assert names() == set()
    with session.phase(spark, "evaluation"):
        assert names() == {"evaluation"}  # outside a job: the phase alone
    with session.job_phases(spark, "train_cnn"):
        assert names() == {"train_cnn"}
        with session.phase(spark, "evaluation"):
            assert names() == {"train_cnn: evaluation"}
            with session.phase(spark, "figures"):
                assert names() == {"train_cnn: figures"}
            assert names() == {"train_cnn: evaluation"}
        with pytest.raises(RuntimeError), session.phase(spark, "training round 1/2"):
            raise RuntimeError("a failed round")
        assert names() == {"train_cnn"}
    assert names() == set()


class _ConnectSession:
    """Stands in for a Spark Connect session: operation tags, no SparkContext."""

    __module__ = "pyspark.sql.connect.session"

    def __init__(self):
        self.tags = set()

    def addTag(self, tag):  # noqa: N802 - pyspark's name
        assert tag and "," not in tag
        self.tags.add(tag)

    def removeTag(self, tag):  # noqa: N802 - pyspark's name
        self.tags.discard(tag)


def test_on_spark_connect_a_phase_is_an_operation_tag():
    remote = _ConnectSession()
    with session.job_phases(remote, "transfer"):
        assert remote.tags == {"transfer"}
        with session.phase(remote, "fit LR, tuned"):
            assert remote.tags == {"transfer: fit LR; tuned"}  # Spark's job tags are comma-separated
            with session.phase(remote, "save model"):
                assert remote.tags == {"transfer: save model"}
            assert remote.tags == {"transfer: fit LR; tuned"}
        assert remote.tags == {"transfer"}
    assert remote.tags == set()
