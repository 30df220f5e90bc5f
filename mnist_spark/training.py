"""Data-parallel Keras training per partition, with synchronous averaging.

How a run goes:

1. :func:`make_shards` splits the training DataFrame into N shards (image
   ``index % N``), decodes each to numpy once and caches it in Spark as rows
   of at most :data:`CHUNK_BYTES` of pixels, so later rounds reuse it. The
   pixels never pass through the driver.
2. :func:`plan_schedule` cuts the epochs into rounds: a short first one,
   doubling to a full round (:func:`full_round_steps`: one local epoch up
   to 8 replicas, shorter beyond). :func:`learning_rate_at` gives each step's
   learning rate: a warm-up to ``learning_rate`` scaled with the batch the
   averaged update stands for (:func:`peak_learning_rate`), then a decay
   per epoch.
3. Each round the driver broadcasts the current state: the model's weights and
   the optimizer's variables (Adam's step, moments and velocities). Every
   partition trains a replica on its own shard for the round's steps, reading
   it from a local file a batch at a time, and returns its weights, optimizer
   variables, sample count and metrics. On a local master, replicas beyond
   the task slots share tasks (:func:`replica_tasks`), and a task adds its
   adjacent replicas before they leave it (:class:`TreeSum`).
   On a local master one Spark job trains all the rounds (:func:`round_jobs`):
   its tasks average each round among themselves (:class:`RoundExchange`),
   and the driver reads each round's mean from them as it ends
   (:class:`RoundFollower`), holding the tasks while it scores one.
4. :func:`tree_average` averages the replicas in the executors, weighted by
   sample count, optimizer state included (so averaging does not reset Adam),
   along one fixed binary tree over the partitions; the driver receives the
   mean and, after the first round and at each epoch's end, re-estimates
   BatchNorm's statistics on a training sample
   (:func:`mnist_spark.models.reestimate_batchnorm`) and scores the model.

Before the first round, :class:`WarmUp` has each task slot's Python worker
import TensorFlow, build its replica and trace the training step in a thread
of its own, while the run makes its shards and the driver builds its own
model, so that start-up overlaps the run's other work.

Every random choice in a task derives from ``(seed, partition, round)``, and a
cached replica is fully reset from the broadcast state at the start of each
task. Replicas are added along a tree fixed by the partition count. So a
task that fails and is retried by Spark redoes exactly the same work, and
the same seed and partitioning give the same model, bit for bit, whichever
tasks train which replicas.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import pickle
import shutil
import statistics
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from mnist_spark import models, storage

logger = logging.getLogger(__name__)

#: Set in executors to ``"PARTITION:ROUND"`` (ROUND 0-based) to make that replica's first attempt
#: fail (fault tests). Read inside the task, so it never enters TrainConfig, metrics or checkpoints.
ENV_INJECT_FAILURE = "MNIST_SPARK_INJECT_FAILURE"

#: Set in executors to ``"ROUND:FOLDER"`` to hold the first attempt of every replica of round
#: ROUND (1-based) until FOLDER/release exists: fault tests kill a replica while it runs.
ENV_HOLD_REPLICA = "MNIST_SPARK_HOLD_REPLICA"
#: The longest a replica is held, in seconds, should the test never release it.
HOLD_TIMEOUT = 600


def _fail_if_asked(partition: int, round_: int, attempt: int) -> None:
    """The fault tests' hook: raise in the first attempt of the replica ``ENV_INJECT_FAILURE`` names."""
    value = os.environ.get(ENV_INJECT_FAILURE)
    if not value or attempt != 0:
        return
    wanted_partition, _, wanted_round = value.partition(":")
    if (int(wanted_partition), int(wanted_round)) == (partition, round_):
        raise RuntimeError(f"injected failure in partition {partition}, round {round_} (attempt 0)")


def _hold_if_asked(partition: int, round_: int, attempt: int) -> None:
    """The fault tests' hook: wait, with the replica's task running, until the test releases it.

    The replica writes ``FOLDER/held-<partition>`` holding its process id,
    then waits for ``FOLDER/release``. Only first attempts are held, so the
    task Spark retries runs through.
    """
    value = os.environ.get(ENV_HOLD_REPLICA)
    if not value or attempt != 0:
        return
    held_round, _, folder = value.partition(":")
    if int(held_round) != round_ + 1:
        return
    with open(os.path.join(folder, f"held-{partition}.tmp"), "w") as note:
        note.write(str(os.getpid()))
    os.replace(os.path.join(folder, f"held-{partition}.tmp"), os.path.join(folder, f"held-{partition}"))
    deadline = time.monotonic() + HOLD_TIMEOUT
    while not os.path.exists(os.path.join(folder, "release")) and time.monotonic() < deadline:
        time.sleep(0.05)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes.

    Parameters
    ----------
    model : str
        Architecture name (:data:`mnist_spark.models.ARCHITECTURES`).
    epochs : int
        Passes over the training data.
    batch_size : int, optional
        Per-replica batch size; default :func:`default_batch_size` of ``partitions``
        (128 up to 2 replicas, 64 beyond).
    partitions : int
        Number of replicas and shards.
    seed : int
        Source of every random choice.
    steps_per_round : int, optional
        Steps each replica takes between averagings; default
        :func:`full_round_steps`: one local epoch up to 8 replicas, shorter beyond.
    learning_rate : float
        Adam's learning rate in the first epoch.
    lr_decay : float
        Multiplies the learning rate once per epoch.
    barrier : bool
        Schedule all replicas of a round together (barrier execution mode).
    input_shape, num_classes
        Shape of one image and number of classes.
    augment : dict, optional
        On-the-fly augmentation parameters (:mod:`mnist_spark.augment`).
    first_round_steps : int, optional
        Length of the first round; each next round is twice as long until a
        round is full (``steps_per_round``, or :func:`full_round_steps`).
        Default: a quarter of a local epoch and at least
        :data:`FIRST_ROUND_STEPS` steps. With ``steps_per_round`` alone,
        every round has that length.
    lr_scaling : str
        How the peak learning rate grows with the batch that the replicas'
        averaged update stands for, ``partitions * batch_size`` images:
        ``linear`` (``learning_rate * partitions * batch_size / 64``, the
        default, which measured best), ``sqrt`` (its square root) or
        ``none``; never below ``learning_rate``, so one replica trains as
        plain Keras does (:func:`peak_learning_rate`).
    warmup_epochs : float
        Epochs over which the learning rate rises linearly from
        ``learning_rate`` to its scaled peak (Goyal et al., 2017).
    batchnorm_sample : int
        Training images on which the driver re-estimates BatchNorm's moving
        statistics after each averaging (0: keep the averaged statistics).
    model_file : str, optional
        A saved ``.keras`` model (path or URI) trained instead of the
        architecture ``model``, from its saved weights: loaded in safe mode,
        compiled with Adam and sparse categorical cross-entropy, so it must end
        in a softmax over ``num_classes``. The driver reads it and broadcasts
        its bytes; executors need no access to it.
    """

    model: str = models.DEFAULT_MODEL
    epochs: int = 8
    batch_size: int | None = None
    partitions: int = 2
    seed: int = 0
    steps_per_round: int | None = None
    learning_rate: float = 1e-3
    lr_decay: float = 0.75
    barrier: bool = False
    input_shape: tuple = (28, 28, 1)
    num_classes: int = 10
    augment: dict | None = None
    first_round_steps: int | None = None
    lr_scaling: str = "linear"
    warmup_epochs: float = 1.0
    batchnorm_sample: int = 2048
    model_file: str | None = None

    def __post_init__(self):
        models.check_model_name(self.model)
        if self.batch_size is None:
            object.__setattr__(self, "batch_size", default_batch_size(self.partitions))
        for name in ("epochs", "batch_size", "partitions"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0, found {getattr(self, name)}")
        if self.steps_per_round is not None and self.steps_per_round <= 0:
            raise ValueError(f"steps_per_round must be above 0, found {self.steps_per_round}")
        if self.first_round_steps is not None and self.first_round_steps <= 0:
            raise ValueError(f"first_round_steps must be above 0, found {self.first_round_steps}")
        if self.lr_scaling not in LR_SCALING:
            raise ValueError(f"lr_scaling must be one of {', '.join(LR_SCALING)}, found {self.lr_scaling!r}")
        if not (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs must be 0 or more, found {self.warmup_epochs}")
        if self.batchnorm_sample < 0:
            raise ValueError(f"batchnorm_sample must be 0 or more, found {self.batchnorm_sample}")
        if not (
            math.isfinite(self.learning_rate)
            and self.learning_rate > 0
            and math.isfinite(self.lr_decay)
            and 0 < self.lr_decay <= 1
        ):
            raise ValueError(
                f"learning_rate must be above 0 and lr_decay in (0, 1], found {self.learning_rate} and {self.lr_decay}"
            )

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_options(cls, options: dict, **values) -> TrainConfig:
        """The config of the ``options`` named as its fields (a job's flags), with ``values`` over them."""
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in options.items() if k in names}, **values})

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        values.pop("inject_failure", None)  # written by earlier versions; a test hook, not a setting
        if values.get("input_shape") is not None:
            values["input_shape"] = tuple(values["input_shape"])
        return cls(**values)


def default_batch_size(partitions: int) -> int:
    """The per-replica batch of ``partitions`` replicas: 128 up to 2, 64 beyond.

    The averaged update of N replicas stands for a batch N times theirs, and
    in a run of a few epochs a larger batch means fewer steps. On full MNIST
    (``benchmarks/scaling.py``), batches of 64 from 4 replicas on brought the
    averaged model within 0.2 points of plain Keras (batch 128) where 128 did
    not, and cost no time from 8 replicas on, where per-round overheads
    dominate: ``bn_cnn`` at 16 replicas 99.21% -> 99.33% in 190 s -> 163 s,
    ``simple_cnn`` at 4 replicas 98.56% -> 98.79% in 46 s -> 51 s.

    >>> [default_batch_size(n) for n in (1, 2, 4, 8, 16)]
    [128, 128, 64, 64, 64]
    """
    return 128 if partitions <= 2 else 64


@dataclass
class TrainState:
    """The averaged model after ``round`` rounds: what a checkpoint holds."""

    round: int
    weights: list
    optimizer: list
    history: list = field(default_factory=list)


@dataclass(frozen=True)
class Schedule:
    """How the epochs map onto rounds of local steps, given the smallest shard.

    ``starts[r]`` is the local step at which round ``r`` begins and
    ``starts[-1]`` the total number of steps, so round ``r`` takes
    ``starts[r + 1] - starts[r]`` steps.
    """

    steps_per_epoch: int
    starts: tuple

    @property
    def rounds(self) -> int:
        return len(self.starts) - 1

    @property
    def total_steps(self) -> int:
        return self.starts[-1]

    @property
    def steps_per_round(self) -> int:
        """The longest round's steps."""
        return max(b - a for a, b in itertools.pairwise(self.starts))

    def steps_in(self, round_: int) -> int:
        return self.starts[round_ + 1] - self.starts[round_]

    def epoch_of(self, round_: int) -> float:
        """Epochs completed at the start of ``round_``."""
        return self.starts[round_] / self.steps_per_epoch

    def continuing(self, history: list[dict]) -> Schedule:
        """This schedule after the rounds of a checkpoint's ``history``, as they were run.

        A run resumed from a checkpoint that another version wrote (its
        rounds cut otherwise) goes on from the step where it stopped, to the
        next round's end of this schedule, and trains no step twice.

        >>> Schedule(10, (0, 5, 10, 20)).continuing([{"steps": 3}, {"steps": 4}]).starts
        (0, 3, 7, 10, 20)
        """
        if not history or any("steps" not in record for record in history):
            return self  # a history before rounds recorded their steps: this schedule's rounds
        done = tuple(itertools.accumulate((record["steps"] for record in history), initial=0))
        if self.starts[: len(done)] == done:
            return self
        return Schedule(self.steps_per_epoch, done + tuple(s for s in self.starts if s > done[-1]))

    def scores(self, round_: int) -> bool:
        """Whether the driver scores the validation images after ``round_`` (0-based).

        After the first round, each round that ends an epoch and the last:
        rounds shorter than an epoch (beyond 8 replicas) are not slowed by
        scoring, and the learning curve has a point per epoch.

        >>> [Schedule(10, (0, 4, 7, 10, 14, 17, 20, 23)).scores(r) for r in range(7)]
        [True, False, True, False, False, True, True]
        """
        end = self.starts[round_ + 1]
        return round_ == 0 or end % self.steps_per_epoch == 0 or end == self.total_steps


def round_jobs(schedule: Schedule, first: int, rounds_per_job: int | None = None) -> list[tuple[int, int]]:
    """The rounds each Spark job trains, from round ``first`` on: ``(first, last)``, both included.

    ``rounds_per_job`` rounds each (all of them in one job when None). Within
    a job the tasks hand each other the rounds' sums themselves
    (:class:`RoundExchange`), and the driver follows them
    (:class:`RoundFollower`).

    >>> round_jobs(Schedule(10, (0, 4, 7, 10, 14, 17, 20, 23)), 0)
    [(0, 6)]
    >>> round_jobs(Schedule(10, (0, 4, 7, 10, 14, 17, 20, 23)), 2, rounds_per_job=2)
    [(2, 3), (4, 5), (6, 6)]
    """
    size = rounds_per_job or schedule.rounds
    return [(start, min(start + size, schedule.rounds) - 1) for start in range(first, schedule.rounds, size)]


#: Peak learning rate against the averaged update's batch, in units of :data:`LR_REFERENCE_BATCH`.
LR_SCALING = {"none": lambda n: 1.0, "sqrt": math.sqrt, "linear": float}

#: The batch whose peak learning rate is ``learning_rate`` under linear scaling (see :func:`peak_learning_rate`).
LR_REFERENCE_BATCH = 64


def plan_schedule(config: TrainConfig, shard_sizes) -> Schedule:
    """Rounds for ``config.epochs`` epochs over shards of ``shard_sizes``.

    Rounds start short and double until they reach their full length
    (``steps_per_round``, by default :func:`full_round_steps`: one local
    epoch up to 8 replicas): replicas that start together and average often
    early on stay close while the model changes fastest, and later rounds
    average rarely and cost little ("post-local SGD", Lin et al., ICLR
    2020). Rounds never cross the end of an epoch once they are full. The
    first round is a quarter of a local epoch and at least
    :data:`FIRST_ROUND_STEPS` (``first_round_steps`` sets it). Where it is
    longer than a full round (beyond 8 replicas), the rest of each epoch
    is cut into even rounds of at most the full length.

    Examples
    --------
    >>> plan_schedule(TrainConfig(epochs=2, partitions=8), [7500] * 8).starts  # 118 steps an epoch
    (0, 32, 118, 236)
    >>> plan_schedule(TrainConfig(epochs=2, partitions=16), [3750] * 16).starts  # 59 steps an epoch
    (0, 32, 41, 50, 59, 69, 79, 89, 99, 109, 118)
    """
    smallest = min(shard_sizes)
    steps_per_epoch = max(1, math.ceil(smallest / config.batch_size))
    total = config.epochs * steps_per_epoch
    full = config.steps_per_round or full_round_steps(config.partitions, steps_per_epoch)
    if config.first_round_steps is not None:
        length = config.first_round_steps
    elif config.steps_per_round is not None:
        length = full
    else:
        length = min(steps_per_epoch, max(math.ceil(steps_per_epoch / 4), FIRST_ROUND_STEPS))
    if length > full:  # a longer first round, then each epoch's rest in even rounds of at most full
        starts = [0, min(length, total)]
        while starts[-1] < total:
            rest = (starts[-1] // steps_per_epoch + 1) * steps_per_epoch - starts[-1]
            starts.append(min(starts[-1] + math.ceil(rest / math.ceil(rest / full)), total))
        return Schedule(steps_per_epoch, tuple(starts))
    growing = length < full
    starts = [0]
    while starts[-1] < total:
        step = starts[-1] + min(length, full)
        if growing:  # rounds end at epoch ends, none longer than full nor, where it can, shorter than the last
            epoch_end = (starts[-1] // steps_per_epoch + 1) * steps_per_epoch
            step = epoch_end if epoch_end - step < min(length, full) and epoch_end - starts[-1] <= full else step
            step = min(step, epoch_end)
        starts.append(min(step, total))
        length *= 2
    return Schedule(steps_per_epoch, tuple(starts))


#: The fewest local steps of the default first round (a quarter of a local epoch when that is more,
#: one local epoch at most): at 16 replicas a quarter epoch (15 steps) left the averaged model at
#: 0.87 validation accuracy, 32 steps above 0.9.
FIRST_ROUND_STEPS = 32

#: Up to this many replicas a full round is one local epoch (:func:`full_round_steps`).
EPOCH_ROUNDS_UP_TO = 8


def full_round_steps(partitions: int, steps_per_epoch: int) -> int:
    """The default length of a full round: one local epoch, shorter beyond 8 replicas.

    The more replicas, the further apart they drift in a round: each trains
    on a smaller shard at a higher peak learning rate (:func:`peak_learning_rate`),
    and their mean is worse than where they started. Up to
    :data:`EPOCH_ROUNDS_UP_TO` replicas, rounds of a local epoch end within
    0.2 points of plain Keras on MNIST (``benchmarks/scaling.py``); at 16,
    ``simple_cnn`` ended 0.48 points below with them, 0.2 with rounds of 20
    steps and within 0.13 with rounds of 10. So beyond 8 replicas a round
    is ``(8 / partitions) ** 2.5`` of a local epoch: 11 of 59 steps at 16
    replicas (beyond 16 it follows that curve, unmeasured).

    >>> [full_round_steps(n, 59) for n in (2, 8, 16, 32)], full_round_steps(16, 590)
    ([59, 59, 11, 2], 105)
    """
    if partitions <= EPOCH_ROUNDS_UP_TO:
        return steps_per_epoch
    return max(1, math.ceil(steps_per_epoch * (EPOCH_ROUNDS_UP_TO / partitions) ** 2.5))


def peak_learning_rate(config: TrainConfig) -> float:
    """The learning rate at the end of the warm-up: ``learning_rate`` scaled by ``lr_scaling``.

    N replicas of batch B average into an update that stands for a batch of
    N * B images. Linear scaling multiplies ``learning_rate`` by
    N * B / :data:`LR_REFERENCE_BATCH`: twice the rule "linear in the batch"
    from plain Keras's 128, which is what measured best for local SGD with
    Adam on MNIST (``benchmarks/scaling.py``). Two replicas of 128 and four
    of 64 both peak at 4x, and 2x or 8x did worse for simple_cnn: at 2
    replicas, 2x ended 0.2 points below plain Keras on average over three
    seeds, and 4x matched it. The peak never falls below ``learning_rate``:
    one replica is plain Keras and keeps it, and small averaged batches
    (N * B below 64) do too.

    >>> [peak_learning_rate(TrainConfig(partitions=n)) for n in (1, 2, 4, 8, 16)]
    [0.001, 0.004, 0.004, 0.008, 0.016]
    >>> round(peak_learning_rate(TrainConfig(partitions=8, lr_scaling="sqrt")), 6)
    0.002828
    """
    assert config.batch_size is not None  # TrainConfig sets it
    factor = 1.0 if config.partitions == 1 else max(1.0, config.partitions * config.batch_size / LR_REFERENCE_BATCH)
    return config.learning_rate * LR_SCALING[config.lr_scaling](factor)


def learning_rate_at(config: TrainConfig, schedule: Schedule, step: int) -> float:
    """The learning rate of local step ``step``: linear warm-up to the scaled peak, then decay per epoch."""
    peak = peak_learning_rate(config)
    warmup = config.warmup_epochs * schedule.steps_per_epoch
    rate = peak if step + 1 >= warmup else (config.learning_rate + (peak - config.learning_rate) * (step + 1) / warmup)
    return rate * config.lr_decay ** (step // schedule.steps_per_epoch)


def task_seed(seed: int, partition: int, round_: int) -> int:
    """A 31-bit seed derived from ``(seed, partition, round)``."""
    return int(np.random.SeedSequence([seed, partition, round_]).generate_state(1)[0] >> 1)


# --------------------------------------------------------------------------- shards


def spark_hash(value: int) -> int:
    """Spark SQL's ``hash()`` of a long: Murmur3 x86 32-bit, seed 42, as ``Murmur3_x86_32.hashLong``.

    Written out because no Spark API computes it without a job, and the
    library's ``mmh3`` would be a dependency for eight lines; a test checks
    it against Spark's own ``hash`` (``tests/test_training.py``).

    >>> spark_hash(0), spark_hash(1), spark_hash(-7)
    (-1670924195, -1712319331, 222034016)
    """
    mask = 0xFFFFFFFF

    def rotate(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & mask

    h = 42
    for word in (value & mask, (value >> 32) & mask):  # the long's low, then high, 32 bits
        k = rotate((word * 0xCC9E2D51) & mask, 15) * 0x1B873593 & mask
        h = (rotate(h ^ k, 13) * 5 + 0xE6546B64) & mask
    h ^= 8  # the input's length in bytes
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & mask
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h - (1 << 32) if h & 0x80000000 else h


def partition_keys(partitions: int) -> list[int]:
    """Keys ``k_0 .. k_{N-1}`` that Spark's hash partitioning sends to partitions ``0 .. N-1``.

    ``repartition(N, key)`` places rows by ``pmod(hash(key), N)``; hashing the
    shard numbers themselves can send two shards to one partition and leave
    another empty. The smallest key that Spark's own ``hash`` (:func:`spark_hash`)
    sends to each partition makes the placement exact, with no Spark job.

    >>> partition_keys(4)
    [2, 0, 14, 3]
    """
    keys: dict[int, int] = {}
    candidate = 0
    while len(keys) < partitions:
        keys.setdefault(spark_hash(candidate) % partitions, candidate)  # Python's % is Spark's pmod
        candidate += 1
    return [keys[k] for k in range(partitions)]


def _shard_schema():
    from pyspark.sql.types import BinaryType, IntegerType, LongType, StructField, StructType

    return StructType(
        [
            StructField("key", LongType(), False),
            StructField("shard", IntegerType(), False),
            StructField("chunk", IntegerType(), False),
            StructField("shape", BinaryType(), False),
            StructField("index", BinaryType(), False),
            StructField("label", BinaryType(), False),
            StructField("pixels", BinaryType(), False),
        ]
    )


#: Largest cached shard row: a shard is stored as rows ("chunks") of at most this many pixel bytes,
#: so no row nears the JVM's 2 GiB array limit and Spark can spill cached chunks to disk.
CHUNK_BYTES = 8 * 2**20


def _images_per_chunk(shape, chunk_bytes: int) -> int:
    return max(1, chunk_bytes // max(1, int(np.prod(shape))))


def _shard_rows(shard: int, key: int, shape, index, labels, images, chunk_bytes: int, first_chunk: int = 0):
    """Arrow batches of shard rows numbered from ``first_chunk``, each of at most ``chunk_bytes`` of pixels."""
    import pyarrow as pa

    schema = pa.schema(
        [
            ("key", pa.int64()),
            ("shard", pa.int32()),
            ("chunk", pa.int32()),
            ("shape", pa.binary()),
            ("index", pa.binary()),
            ("label", pa.binary()),
            ("pixels", pa.binary()),
        ]
    )
    per_chunk = _images_per_chunk(shape, chunk_bytes)
    for chunk, start in enumerate(range(0, len(labels), per_chunk), start=first_chunk):
        stop = start + per_chunk
        yield pa.RecordBatch.from_pylist(
            [
                {
                    "key": int(key),
                    "shard": int(shard),
                    "chunk": chunk,
                    "shape": np.asarray(shape, np.int32).tobytes(),
                    "index": index[start:stop].tobytes(),
                    "label": labels[start:stop].tobytes(),
                    "pixels": images[start:stop].tobytes(),
                }
            ],
            schema=schema,
        )


class ShardFile:
    """One shard's images in a local file, its labels and indices in memory.

    A task streams its shard's cached chunks into a file in Spark's local
    folder (``SPARK_LOCAL_DIRS``) as they arrive, each at its place (chunk
    ``c`` holds images ``c * per_chunk`` on), and then maps the file, so a
    Python worker holds one chunk and the batches it trains on, however
    large the shard; the page cache keeps the file's pages as memory allows.
    The file is deleted on :meth:`close`.

    Parameters
    ----------
    chunk_bytes : int
        The pixel bytes per chunk that :func:`make_shards` used.
    """

    def __init__(self, chunk_bytes: int):
        import tempfile

        folder = (os.environ.get("SPARK_LOCAL_DIRS") or tempfile.gettempdir()).split(",")[0]
        self._fd, self.path = tempfile.mkstemp(prefix="mnist_spark-shard-", suffix=".u8", dir=folder)
        self.chunk_bytes, self.shape, self._parts = chunk_bytes, None, {}
        self.images = self.labels = self.index = None

    def add(self, chunk: dict) -> None:
        """Write one cached chunk row (``chunk``, ``shape``, ``index``, ``label``, ``pixels``)."""
        shape = tuple(int(n) for n in np.frombuffer(chunk["shape"], np.int32))
        if self.shape is not None and shape != self.shape:
            raise ValueError(f"training images must share one size, found {sorted({shape, self.shape})}")
        self.shape = shape
        offset = chunk["chunk"] * _images_per_chunk(shape, self.chunk_bytes) * int(np.prod(shape))
        os.pwrite(self._fd, memoryview(chunk["pixels"]), offset)
        self._parts[chunk["chunk"]] = (
            np.frombuffer(chunk["label"], np.int32).copy(),
            np.frombuffer(chunk["index"], np.int64).copy(),
        )

    def finish(self) -> ShardFile:
        """Map the written file; labels and indices in chunk order."""
        os.close(self._fd)
        self._fd = None
        chunks = sorted(self._parts)
        if chunks != list(range(len(chunks))):
            raise ValueError(f"shard chunks {chunks} are not 0..{len(chunks) - 1}: a chunk is missing")
        self.labels = np.concatenate([self._parts[c][0] for c in chunks])
        self.index = np.concatenate([self._parts[c][1] for c in chunks])
        self.images = np.memmap(self.path, np.uint8, "r", shape=(len(self.labels), *self.shape))
        return self

    def close(self) -> None:
        self.images = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if os.path.exists(self.path):
            os.unlink(self.path)


def chunk_rows(batches):
    """The cached shard rows of Arrow ``batches`` as dicts: ``key``, ``shard`` and ``chunk``, and the
    binary columns as buffers, not copied."""
    for batch in batches:
        for position in range(batch.num_rows):
            row = {name: batch.column(name)[position].as_buffer() for name in ("shape", "index", "label", "pixels")}
            row.update({name: batch.column(name)[position].as_py() for name in ("key", "shard", "chunk")})
            yield row


def shard_files(batches, chunk_bytes: int):
    """A task's cached chunk rows written to one :class:`ShardFile` per shard, as they stream in.

    Yields ``(shard, ShardFile)`` as each shard's rows end, so a task that
    trains several shards (:func:`replica_tasks`) has one shard's file on
    disk at a time; the caller closes each file it gets. A shard's rows
    arrive together, as one cached partition, or a coalesced run of them,
    delivers them.

    Raises
    ------
    ValueError
        When a shard's rows arrive apart, after another shard's.
    """
    local: ShardFile | None = None
    shard, seen = None, set()
    try:
        for row in chunk_rows(batches):
            number = row["shard"]
            if local is None or number != shard:
                if local is not None:
                    finished, local = local.finish(), None
                    yield shard, finished
                if number in seen:
                    raise ValueError(f"the rows of shard {number} arrived apart, after another shard's")
                seen.add(number)
                shard, local = number, ShardFile(chunk_bytes)
            local.add(row)
        if local is not None:
            finished, local = local.finish(), None
            yield shard, finished
    finally:
        if local is not None:
            local.close()


@contextmanager
def _session_conf(spark, settings: dict):
    """SQL settings for the queries planned inside the block, restored on exit."""
    saved = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


#: Spark groups up to 10,000 rows into one cached column batch, and into one Arrow batch for a
#: Python worker; with shard rows of up to CHUNK_BYTES that would hold a whole shard in the JVM
#: heap at once. One row per batch bounds the heap a task needs by one chunk.
_ONE_CHUNK_CACHED = {"spark.sql.inMemoryColumnarStorage.batchSize": "1"}
_ONE_CHUNK_TO_PYTHON = {"spark.sql.execution.arrow.maxRecordsPerBatch": "1"}


def task_of_shard(shard: int, partitions: int, tasks: int) -> int:
    """The task whose partition holds ``shard`` (:func:`make_shards`): each task holds adjacent shards."""
    return shard * tasks // partitions


def make_shards(df, partitions: int, *, chunk_bytes: int | None = None, decode=None, tasks: int | None = None):
    """Split an image DataFrame into ``partitions`` cached numpy shards, in the partitions that train them.

    Rows go to shard ``index % partitions`` and are ordered by index inside
    it, so the shards do not depend on how ``df`` happens to be partitioned.
    A shard is cached as rows of at most ``chunk_bytes`` of pixels
    (:data:`CHUNK_BYTES`), each holding contiguous arrays of images, labels
    and indices: decoded once, streamed to the replica every round.

    The shards lie in ``tasks`` Spark partitions, one per task of a round
    (:func:`replica_tasks`), each holding a run of adjacent shards in order:
    partition ``k`` holds shards ``k * partitions // tasks`` up to the next
    partition's first. A task then adds its replicas' states before they
    leave it (:class:`TreeSum`).

    Parameters
    ----------
    df : DataFrame
        Columns ``index``, ``label`` and ``image`` (Spark's image struct).
    partitions : int
    tasks : int, optional
        Spark partitions to hold the shards; default :func:`replica_tasks`
        of the session's task slots.
    chunk_bytes : int, optional
        Pixel bytes per cached row; default :data:`CHUNK_BYTES`.
    decode : callable, optional
        Turns an Arrow array of image structs into a uint8 batch (e.g.
        resizing as it decodes); default
        :func:`mnist_spark.images.struct_array_to_numpy`.

    Returns
    -------
    (DataFrame, list of int)
        The cached shards (columns of :func:`_shard_schema`) and the shard sizes.

    Raises
    ------
    ValueError
        When the DataFrame lacks the columns, or a shard would be empty.
    """
    missing = {"index", "label", "image"} - set(df.columns)
    if missing:
        raise ValueError(
            f"training data needs columns index, label and image; missing {sorted(missing)} (found {df.columns})"
        )
    from pyspark.sql import functions as F

    from mnist_spark.session import task_slots

    tasks = tasks or replica_tasks(df.sparkSession, partitions, task_slots(df.sparkSession))
    task_keys = partition_keys(tasks)
    keys = [task_keys[task_of_shard(shard, partitions, tasks)] for shard in range(partitions)]
    chunk_bytes = chunk_bytes or CHUNK_BYTES

    def assemble(batches):
        from mnist_spark.images import struct_array_to_numpy

        buffered: dict = {}  # shard -> [(images, labels, index)], in index order; shards arrive in order
        written: dict = {}  # shard -> chunks written
        shape = None

        def flush(shard, final):
            parts = buffered.pop(shard, [])
            images = np.concatenate([p[0] for p in parts])
            labels = np.concatenate([p[1] for p in parts])
            index = np.concatenate([p[2] for p in parts])
            per_chunk = _images_per_chunk(shape, chunk_bytes)
            whole = len(labels) if final else len(labels) // per_chunk * per_chunk
            for row in _shard_rows(
                shard,
                keys[shard],
                shape,
                index[:whole],
                labels[:whole],
                images[:whole],
                chunk_bytes,
                first_chunk=written.get(shard, 0),
            ):
                written[shard] = written.get(shard, 0) + 1
                yield row
            if whole < len(labels):
                buffered[shard] = [(images[whole:], labels[whole:], index[whole:])]

        for batch in batches:
            if batch.num_rows == 0:
                continue
            shard_of = batch.column("shard").to_numpy()
            images = (
                decode(batch.column("image"))
                if decode is not None
                else struct_array_to_numpy(batch.column("image"), "training image")
            )
            if shape is not None and images.shape[1:] != shape:
                raise ValueError(f"training images must share one size, found {sorted({shape, images.shape[1:]})}")
            shape = images.shape[1:]
            index = batch.column("index").to_numpy().astype(np.int64)
            labels = batch.column("label").to_numpy().astype(np.int32)
            for shard in np.unique(shard_of):
                for done in [k for k in buffered if k < shard]:  # a shard's last chunk before the next shard's
                    yield from flush(done, final=True)
                keep = shard_of == shard
                buffered.setdefault(int(shard), []).append((images[keep], labels[keep], index[keep]))
                if sum(len(p[1]) for p in buffered[int(shard)]) >= _images_per_chunk(shape, chunk_bytes):
                    yield from flush(int(shard), final=False)
        for shard in sorted(buffered):
            yield from flush(shard, final=True)

    # The split is plain SQL, so the stage reading the images runs one Python
    # worker per task; the next stage runs the other.
    shard = (F.col("index") % partitions).cast("int")
    # Long, as partition_keys hashed them: Spark hashes an int and a long of the same value differently.
    key = F.element_at(F.array(*[F.lit(k).cast("long") for k in keys]), shard + 1)
    rows = df.select(shard.alias("shard"), key.alias("key"), "index", "label", "image")
    with _session_conf(df.sparkSession, _ONE_CHUNK_CACHED):
        # Sorted by shard and index inside each partition (Spark's sort spills as needed), so a
        # task writes each shard's chunks as the rows stream in and never holds a whole shard.
        shards = (
            rows.repartition(tasks, "key")
            .sortWithinPartitions("shard", "index")
            .mapInArrow(assemble, _shard_schema())
            .cache()
        )
        sizes: dict = {}
        for row in shards.select("shard", (F.length("label") / 4).cast("long").alias("count")).collect():
            sizes[row["shard"]] = sizes.get(row["shard"], 0) + row["count"]
    if sorted(sizes) != list(range(partitions)) or min(sizes.values()) == 0:
        shards.unpersist()
        raise ValueError(
            f"{partitions} partitions need at least {partitions} training images, one per shard; "
            f"found shards of sizes {[sizes.get(k, 0) for k in range(partitions)]}; use fewer --partitions"
        )
    return shards, [sizes[k] for k in range(partitions)]


# --------------------------------------------------------------------------- replicas


def replica_tasks(spark, partitions: int, slots: int) -> int:
    """How many Spark tasks a round trains its ``partitions`` replicas in.

    On a local master, whose task slots are fixed and known, replicas beyond
    the slots share tasks: ``slots`` tasks each train their shards one after
    the other, so a round pays a task's start-up (about 0.2 s on 2 cores)
    once per slot instead of once per replica. On a cluster, where executors
    may come and go, each replica is a task of its own.
    """
    return slots if partitions > slots and _local_master(spark) else partitions


def _local_master(spark) -> bool:
    return (spark.conf.get("spark.master", None) or "").startswith("local")


def _tasks_share_this_machine(spark) -> bool:
    """Whether the session's tasks run on this process's machine: a local master, served by this process.

    A Spark Connect server started elsewhere (``sc://``) may run a local
    master on another machine.
    """
    from pyspark import SparkContext

    from mnist_spark.session import is_connect

    return _local_master(spark) and (not is_connect(spark) or SparkContext._active_spark_context is not None)


def _replica(config: TrainConfig, architecture: bytes | None = None):
    """This Python worker's model for ``config``, built once and reused across rounds.

    Kept in the worker's model cache (:func:`mnist_spark.evaluation.worker_model`),
    on the task's GPU when Spark assigned one. ``architecture`` holds the bytes
    of ``config.model_file``, when the run trains one.
    """
    import hashlib

    from mnist_spark.evaluation import worker_model

    if architecture is not None:
        return worker_model(
            ("replica-file", hashlib.sha256(architecture).hexdigest()),
            lambda: file_model(architecture, config.learning_rate),
        )

    def build():
        model = models.build_model(config.model, input_shape=config.input_shape, num_classes=config.num_classes, seed=0)
        model.optimizer.build(model.trainable_variables)
        return model

    return worker_model(("replica", config.model, tuple(config.input_shape), config.num_classes), build)


def file_model(payload: bytes, learning_rate: float):
    """A ``.keras`` file's model (safe mode), compiled as :func:`mnist_spark.models.build_model` compiles.

    Adam, sparse categorical cross-entropy and accuracy, the optimizer built,
    so its state averages like a named architecture's.
    """
    import keras

    from mnist_spark.evaluation import model_from_bytes

    model = model_from_bytes(payload, compile=False)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.optimizer.build(model.trainable_variables)
    return model


def optimizer_variables(model) -> list:
    """The optimizer's state as numpy arrays (step, learning rate, moments, velocities)."""
    return [np.array(v.numpy()) for v in model.optimizer.variables]


#: Each replica model's :class:`StateTransfer`.
_TRANSFERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class StateTransfer:
    """A model's weights and optimizer variables set and read in one call into TensorFlow each.

    :meth:`stage` copies a state, ``(weights, optimizer)`` in the order of
    ``model.weights`` and ``model.optimizer.variables``, into variables
    beside the model's; :meth:`load` sets the model's from them, and
    :meth:`read` returns the model's as numpy arrays. Staging a state that
    is the very pair of lists staged last copies nothing: a task's replicas
    of one round start from the same state, so it is staged once per round
    and each replica's load is a copy between variables. Keras's
    ``set_weights`` and a variable's ``numpy()`` cost an eager operation
    per variable, about 15 ms per replica and round for ``simple_cnn``; the
    values are the same bits either way.
    """

    def __init__(self, model) -> None:
        import tensorflow as tf

        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        variables = [*model.weights, *model.optimizer.variables]
        signature = [tf.TensorSpec(tuple(v.shape), v.dtype) for v in variables]
        self._dtypes = [spec.dtype.as_numpy_dtype for spec in signature]
        self._split = len(model.weights)
        self._staged: tuple | None = None
        with tf.init_scope():
            staging = [tf.Variable(tf.zeros(spec.shape, spec.dtype), trainable=False) for spec in signature]

        @tf.function(input_signature=[signature])
        def stage(values):
            for variable, value in zip(staging, values, strict=True):
                variable.assign(value)

        @tf.function
        def load():
            for variable, value in zip(variables, staging, strict=True):
                variable.assign(value)

        @tf.function
        def read():
            return [tf.identity(variable.value) for variable in variables]

        self._stage, self.load, self._read = stage, load, read

    def stage(self, weights: list, optimizer: list) -> None:
        if len(weights) + len(optimizer) != len(self._dtypes) or len(weights) != self._split:
            raise ValueError(
                f"a state of {len(weights)} weights and {len(optimizer)} optimizer variables does not fit a "
                f"model of {self._split} and {len(self._dtypes) - self._split}"
            )
        if self._staged is not None and self._staged[0] is weights and self._staged[1] is optimizer:
            return
        values = [np.asarray(v, dtype) for v, dtype in zip((*weights, *optimizer), self._dtypes, strict=True)]
        self._stage(values)
        self._staged = (weights, optimizer)  # held, so that no other lists can take their ids

    def read(self) -> tuple[list, list]:
        values = [np.array(value) for value in self._read()]  # copies: the model trains on
        return values[: self._split], values[self._split :]


def state_transfer(model) -> StateTransfer:
    """``model``'s :class:`StateTransfer`, made once per model."""
    if model not in _TRANSFERS:
        _TRANSFERS[model] = StateTransfer(model)
    return _TRANSFERS[model]


def load_state(model, weights, optimizer, *, learning_rate=None, seed=None) -> None:
    """Set a model's weights and optimizer state; reseed all its random generators.

    Resetting the seed generators (dropout masks, augmentation layers) makes a
    reused replica behave exactly like a fresh one. Python's, NumPy's and
    Keras's global seeds are set too, but not TensorFlow's eager one: setting
    it clears TensorFlow's kernel caches, so the replica's next call would
    instantiate its compiled training loop again, 0.1 s for ``simple_cnn``,
    once per replica and round. Keras layers draw their randomness from
    their own seed generators, reset here, not from that seed.
    """
    import keras

    transfer = state_transfer(model)
    transfer.stage(weights, optimizer)
    transfer.load()
    if learning_rate is not None:
        model.optimizer.learning_rate = learning_rate
    if seed is not None:
        import tensorflow as tf

        with tf.Graph().as_default():  # TensorFlow's part of it seeds this throwaway graph alone
            keras.utils.set_random_seed(seed)
        for number, layer in enumerate(model._flatten_layers()):
            for generator in getattr(layer, "_seed_generators", []):
                generator.state.assign(np.array([seed + number, 0], dtype=generator.state.dtype))


def _order(config: TrainConfig, schedule: Schedule, partition: int, round_: int, size: int) -> np.ndarray:
    """Sample positions this replica trains on in ``round_``.

    A replica reads its shard as one stream of epochs, each a new permutation
    drawn from ``(seed, partition, epoch)``; round ``r`` takes the stream's
    samples from step ``starts[r]`` on. So the order depends on the schedule
    only through where rounds cut the stream.
    """
    batch = config.batch_size
    assert batch is not None  # TrainConfig sets it
    per_epoch = schedule.steps_per_epoch * batch
    first = schedule.starts[round_] * batch
    positions = np.arange(first, schedule.starts[round_ + 1] * batch)
    epochs, offsets = np.divmod(positions, per_epoch)
    out = np.empty(len(positions), np.int64)
    for epoch in np.unique(epochs):
        hit = epochs == epoch
        permutation = np.random.default_rng([config.seed, partition, int(epoch)]).permutation(size)
        out[hit] = permutation[offsets[hit] % size]
    return out


def _batches(images, labels, index, order, config: TrainConfig, schedule: Schedule, first_step: int):
    """The round's batches as a sequence, gathered from the shard one at a time when indexed.

    Only one batch of images is copied out of the shard (which may be a
    memory-mapped file) at a time. Pixels stay uint8: the model casts each
    batch to float32 itself.
    """
    batch_size = config.batch_size
    assert batch_size is not None  # TrainConfig sets it
    params = None
    if config.augment:
        from mnist_spark import augment

        params = augment.AugmentParams(**config.augment)
    per_epoch = schedule.steps_per_epoch * batch_size

    class Batches:
        def __len__(self):
            return math.ceil(len(order) / batch_size)

        def __getitem__(self, number):
            if not 0 <= number < len(self):
                raise IndexError(number)
            picked = order[number * batch_size : (number + 1) * batch_size]
            x = np.asarray(images[picked])
            if params is not None:
                from mnist_spark import augment

                # A new variant of every image each epoch, the same whichever task draws it.
                first = (first_step + number) * batch_size
                epochs = (first + np.arange(len(picked))) // per_epoch
                keys = [("train", int(i), int(e) + 1) for i, e in zip(index[picked], epochs, strict=True)]
                x, _ = augment.augment_batch(x, keys, params, seed=config.seed)
            return x, labels[picked]

    return Batches()


#: The most local steps that one call into TensorFlow runs (:func:`fit_round`).
STEPS_PER_CALL = 32
#: The most bytes of input one such call takes: fewer steps per call for large images.
CALL_BYTES = 32 * 2**20

#: Each replica model's training loop, per input signature (:func:`_training_loop`).
_LOOPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def steps_per_call(config: TrainConfig) -> int:
    """Local steps per call into TensorFlow: :data:`STEPS_PER_CALL`, fewer when their batches exceed :data:`CALL_BYTES`.

    >>> steps_per_call(TrainConfig()), steps_per_call(TrainConfig(input_shape=(224, 224, 3), batch_size=64))
    (32, 1)
    """
    assert config.batch_size is not None  # TrainConfig sets it
    batch_bytes = config.batch_size * math.prod(config.input_shape) * 4  # float32 after augmentation, at most
    return max(1, min(STEPS_PER_CALL, CALL_BYTES // batch_bytes))


def _training_loop(model, images, labels):
    """``model``'s compiled loop over stacked batches: Keras's ``train_step`` per batch at its own learning rate.

    Traced once per model and input signature, with the number of steps and
    the batch size left open, so that the warm-up's trace serves every round.
    """
    import tensorflow as tf

    signature = (images.dtype.str, images.shape[2:], labels.dtype.str, labels.shape[2:])
    loops = _LOOPS.setdefault(model, {})
    if signature not in loops:

        @tf.autograph.experimental.do_not_convert
        def step(number, images, labels, rates):
            model.optimizer.learning_rate.assign(rates[number])
            model.train_step((images[number], labels[number]))
            return number + 1, images, labels, rates

        def run_steps(images, labels, rates):
            tf.while_loop(
                lambda number, *_: number < tf.shape(rates)[0],
                step,
                (tf.constant(0), images, labels, rates),
            )
            return model.get_metrics_result()

        loops[signature] = tf.function(
            run_steps,
            input_signature=(
                tf.TensorSpec((None, None, *images.shape[2:]), images.dtype),
                tf.TensorSpec((None, None, *labels.shape[2:]), labels.dtype),
                tf.TensorSpec((None,), tf.float32),
            ),
        )
    return loops[signature]


def fit_round(
    model, batches, config: TrainConfig, schedule: Schedule, first_step: int, per_call: int | None = None
) -> dict:
    """Train ``model`` on ``batches``, local steps ``first_step`` on; the round's mean loss and accuracy.

    Each step runs Keras's own training step (``model.train_step``, the one
    ``fit`` compiles) at the run's learning rate for that step
    (:func:`learning_rate_at`): ``simple_cnn``'s weights are those of
    ``fit`` with the same rates bit for bit, ``bn_cnn``'s differ from them
    in rounding, as deterministically. The steps run in a compiled loop over up to
    ``per_call`` stacked batches (default :func:`steps_per_call`): a call
    into TensorFlow per step costs more than a small model's step itself
    takes. ``fit`` also sets up an epoch iterator, a ``tf.data`` pipeline
    and callbacks on every call, whose threads compete with the other
    task's replica on a busy executor (``benchmarks/README.md``). One
    thread gathers the next batches while a call runs.
    """
    from concurrent.futures import ThreadPoolExecutor

    per_call = per_call or steps_per_call(config)
    calls = [range(start, min(start + per_call, len(batches))) for start in range(0, len(batches), per_call)]

    def gather(numbers: range):
        pairs = [batches[number] for number in numbers]
        rates = [learning_rate_at(config, schedule, first_step + number) for number in numbers]
        return np.stack([x for x, _ in pairs]), np.stack([y for _, y in pairs]), np.asarray(rates, np.float32)

    model.reset_metrics()
    logs = None
    with ThreadPoolExecutor(1, thread_name_prefix="next-batches") as prefetch:
        upcoming = prefetch.submit(gather, calls[0])
        for number in range(len(calls)):
            images, labels, rates = upcoming.result()
            if number + 1 < len(calls):
                upcoming = prefetch.submit(gather, calls[number + 1])
            logs = _training_loop(model, images, labels)(images, labels, rates)
    assert logs is not None  # a round has steps
    return {name: float(value) for name, value in logs.items()}


def train_replica(
    partition: int,
    shard,
    state: tuple[list, list],
    round_: int,
    config: TrainConfig,
    schedule: Schedule,
    attempt: int = 0,
    architecture: bytes | None = None,
) -> dict:
    """One replica's work for one round: runs inside a Spark task.

    ``state`` is the round's starting ``(weights, optimizer)``; ``architecture``
    holds the bytes of ``config.model_file`` when the run trains one.

    Returns the replica's weights, optimizer state, sample count and metrics.
    """
    from mnist_spark.evaluation import worker_builds
    from mnist_spark.session import device_scope, task_device

    _hold_if_asked(partition, round_, attempt)
    _fail_if_asked(partition, round_, attempt)
    started = time.perf_counter()
    warming = wait_for_warm_up()  # the worker's own warm-up, if it is still running: then the replica is ready
    images, labels, index = shard
    weights, optimizer = state
    builds = worker_builds()
    model = _replica(config, architecture)
    first_step = schedule.starts[round_]
    load_state(
        model,
        weights,
        optimizer,
        learning_rate=learning_rate_at(config, schedule, first_step),
        seed=task_seed(config.seed, partition, round_),
    )
    order = _order(config, schedule, partition, round_, len(labels))
    loaded = time.perf_counter()
    batches = _batches(images, labels, index, order, config, schedule, first_step)
    with device_scope():
        logs = fit_round(model, batches, config, schedule, first_step)
    weights, optimizer = state_transfer(model).read()
    return {
        "device": task_device() or "cpu",
        "partition": partition,
        "count": int(len(order)),
        "loss": logs["loss"],
        "accuracy": logs["accuracy"],
        "seconds": time.perf_counter() - started,
        "fit_seconds": time.perf_counter() - loaded,
        "finished": time.time(),
        "cold": int(worker_builds() > builds),
        "warming": warming,
        "weights": weights,
        "optimizer": optimizer,
        "pid": os.getpid(),
    }


def warm_replica(config: TrainConfig, schedule: Schedule | None = None, architecture: bytes | None = None) -> dict:
    """Build this Python worker's replica and trace its training step, before the first round.

    Runs in a Spark task of :class:`WarmUp` (in a thread of its own:
    :func:`warm_in_background`). Importing TensorFlow, building and
    compiling the model and tracing its step cost a worker some seconds
    once; done here, while the driver prepares the run, the first round
    starts on a model that is ready. The step trains on a batch of zeros:
    every round loads the broadcast state over it (:func:`load_state`), so
    the model does not depend on it, nor on ``schedule`` (default: one step).
    """
    from mnist_spark.session import device_scope

    started = time.perf_counter()
    schedule = schedule or Schedule(1, (0, 1))
    model = _replica(config, architecture)
    size = config.batch_size
    assert size is not None  # TrainConfig sets it
    images = np.zeros((size, *config.input_shape), np.uint8)
    labels = np.zeros(size, np.int32)
    batches = _batches(images, labels, np.arange(size, dtype=np.int64), np.arange(size), config, schedule, 0)
    with device_scope():
        fit_round(model, batches, config, schedule, 0)
    return {"pid": os.getpid(), "seconds": time.perf_counter() - started}


#: This Python worker's warm-ups still running in threads of their own (:func:`warm_in_background`).
_WARMING: list = []


def warm_in_background(config: TrainConfig | None, architecture: bytes | None = None) -> dict:
    """:func:`warm_replica` in a thread of this Python worker; returns at once, in a :class:`WarmUp` task.

    The task ends before the warm-up does, so its slot and worker serve the
    run's other Spark jobs meanwhile (the validation images, the shards):
    with Python worker reuse, the thread goes on in the worker that later
    trains. A replica's first round waits for it (:func:`wait_for_warm_up`).
    Without ``config`` the thread imports TensorFlow and Keras only, for a
    run whose model is not known yet. A warm-up starts after the worker's
    earlier ones end. A task given a GPU warms up in the task itself, where
    it knows its device. A failed warm-up is silent: the first round builds
    the replica again and raises the error there.
    """
    from mnist_spark.session import configure_tensorflow_threads, task_cpus, task_device

    if task_device() is not None:
        return warm_replica(config, None, architecture) if config is not None else {"pid": os.getpid(), "seconds": 0.0}
    earlier, threads = list(_WARMING), task_cpus()  # the thread outlives the task and its context

    def warm():
        for thread in earlier:
            thread.join()
        with contextlib.suppress(Exception):
            # TensorFlow and Keras imported, their pools given the task's cores as a round's task gives them.
            configure_tensorflow_threads(threads)
            if config is not None:
                warm_replica(config, None, architecture)

    thread = threading.Thread(target=warm, name="warm-replica", daemon=True)
    thread.start()
    _WARMING.append(thread)
    return {"pid": os.getpid(), "seconds": 0.0}


def wait_for_warm_up() -> float:
    """Wait for this Python worker's warm-ups (:func:`warm_in_background`) to end; the seconds waited."""
    if not _WARMING:
        return 0.0
    started = time.perf_counter()
    while _WARMING:
        _WARMING.pop().join()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- averaging


def _replica_metrics(result: dict) -> dict:
    """A replica's result without its state."""
    return {k: v for k, v in result.items() if k not in ("weights", "optimizer")}


def _weighted(value, count: int) -> np.ndarray:
    """``value * count`` in float64, as an array (0-d included) that a sum can add into."""
    return np.asarray(np.multiply(value, count, dtype=np.float64))


def _is_sum(part: dict) -> bool:
    return "dtypes" in part


def _partial_sum(result: dict) -> dict:
    """One replica as a sum: count-weighted float64 state, its dtypes, and its metrics."""
    count = result["count"]
    return {
        "count": count,
        "replicas": [_replica_metrics(result)],
        "weights": [_weighted(w, count) for w in result["weights"]],
        "optimizer": [_weighted(o, count) for o in result["optimizer"]],
        "dtypes": [np.asarray(a).dtype.str for a in (*result["weights"], *result["optimizer"])],
    }


def _add(left: dict, right: dict) -> dict:
    """The sum of two parts (a replica's result or a sum), added into ``left`` when it is a sum.

    A replica's result is never changed: it is made a sum first. Adding is
    elementwise, so ``left + right`` has the bits of ``right + left``.
    """
    if len(left["weights"]) != len(right["weights"]) or len(left["optimizer"]) != len(right["optimizer"]):
        raise ValueError("replicas returned states of different structure; they cannot be averaged")
    total = left if _is_sum(left) else _partial_sum(left)
    for name in ("weights", "optimizer"):
        for into, value in zip(total[name], right[name], strict=True):
            np.add(into, value if _is_sum(right) else _weighted(value, right["count"]), out=into)
    total["count"] += right["count"]
    total["replicas"] += right["replicas"] if _is_sum(right) else [_replica_metrics(right)]
    return total


def _mean_of(part: dict) -> tuple[list, list]:
    """Weights and optimizer state of a part divided by its count, in the replicas' own dtypes.

    Integer state (the optimizer's step) is rounded back to its integer type.
    """
    total = part if _is_sum(part) else _partial_sum(part)
    means = []
    for value, dtype in zip((*total["weights"], *total["optimizer"]), total["dtypes"], strict=True):
        dtype = np.dtype(dtype)
        value = value / total["count"]
        if np.issubdtype(dtype, np.integer):
            value = np.rint(value)
        means.append(np.asarray(value).astype(dtype))
    split = len(total["weights"])
    return means[:split], means[split:]


def _tree_size(replicas: int) -> int:
    """The smallest power of two that is at least ``replicas``: the width of :class:`TreeSum`'s tree."""
    return 1 << max(0, replicas - 1).bit_length()


class TreeSum:
    """Adds replicas' states along one fixed binary tree over partitions ``0 .. replicas - 1``.

    A node ``(lo, size)``, ``size`` a power of two and ``lo`` a multiple of
    it, stands for partitions ``lo .. lo + size - 1``: a leaf is one
    replica's result, and a node is the sum of its two halves, or its left
    half alone where the right half holds no partition. A node's bits depend
    only on the replicas below it, not on which task adds it or when: a task
    that trains adjacent replicas adds them before they leave it
    (:func:`train`), the averaging tasks add the nodes they receive
    (:func:`tree_average`), and the mean is the same bit for bit whichever
    tasks trained which replicas, and whatever order the shuffle delivers
    them in. Adding in pairs also rounds less than a running sum.

    Nodes are pushed in increasing order of ``lo``. The sum keeps a stack of
    adjacent nodes (at most one per level of the tree) and adds two as soon as
    they are siblings.

    Examples
    --------
    >>> tree = TreeSum(3)
    >>> replica = lambda n: {"partition": n, "count": 1, "weights": [np.array([float(n)])], "optimizer": []}
    >>> [tree.push(n, 1, replica(n)) for n in range(3)]
    [[], [], []]
    >>> [(lo, size, part["count"]) for lo, size, part in tree.finish()]
    [(0, 4, 3)]
    """

    def __init__(self, replicas: int):
        self.replicas, self.top = replicas, _tree_size(replicas)
        self._stack: list[tuple[int, int, dict]] = []

    def _whole(self, lo: int, size: int, part: dict) -> tuple[int, int, dict]:
        """The node as its highest ancestor with the same partitions: a left half whose right half is empty."""
        while size < self.top and lo % (2 * size) == 0 and lo + size >= self.replicas:
            size *= 2
        return lo, size, part

    def push(self, lo: int, size: int, part: dict) -> list[tuple[int, int, dict]]:
        """Add node ``(lo, size)``; returns the nodes that nothing pushed after it can add to.

        Those are the nodes on the stack when ``lo`` does not follow them, as
        when a task's partitions are not adjacent: they leave the task as
        they are.
        """
        done: list = []
        if self._stack and sum(self._stack[-1][:2]) != lo:
            done, self._stack = self._stack, []
        self._stack.append(self._whole(lo, size, part))
        while len(self._stack) >= 2:
            (a, s, left), (b, t, right) = self._stack[-2:]
            if not (s == t and a % (2 * s) == 0 and a + s == b):
                break
            del self._stack[-2:]
            self._stack.append(self._whole(a, 2 * s, _add(left, right)))
        return done

    def finish(self) -> list[tuple[int, int, dict]]:
        """The nodes left: the root alone once every replica has been pushed."""
        done, self._stack = self._stack, []
        return done


def average_replicas(results: list[dict]) -> tuple[list, list]:
    """Average replicas' weights and optimizer state, weighted by sample count.

    ``results[k]`` is partition ``k``'s. The same arithmetic as
    :func:`tree_average`, on the driver: for lists and tests.

    Examples
    --------
    >>> a = {"count": 1, "weights": [np.zeros(2)], "optimizer": [np.array(2)]}
    >>> b = {"count": 3, "weights": [np.ones(2)], "optimizer": [np.array(4)]}
    >>> w, o = average_replicas([a, b])
    >>> w[0].tolist(), int(o[0])
    ([0.75, 0.75], 4)
    """
    if not results:
        raise ValueError("no replica results to average")
    tree = TreeSum(len(results))
    for number, result in enumerate(results):
        tree.push(number, 1, result)
    ((_, _, total),) = tree.finish()
    return _mean_of(total)


#: The replica states one averaging task may hold at once, in bytes: below it, one level of
#: :func:`tree_average` adds all the replicas. Each level is a Spark stage (about 0.35 s a round).
GROUP_BYTES = 512 * 2**20


def tree_fan_in(replicas: int, state_bytes: int = 0) -> int:
    """Partial sums added per task in :func:`tree_average`.

    All the replicas, in one task, while their states (``state_bytes`` each)
    fit in :data:`GROUP_BYTES`; else about the square root of the replicas,
    so that two levels reach one sum and no task holds more than that many.

    >>> tree_fan_in(16, 14 * 2**20), tree_fan_in(16, 300 * 2**20), tree_fan_in(100, 300 * 2**20)
    (16, 4, 10)
    """
    fits = GROUP_BYTES // max(1, state_bytes)
    return max(2, math.ceil(math.sqrt(replicas)), min(replicas, fits))


def adds_in_task(replicas: int, state_bytes: int) -> bool:
    """Whether a task that trains several replicas adds them before they leave it.

    It holds at most one float64 sum per level of :class:`TreeSum`'s tree
    (twice a state's bytes each); while those fit in :data:`GROUP_BYTES` it
    sends one node instead of its replicas, so that the averaging stage
    moves and adds fewer states (16 ``simple_cnn`` replicas in 2 tasks: 2
    sums of 14 MB instead of 16 states of 7 MB).
    """
    return 2 * state_bytes * (_tree_size(replicas).bit_length() + 1) <= GROUP_BYTES


#: A node of :class:`TreeSum` between the stages of :func:`tree_average`: its partitions and its part pickled.
_NODE_FIELDS = (("lo", "int32"), ("size", "int32"), ("part", "binary"))
NODE_SCHEMA = ", ".join(f"{name} {'int' if kind == 'int32' else kind}" for name, kind in _NODE_FIELDS)


def node_batch(nodes):
    """Nodes ``(lo, size, part)`` as an Arrow batch of :data:`NODE_SCHEMA`, each part pickled."""
    import pyarrow as pa

    return pa.RecordBatch.from_pylist(
        [{"lo": lo, "size": size, "part": pickle.dumps(part, protocol=5)} for lo, size, part in nodes],
        schema=pa.schema([(name, getattr(pa, kind)()) for name, kind in _NODE_FIELDS]),
    )


def _add_rows(rows, replicas: int) -> list[tuple[int, int, dict]]:
    """Rows of :data:`NODE_SCHEMA` added up :class:`TreeSum`'s tree, unpickled one at a time in ``lo`` order."""
    tree, nodes = TreeSum(replicas), []
    for row in sorted(rows, key=lambda row: row["lo"]):
        nodes += tree.push(row["lo"], row["size"], pickle.loads(row["part"]))
    return nodes + tree.finish()


def _root_mean(nodes, replicas: int) -> tuple[list, list, list]:
    """The averaged weights and optimizer state of the root node, and every replica's metrics."""
    top = _tree_size(replicas)
    if len(nodes) != 1 or nodes[0][:2] != (0, top):
        raise RuntimeError(f"averaging ended with nodes {[node[:2] for node in nodes]} instead of (0, {top})")
    total = nodes[0][2]
    return (*_mean_of(total), total["replicas"] if _is_sum(total) else [_replica_metrics(total)])


def _level_adder(replicas: int, last: bool):
    """A level of :func:`tree_average` for ``applyInArrow`` (a function of ``(key, table)``).

    Its group's nodes added up the tree; the ``last`` level's one group holds
    the root and divides it by its count, so the driver receives the averaged
    state in the model's own dtypes, half the bytes of the float64 sum.
    """

    def add(key, table):
        import pyarrow as pa

        rows = (table.slice(row, 1).to_pylist()[0] for row in range(table.num_rows))  # one state at a time
        nodes = _add_rows(rows, replicas)
        if last:
            nodes = [(0, _tree_size(replicas), _root_mean(nodes, replicas))]
        return pa.Table.from_batches([node_batch(nodes)])

    return add


def tree_average(nodes, replicas: int, fan_in: int | None = None, state_bytes: int = 0, on_driver: bool = False):
    """Average replica results in the executors; the driver receives the averaged state alone.

    ``nodes`` is a DataFrame of :class:`TreeSum` nodes (:data:`NODE_SCHEMA`):
    replicas' results, or sums of adjacent ones that their task added. Each
    level groups the nodes by ``lo // span`` (``groupBy`` and
    ``applyInArrow``: DataFrames only, so it runs on Spark Connect too), a
    span of partitions the fan-in's power of two wider than the last, and
    each group's task adds its nodes up the tree; the last level's one task
    holds the root and divides it. The default fan-in, :func:`tree_fan_in`
    of the replicas and the bytes of one replica's state (``state_bytes``),
    adds small models in one level and large ones in two.

    ``on_driver`` skips the levels: the driver reads the nodes and adds
    them itself, which saves a stage (about 0.2 s a round on 2 cores). For
    a local master's few tasks, each sending at most a node per level of the
    tree (:func:`adds_in_task`), not for a cluster's every replica.

    Returns
    -------
    (weights, optimizer, replicas)
        The averaged state, and each replica's metrics sorted by partition.
    """
    from pyspark.sql import functions as F

    step = _tree_size(max(2, fan_in or tree_fan_in(replicas, state_bytes)))
    top = _tree_size(replicas)
    level, span = nodes, 1
    while span < top and not on_driver:
        span = min(span * step, top)
        add = _level_adder(replicas, last=span == top)
        level = level.groupBy(F.floor(F.col("lo") / F.lit(span)).alias("_group")).applyInArrow(add, NODE_SCHEMA)
    rows = level.toArrow().to_pylist()  # Arrow, not Row objects: a third faster for a model's bytes
    if on_driver or top == 1:  # the nodes as the tasks sent them, or one replica (no level ran)
        weights, optimizer, metrics = _root_mean(_add_rows(rows, replicas), replicas)
    elif len(rows) == 1:
        weights, optimizer, metrics = pickle.loads(rows[0]["part"])
    else:
        raise RuntimeError(f"averaging ended with {len(rows)} nodes instead of 1")
    return weights, optimizer, sorted(metrics, key=lambda r: r["partition"])


#: The most bytes of nodes that one job's tasks leave in their exchange folder (:class:`RoundExchange`).
EXCHANGE_BYTES = 2 * 2**30


def _round_files(folder: str, round_: int, replicas: int) -> dict[tuple[int, int], str] | None:
    """The files of ``round_``'s nodes in ``folder``, ``{(lo, size): path}``, once they cover every partition."""
    prefix, found = f"round-{round_}-", {}
    for name in os.listdir(folder):
        if name.startswith(prefix) and name.endswith(".node"):
            lo, size = name[len(prefix) : -len(".node")].split("-")
            found[int(lo), int(size)] = os.path.join(folder, name)
    # The tasks' nodes never overlap: they cover the replicas when their sizes add up.
    return found if sum(min(size, replicas - lo) for lo, size in found) >= replicas else None


def _read_round(files: dict[tuple[int, int], str], replicas: int) -> tuple[list, list, list]:
    """A round's nodes read and added up the tree (:func:`_add_rows`, :func:`_root_mean`)."""
    rows = []
    for (lo, size), path in sorted(files.items()):
        with open(path, "rb") as node:
            rows.append({"lo": lo, "size": size, "part": node.read()})
    return _root_mean(_add_rows(rows, replicas), replicas)


def _write_whole(path: str, value) -> None:
    """``value`` pickled to ``path`` whole, or not at all: written aside, then renamed."""
    with open(f"{path}.tmp", "wb") as out:
        pickle.dump(value, out, protocol=5)
    os.replace(f"{path}.tmp", path)


def _release_path(folder: str, round_: int) -> str:
    return os.path.join(folder, f"release-{round_}.state")


class RoundExchange:
    """How the tasks of one job that trains several rounds average each round among themselves.

    After a round each task writes the :class:`TreeSum` nodes it holds to
    a folder that all of them share (:meth:`publish`), waits until the
    round's nodes there cover every partition, reads them and adds them up
    the same tree as :func:`tree_average` does on the driver
    (:meth:`mean`): each task starts the next round from the same mean, bit
    for bit the one the driver would have broadcast. A round costs a write
    and a read of each task's nodes, not a Spark job (about 0.55 s on 2
    cores). The driver follows the same folder (:class:`RoundFollower`).
    After a round the driver scores, the tasks wait instead for the state
    that the driver releases (:meth:`released`): the mean, or the mean with
    BatchNorm statistics re-estimated.

    The job is a barrier stage, so its tasks run at once and fail
    together. They wait for each other's nodes themselves, a few
    milliseconds apart: ``BarrierTaskContext.barrier()`` checks its answer
    once a second, and a small model's round is shorter than that.

    The folder is one the driver made for the job on its own machine, so
    only a local master's tasks share it (:func:`train`), and the driver
    deletes it after the job. Nothing in it is deleted before: when Spark
    runs a failed job again, its tasks write the same nodes bit for bit, so
    a node that the failed attempt left is as good as the new one, and a
    task never waits for a node that another task deleted. ``attempt``
    counts the task's runs in this job (Python's ``TaskContext`` does not
    say which attempt of the stage runs).
    """

    #: Seconds between looks for the other tasks' nodes.
    POLL_SECONDS = 0.002

    def __init__(self, folder: str, context, replicas: int):
        self.folder, self.replicas = folder, replicas
        self.attempt = 0
        while True:  # the first free marker of this task's runs
            try:
                path = os.path.join(folder, f"task-{context.partitionId()}-run-{self.attempt}")
                os.close(os.open(path, os.O_CREAT | os.O_EXCL))
                break
            except FileExistsError:
                self.attempt += 1

    def publish(self, round_: int, nodes) -> None:
        """This task's nodes of ``round_``, for the other tasks and the driver."""
        for lo, size, part in nodes:
            _write_whole(os.path.join(self.folder, f"round-{round_}-{lo}-{size}.node"), part)

    def mean(self, round_: int, nodes) -> tuple[list, list, list]:
        """Every task's nodes of ``round_`` added: the averaged weights, optimizer state and replica metrics."""
        self.publish(round_, nodes)
        while (files := _round_files(self.folder, round_, self.replicas)) is None:
            time.sleep(self.POLL_SECONDS)
        return _read_round(files, self.replicas)

    def released(self, round_: int, nodes) -> tuple[list, list]:
        """This task's nodes of ``round_`` published; the state the driver releases after scoring it."""
        self.publish(round_, nodes)
        path = _release_path(self.folder, round_)
        while not os.path.exists(path):
            time.sleep(self.POLL_SECONDS)
        with open(path, "rb") as state:
            return pickle.load(state)


class RoundFollower:
    """The driver's side of a job's :class:`RoundExchange`: each round's mean as the tasks finish it.

    :meth:`wait` returns a round once its nodes cover every partition, with
    the time the last of them was written; :meth:`release` lets the tasks go
    on after a round the driver scored, from the state it gives them. While
    it waits it watches the Spark job (a future), and raises the job's error
    if the job ends first.
    """

    #: Seconds between looks for the tasks' nodes.
    POLL_SECONDS = 0.005

    def __init__(self, folder: str, replicas: int):
        self.folder, self.replicas = folder, replicas

    def wait(self, round_: int, job) -> tuple[float, list, list, list]:
        """``(written, weights, optimizer, replica metrics)`` of ``round_``, metrics sorted by partition."""
        while True:
            ended = job.done()
            files = _round_files(self.folder, round_, self.replicas)
            if files is not None:
                break
            if ended:
                job.result()  # its error
                raise RuntimeError(f"the Spark job ended before round {round_ + 1}'s nodes were all written")
            time.sleep(self.POLL_SECONDS)
        written = max(os.stat(path).st_mtime for path in files.values())
        weights, optimizer, metrics = _read_round(files, self.replicas)
        return written, weights, optimizer, sorted(metrics, key=lambda r: r["partition"])

    def release(self, round_: int, weights: list, optimizer: list) -> float:
        """Let the tasks train on after ``round_``, from ``(weights, optimizer)``; returns the time."""
        _write_whole(_release_path(self.folder, round_), (weights, optimizer))
        return time.time()


def _round_nodes(partitions: int, tasks: int, in_task: bool) -> int:
    """How many nodes a round's tasks send at most: each task's adjacent partitions in aligned blocks.

    A task that adds its replicas (``in_task``) sends the largest aligned
    blocks of :class:`TreeSum`'s tree that its partitions fill (the shards
    of a task are adjacent: :func:`make_shards`), else each replica.

    >>> _round_nodes(16, 2, True), _round_nodes(6, 4, True), _round_nodes(16, 2, False)
    (2, 5, 16)
    """
    if not in_task:
        return partitions
    count = 0
    for task in range(tasks):
        members = [shard for shard in range(partitions) if task_of_shard(shard, partitions, tasks) == task]
        lo, end = members[0], members[-1] + 1
        while lo < end:
            size = 1
            while lo % (2 * size) == 0 and lo + 2 * size <= end:
                size *= 2
            count, lo = count + 1, lo + size
    return count


# --------------------------------------------------------------------------- the driver's loop


class WarmUp:
    """Each task slot's Python worker warms up a replica (:func:`warm_in_background`): a Spark job in a thread.

    Started as soon as the run's model is known, before the shards are
    made, so the executors' one-time start-up (TensorFlow, the model, its
    traced step) overlaps the run's other work instead of delaying the first
    round. The job has a task per slot that trains (``config.partitions``,
    at most the slots), a barrier stage on a local master so that each
    lands in a worker of its own; each starts its worker's warm-up and ends.
    With Python worker reuse (Spark's default) those workers run the rounds.
    :meth:`wait` returns each task's ``(Python worker, seconds)`` (0.0 for
    a warm-up still running in its worker), or raises what the job raised;
    as a context manager it waits on leaving, whatever the job raised.
    """

    def __init__(self, spark, config: TrainConfig | None = None, shipped=None):
        from mnist_spark.session import phase, task_slots

        self._rows: list = []
        self._error: BaseException | None = None
        tasks = min(config.partitions, task_slots(spark)) if config is not None else task_slots(spark)
        # A barrier stage puts each task in a worker of its own. A cluster's executors may still be
        # registering, and a barrier stage with more tasks than the slots there fails: not there.
        gang = _local_master(spark)

        def warm(batches):
            import pyarrow as pa

            for _ in batches:
                pass
            result = warm_in_background(config, shipped.value if shipped is not None else None)
            yield pa.RecordBatch.from_pylist(
                [result], schema=pa.schema([("pid", pa.int64()), ("seconds", pa.float64())])
            )

        def run():
            try:
                with phase(spark, "warming up replicas"):
                    slots = spark.range(tasks, numPartitions=tasks)
                    self._rows = slots.mapInArrow(warm, "pid long, seconds double", barrier=gang).collect()
            except BaseException as error:  # raised again in wait()
                self._error = error

        self._thread = threading.Thread(target=run, name="warm-up-replicas", daemon=True)
        self._thread.start()

    def wait(self, raise_error: bool = True) -> list[tuple[int, float]]:
        self._thread.join()
        if self._error is not None and raise_error:
            raise self._error
        return [(row["pid"], row["seconds"]) for row in self._rows]

    def __enter__(self) -> WarmUp:
        return self

    def __exit__(self, *exc_info) -> None:
        """The block ends after the job: no Spark job of a run outlives it."""
        self.wait(raise_error=False)


def initial_state(config: TrainConfig, architecture: bytes | None = None):
    """The driver's model with seeded initial weights, and its state at round 0.

    With ``architecture`` (the bytes of ``config.model_file``) the model is that
    file's, starting from its saved weights.
    """
    if architecture is not None:
        model = file_model(architecture, config.learning_rate)
        return model, TrainState(0, model.get_weights(), optimizer_variables(model), [])
    model = models.build_model(
        config.model,
        input_shape=config.input_shape,
        num_classes=config.num_classes,
        learning_rate=config.learning_rate,
        seed=config.seed,
    )
    model.optimizer.build(model.trainable_variables)
    return model, TrainState(0, model.get_weights(), optimizer_variables(model), [])


def _format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


#: XXH64's primes, as Spark's ``XXH64`` uses them.
_XXH_PRIME_1 = np.uint64(0x9E3779B185EBCA87)
_XXH_PRIME_2 = np.uint64(0xC2B2AE3D27D4EB4F)
_XXH_PRIME_3 = np.uint64(0x165667B19E3779F9)
_XXH_PRIME_4 = np.uint64(0x85EBCA77C2B2AE63)
_XXH_PRIME_5 = np.uint64(0x27D4EB2F165667C5)


def _rotl64(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _xxh64_finish(h: np.ndarray) -> np.ndarray:
    h = (h ^ (h >> np.uint64(33))) * _XXH_PRIME_2
    h = (h ^ (h >> np.uint64(29))) * _XXH_PRIME_3
    return h ^ (h >> np.uint64(32))


def _xxh64_long(value: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """XXH64 of 8-byte values (Spark's ``XXH64.hashLong``), each with its seed; uint64 in and out."""
    h = (seed + _XXH_PRIME_5 + np.uint64(8)) ^ (_rotl64(value * _XXH_PRIME_2, 31) * _XXH_PRIME_1)
    return _xxh64_finish(_rotl64(h, 27) * _XXH_PRIME_1 + _XXH_PRIME_4)


def _xxh64_int(value: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """XXH64 of 4-byte values (Spark's ``XXH64.hashInt``), each with its seed; uint64 in and out."""
    h = (seed + _XXH_PRIME_5 + np.uint64(4)) ^ (value * _XXH_PRIME_1)
    return _xxh64_finish(_rotl64(h, 23) * _XXH_PRIME_2 + _XXH_PRIME_3)


def spark_xxhash64(values, second: int) -> np.ndarray:
    """Spark SQL's ``xxhash64(long_column, F.lit(second))`` of each of ``values``, as int64.

    Spark hashes the long (``XXH64.hashLong``, seed 42) and then the
    literal with that hash as the seed: ``hashInt`` for a literal that fits
    an int, as ``F.lit`` types it, else ``hashLong``. Written out with numpy
    so that a task can pick rows by it without a Spark job (:func:`training_sample`);
    a test checks it against Spark's own ``xxhash64`` (``tests/test_training.py``).

    >>> spark_xxhash64([0, 1, -7], 0).tolist()
    [8050503502868583368, -2888108625965644557, -3901765767377479435]
    """
    with np.errstate(over="ignore"):
        longs = np.asarray(values, np.int64).view(np.uint64)
        h = _xxh64_long(longs, np.full(longs.shape, 42, np.uint64))
        if -(2**31) <= second < 2**31:
            return _xxh64_int(np.full(h.shape, second & 0xFFFFFFFF, np.uint64), h).view(np.int64)
        return _xxh64_long(np.full(h.shape, second & 0xFFFFFFFFFFFFFFFF, np.uint64), h).view(np.int64)


def sampled(index, count: int, seed: int, total: int) -> np.ndarray:
    """Which of the rows of ``index`` a sample of about ``count`` of ``total`` rows takes (a boolean mask).

    A row is taken when ``pmod(xxhash64(index, seed), total) < count``: the
    same rows for the same seed however the rows are partitioned or chunked.
    """
    return spark_xxhash64(index, seed) % max(total, 1) < count  # numpy's % is Spark's pmod for total > 0


def training_sample(shards, count: int, seed: int, total: int):
    """About ``count`` training images (and labels) as numpy, from the cached shards of :func:`make_shards`.

    Rows are picked by :func:`sampled` against the number of rows ``total``,
    so the sample depends on neither the partitioning nor the chunks, and
    comes in index order. The shards hold the images decoded, so the sample
    costs a pass over the cache, not over the source.
    """

    def pick(batches):
        for row in chunk_rows(batches):
            index = np.frombuffer(row["index"], np.int64)
            keep = sampled(index, count, seed, total)
            if keep.any():
                shape = tuple(int(n) for n in np.frombuffer(row["shape"], np.int32))
                images = np.frombuffer(row["pixels"], np.uint8).reshape(-1, *shape)
                labels = np.frombuffer(row["label"], np.int32)
                # The kept images of a chunk fit in one row of the chunk's own size.
                kept = (index[keep], labels[keep], images[keep])
                yield from _shard_rows(row["shard"], row["key"], shape, *kept, chunk_bytes=images.nbytes)

    table = shards.mapInArrow(pick, _shard_schema()).toArrow()
    if table.num_rows == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.int32)
    rows = table.to_pylist()
    shape = tuple(int(n) for n in np.frombuffer(rows[0]["shape"], np.int32))
    index = np.concatenate([np.frombuffer(r["index"], np.int64) for r in rows])
    labels = np.concatenate([np.frombuffer(r["label"], np.int32) for r in rows])
    images = np.concatenate([np.frombuffer(r["pixels"], np.uint8).reshape(-1, *shape) for r in rows])
    order = np.argsort(index, kind="stable")
    return images[order], labels[order]


@contextmanager
def _timed(seconds: dict, name: str):
    """Add the wall time of the block to ``seconds[name]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started


def train(
    spark,
    train_df,
    config: TrainConfig,
    *,
    validation=None,
    state: TrainState | None = None,
    on_round=None,
    chunk_bytes: int | None = None,
    shards=None,
    decode=None,
    rounds_per_job: int | None = None,
    warm_up: WarmUp | None = None,
):
    """Train ``config.model`` data-parallel over ``config.partitions`` replicas.

    Parameters
    ----------
    spark : SparkSession
    train_df : DataFrame
        Columns ``index``, ``label``, ``image``.
    config : TrainConfig
    validation : (images, labels), optional
        A small numpy validation set the driver scores after the rounds that
        :meth:`Schedule.scores` names (the first, each epoch's last, the last).
    state : TrainState, optional
        Resume from this state (a checkpoint) instead of fresh weights.
    on_round : callable, optional
        ``on_round(state, schedule)`` after each round, e.g. to checkpoint.
    chunk_bytes : int, optional
        Pixel bytes per cached shard row (:func:`make_shards`); the model
        does not depend on it.
    shards : (DataFrame, list of int), optional
        Shards already made from ``train_df`` by :func:`make_shards` with
        ``config.partitions`` (and ``chunk_bytes``), so several runs over the
        same data decode it once; the caller unpersists them. By default the
        run makes its own and unpersists them at the end.
    decode : callable, optional
        How the images are decoded for the shards (:func:`make_shards`), e.g.
        resizing them to ``config.input_shape``. The BatchNorm sample comes
        from the shards (:func:`training_sample`).
    rounds_per_job : int, optional
        On a local master one Spark job trains all the rounds
        (:func:`round_jobs`): its tasks average each round among themselves
        (:class:`RoundExchange`) and the driver follows them
        (:class:`RoundFollower`), holding the tasks after the rounds it
        scores. This caps the rounds of a job (1: a job per round, as on a
        cluster). The model is the same bit for bit.

    Returns
    -------
    (keras.Model, TrainState)
        The driver's model holding the averaged weights, and the final state.
        Its BatchNorm statistics are re-estimated on training images
        (``config.batchnorm_sample``).
    """
    from concurrent.futures import ThreadPoolExecutor

    from pyspark import BarrierTaskContext, TaskContext

    from mnist_spark.payloads import ship
    from mnist_spark.session import cancel_jobs, cancellable, phase, task_slots

    architecture = storage.read_bytes(config.model_file) if config.model_file else None
    slots = task_slots(spark)
    if config.barrier and config.partitions > slots:
        raise ValueError(
            f"barrier mode runs all {config.partitions} replicas at once but the cluster has "
            f"{slots} task slots; use --partitions {slots} or drop --barrier"
        )
    started = time.perf_counter()
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    # Each task trains the shards its partition holds one after the other: fewer tasks, the same model.
    tasks = config.partitions if config.barrier else replica_tasks(spark, config.partitions, slots)
    made = None  # the run's own shards, when it was given none
    shipped = ship(spark, architecture, "network") if architecture is not None else None
    # The executors start up while the run makes its shards and the driver builds its own model.
    warming = warm_up or (WarmUp(spark, config, shipped) if state is None else None)
    exchange_root = None
    try:
        with phase(spark, "shards"):
            if shards is None:
                made = make_shards(train_df, config.partitions, chunk_bytes=chunk_bytes, decode=decode, tasks=tasks)
            shards, sizes = made or shards
            if len(sizes) != config.partitions:
                raise ValueError(
                    f"{len(sizes)} shards were given for {config.partitions} partitions; make them "
                    "with make_shards(train_df, config.partitions)"
                )
        schedule = plan_schedule(config, sizes)
        if state is not None:
            schedule = schedule.continuing(state.history)
            if warming is None and state.round < schedule.rounds:  # a resumed run with rounds left
                warming = WarmUp(spark, config, shipped)
        model, fresh = initial_state(config, architecture)
        state = state or fresh
        load_state(model, state.weights, state.optimizer)
        with phase(spark, "shards"):
            sample = None
            if config.batchnorm_sample and models.batchnorm_layers(model):
                picked, _ = training_sample(shards, config.batchnorm_sample, config.seed, sum(sizes))
                sample = picked.reshape(-1, *config.input_shape)
        logger.info(
            "training %s on %d images in %d partitions (%s): %d rounds of %s steps, batch %d, peak learning rate %.4g",
            config.model_file or config.model,
            sum(sizes),
            config.partitions,
            ", ".join(map(str, sizes)),
            schedule.rounds,
            _round_lengths(schedule),
            config.batch_size,
            peak_learning_rate(config),
        )
        loop_started = time.perf_counter()
        first_round = state.round
        state_bytes = sum(np.asarray(a).nbytes for a in (*state.weights, *state.optimizer))
        in_task = tasks < config.partitions and adds_in_task(config.partitions, state_bytes)
        # On a local master (a task per slot, in the driver's machine) the driver adds what the
        # tasks send itself while it fits, saving a stage: at most a node per level of the tree
        # from a task that adds its replicas, else each of its replicas.
        sent = config.partitions.bit_length() if in_task else math.ceil(config.partitions / tasks)
        on_driver = _local_master(spark) and tasks * sent * 2 * state_bytes <= GROUP_BYTES
        # A local master's tasks share the driver's machine: one job trains the run's rounds, its tasks
        # average each round among themselves and the driver follows them through a folder that keeps
        # a job's rounds until it ends, at most EXCHANGE_BYTES of them.
        exchanging = _tasks_share_this_machine(spark) and tasks <= slots and (in_task or tasks == config.partitions)
        fit = max(1, EXCHANGE_BYTES // (_round_nodes(config.partitions, tasks, in_task) * 2 * state_bytes))
        jobs = round_jobs(schedule, state.round, min(rounds_per_job or fit, fit) if exchanging else 1)
        if any(first < last for first, last in jobs):  # the jobs' exchange folders, in one the run made
            exchange_root = tempfile.mkdtemp(prefix="mnist_spark-rounds-")
        slots_used = min(config.partitions, slots)

        def scores(round_: int) -> bool:
            return validation is not None and schedule.scores(round_)

        def after_round(round_: int, weights: list, optimizer: list) -> tuple[list, tuple | None, dict, dict]:
            """The driver's work on a round's mean: BatchNorm re-estimated and validation, where due.

            Returns the weights, the validation loss and accuracy (or None), and the seconds of that
            work that are scoring and that are training: BatchNorm's re-estimation after the run's
            last round makes the model, before any other only scores it.
            """
            done: dict = {}
            load_state(model, weights, optimizer)
            if sample is not None and (scores(round_) or round_ + 1 == schedule.rounds):
                with _timed(done, "batchnorm"):
                    models.reestimate_batchnorm(model, sample)
                    weights = model.get_weights()
            scored = None
            if scores(round_):
                with _timed(done, "validation"):
                    scored = models.score(model, *validation)
            trained = {k: v for k, v in done.items() if k == "batchnorm" and round_ + 1 == schedule.rounds}
            return weights, scored, {k: v for k, v in done.items() if k not in trained}, trained

        def record_round(round_: int, results: list, times: dict, weights, optimizer, scored) -> None:
            """A round's history record, its log line and ``on_round``."""
            nonlocal state
            assert state is not None  # the run's state from round 0 or a checkpoint on
            logger.debug(
                "round %d replicas (partition, Python worker, seconds, finished since the round's start): %s",
                round_ + 1,
                [
                    (r["partition"], r["pid"], round(r["seconds"], 2), round(r["finished"] - times["began"], 2))
                    for r in results
                ],
            )
            images = sum(r["count"] for r in results)
            counts = [r["count"] for r in results]
            record = {
                "round": round_ + 1,
                "epoch": round(schedule.epoch_of(round_ + 1), 4),
                "steps": schedule.steps_in(round_),
                "learning_rate": learning_rate_at(config, schedule, schedule.starts[round_]),
                "loss": float(np.average([r["loss"] for r in results], weights=counts)),
                "accuracy": float(np.average([r["accuracy"] for r in results], weights=counts)),
                "images": images,
                "devices": [r["device"] for r in results],
                # Replicas whose Python worker had to build the model this round (not warmed up).
                "cold_replicas": sum(r["cold"] for r in results),
            }
            if scored is not None:
                record.update(val_loss=float(scored[0]), val_accuracy=float(scored[1]))
            train_seconds = max(round(times["train_seconds"], 3), 0.001)
            record.update(
                time=round(time.time(), 3),
                seconds=round(times["seconds"], 3),
                train_seconds=train_seconds,
                images_per_second=round(images / train_seconds, 1),  # the rate of the record's own numbers
                fit_seconds=round(times["fitting"], 3),
                overhead_seconds={k: round(v, 3) for k, v in sorted(times["overheads"].items())},
            )
            state = TrainState(round_ + 1, weights, optimizer, state.history + [record])
            elapsed = time.perf_counter() - loop_started
            eta = (
                elapsed
                / (schedule.starts[round_ + 1] - schedule.starts[first_round])
                * (schedule.total_steps - schedule.starts[round_ + 1])
            )
            logger.info(
                "round %d/%d (epoch %.2f/%d): loss %.4f, accuracy %.4f%s | %.0f img/s | elapsed %s, ETA %s",
                round_ + 1,
                schedule.rounds,
                record["epoch"],
                config.epochs,
                record["loss"],
                record["accuracy"],
                f", val accuracy {record['val_accuracy']:.4f}" if "val_accuracy" in record else "",
                record["images_per_second"],
                _format_seconds(elapsed),
                _format_seconds(eta),
            )
            if on_round is not None:
                on_round(state, schedule)

        for first, last in jobs:
            began = time.time()  # the job's first round: from here, its warm-up and broadcast included
            before: dict = {}
            if warming is not None:  # the first round waits for what the warm-up has left to do
                with _timed(before, "warm_up"):
                    warmed = warming.wait()
                warming = None
                logger.debug("warmed replicas (Python worker, seconds): %s", [(p, round(t, 2)) for p, t in warmed])
            with _timed(before, "broadcast"):
                payload = ship(spark, pickle.dumps((state.weights, state.optimizer), protocol=5), "model state")
            folder = (
                None if first == last or exchange_root is None else f"{exchange_root}/rounds-{first + 1}-{last + 1}"
            )
            if folder is not None:
                os.mkdir(folder)
            # After a round the driver scores, the tasks go on from the state it releases.
            held = frozenset(r for r in range(first, last) if scores(r))

            def run_rounds(batches, payload=payload, first=first, last=last, folder=folder, held=held):
                context = BarrierTaskContext.get() if config.barrier or folder else TaskContext.get()
                exchange = RoundExchange(folder, context, config.partitions) if folder else None
                attempt = exchange.attempt if exchange else context.attemptNumber() if context else 0
                start = pickle.loads(payload.value)
                kept = []  # the task's shard files, for the job's later rounds
                try:
                    for round_ in range(first, last + 1):
                        tree, nodes = TreeSum(config.partitions), []
                        for shard, local in shard_files(batches, chunk_bytes) if round_ == first else kept:
                            if exchange is not None and round_ == first:
                                kept.append((shard, local))
                            try:
                                result = train_replica(
                                    shard,
                                    (local.images, local.labels, local.index),
                                    start,
                                    round_,
                                    config,
                                    schedule,
                                    attempt=attempt,
                                    architecture=shipped.value if shipped is not None else None,
                                )
                            finally:
                                if exchange is None:
                                    local.close()
                            done = tree.push(shard, 1, result) if in_task else [(shard, 1, result)]
                            if exchange is not None:
                                nodes += done
                            elif done:
                                yield node_batch(done)
                        nodes += tree.finish() if in_task else []
                        if exchange is None:
                            if nodes:
                                yield node_batch(nodes)
                        elif round_ == last:  # for the driver, which follows the job's rounds
                            exchange.publish(round_, nodes)
                        elif round_ in held:
                            start = exchange.released(round_, nodes)
                        else:
                            weights, optimizer, _ = exchange.mean(round_, nodes)
                            start = (weights, optimizer)
                finally:
                    for _, local in kept:
                        local.close()

            name = f"round {first + 1}" if first == last else f"rounds {first + 1}-{last + 1}"
            tag = f"mnist_spark-{os.getpid()}-{time.time_ns()}"
            barrier = config.barrier or folder is not None

            def run_job(name=name, tag=tag, barrier=barrier, run_rounds=run_rounds, folder=folder):
                with cancellable(spark, tag), phase(spark, f"training {name}/{schedule.rounds}"):
                    replicas = shards.mapInArrow(run_rounds, NODE_SCHEMA, barrier=barrier)
                    if folder is not None:
                        # The tasks leave every round in the folder and return nothing. Spark runs a
                        # failed barrier stage again only when a shuffle follows it: count()'s.
                        replicas.count()
                        return None, time.time()
                    averaged = tree_average(
                        replicas, config.partitions, state_bytes=state_bytes, on_driver=on_driver and not barrier
                    )
                return averaged, time.time()

            with (
                _session_conf(spark, _ONE_CHUNK_TO_PYTHON),
                ThreadPoolExecutor(1, thread_name_prefix="round-job") as pool,
            ):
                job = pool.submit(run_job)
                try:
                    if folder is not None:
                        follower = RoundFollower(folder, config.partitions)
                        for round_ in range(first, last + 1):
                            written, weights, optimizer, results = follower.wait(round_, job)
                            if round_ == last:
                                break  # recorded once the job has ended
                            weights, scored, scoring, trained = after_round(round_, weights, optimizer)
                            times = _round_timing(results, (began, written), before, scoring, trained, slots_used)
                            began = follower.release(round_, weights, optimizer) if round_ in held else written
                            before = {}
                            record_round(round_, results, times, weights, optimizer, scored)
                    averaged, ended = job.result()
                    if averaged is not None:  # else the follower read the last round
                        weights, optimizer, results = averaged
                except BaseException:
                    if not job.done():  # the run stops: so does its job, and the pool's thread with it
                        with contextlib.suppress(Exception):
                            cancel_jobs(spark, tag)
                    raise
            payload.destroy()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            weights, scored, scoring, trained = after_round(last, weights, optimizer)
            times = _round_timing(results, (began, ended), before, scoring, trained, slots_used)
            record_round(last, results, times, weights, optimizer, scored)
    finally:
        if warming is not None:  # the run stopped before its first round: let the warm-up end first
            warming.wait(raise_error=False)
        if made is not None:
            made[0].unpersist()
        if shipped is not None:
            shipped.destroy()
        if exchange_root is not None:
            shutil.rmtree(exchange_root, ignore_errors=True)
    logger.info(
        "trained %d rounds in %.1f s (%.1f s preparing shards)",
        schedule.rounds - first_round,
        time.perf_counter() - started,
        loop_started - started,
    )
    return model, state


def _round_timing(results: list, window: tuple, before: dict, scoring: dict, trained: dict, slots: int) -> dict:
    """Where a round's time went.

    ``window`` is the round's ``(began, ended)`` (``time.time()``): from the
    end of the round before (the job's start, for a job's first) to when
    its last node was written (the job's end, for a job's last). The
    replicas' fitting (``results``), packed into the task ``slots``, is the
    round's; the time after its last replica finished is averaging; the
    driver's parts before the tasks started (``before``: warm-up,
    broadcast) are named, with the longest wait of a replica for its
    worker's warm-up added to the warm-up; the rest is task start:
    scheduling, the shards' local files, loading the state. ``scoring`` (validation, BatchNorm
    re-estimation) and ``trained`` (the final BatchNorm re-estimation) are
    the driver's after the window; the first is not training time.
    """
    began, ended = window
    fitting = sum(r["fit_seconds"] for r in results) / slots
    averaging = max(0.0, ended - max(r["finished"] for r in results))
    # The first round's tasks may wait for their workers' warm-up still running (warm_in_background).
    warming = max(r.get("warming", 0.0) for r in results)
    if warming or "warm_up" in before:
        before = {**before, "warm_up": before.get("warm_up", 0.0) + warming}
    task_start = max(0.0, ended - began - fitting - averaging - sum(before.values()))
    train_seconds = ended - began + sum(trained.values())
    return {
        "began": began,
        "fitting": fitting,
        "train_seconds": train_seconds,
        "seconds": train_seconds + sum(scoring.values()),
        # A round after a job's first broadcast nothing: the tasks hand each other its state.
        "overheads": {
            "broadcast": 0.0,
            **before,
            "averaging": averaging,
            "task_start": task_start,
            **scoring,
            **trained,
        },
    }


def _round_lengths(schedule: Schedule) -> str:
    """Round lengths in steps, runs of equal lengths folded: ``15, 30, 14, 59 x 7``."""
    lengths = [schedule.steps_in(r) for r in range(schedule.rounds)]
    parts, position = [], 0
    while position < len(lengths):
        run = 1
        while position + run < len(lengths) and lengths[position + run] == lengths[position]:
            run += 1
        parts.append(f"{lengths[position]}" + (f" x {run}" if run > 1 else ""))
        position += run
    return ", ".join(parts)


def check_partitions(partitions: int, rows: int, *, given: bool = True) -> None:
    """Every replica needs at least one training image: one clear error otherwise, before any work."""
    if partitions > rows:
        flag = f"--partitions {partitions}" + ("" if given else " (the cluster's task slots)")
        raise ValueError(f"{flag} needs at least {partitions} training images, found {rows}; use fewer --partitions")


def images_per_second(history: list[dict]) -> float:
    """Training throughput over a run's rounds: their ``images`` over their ``train_seconds``.

    Histories saved before rounds recorded ``train_seconds`` count their ``seconds``.
    """
    seconds = sum(h.get("train_seconds", h["seconds"]) for h in history)
    return round(sum(h["images"] for h in history) / seconds, 1) if seconds else 0.0


def round_spread(history: list[dict]) -> float | None:
    """How much training throughput varies across a run's full-length rounds.

    ``(max - min) / median`` of the ``images_per_second`` of the rounds after
    the first that have the most steps among them (the first round may be
    longer or shorter, and starts the replicas); None when fewer than two
    rounds have that length.

    >>> round_spread([{"steps": 15, "images_per_second": 900}] + [
    ...     {"steps": 59, "images_per_second": r} for r in (5000, 4000, 4500)])
    0.222
    >>> round_spread([{"steps": 32, "images_per_second": 900}] + [
    ...     {"steps": s, "images_per_second": r} for s, r in ((9, 100), (10, 5000), (10, 4000))])
    0.222
    """
    later = history[1:]
    longest = max((h["steps"] for h in later), default=0)
    return spread([h["images_per_second"] for h in later if h["steps"] == longest])


def spread(rates: list) -> float | None:
    """``(max - min) / median`` of ``rates``, to 3 places; None for fewer than two."""
    return round((max(rates) - min(rates)) / statistics.median(rates), 3) if len(rates) > 1 else None


def checkpointer(folder: str, every: int, extra: dict, *, also: Callable | None = None) -> Callable:
    """An ``on_round(state, schedule, config)`` that saves a checkpoint every ``every`` rounds and after the last.

    ``every=0`` saves none. ``also(record)`` gets each round's history record first.
    """

    def on_round(state: TrainState, schedule, config: TrainConfig) -> None:
        if also is not None:
            also(state.history[-1])
        if every and (state.round % every == 0 or state.round == schedule.rounds):
            save_checkpoint(folder, state, config, extra=extra)

    return on_round


def resume_from(folder: str, run: str, given: dict, defaults: dict, names) -> tuple:
    """The latest checkpoint of ``run`` in ``folder``, once ``given`` settings agree with the saved ones.

    Returns ``(state, config, settings)``: the run settings ``names`` as
    saved, or their ``defaults`` where the checkpoint has none. See
    :func:`check_resume_settings`.
    """
    state, config, saved = load_checkpoint(folder)
    check_resume_settings(run, {**config.to_dict(), "arch": config.model, **saved}, given, defaults)
    return state, config, {name: saved.get(name, defaults.get(name)) for name in names}


def check_resume_settings(run: str, saved: dict, given: dict, defaults: dict) -> None:
    """Refuse to resume ``run`` with settings other than its own.

    A setting counts as given when it differs from its default; each given
    one must equal the saved run's value (``saved``: the TrainConfig and the
    job's saved extras).

    Raises
    ------
    ValueError
        Naming every setting that differs, with both values.
    """
    differ = []
    for name, value in given.items():
        if name not in saved or name not in defaults or value == defaults[name]:
            continue
        stored = saved[name]
        if isinstance(value, tuple):
            value = list(value)
        if value != stored:
            differ.append(f"--{name.replace('_', '-')} {value} (saved: {stored})")
    if differ:
        raise ValueError(
            f"--resume {run}: the run was started with other settings: {'; '.join(differ)}; "
            "resume without those flags, or start a new run with another --output"
        )


def save_checkpoint(folder: str, state: TrainState, config: TrainConfig, extra: dict | None = None) -> str:
    """Save the averaged state after a round; returns the checkpoint's location.

    ``folder`` is a local path or a URI (:mod:`mnist_spark.storage`). ``extra``
    holds whatever else a resumed run needs (the job's data settings), as JSON.
    Written under a temporary name and renamed, so a crash mid-save leaves the
    previous checkpoint intact; the two newest checkpoints are kept.
    """
    import io
    import json

    path = storage.join(folder, f"round-{state.round:04d}.npz")
    arrays = {f"w{i}": w for i, w in enumerate(state.weights)}
    arrays.update({f"o{i}": o for i, o in enumerate(state.optimizer)})
    meta = {
        "round": state.round,
        "history": state.history,
        "config": config.to_dict(),
        "weights": len(state.weights),
        "optimizer": len(state.optimizer),
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    storage.write_bytes(path + ".tmp", buffer.getvalue())
    storage.move(path + ".tmp", path)
    for old in _checkpoint_names(folder)[:-2]:
        storage.delete_file(storage.join(folder, old))
    return path


def _checkpoint_names(folder: str) -> list[str]:
    return [name for name in storage.list_files(folder) or [] if name.startswith("round-") and name.endswith(".npz")]


def load_checkpoint(folder: str) -> tuple[TrainState, TrainConfig, dict]:
    """The latest checkpoint in ``folder``: state, config and the ``extra`` saved with it.

    Raises
    ------
    ValueError
        When the folder holds no checkpoint.
    """
    import io
    import json

    names = _checkpoint_names(folder)
    if not names:
        raise ValueError(
            f"no checkpoint in {folder}: a run saves one every --checkpoint-every rounds; start "
            "a new run instead of --resume"
        )
    with np.load(io.BytesIO(storage.read_bytes(storage.join(folder, names[-1]))), allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        weights = [data[f"w{i}"] for i in range(meta["weights"])]
        optimizer = [data[f"o{i}"] for i in range(meta["optimizer"])]
    state = TrainState(meta["round"], weights, optimizer, meta["history"])
    return state, TrainConfig.from_dict(meta["config"]), meta.get("extra", {})
