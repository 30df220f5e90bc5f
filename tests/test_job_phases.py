"""Every Spark job of a run names its job and phase in the Spark UI, and only while the phase lasts.

train_cnn and transfer run through their ``main`` in one subprocess whose session writes Spark's
event log: the UI's (and the History Server's) record of each job, description included. The
subprocess also notes which Spark jobs each library step started (Spark's job numbers before and
after the call), so each job's description is checked against the step that really ran it.
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

#: Runs both jobs in one local[2] session with an event log; prints the job ids each step started.
SCRIPT = textwrap.dedent("""
    import json, sys
    from mnist_spark import evaluation, images, ml, report, sampling, training, transfer, tuning
    from mnist_spark.jobs import train_cnn, transfer as transfer_job
    from mnist_spark.session import get_spark

    events, cnn_args, transfer_args = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    spark = get_spark("job-phases", master="local[2]", conf={
        "spark.eventLog.enabled": "true", "spark.eventLog.dir": events, "spark.eventLog.compress": "false",
        "spark.eventLog.rolling.enabled": "false", "spark.ui.enabled": "false",
        "spark.sql.shuffle.partitions": "4"})
    # Spark numbers its jobs 0, 1, ... as they are submitted, before the call that runs them returns.
    scheduler, steps = spark.sparkContext._jsc.sc().dagScheduler(), []

    def watch(owner, name, step):
        real = getattr(owner, name)

        def watched(*args, **kwargs):
            first = scheduler.numTotalJobs()
            try:
                return real(*args, **kwargs)
            finally:
                steps.append([step, list(range(first, scheduler.numTotalJobs()))])

        setattr(owner, name, watched)

    watch(images, "validation_arrays", "validation set")
    watch(ml.KerasImageClassifier, "_prepare", "shards")
    watch(training, "tree_average", "training round")
    watch(evaluation, "evaluate", "evaluation")
    watch(report, "write_training_report", "figures")
    watch(sampling, "train_test_samples", "sample")
    watch(transfer, "fit_and_score", "fit and score")
    watch(tuning, "fit_logistic_regression", "fit LR")
    watch(transfer, "save_model", "save model")
    statuses = [train_cnn.main(cnn_args), transfer_job.main(transfer_args)]
    first = scheduler.numTotalJobs()
    spark.range(3).count()  # a Spark job after both runs
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
@pytest.mark.slow  # two jobs in a new process: about 30 s on 2 cores
def test_every_spark_job_carries_the_name_of_its_job_and_phase(tiny_idx, tmp_path):
    events = tmp_path / "events"
    events.mkdir()
    common = ["--data-dir", str(tiny_idx), "--partitions", "2"]
    cnn_args = [*common, "--arch", "simple_cnn", "--epochs", "1", "--batch-size", "8", "--steps-per-round", "1"]
    cnn_args += ["--validation-size", "5", "--checkpoint-every", "0", "--output", str(tmp_path / "cnn")]
    transfer_args = [*common, "--weights", "none", "--base-model", "VGG16", "--image-size", "32", "--batch-size", "8"]
    transfer_args += ["--train-limit", "20", "--test-limit", "5", "--max-iter", "2", "--output", str(tmp_path / "tr")]
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYSPARK_GATEWAY", "SPARK_REMOTE"))}
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")])),
        PYSPARK_PYTHON=sys.executable,
        SPARK_CONF_DIR=str(PROJECT / "conf"),
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(events), json.dumps(cnn_args), json.dumps(transfer_args)],
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
    assert outcome["statuses"] == [0, 0], done.stderr[-4000:]
    jobs = _job_descriptions(events)
    steps = [(step, ids) for step, ids in outcome["steps"] if ids]  # a step with no Spark job names nothing

    # What each step's Spark jobs must be called; transfer's fit_and_score featurizes, fits, then scores.
    cnn_steps = {"validation set", "shards", "training round", "evaluation", "figures"}
    assert {step for step, _ in steps} == {*cnn_steps, "sample", "fit and score", "fit LR", "save model"}
    rounds = [ids for step, ids in steps if step == "training round"]
    assert len(rounds) == len(json.loads((tmp_path / "cnn" / "metrics.json").read_text())["history"]) >= 2
    (fit,) = [ids for step, ids in steps if step == "fit LR"]
    expected = {}
    for step, ids in steps:
        for job in ids:
            if step == "fit and score":
                phase = "featurize" if job < min(fit) else "fit LR" if job <= max(fit) else "evaluation"
            elif step == "training round":
                phase = f"training round {rounds.index(ids) + 1}/{len(rounds)}"
            else:
                phase = step
            expected[job] = f"{'train_cnn' if step in cnn_steps else 'transfer'}: {phase}"
    assert {job: jobs[job] for job in expected} == expected

    # Every other job of the runs is in a phase too, and a job after both runs carries no name.
    after = set(outcome["after"])
    assert after and {jobs[job] for job in after} == {None}
    others = {job: name or "" for job, name in jobs.items() if job not in after and job not in expected}
    assert {job: name for job, name in others.items() if not name.startswith(("train_cnn: ", "transfer: "))} == {}


@pytest.mark.classic(reason="a job description is the SparkContext's; the next test covers Connect's operation tags")
def test_phases_nest_and_restore_the_description_before_them(spark):
    context = spark.sparkContext

    def described():
        return context.getLocalProperty("spark.job.description")

    assert described() is None
    with session.phase(spark, "evaluation"):
        assert described() == "evaluation"  # outside a job: the phase alone
    with session.job_phases(spark, "train_cnn"):
        assert described() == "train_cnn"
        with session.phase(spark, "evaluation"):
            assert described() == "train_cnn: evaluation"
            with session.phase(spark, "figures"):
                assert described() == "train_cnn: figures"
            assert described() == "train_cnn: evaluation"
        with pytest.raises(RuntimeError), session.phase(spark, "training round 1/2"):
            raise RuntimeError("a failed round")
        assert described() == "train_cnn"
    assert described() is None


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
