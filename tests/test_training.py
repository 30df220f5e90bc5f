"""Data-parallel training: averaging, parity, determinism, retries, resume, the run folder."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import PROJECT, load_job, write_idx_dataset
from mnist_spark import datasets, evaluation, idx, ingest, ml, models, session, training

train_job = load_job("train_cnn")

# first_round_steps=1: rounds of 1, 3 and 4 steps on these 4-step epochs, averaging mid-epoch too.
CONFIG = training.TrainConfig(model="simple_cnn", epochs=2, batch_size=32, partitions=2, seed=7, first_round_steps=1)


def _same(a, b) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def train_df(spark, small_idx):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(small_idx), splits=("train",), limit=256)
    return df.cache()


@pytest.fixture(scope="module")
def trained(spark, train_df):
    """The state CONFIG trains on train_df: what the tests of determinism compare with."""
    _, state = training.train(spark, train_df, CONFIG)
    return state


# --------------------------------------------------------------------------- averaging


def test_average_of_identical_replicas_is_the_replica():
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    optimizer = [np.array(17, np.int64), np.float32(0.001), rng.normal(size=(3, 4)).astype(np.float32)]
    replica = {"count": 5, "weights": weights, "optimizer": optimizer}
    avg_w, avg_o = training.average_replicas([replica, dict(replica, count=9), dict(replica, count=1)])
    for got, want in zip(avg_w + avg_o, weights + optimizer, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert got.dtype == np.asarray(want).dtype


def test_average_is_weighted_by_count():
    a = {"count": 100, "weights": [np.zeros(3, np.float32)], "optimizer": [np.array(10, np.int64)]}
    b = {"count": 300, "weights": [np.full(3, 4.0, np.float32)], "optimizer": [np.array(20, np.int64)]}
    weights, optimizer = training.average_replicas([a, b])
    np.testing.assert_allclose(weights[0], [3.0, 3.0, 3.0])
    assert optimizer[0] == 18 and optimizer[0].dtype == np.int64


def test_schedule_and_config_validation():
    schedule = training.plan_schedule(replace(CONFIG, epochs=3, steps_per_round=5, first_round_steps=None), [100, 96])
    assert (schedule.steps_per_epoch, schedule.steps_per_round, schedule.rounds) == (3, 5, 2)
    with pytest.raises(ValueError, match="'nope' is not a known model; choose one of: mlp"):
        replace(CONFIG, model="nope")
    with pytest.raises(ValueError, match="epochs must be above 0, found 0"):
        replace(CONFIG, epochs=0)
    with pytest.raises(ValueError, match="lr_scaling must be one of none, sqrt, linear, found 'cube'"):
        replace(CONFIG, lr_scaling="cube")
    with pytest.raises(ValueError, match="learning_rate must be above 0"):
        replace(CONFIG, learning_rate=float("nan"))


def test_rounds_start_short_and_grow_to_an_epoch():
    config = training.TrainConfig(epochs=3, batch_size=128, partitions=8)
    schedule = training.plan_schedule(config, [7500] * 8)  # 59 steps per local epoch
    # A quarter epoch but at least 32 steps, and no shorter round left before the epoch's end.
    assert schedule.starts == (0, 59, 118, 177)
    assert [schedule.scores(r) for r in range(schedule.rounds)] == [True] * 3
    longer = training.plan_schedule(replace(config, batch_size=32), [7500] * 8)  # 235 steps per local epoch
    assert longer.starts == (0, 59, 235, 470, 705)
    assert training.plan_schedule(replace(config, first_round_steps=15), [7500] * 8).starts == (0, 15, 59, 118, 177)
    doubling = training.plan_schedule(replace(config, first_round_steps=1), [7500] * 8)
    assert doubling.starts == (0, 1, 3, 7, 15, 31, 59, 118, 177)
    fixed = training.plan_schedule(replace(config, steps_per_round=50), [7500] * 8)
    assert fixed.starts == (0, 50, 100, 150, 177)
    # Growing to --steps-per-round: no round is longer than it, and each ends by its epoch's end.
    capped = training.plan_schedule(replace(config, first_round_steps=15, steps_per_round=30), [7500] * 8)
    assert capped.starts == (0, 15, 45, 59, 89, 118, 148, 177)
    assert capped.steps_per_round == 30
    # The same inputs give the same schedule; it depends on the smallest shard only.
    assert training.plan_schedule(config, [7600, 7500] * 4) == schedule


def test_a_checkpoint_of_other_rounds_resumes_where_it_stopped():
    """A checkpoint written with other round lengths (an earlier version's) goes on from its step."""
    schedule = training.plan_schedule(training.TrainConfig(epochs=3, partitions=16), [3750] * 16)
    earlier = [{"round": 1, "steps": 15}, {"round": 2, "steps": 44}]  # a quarter epoch, then its rest
    resumed = schedule.continuing(earlier)
    assert resumed.starts[:4] == (0, 15, 59, 69) and resumed.total_steps == schedule.total_steps
    assert resumed.starts[3:] == tuple(s for s in schedule.starts if s > 59)
    own = [{"round": r + 1, "steps": schedule.steps_in(r)} for r in range(3)]
    assert schedule.continuing(own) is schedule and schedule.continuing([]) is schedule
    assert schedule.continuing([{"round": 1}]) is schedule  # histories before rounds recorded steps


def test_beyond_eight_replicas_rounds_are_shorter_than_an_epoch():
    config = training.TrainConfig(epochs=2, partitions=16)  # batch 64
    schedule = training.plan_schedule(config, [3750] * 16)  # 59 steps per local epoch
    lengths = [schedule.steps_in(r) for r in range(schedule.rounds)]
    assert lengths == [32, 9, 9, 9] + [10] * 5 + [9]  # the first, then each epoch's rest in even rounds of <= 11
    assert schedule.starts[4] == 59 and training.full_round_steps(16, 59) == 11
    # The driver scores after the first round, at each epoch's end and after the last.
    assert [r for r in range(schedule.rounds) if schedule.scores(r)] == [0, 3, 9]
    assert training.full_round_steps(8, 118) == 118 and training.full_round_steps(32, 590) < 590 / 16
    given = training.plan_schedule(replace(config, steps_per_round=20), [3750] * 16)
    assert given.starts[:4] == (0, 20, 40, 60)  # --steps-per-round as given: every round of that length


def test_learning_rate_warms_up_to_the_scaled_peak_then_decays():
    config = training.TrainConfig(learning_rate=1e-3, lr_decay=0.5, partitions=8, lr_scaling="linear")
    schedule = training.Schedule(steps_per_epoch=10, starts=(0, 10, 20, 30))
    rates = [training.learning_rate_at(config, schedule, step) for step in range(30)]
    assert rates[0] == pytest.approx(1e-3 + 7e-3 / 10)
    assert rates[9] == pytest.approx(8e-3)  # the peak, at the end of the warm-up epoch
    assert rates[10] == pytest.approx(4e-3) and rates[29] == pytest.approx(2e-3)
    assert all(a < b for a, b in zip(rates[:9], rates[1:10], strict=True))
    for rule, peak in (("sqrt", 8**0.5 * 1e-3), ("none", 1e-3)):
        assert training.learning_rate_at(replace(config, lr_scaling=rule), schedule, 9) == pytest.approx(peak)
    # The peak follows the batch the averaged update stands for: replicas x batch, over 64.
    for partitions, batch, peak in ((2, 128, 4e-3), (4, 64, 4e-3), (8, 128, 16e-3), (2, 32, 1e-3), (2, 8, 1e-3)):
        sized = replace(config, partitions=partitions, batch_size=batch)
        assert training.learning_rate_at(sized, schedule, 9) == pytest.approx(peak)
    assert training.learning_rate_at(replace(config, partitions=8, batch_size=128, lr_scaling="sqrt"), schedule, 9) == (
        pytest.approx(4e-3)
    )
    # One replica trains as plain Keras: no warm-up to another rate, whatever its batch.
    single = replace(config, partitions=1, batch_size=128)
    assert [training.learning_rate_at(single, schedule, step) for step in (0, 9)] == [1e-3, 1e-3]


def test_batchnorm_statistics_are_re_estimated_on_the_sample():
    images = np.random.default_rng(0).integers(0, 256, size=(300, 28, 28, 1)).astype(np.float32)
    model = models.build_model("bn_cnn", seed=0)
    assert models.reestimate_batchnorm(model, images, batch_size=128) == 4
    import keras

    for layer in models.batchnorm_layers(model):
        # In inference mode each BatchNorm layer now standardizes the sample: mean 0, variance
        # v / (v + epsilon) for the layer's input variance v (1 for all but tiny variances).
        normalized = keras.ops.convert_to_numpy(keras.Model(model.inputs, layer.output)([images], training=False))
        axes = tuple(range(normalized.ndim - 1))
        variance = keras.ops.convert_to_numpy(layer.moving_variance)
        np.testing.assert_allclose(normalized.mean(axis=axes), 0, atol=2e-3)
        np.testing.assert_allclose(normalized.var(axis=axes), variance / (variance + layer.epsilon), rtol=1e-3)
    assert models.reestimate_batchnorm(models.build_model("simple_cnn", seed=0), images) == 0


# --------------------------------------------------------------------------- Spark runs


def _plain_keras(images, labels, config):
    """What one replica does, written as a plain single-process Keras loop over the same rounds."""
    model, state = training.initial_state(config)
    schedule = training.plan_schedule(config, [len(labels)])
    per_epoch = schedule.steps_per_epoch * config.batch_size
    stream = np.concatenate(
        [np.random.default_rng([config.seed, 0, epoch]).permutation(len(labels)) for epoch in range(config.epochs)]
    )
    for round_ in range(schedule.rounds):
        first, last = (schedule.starts[round_] * config.batch_size, schedule.starts[round_ + 1] * config.batch_size)
        assert per_epoch == len(labels)  # whole batches: the stream is the epochs' permutations
        training.load_state(
            model,
            model.get_weights(),
            training.optimizer_variables(model),
            seed=training.task_seed(config.seed, 0, round_),
        )
        epoch = schedule.starts[round_] // schedule.steps_per_epoch
        model.optimizer.learning_rate = config.learning_rate * config.lr_decay**epoch
        order = stream[first:last]
        model.fit(
            images[order].astype(np.float32),
            labels[order],
            batch_size=config.batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )
    return model.get_weights()


def test_one_partition_matches_plain_keras(spark, train_df, small_idx):
    config = replace(CONFIG, partitions=1)
    _, state = training.train(spark, train_df, config)
    images = idx.read_idx(small_idx / "train-images-idx3-ubyte.gz")[:256, ..., None]
    labels = idx.read_idx(small_idx / "train-labels-idx1-ubyte.gz")[:256].astype(np.int32)
    plain = _plain_keras(images, labels, config)
    for got, want in zip(state.weights, plain, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert state.history[-1]["images"] == 256


def test_same_seed_and_partitioning_give_the_same_model(spark, train_df, trained):
    first = trained
    _, again = training.train(spark, train_df.repartition(5), CONFIG)  # input partitioning differs
    _, other = training.train(spark, train_df, replace(CONFIG, seed=8))
    assert _same(first.weights, again.weights) and _same(first.optimizer, again.optimizer)
    assert not _same(first.weights, other.weights)
    assert [h["steps"] for h in first.history] == [1, 3, 4]  # a quarter epoch, the rest, an epoch
    assert first.optimizer[0] == 2 * 4  # Adam's step: 2 epochs of 128 images / 32 per batch


def test_shards_in_small_chunks_give_the_same_model(spark, train_df, trained):
    shards, sizes = training.make_shards(train_df, 2, chunk_bytes=784 * 10)
    rows = shards.select("shard", "chunk", F.length("pixels").alias("bytes")).collect()
    shards.unpersist()
    assert sizes == [128, 128] and len(rows) == 2 * 13  # 10 images a row: 13 rows a shard
    assert max(r["bytes"] for r in rows) == 784 * 10
    assert sorted((r["shard"], r["chunk"]) for r in rows) == [(s, c) for s in (0, 1) for c in range(13)]
    _, chunked = training.train(spark, train_df, CONFIG, chunk_bytes=784 * 10)
    assert _same(trained.weights, chunked.weights) and _same(trained.optimizer, chunked.optimizer)


def test_replicas_beyond_the_slots_share_tasks_on_a_local_master(spark, train_df, monkeypatch):
    class Conf(dict):
        def get(self, key, default=None):
            return super().get(key, default)

    def session(master):
        return type("Session", (), {"conf": Conf({"spark.master": master})})()

    assert training.replica_tasks(session("local[2]"), 16, 2) == 2
    assert training.replica_tasks(session("local[2]"), 2, 2) == 2
    assert training.replica_tasks(session("spark://host:7077"), 16, 2) == 16  # executors may come and go
    used = []
    shared = training.replica_tasks
    monkeypatch.setattr(training, "replica_tasks", lambda *a: used.append(shared(*a)) or used[-1])
    config = replace(CONFIG, partitions=4, epochs=1)
    _, together = training.train(spark, train_df, config)  # 2 tasks of 2 replicas each
    monkeypatch.setattr(training, "replica_tasks", lambda spark, partitions, slots: partitions)
    _, apart = training.train(spark, train_df, config)  # a task per replica
    assert used == [2]
    assert _same(together.weights, apart.weights) and _same(together.optimizer, apart.optimizer)


@pytest.mark.parametrize("per_call", [3, None])
def test_a_round_trains_as_keras_fit_with_the_same_learning_rates(per_call):
    """fit_round runs fit's own training step: the same weights, bit for bit, and fit's means of the round.

    The round crosses the warm-up and an epoch's end, so the learning rate changes between steps,
    also inside one call of 3 steps and in the call of all 7.
    """
    import keras

    rng = np.random.default_rng(5)
    images, labels = rng.integers(0, 256, (192, 28, 28, 1), np.uint8), rng.integers(0, 10, 192).astype(np.int32)
    config = replace(CONFIG, partitions=4, batch_size=32, warmup_epochs=0.5)  # peak 2 x, 3 warm-up steps
    schedule = training.plan_schedule(config, [192] * 4)
    first_step, steps = 0, 7  # over the end of the first 6-step epoch
    order = np.random.default_rng(0).permutation(np.resize(np.arange(192), steps * 32))
    rates = [training.learning_rate_at(config, schedule, first_step + k) for k in range(steps)]
    assert len(set(rates)) >= 3  # warm-up, the peak, the next epoch's decay

    class Rates(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.model.optimizer.learning_rate = rates[batch]

    def trained(run):
        model, state = training.initial_state(config)
        training.load_state(model, state.weights, state.optimizer, seed=11)
        batches = training._batches(images, labels, np.arange(192), order, config, schedule, first_step)
        run(model, batches)  # a reused replica: the second round's metrics are that round's alone
        return model, run(model, batches)

    class Dataset(keras.utils.PyDataset):
        def __init__(self, batches):
            super().__init__()
            self.batches = batches

        def __len__(self):
            return len(self.batches)

        def __getitem__(self, number):
            return self.batches[number]

    fitted, history = trained(
        lambda model, batches: (
            model.fit(Dataset(batches), epochs=1, shuffle=False, verbose=0, callbacks=[Rates()]).history
        )
    )
    stepped, logs = trained(
        lambda model, batches: training.fit_round(model, batches, config, schedule, first_step, per_call)
    )
    assert _same(fitted.get_weights(), stepped.get_weights())
    assert _same(training.optimizer_variables(fitted), training.optimizer_variables(stepped))
    assert logs == {"loss": history["loss"][-1], "accuracy": history["accuracy"][-1]}
    assert float(stepped.optimizer.learning_rate) == pytest.approx(rates[-1])


def test_loading_a_replica_state_keeps_tensorflows_eager_seed():
    """Seeding TensorFlow's eager context clears its kernel caches (every replica's loop is instantiated anew)."""
    import tensorflow as tf

    model, state = training.initial_state(CONFIG)
    tf.random.set_seed(123)
    training.load_state(model, state.weights, state.optimizer, seed=7)
    assert tf.compat.v1.get_seed(None)[0] == 123  # the global seed, as tf.random.set_seed left it
    assert np.random.get_state()[1][0] == np.random.RandomState(7).get_state()[1][0]  # NumPy's is set


def test_a_replica_state_loads_and_reads_back_bit_for_bit():
    """The compiled transfer sets and reads the very bits Keras's own would, whichever state was staged last."""
    model, state = training.initial_state(CONFIG)
    other = (
        [w + np.float32(0.5) for w in state.weights],
        [np.full_like(o, 3) for o in state.optimizer],  # the step count, an integer, among them
    )
    transfer = training.state_transfer(model)
    for weights, optimizer in (state.weights, state.optimizer), other, (state.weights, state.optimizer):
        training.load_state(model, weights, optimizer)
        read_weights, read_optimizer = transfer.read()
        assert _same(read_weights, weights) and _same(read_optimizer, optimizer)
        assert [a.dtype for a in read_optimizer] == [a.dtype for a in optimizer]
        assert _same(model.get_weights(), weights) and _same(training.optimizer_variables(model), optimizer)
    model.get_weights()[0][...] = 7  # the replica trains on: what was loaded again is the staged state
    model.layers[0].set_weights([w + 1 for w in model.layers[0].get_weights()])
    training.load_state(model, state.weights, state.optimizer)
    assert _same(model.get_weights(), state.weights)
    with pytest.raises(ValueError, match="does not fit a model"):
        training.load_state(model, state.weights[:-1], state.optimizer)


def test_a_warmed_up_replica_trains_as_a_fresh_one():
    """The warm-up trains a step on zeros; the round's state, loaded over it, leaves no trace of it."""
    rng = np.random.default_rng(3)
    shard = (rng.integers(0, 256, (96, 28, 28, 1), np.uint8), rng.integers(0, 10, 96).astype(np.int32), np.arange(96))
    config = replace(CONFIG, augment={"rotate_probability": 1.0, "max_left_rotation": 20.0, "max_right_rotation": 20.0})
    schedule = training.plan_schedule(config, [96, 96])
    _, state = training.initial_state(config)
    start = (state.weights, state.optimizer)
    evaluation._MODELS.clear()
    fresh = training.train_replica(1, shard, start, 1, config, schedule)
    evaluation._MODELS.clear()
    warmed = training.warm_replica(config, schedule)
    after = training.train_replica(1, shard, start, 1, config, schedule)
    assert fresh["cold"] == 1 and after["cold"] == 0 and warmed["pid"] == os.getpid()
    assert _same(fresh["weights"], after["weights"]) and _same(fresh["optimizer"], after["optimizer"])
    # In a Spark task the warm-up runs in a thread of the worker; the replica's round waits for it.
    evaluation._MODELS.clear()
    assert training.warm_in_background(None) == {"pid": os.getpid(), "seconds": 0.0}  # TensorFlow alone
    assert training.warm_in_background(config) == {"pid": os.getpid(), "seconds": 0.0}
    background = training.train_replica(1, shard, start, 1, config, schedule)
    assert background["cold"] == 0 and background["warming"] > 0 and not training._WARMING
    assert training.wait_for_warm_up() == 0.0  # none running: no wait to count
    assert _same(fresh["weights"], background["weights"]) and _same(fresh["optimizer"], background["optimizer"])


def test_a_warm_up_thread_gives_tensorflow_its_tasks_cores(monkeypatch):
    """A worker's warm-up runs on after its task has ended, when the worker has cleared the task's
    context: it still sizes TensorFlow's pools by the task's cores, as a round's task does. With
    every core instead, which worker warmed up decided a replica's bits (the pools' size changes
    the order in which kernels add up their parts)."""
    import threading

    import tensorflow as tf
    from pyspark import TaskContext

    sizes: list = []
    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", sizes.append)
    monkeypatch.setattr(tf.config.threading, "set_inter_op_parallelism_threads", lambda threads: None)
    monkeypatch.setattr(session, "_TENSORFLOW_THREADS", [])
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    for name in session.TF_THREAD_VARS:  # the test process's own settings come back afterwards
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(TaskContext, "_taskContext", None)  # a TaskContext made below registers itself
    task = TaskContext(cpus=3, resources={})  # a task given 3 cores and no GPU
    release = threading.Event()
    earlier = threading.Thread(target=release.wait)  # holds the warm-up until the task has ended
    earlier.start()
    monkeypatch.setattr(training, "_WARMING", [earlier])
    monkeypatch.setattr(TaskContext, "_taskContext", task)
    assert training.warm_in_background(None)["seconds"] == 0.0  # in the task
    TaskContext._setTaskContext(None)  # the task ends
    release.set()
    training.wait_for_warm_up()
    assert sizes == [3]
    assert session.configure_tensorflow_threads() == 3  # later calls outside a task keep the pools' size


def test_the_workers_warm_up_once_before_the_first_round(spark, train_df, monkeypatch, caplog):
    waits = []

    class Recorded(training.WarmUp):
        def wait(self, raise_error=True):
            waits.append(super().wait(raise_error))
            return waits[-1]

    monkeypatch.setattr(training, "WarmUp", Recorded)
    config = replace(CONFIG, epochs=1)
    with caplog.at_level(logging.INFO, logger="mnist_spark.training"):
        _, state = training.train(spark, train_df, config)
    assert len(waits) == 1 and len(waits[0]) == 2  # a task per slot that trains, each in a worker of its own
    # The run's first line names the peak rate, not the decayed rate of the step after the warm-up.
    assert f"peak learning rate {training.peak_learning_rate(config):.4g}" in caplog.text
    assert len({pid for pid, _ in waits[0]}) == 2 and all(seconds == 0.0 for _, seconds in waits[0])  # in threads
    first, *later = state.history
    assert "warm_up" in first["overhead_seconds"] and not any("warm_up" in r["overhead_seconds"] for r in later)
    assert all(0 <= r["cold_replicas"] <= 2 for r in state.history)
    training.train(spark, train_df, config, state=state)  # nothing left to train: nothing to warm up
    assert len(waits) == 1


def test_the_shard_keys_hash_as_spark_hashes_them(spark):
    """The keys that place the shards come from Spark's own ``hash``, computed without a Spark job."""
    values = [*range(-300, 300), 2**31 - 1, 2**31, -(2**31) - 1, 2**40 + 3, 2**63 - 1, -(2**63)]
    rows = spark.createDataFrame([(v,) for v in values], "id long").select("id", F.hash("id").alias("h")).collect()
    assert [training.spark_hash(r["id"]) for r in rows] == [r["h"] for r in rows]
    for partitions in (1, 2, 3, 8, 16, 64):
        keys = training.partition_keys(partitions)
        assert [training.spark_hash(k) % partitions for k in keys] == list(range(partitions))
        assert all(training.spark_hash(k) % partitions != p for p, key in enumerate(keys) for k in range(key))


def test_the_sample_hash_is_sparks_xxhash64(spark):
    """The rows a sample takes are picked in the tasks by Spark's own ``xxhash64``, computed with numpy:
    seeds that ``F.lit`` types as an int and as a long."""
    values = [*range(-300, 300), 2**31 - 1, 2**31, -(2**31) - 1, 2**40 + 3, 2**63 - 1, -(2**63)]
    seconds = [0, 7, -3, 2**31 - 1, -(2**31), 2**40, -(2**40)]
    hashes = [F.xxhash64("id", F.lit(second)).alias(f"h{n}") for n, second in enumerate(seconds)]
    rows = spark.createDataFrame([(v,) for v in values], "id long").select("id", *hashes).collect()
    for n, second in enumerate(seconds):
        assert training.spark_xxhash64([r["id"] for r in rows], second).tolist() == [r[f"h{n}"] for r in rows]


@pytest.mark.parametrize(("partitions", "chunk_bytes"), [(2, None), (5, 3 * 784)])
def test_the_batchnorm_sample_is_the_rows_sparks_filter_picks(spark, train_df, partitions, chunk_bytes):
    """The sample read from the cached shards equals Spark's filter of the frame, in index order,
    whatever the partitioning and the chunks."""
    count, seed = 40, 3
    total = train_df.count()
    keep = F.pmod(F.xxhash64("index", F.lit(seed)), F.lit(total)) < F.lit(count)
    expected = train_df.where(keep).orderBy("index").collect()
    shards, sizes = training.make_shards(train_df, partitions, chunk_bytes=chunk_bytes)
    try:
        images, labels = training.training_sample(shards, count, seed, sum(sizes))
    finally:
        shards.unpersist()
    assert 20 <= len(expected) <= 60  # about count of the 256 rows
    assert labels.tolist() == [r["label"] for r in expected]
    want = np.stack([np.frombuffer(r["image"]["data"], np.uint8).reshape(28, 28, 1) for r in expected])
    assert np.array_equal(images, want)


@pytest.mark.parametrize(("partitions", "tasks"), [(4, 4), (8, 8), (16, 16), (8, None), (8, 3)])
def test_each_task_holds_a_run_of_adjacent_shards_in_order(spark, train_df, partitions, tasks):
    # A shard per partition: on a cluster, where each replica is a task of its own. Fewer
    # partitions than shards: a task per slot of the local master (None: the session's 2), each
    # training adjacent shards one after the other, so that it can add them before they leave it.
    shards, sizes = training.make_shards(train_df, partitions, tasks=tasks)
    placed = shards.select(F.spark_partition_id().alias("partition"), "shard", "chunk").collect()
    shards.unpersist()
    tasks = tasks or 2
    assert sizes == [256 // partitions] * partitions
    assert sorted({(r["partition"], r["shard"]) for r in placed}) == [
        (k * tasks // partitions, k) for k in range(partitions)
    ]
    assert [(r["shard"], r["chunk"]) for r in placed] == sorted((r["shard"], r["chunk"]) for r in placed)


def test_a_replica_reads_its_shard_from_a_local_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_DIRS", f"{tmp_path},/elsewhere")
    images = np.arange(5 * 4, dtype=np.uint8).reshape(5, 2, 2, 1)
    chunks = [
        {
            "chunk": c,
            "shape": np.array([2, 2, 1], np.int32).tobytes(),
            "index": np.arange(c * 3, min(5, c * 3 + 3), dtype=np.int64).tobytes(),
            "label": np.arange(c * 3, min(5, c * 3 + 3), dtype=np.int32).tobytes(),
            "pixels": images[c * 3 : c * 3 + 3].tobytes(),
        }
        for c in (1, 0)
    ]  # out of order
    local = training.ShardFile(chunk_bytes=3 * 4)  # 3 images a chunk
    for chunk in chunks:
        local.add(chunk)
    local.finish()
    assert os.path.dirname(local.path) == str(tmp_path)
    assert isinstance(local.images, np.memmap) and np.array_equal(local.images, images)
    assert local.labels.tolist() == [0, 1, 2, 3, 4] and local.index.tolist() == [0, 1, 2, 3, 4]
    local.close()
    assert os.listdir(tmp_path) == []
    missing = training.ShardFile(chunk_bytes=3 * 4)
    missing.add(chunks[0])
    with pytest.raises(ValueError, match=r"shard chunks \[1\] are not 0..0: a chunk is missing"):
        missing.finish()
    missing.close()


def test_a_task_holds_one_shard_file_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_LOCAL_DIRS", str(tmp_path))
    images = np.arange(7 * 4, dtype=np.uint8).reshape(7, 2, 2)
    labels, index = np.arange(7, dtype=np.int32), np.arange(7, dtype=np.int64)
    rows = [  # shard 0 in two chunks of 3 images, shard 1 in one
        *training._shard_rows(0, 10, (2, 2), index[:5], labels[:5], images[:5], chunk_bytes=3 * 4),
        *training._shard_rows(1, 11, (2, 2), index[5:], labels[5:], images[5:], chunk_bytes=3 * 4),
    ]
    seen = []
    for shard, local in training.shard_files(iter(rows), 3 * 4):
        seen.append((shard, len(os.listdir(tmp_path)), local.images.tolist(), local.labels.tolist()))
        local.close()
    assert (
        seen
        == [
            (0, 1, images[:5].tolist(), [0, 1, 2, 3, 4]),  # shard 1's file is not begun yet
            (1, 1, images[5:].tolist(), [5, 6]),  # shard 0's was closed
        ]
    )
    assert os.listdir(tmp_path) == []
    apart = iter([rows[0], rows[2], rows[1]])  # shard 0's second chunk after shard 1
    with pytest.raises(ValueError, match="the rows of shard 0 arrived apart, after another shard's"):
        for _, local in training.shard_files(apart, 3 * 4):
            local.close()
    assert os.listdir(tmp_path) == []


def test_barrier_mode_gives_the_same_model(spark, train_df, trained):
    _, barrier = training.train(spark, train_df, replace(CONFIG, barrier=True))
    assert _same(trained.weights, barrier.weights)
    with pytest.raises(ValueError, match="barrier mode runs all 3 replicas at once"):
        training.train(spark, train_df, replace(CONFIG, barrier=True, partitions=3))


@pytest.mark.parametrize("model", ["simple_cnn", "bn_cnn"])
def test_one_job_of_rounds_gives_the_same_model_as_a_job_per_round(spark, train_df, tmp_path, monkeypatch, model):
    """4 replicas in 2 tasks, 1-step rounds of 4-step epochs, validation after rounds 1, 4 and 8.

    One job trains the 8 rounds; the driver follows them, and holds the tasks
    after the rounds it scores (``bn_cnn``: with its BatchNorm statistics
    re-estimated, which the next round starts from).
    """
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this run's exchange folders, not other tests'
    config = replace(CONFIG, model=model, partitions=4, batch_size=16, steps_per_round=1, batchnorm_sample=64)
    rng = np.random.default_rng(5)
    validation = (rng.integers(0, 255, (40, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 40).astype(np.int32))
    seen: dict = {"whole": [], "single": []}

    def on_round(run):
        return lambda state, _: seen[run].append((state.history[-1].get("val_accuracy"), state.weights))

    phases, named = [], session.phase

    def phase(spark, name):
        phases.append(name)
        return named(spark, name)

    monkeypatch.setattr(session, "phase", phase)
    _, whole = training.train(spark, train_df, config, validation=validation, on_round=on_round("whole"))
    assert [name for name in phases if name.startswith("training")] == ["training rounds 1-8/8"]  # one Spark job
    monkeypatch.setattr(session, "phase", named)
    _, single = training.train(
        spark, train_df, config, validation=validation, on_round=on_round("single"), rounds_per_job=1
    )
    assert _same(whole.weights, single.weights) and _same(whole.optimizer, single.optimizer)
    assert [h["loss"] for h in whole.history] == [h["loss"] for h in single.history]
    # The driver held every round's state as the round ended, as a job per round gives it, and scored the same.
    assert len(seen["whole"]) == len(seen["single"]) == 8
    for (val, weights), (val_single, weights_single) in zip(seen["whole"], seen["single"], strict=True):
        assert val == val_single and _same(weights, weights_single)
    assert [n + 1 for n, (val, _) in enumerate(seen["whole"]) if val is not None] == [1, 4, 8]
    assert [h["images"] for h in whole.history] == [4 * 16] * 8  # 4 replicas, a step of 16 images
    assert all(h["train_seconds"] <= h["seconds"] for h in whole.history)
    assert not [name for name in os.listdir(tmp_path) if name.startswith("mnist_spark-rounds-")]


def test_round_jobs_split_a_run_only_at_their_cap():
    config = replace(CONFIG, partitions=16, epochs=2, batch_size=64, first_round_steps=None)
    schedule = training.plan_schedule(config, [3750] * 16)  # 59 steps an epoch: 32, then rounds of 9 or 10
    assert training.round_jobs(schedule, 0) == [(0, 9)]
    assert training.round_jobs(schedule, 2) == [(2, 9)]  # resumed after round 2
    assert training.round_jobs(schedule, 0, rounds_per_job=4) == [(0, 3), (4, 7), (8, 9)]
    assert training.round_jobs(schedule, 0, rounds_per_job=1) == [(r, r) for r in range(10)]


def test_on_the_fly_augmentation_is_deterministic_and_changes_training(spark, train_df, trained):
    from dataclasses import asdict

    from mnist_spark.augment import AugmentParams

    config = replace(CONFIG, augment=asdict(AugmentParams().rotate(1.0, 25, 25)))
    _, first = training.train(spark, train_df, config)
    _, again = training.train(spark, train_df.repartition(3), config)
    assert _same(first.weights, again.weights)
    assert not _same(first.weights, trained.weights)


def test_too_many_partitions_is_a_clear_error(spark, small_idx):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(small_idx), splits=("test",), limit=3)
    with pytest.raises(ValueError, match="4 partitions need at least 4 training images"):
        training.train(spark, df, replace(CONFIG, partitions=4))


def test_resume_reaches_the_same_model(spark, train_df, tmp_path):
    config = replace(CONFIG, epochs=3)
    _, whole = training.train(spark, train_df, config)

    class Stop(Exception):
        pass

    def checkpoint_then_die(state, schedule):
        training.save_checkpoint(str(tmp_path), state, config)
        if state.round == 2:
            raise Stop()

    with pytest.raises(Stop):
        training.train(spark, train_df, config, on_round=checkpoint_then_die)
    assert sorted(os.listdir(tmp_path)) == ["round-0001.npz", "round-0002.npz"]
    state, saved, _ = training.load_checkpoint(str(tmp_path))
    assert state.round == 2 and saved == config
    _, resumed = training.train(spark, train_df, saved, state=state)
    assert _same(whole.weights, resumed.weights) and _same(whole.optimizer, resumed.optimizer)
    assert [h["round"] for h in resumed.history] == [1, 2, 3, 4]


def _replica_rows(count: int):
    rng = np.random.default_rng(1)
    results = [
        {
            "partition": k,
            "device": "cpu",
            "count": int(rng.integers(50, 80)),
            "loss": float(k),
            "accuracy": 0.5,
            "seconds": 1.0,
            "fit_seconds": 0.9,
            "finished": 0.0,
            "pid": 100 + k,
            "cold": 0,
            "weights": [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)],
            "optimizer": [np.array(10 * (k + 1), np.int64), rng.normal(size=(5, 3)).astype(np.float32)],
        }
        for k in range(count)
    ]
    return results, [{"lo": k, "size": 1, "part": pickle.dumps(r)} for k, r in enumerate(results)]


def _tasks_nodes(results, groups):
    """The nodes that tasks training the replicas of each of ``groups`` (partition lists, in order) send."""
    rows = []
    for group in groups:
        tree, nodes = training.TreeSum(len(results)), []
        for k in group:
            nodes += tree.push(k, 1, results[k])
        rows += [{"lo": lo, "size": size, "part": pickle.dumps(part)} for lo, size, part in nodes + tree.finish()]
    return rows


def test_averaging_adds_along_a_fixed_tree_whichever_tasks_add_which_replicas():
    """Pairs of adjacent nodes up a binary tree, the same bits however tasks split the replicas."""
    results, _ = _replica_rows(5)
    before = pickle.dumps(results)
    weights, optimizer = training.average_replicas(results)
    assert pickle.dumps(results) == before  # the replicas' states are added into copies
    counts = [r["count"] for r in results]
    for k, got in enumerate(weights + optimizer[1:]):
        arrays = [
            np.asarray((r["weights"] + r["optimizer"][1:])[k], np.float64) * c
            for r, c in zip(results, counts, strict=True)
        ]
        by_hand = ((arrays[0] + arrays[1]) + (arrays[2] + arrays[3])) + arrays[4]  # node (4, 1) stands for (4, 4)
        np.testing.assert_array_equal(got, (by_hand / sum(counts)).astype(np.float32))
        running = arrays[0] + arrays[1] + arrays[2] + arrays[3] + arrays[4]
        np.testing.assert_allclose(got, (running / sum(counts)).astype(np.float32), rtol=1e-6)
    assert optimizer[0] == np.rint(np.dot(counts, [10, 20, 30, 40, 50]) / sum(counts))
    # Tasks of adjacent replicas send sums; tasks of scattered ones (as coalesce groups them) send
    # what they could add. Either way the driver's or an averaging task's sum has the same bits.
    for groups in ([[0, 1, 2, 3, 4]], [[0, 1], [2, 3, 4]], [[0], [1, 2], [3, 4]], [[0, 1, 4], [2, 3]]):
        rows = _tasks_nodes(results, groups)
        got_w, got_o, metrics = training._root_mean(training._add_rows(rows, 5), 5)
        assert _same(got_w, weights) and _same(got_o, optimizer), groups
        assert sorted(m["partition"] for m in metrics) == [0, 1, 2, 3, 4] and "weights" not in metrics[0]
    assert [(r["lo"], r["size"]) for r in _tasks_nodes(results, [[0, 1, 2, 3, 4]])] == [(0, 8)]
    assert [(r["lo"], r["size"]) for r in _tasks_nodes(results, [[0, 1, 4]])] == [(0, 2), (4, 4)]
    with pytest.raises(ValueError, match="states of different structure"):
        training.average_replicas([results[0], {**results[1], "weights": results[1]["weights"][:1]}])


@pytest.mark.parametrize("fan_in", [2, 4])
def test_tree_average_in_the_executors_equals_the_plain_mean(spark, fan_in):
    results, rows = _replica_rows(4)
    df = spark.createDataFrame(rows, training.NODE_SCHEMA).repartition(4)
    weights, optimizer, replicas = training.tree_average(df, 4, fan_in=fan_in)
    plain_w, plain_o = training.average_replicas(results)
    counts = np.array([r["count"] for r in results], np.float64)
    by_hand = sum(c * r["weights"][0].astype(np.float64) for c, r in zip(counts, results, strict=True)) / counts.sum()
    np.testing.assert_allclose(weights[0], by_hand.astype(np.float32), rtol=1e-6)
    assert _same(weights, plain_w) and _same(optimizer, plain_o)
    assert all(got.dtype == want.dtype for got, want in zip(weights + optimizer, plain_w + plain_o, strict=True))
    steps = np.array([10, 20, 30, 40], np.float64)
    assert optimizer[0] == np.rint(counts @ steps / counts.sum()) and optimizer[0].dtype == np.int64
    assert [r["partition"] for r in replicas] == [0, 1, 2, 3]
    assert [r["pid"] for r in replicas] == [100, 101, 102, 103] and "weights" not in replicas[0]
    # Whatever order the shuffle delivers them in, and whoever added them: the same bits.
    again, _, _ = training.tree_average(df.repartition(3), 4, fan_in=fan_in)
    assert _same(weights, again)
    summed = spark.createDataFrame(_tasks_nodes(results, [[0, 1, 2], [3]]), training.NODE_SCHEMA)
    for on_driver in (False, True):
        got, _, listed = training.tree_average(summed, 4, fan_in=fan_in, on_driver=on_driver)
        assert _same(weights, got) and [r["partition"] for r in listed] == [0, 1, 2, 3]


class _Task:
    """What RoundExchange asks of a BarrierTaskContext: the task's partition."""

    def __init__(self, partition: int):
        self.partition = partition

    def partitionId(self):
        return self.partition


def test_tasks_average_a_round_among_themselves_as_the_driver_would(tmp_path):
    """3 tasks of 5 replicas ({0, 1}, {2, 3}, {4}), in threads, each waiting for the others' nodes."""
    from concurrent.futures import ThreadPoolExecutor

    results, _ = _replica_rows(5)
    weights, optimizer = training.average_replicas(results)
    groups = [[0, 1], [2, 3], [4]]

    def task(number):
        exchange = training.RoundExchange(str(tmp_path), _Task(number), 5)
        means = []
        for round_ in range(2):
            tree, nodes = training.TreeSum(5), []
            for k in groups[number]:
                nodes += tree.push(k, 1, results[k])
            means.append(exchange.mean(round_, nodes + tree.finish()))
        return exchange.attempt, means

    with ThreadPoolExecutor(len(groups)) as pool:
        ran = list(pool.map(task, range(len(groups))))
    for attempt, means in ran:
        assert attempt == 0
        for got_w, got_o, metrics in means:
            assert _same(got_w, weights) and _same(got_o, optimizer)
            assert sorted(m["partition"] for m in metrics) == [0, 1, 2, 3, 4]
    assert sorted(name for name in os.listdir(tmp_path) if name.startswith("round-1-")) == [
        "round-1-0-2.node",
        "round-1-2-2.node",
        "round-1-4-4.node",
    ]
    # A task that runs again in the job (its stage failed) knows it, and finds the failed run's
    # nodes as good as new: the same bits. Its own it writes again.
    again = training.RoundExchange(str(tmp_path), _Task(1), 5)
    assert again.attempt == 1
    tree, nodes = training.TreeSum(5), []
    for k in groups[1]:
        nodes += tree.push(k, 1, results[k])
    got_w, got_o, _ = again.mean(1, nodes + tree.finish())
    assert _same(got_w, weights) and _same(got_o, optimizer)


def test_the_driver_follows_the_tasks_rounds_and_holds_them_where_it_scores(tmp_path):
    """2 tasks of 4 replicas in threads; the driver reads round 0's mean and releases a state of its own."""
    from concurrent.futures import Future, ThreadPoolExecutor

    results, _ = _replica_rows(4)
    weights, optimizer = training.average_replicas(results)
    groups = [[0, 1], [2, 3]]

    def task(number):
        exchange = training.RoundExchange(str(tmp_path), _Task(number), 4)
        tree, nodes = training.TreeSum(4), []
        for k in groups[number]:
            nodes += tree.push(k, 1, results[k])
        return exchange.released(0, nodes + tree.finish())

    running = Future()  # the Spark job, still running
    follower = training.RoundFollower(str(tmp_path), 4)
    with ThreadPoolExecutor(len(groups)) as pool:
        tasks = [pool.submit(task, number) for number in range(len(groups))]
        written, got_w, got_o, metrics = follower.wait(0, running)
        assert _same(got_w, weights) and _same(got_o, optimizer)
        assert [m["partition"] for m in metrics] == [0, 1, 2, 3]
        assert written <= time.time() and not any(t.done() for t in tasks)  # held until released
        changed = [w + 1 for w in got_w]
        follower.release(0, changed, got_o)
        for released in (t.result(timeout=60) for t in tasks):
            assert _same(released[0], changed) and _same(released[1], got_o)
    failed = Future()
    failed.set_exception(RuntimeError("a task failed 4 times"))
    with pytest.raises(RuntimeError, match="a task failed 4 times"):
        follower.wait(1, failed)  # no task wrote round 1: the job's error, not a wait without end


def test_a_rounds_time_is_its_window_with_scoring_apart():
    replica = {"fit_seconds": 1.0, "finished": 12.5}
    times = training._round_timing([replica] * 2, (10.0, 13.0), {"warm_up": 0.3}, {"validation": 0.6}, {}, 2)
    assert times["fitting"] == 1.0 and times["began"] == 10.0
    assert times["train_seconds"] == pytest.approx(3.0) and times["seconds"] == pytest.approx(3.6)
    assert times["overheads"] == pytest.approx(
        {"broadcast": 0.0, "warm_up": 0.3, "averaging": 0.5, "task_start": 1.2, "validation": 0.6}  # 3 - 1 - 0.5 - 0.3
    )
    last = training._round_timing([replica] * 2, (10.0, 13.0), {}, {}, {"batchnorm": 0.4}, 2)
    assert last["train_seconds"] == pytest.approx(3.4) == last["seconds"]  # the final model's BatchNorm: training
    # A replica that waited for its worker's warm-up: the longest wait goes to the warm-up, not task start.
    waited = training._round_timing([replica, {**replica, "warming": 0.7}], (10.0, 13.0), {"warm_up": 0.3}, {}, {}, 2)
    overheads = waited["overheads"]
    assert overheads["warm_up"] == pytest.approx(1.0) and overheads["task_start"] == pytest.approx(0.5)


def test_tasks_add_their_replicas_while_the_sums_fit():
    assert training.adds_in_task(16, 7 * 2**20) and not training.adds_in_task(16, 300 * 2**20)


def test_the_default_batch_is_64_beyond_two_replicas():
    assert [training.TrainConfig(partitions=n).batch_size for n in (1, 2, 3, 8, 16)] == [128, 128, 64, 64, 64]
    assert training.TrainConfig(partitions=8, batch_size=128).batch_size == 128  # given, it stays
    saved = training.TrainConfig(partitions=16).to_dict()  # checkpoints and metrics.json hold the number
    assert saved["batch_size"] == 64 and training.TrainConfig.from_dict(saved).batch_size == 64
    estimator = ml.KerasImageClassifier()
    assert estimator.getBatchSize() == 0 and estimator.trainConfig(4, (28, 28, 1), 10).batch_size == 64
    assert ml.KerasImageClassifier(batchSize=32).trainConfig(4, (28, 28, 1), 10).batch_size == 32
    with pytest.raises(ValueError, match="partitions must be above 0, found 0"):
        training.TrainConfig(partitions=0)


@pytest.mark.slow
def test_eight_replicas_match_one_replica(spark, mnist_files):
    """The default model at 8 replicas is within a point of plain Keras (one replica) on the same data.

    Each of the 8 replicas takes 24 steps an epoch against plain Keras's
    188, with the same batch, epochs and per-epoch decay. Before BatchNorm
    re-estimation and learning-rate scaling the averaged model scored at
    chance (about 11%) in such runs. The reference is ``model.fit`` in this
    process, on both cores, rather than one Spark task on one: the same
    single model (``test_one_partition_matches_plain_keras``), in half the time.
    """
    import keras

    limit, config = 12000, training.TrainConfig(epochs=4, batch_size=64, seed=3, partitions=8)
    df, _ = ingest.idx_dataframe(spark, mnist_files, splits=("train",), limit=limit)
    df = df.cache()
    test_images = idx.read_idx(mnist_files.images("test"))[:2000, ..., None].astype(np.float32)
    test_labels = idx.read_idx(mnist_files.labels("test"))[:2000].astype(np.int32)
    averaged, _ = training.train(spark, df, config)
    df.unpersist()
    plain = models.build_model(config.model, seed=config.seed, learning_rate=config.learning_rate)
    plain.fit(
        idx.read_idx(mnist_files.images("train"))[:limit, ..., None].astype(np.float32),
        idx.read_idx(mnist_files.labels("train"))[:limit].astype(np.int32),
        batch_size=config.batch_size,
        epochs=config.epochs,
        verbose=0,
        callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch: config.learning_rate * config.lr_decay**epoch)],
    )
    accuracy = {
        name: model.evaluate(test_images, test_labels, batch_size=500, verbose=0)[1]
        for name, model in (("plain", plain), ("8 replicas", averaged))
    }
    assert accuracy["plain"] > 0.95, accuracy
    assert accuracy["8 replicas"] > accuracy["plain"] - 0.01, accuracy


def test_evaluation_matches_model_predict(spark, small_idx):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(small_idx), splits=("test",))
    model = models.build_model("simple_cnn", seed=3)
    scored = evaluation.predict(df, model, batch_size=7).orderBy("index").collect()
    images = idx.read_idx(small_idx / "t10k-images-idx3-ubyte.gz")[..., None].astype(np.float32)
    labels = idx.read_idx(small_idx / "t10k-labels-idx1-ubyte.gz")
    expected = model.predict(images, verbose=0)
    got = np.array([r["probabilities"] for r in scored])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [r["prediction"] for r in scored] == expected.argmax(axis=1).tolist()

    metrics = evaluation.evaluate(df, model)
    predicted = expected.argmax(axis=1)
    assert metrics["count"] == 100
    assert metrics["accuracy"] == pytest.approx(float((predicted == labels).mean()))
    nll = -np.log(np.maximum(expected[np.arange(100), labels], 1e-7)).mean()
    assert metrics["loss"] == pytest.approx(float(nll), rel=1e-4)
    confusion = np.array(metrics["confusion_matrix"])
    assert confusion.sum() == 100 and np.trace(confusion) == (predicted == labels).sum()
    wrong = [m for m in metrics["misclassified"]]
    assert len(wrong) == int((predicted != labels).sum())
    assert all(w["predicted"] == predicted[w["index"]] and w["expected"] == labels[w["index"]] for w in wrong)


# --------------------------------------------------------------------------- the job


def test_run_folder(spark, small_idx, train_cnn_run):
    out = train_cnn_run
    names = set(os.listdir(out))
    assert {
        "_SUCCESS",
        "model.keras",
        "model_summary.txt",
        "metrics.json",
        "report.html",
        "learning_curves.png",
        "confusion_matrix.png",
        "misclassified.png",
        "probabilities.png",
        "checkpoints",
    } <= names
    saved = json.loads((out / "metrics.json").read_text())
    for key in (
        "test_accuracy",
        "test_loss",
        "epochs",
        "partitions",
        "images_per_second",
        "round_spread",
        "seconds",
        "history",
        "params",
        "environment",
    ):
        assert key in saved
    assert saved["epochs"] == 2 and saved["partitions"] == 2 and len(saved["history"]) == 2  # an epoch each
    assert set(saved["history"][-1]["overhead_seconds"]) == {"averaging", "broadcast", "task_start", "validation"}
    # Training throughput leaves out each round's scoring of the validation sample, as plain Keras's does.
    for h in saved["history"]:
        assert h["train_seconds"] == pytest.approx(h["seconds"] - h["overhead_seconds"]["validation"], abs=2e-3)
        assert h["images_per_second"] == pytest.approx(h["images"] / h["train_seconds"], rel=1e-3, abs=0.06)
    total = sum(h["images"] for h in saved["history"]) / sum(h["train_seconds"] for h in saved["history"])
    assert saved["images_per_second"] == pytest.approx(total, rel=1e-3, abs=0.06)
    assert "val_accuracy" in saved["history"][0]
    assert saved["environment"]["libraries"]["pyspark"]
    assert "Total params" in (out / "model_summary.txt").read_text()
    html = (out / "report.html").read_text()
    assert all(name in html for name in ("learning_curves.png", "confusion_matrix.png", "misclassified.png"))
    assert f'data-key="test_accuracy">{saved["test_accuracy"]}<' in html
    reloaded = evaluation.load_model(str(out / "model.keras"))
    assert reloaded.count_params() > 0
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_job.run(spark, data_dir=str(small_idx), output=str(out), limit=200)


#: train_cnn's settings in the tests of resuming and retrying: 128 images, 3 epochs in 4 rounds.
JOB = dict(
    arch="simple_cnn",
    epochs=3,
    batch_size=32,
    partitions=2,
    limit=128,
    validation_size=0,
    checkpoint_every=1,
    # 1-step rounds of 2-step epochs: Spark jobs of rounds (1), (2), (3-4), (5-6).
    first_round_steps=1,
    steps_per_round=1,
)


@pytest.fixture(scope="module")
def whole_run(spark, small_idx, tmp_path_factory):
    """The run folder and metrics of train_cnn with JOB, run once through: the run the resumed
    and the retried runs must equal. --resume auto with nothing to continue starts the run."""
    out = tmp_path_factory.mktemp("whole") / "run"
    return out, train_job.run(spark, data_dir=str(small_idx), output=str(out), resume="auto", **JOB)


@pytest.mark.slow
def test_job_resume_after_a_stop(spark, small_idx, whole_run, tmp_path, monkeypatch):
    kwargs = dict(data_dir=str(small_idx), **JOB)
    _, whole = whole_run

    real_save = training.save_checkpoint

    def save_then_stop(folder, state, config, extra=None):
        path = real_save(folder, state, config, extra)
        if state.round == 1:
            raise KeyboardInterrupt("driver stopped")
        return path

    monkeypatch.setattr(training, "save_checkpoint", save_then_stop)
    out = f"file://{tmp_path}/cut"  # a URI: checkpoints and the model go through pyarrow.fs
    with pytest.raises(KeyboardInterrupt):
        train_job.run(spark, output=out, **kwargs)
    assert not (tmp_path / "cut").exists()
    assert os.listdir(tmp_path / "cut.partial" / "checkpoints") == ["round-0001.npz"]
    with pytest.raises(FileExistsError, match="--resume"):
        train_job.run(spark, output=out, **kwargs)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    # Other settings than the saved run's are refused, by name.
    with pytest.raises(ValueError, match=r"--arch convnet \(saved: simple_cnn\); --epochs 4 \(saved: 3\)"):
        train_job.run(spark, output=out, resume="auto", **{**kwargs, "epochs": 4, "arch": "convnet"})
    # The command a scheduler re-issues continues the stopped run.
    resumed = train_job.run(spark, output=out, resume="auto", **kwargs)
    assert resumed["test_accuracy"] == whole["test_accuracy"]
    assert resumed["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-6)
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in whole["history"]]
    assert not (tmp_path / "cut.partial").exists()
    assert evaluation.load_model(f"{out}/model.keras").count_params() > 0


def test_resume_auto_needs_an_output(capsys):
    assert train_job.main(["--resume", "auto"]) == 2
    assert "--resume auto continues the run at --output; give --output" in capsys.readouterr().err


@pytest.mark.slow
def test_retried_task_gives_identical_weights(small_idx, whole_run, tmp_path):
    """A task that fails once redoes exactly the same work: here in round 4 (0-based 3), the
    second of a job whose tasks average its rounds, so the whole job (a barrier stage) runs again."""
    reference_out, reference = whole_run
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in JOB.items()]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, SPARK_CONF_DIR=str(PROJECT / "conf"))
    env[training.ENV_INJECT_FAILURE] = "1:3"
    submit = Path(sys.executable).parent / "spark-submit"
    result = subprocess.run(
        [
            str(submit),
            "--master",
            "local[2,2]",
            str(PROJECT / "jobs" / "train_cnn.py"),
            "--data-dir",
            str(small_idx),
            *flags,
            "--output",
            str(tmp_path / "retried"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "injected failure in partition 1, round 3" in result.stderr
    retried = json.loads((tmp_path / "retried" / "metrics.json").read_text())
    assert "inject_failure" not in retried["params"]
    assert [h["loss"] for h in retried["history"]] == [h["loss"] for h in reference["history"]]
    a = evaluation.load_model(str(reference_out / "model.keras"))
    b = evaluation.load_model(str(tmp_path / "retried" / "model.keras"))
    assert _same(a.get_weights(), b.get_weights())


def test_predict_job_scores_idx_files_and_a_plain_image_folder(spark, small_idx, tmp_path):
    from PIL import Image

    predict_job = load_job("predict")
    model = models.build_model("simple_cnn", seed=5)
    model.save(tmp_path / "model.keras")
    metrics = predict_job.run(
        spark, model_file=str(tmp_path), data_dir=str(small_idx), output=str(tmp_path / "scored"), splits=("test",)
    )
    images = idx.read_idx(small_idx / "t10k-images-idx3-ubyte.gz")
    labels = idx.read_idx(small_idx / "t10k-labels-idx1-ubyte.gz")
    expected = model.predict(images[..., None].astype(np.float32), verbose=0).argmax(axis=1)
    assert metrics["count"] == 100 and metrics["labelled"] == 100
    assert metrics["accuracy"] == pytest.approx(float((expected == labels).mean()))
    rows = spark.read.parquet(str(tmp_path / "scored" / "predictions.parquet")).orderBy("index").collect()
    assert [r["prediction"] for r in rows] == expected.tolist()

    folder = tmp_path / "pngs" / "any" / "depth"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(images[i], mode="L").save(folder / f"digit{i}.png")
    unlabelled = predict_job.run(
        spark,
        model_file=str(tmp_path / "model.keras"),
        input=str(tmp_path / "pngs"),
        output=str(tmp_path / "scored-pngs"),
    )
    assert unlabelled["count"] == 3 and unlabelled["labelled"] == 0 and "accuracy" not in unlabelled
    # Images of another size are resized to the model's input, as training resizes them.
    other = write_idx_dataset(tmp_path / "small-images", 4, 3, shape=(5, 7))
    resized = predict_job.run(spark, model_file=str(tmp_path), data_dir=str(other), output=str(tmp_path / "resized"))
    small = idx.read_idx(other / "t10k-images-idx3-ubyte.gz")[..., None]
    want = model.predict(ml.fit_pixels(small, (28, 28, 1)).astype(np.float32), verbose=0).argmax(axis=1)
    rows = spark.read.parquet(str(tmp_path / "resized" / "predictions.parquet")).orderBy("index").collect()
    assert resized["count"] == 3 and [r["prediction"] for r in rows] == want.tolist()
