"""Every Spark job of a run names its job and phase in the Spark UI, and only while the phase lasts.

ingest, then train_cnn and transfer on its output (``--input``), run through their ``main`` in the
shared session. Spark's status store (what the UI and the History Server show) gives each job's
description; the test notes which Spark jobs each library step started (Spark's job numbers before
and after the call), so each job's description is checked against the step that really ran it.
"""

from __future__ import annotations

import json

import pytest

from mnist_spark import evaluation, images, ingest, ml, report, sampling, session, sources, training, transfer, tuning
from mnist_spark.jobs import ingest as ingest_job
from mnist_spark.jobs import train_cnn as train_job
from mnist_spark.jobs import transfer as transfer_job

#: The library steps whose Spark jobs the test names: (owner, attribute, step).
STEPS = (
    (ingest, "write_dataset", "write Parquet"),
    (sources, "read_source", "read images"),
    (images, "validation_arrays", "validation set"),
    (ml.KerasImageClassifier, "_prepare", "shards"),
    (training, "train", "training"),
    (evaluation, "evaluate", "evaluation"),
    (ingest.TrainTest, "train_count", "counts"),
    (ingest.TrainTest, "test_count", "counts"),
    (report, "write_training_report", "figures"),
    (sampling, "train_test_samples", "sample"),
    (transfer, "fit_and_score", "fit and score"),
    (tuning, "fit_logistic_regression", "fit LR"),
    (transfer, "save_model", "save model"),
)


def _job_descriptions(spark, numbers) -> dict:
    """``{job number: spark.job.description}`` (None when unset), from Spark's status store."""
    context = spark.sparkContext._jsc.sc()
    context.listenerBus().waitUntilEmpty()  # the store has taken in every job started so far
    store, jobs = context.statusStore(), {}
    for number in numbers:
        described = store.job(number).description()
        jobs[number] = described.get() if described.isDefined() else None
    return jobs


@pytest.mark.classic(reason="reads the SparkContext's job numbers and status store")
@pytest.mark.slow  # three jobs: about 15 s on 2 cores
def test_every_spark_job_carries_the_name_of_its_job_and_phase(spark, tiny_idx, tmp_path, monkeypatch):
    data = str(tmp_path / "ingested")
    cnn = ["--input", data, "--partitions", "2", "--arch", "simple_cnn", "--epochs", "1", "--batch-size", "8"]
    cnn += ["--steps-per-round", "1", "--validation-size", "5", "--checkpoint-every", "0"]
    transfer_flags = ["--input", data, "--partitions", "2", "--weights", "none", "--base-model", "VGG16"]
    transfer_flags += ["--image-size", "32", "--batch-size", "8", "--train-limit", "20", "--test-limit", "5"]
    transfer_flags += ["--max-iter", "2"]
    runs = (
        ("ingest", ingest_job, ["--data-dir", str(tiny_idx), "--output", data]),
        ("train_cnn", train_job, [*cnn, "--output", str(tmp_path / "cnn")]),
        ("transfer", transfer_job, [*transfer_flags, "--output", str(tmp_path / "transfer")]),
    )
    # Spark numbers its jobs 0, 1, ... as they are submitted, before the call that runs them returns.
    scheduler, steps, running = spark.sparkContext._jsc.sc().dagScheduler(), [], []

    def watch(owner, name, step):
        real = getattr(owner, name)

        def watched(*args, **kwargs):
            first = scheduler.numTotalJobs()
            try:
                return real(*args, **kwargs)
            finally:
                steps.append((running[-1], step, list(range(first, scheduler.numTotalJobs()))))

        monkeypatch.setattr(owner, name, watched)

    for owner, name, step in STEPS:
        watch(owner, name, step)
    monkeypatch.chdir(tmp_path)
    before = scheduler.numTotalJobs()
    statuses = []
    for job, module, argv in runs:
        running.append(job)
        statuses.append(module.main(argv))
    first = scheduler.numTotalJobs()
    spark.range(3).count()  # a Spark job after the runs
    after = list(range(first, scheduler.numTotalJobs()))
    assert statuses == [0, 0, 0]
    jobs = _job_descriptions(spark, range(before, scheduler.numTotalJobs()))
    steps = [(job, step, ids) for job, step, ids in steps if ids]  # a step without Spark jobs names none

    # What each step's Spark jobs must be called; transfer's fit_and_score featurizes, fits, then scores.
    assert {(job, step) for job, step, _ in steps} == {
        ("ingest", "write Parquet"),
        *[("train_cnn", step) for step in ("read images", "validation set", "shards", "training")],
        *[("train_cnn", step) for step in ("evaluation", "counts", "figures")],
        *[("transfer", step) for step in ("read images", "sample", "fit and score", "fit LR", "save model")],
    }
    # The workers warm up in two jobs started from threads, wherever they fall among the steps: TensorFlow
    # at the run's start, the replica once the data gives its shape. On a local master one barrier stage
    # trains all the rounds; the count after it (a shuffle, so that Spark can run the stage again) is a
    # job of its own under AQE.
    warming = {number for number, name in jobs.items() if name == "train_cnn: warming up replicas"}
    (trained,) = [[n for n in ids if n not in warming] for _, step, ids in steps if step == "training"]
    rounds = len(json.loads((tmp_path / "cnn" / "metrics.json").read_text())["history"])
    assert len(warming) == 2 and rounds >= 2 and len(trained) == 2
    (fit,) = [ids for _, step, ids in steps if step == "fit LR"]
    expected = {}
    for job, step, ids in steps:
        for number in set(ids) - warming:
            if step == "fit and score":
                phase = "featurize" if number < min(fit) else "fit LR" if number <= max(fit) else "evaluation"
            elif step == "training":
                phase = f"training rounds 1-{rounds}/{rounds}"
            else:
                phase = step
            expected[number] = f"{job}: {phase}"
    assert {number: jobs[number] for number in expected} == expected

    # Every other Spark job of the runs is in a phase too, and a job after the runs carries no name.
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
