"""IDX files become a Spark DataFrame of images; the Parquet form of a dataset.

The DataFrame has the columns of :data:`dataset_schema`:

* ``split``: ``train`` or ``test``;
* ``index``: position of the item in its file;
* ``label``: the class, an int;
* ``image``: Spark's image struct (:mod:`mnist_spark.images`), ``origin``
  like ``idx:train-images-idx3-ubyte.gz#12``.

The driver validates every file first (header, exact size, labels in range,
image and label counts equal) and then plans slices of each file. Each Spark
task reads its own slice straight from storage, so the pixels never pass
through the driver and a bad file fails before any task runs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mnist_spark import idx, storage
from mnist_spark.images import image_struct_array, image_struct_type, mode_for_channels

logger = logging.getLogger(__name__)

#: Parquet folder of an ingested dataset inside its output.
PARQUET_NAME = "data.parquet"
#: Rows per Arrow batch a reading task yields.
BATCH_ROWS = 8192


def dataset_schema():
    """The Spark schema of an image dataset: split, index, label, image."""
    from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

    return StructType(
        [
            StructField("split", StringType(), False),
            StructField("index", LongType(), False),
            StructField("label", IntegerType(), False),
            StructField("image", image_struct_type(), True),
        ]
    )


@dataclass(frozen=True)
class SplitInfo:
    """What the driver learned about one split while validating it."""

    split: str
    images: str
    labels: str
    count: int
    image_shape: tuple
    label_counts: tuple


@dataclass(frozen=True)
class ReadTask:
    """One Spark task's share of a split: items ``[start, stop)``."""

    split: str
    images: str
    labels: str
    start: int
    stop: int


def validate_split(split: str, images: str, labels: str, num_classes: int, limit=None) -> SplitInfo:
    """Check one split's pair of files on the driver, before any task runs.

    Streams the whole image file once (exact size, no trailing bytes) and
    reads the labels (small) to check their range.

    Raises
    ------
    ValueError
        For any defect of either file or of the pair (see :mod:`mnist_spark.idx`).
    """
    image_name, label_name = os.path.basename(images), os.path.basename(labels)
    # Both headers first: a labels file whose header disagrees is never read into memory.
    with storage.open_input(images) as raw:
        image_header = idx.header(raw, name=image_name)
    with storage.open_input(labels) as raw:
        idx.check_pair(image_header, idx.header(raw, name=label_name))
    if image_header.dtype != np.uint8:
        raise ValueError(
            f"{image_name}: images must be uint8 to become Spark image structs, "
            f"found {image_header.dtype.name}; convert the file to uint8 first"
        )
    item_shape = image_header.item_shape
    if len(item_shape) not in (2, 3):
        raise ValueError(
            f"{image_name}: expected images of height x width (x channels), found items of shape {item_shape}"
        )
    if len(item_shape) == 3:
        mode_for_channels(item_shape[2], image_name)
    with storage.open_input(images) as raw:
        image_header, _ = idx.inspect(raw, name=image_name)
    with storage.open_input(labels) as raw:
        label_header, label_array = idx.read_records(raw, 0, None, name=label_name)
    idx.check_pair(image_header, label_header)
    idx.check_labels(label_array, num_classes, label_name)
    count = image_header.count if limit is None else min(limit, image_header.count)
    counts = np.bincount(label_array[:count], minlength=num_classes)
    return SplitInfo(split, images, labels, count, tuple(item_shape), tuple(int(c) for c in counts))


def _shape_text(shape) -> str:
    return "x".join(str(s) for s in shape) or "scalar"


def plan_tasks(infos: list[SplitInfo], partitions: int) -> list[ReadTask]:
    """Cut the splits into about ``partitions`` slices in all, in proportion to size.

    Every split gets at least one slice.
    """
    total = sum(info.count for info in infos) or 1
    tasks = []
    for info in infos:
        pieces = max(1, min(info.count, round(partitions * info.count / total))) if info.count else 1
        bounds = np.linspace(0, info.count, pieces + 1).astype(int)
        tasks += [
            ReadTask(info.split, info.images, info.labels, int(a), int(b))
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    return tasks


@dataclass
class TrainTest:
    """The training and test images of a run (:func:`train_test_frames`)."""

    train: Any  #: every training image; an estimator with ``labels`` picks its own
    test: Any  #: the test images, cached; with ``labels`` only those, labelled by class position
    train_rows: int | None  #: from the IDX headers; None when ``labels`` leaves it to count
    test_rows: int | None
    num_classes: int  #: the dataset's
    labels: tuple | None = None  #: the dataset labels kept, in class order
    classes: tuple | None = None  #: the original label of each class, when the labels were indexed

    def validation(self, size: int):
        """The first ``size`` test images as numpy for the driver to score each round; None for 0."""
        from mnist_spark.images import validation_arrays

        return validation_arrays(self.test, size) if size else None

    def train_count(self) -> int:
        """Training images (of ``labels``): from the headers, else counted by Spark (the phase ``counts``)."""
        from mnist_spark.labels import select_labels
        from mnist_spark.session import phase

        if self.train_rows is not None:
            return self.train_rows
        with phase(self.train.sparkSession, "counts"):
            return (select_labels(self.train, self.labels) if self.labels else self.train).count()

    def test_count(self) -> int:
        """Test images (of ``labels``): from the headers, else counted by Spark (the phase ``counts``)."""
        from mnist_spark.session import phase

        if self.test_rows is not None:
            return self.test_rows
        with phase(self.test.sparkSession, "counts"):
            return self.test.count()


def train_test_frames(spark, options: dict) -> TrainTest:
    """A dataset's training and test splits for training and scoring a classifier.

    ``options`` are a job's: the IDX files of ``data_dir``, or the source
    that ``input`` or ``input_table`` names (:func:`mnist_spark.sources.source_from_options`).
    ``limit`` keeps the first images of each split by ``index``. ``labels``
    (dataset labels) keeps only those test images, labelled ``0 ..
    len(labels) - 1`` in that order, as the model's classes are.
    """
    from pyspark.sql import functions as F

    from mnist_spark import datasets, sources
    from mnist_spark import labels as label_subset
    from mnist_spark.session import phase

    source = sources.source_from_options(spark, options)
    data_dir, limit, labels = options.get("data_dir"), options.get("limit"), options.get("labels")

    if source is not None:
        train, test = (source.frame.where(F.col("split") == split) for split in ("train", "test"))
        if limit:
            with phase(spark, "read images"):
                train, test = (df.where(F.col("index") < _index_bound(df, limit)) for df in (train, test))
        rows, num_classes = (None, None), source.class_count
    else:
        files = datasets.locate(data_dir)
        train, (train_info,) = idx_dataframe(spark, files, splits=("train",), limit=limit)
        test, (test_info,) = idx_dataframe(spark, files, splits=("test",), limit=limit)
        rows, num_classes = (train_info.count, test_info.count), files.dataset.num_classes
    if labels:
        if num_classes:
            label_subset.check_labels(labels, num_classes)
        test, rows = label_subset.select_labels(test, labels, index=True), (None, None)
    # Small, and scored by the Python workers that trained.
    classes = source.classes if source is not None else None
    return TrainTest(train, test.cache(), *rows, num_classes, tuple(labels) if labels else None, classes)


def _index_bound(df, limit: int) -> int:
    """The ``index`` below which ``df`` has its first ``limit`` rows (all rows when it has fewer)."""
    from pyspark.sql import functions as F

    row = df.select("index").orderBy("index").offset(limit - 1).limit(1).first() if limit > 0 else None
    if row is not None:
        return int(row[0]) + 1
    top = df.agg(F.max("index")).first()[0] if limit > 0 else None
    return int(top) + 1 if top is not None else 0


def first_images(info: SplitInfo, count: int) -> list:
    """The first ``count`` images of a split as ``(index, label, pixels)``, read on the driver.

    Reads the IDX files directly with the reader the Spark tasks use, so a
    few pictures cost no Spark job.
    """
    from mnist_spark.images import struct_to_array

    rows = []
    for batch in _read_task_batches(ReadTask(info.split, info.images, info.labels, 0, min(count, info.count))):
        for row in batch.to_pylist():
            rows.append((row["index"], row["label"], struct_to_array(row["image"])))
    return rows


def _read_task_batches(task: ReadTask):
    """Arrow record batches of one task's slice; runs in an executor.

    The images are read batch by batch as Spark consumes them, so the task
    holds one batch at a time.
    """
    import pyarrow as pa

    image_name = os.path.basename(task.images)
    with storage.open_input(task.labels) as raw:
        _, labels = idx.read_records(raw, task.start, task.stop, name=os.path.basename(task.labels))
    with storage.open_input(task.images) as raw:
        offset = 0
        for images in idx.iter_records(raw, task.start, task.stop, BATCH_ROWS, name=image_name):
            if images.ndim == 4 and images.shape[3] in (3, 4):
                images = images[..., [2, 1, 0, 3][: images.shape[3]]]  # RGB(A) -> Spark's BGR(A)
            stop = offset + len(images)
            index = np.arange(task.start + offset, task.start + stop, dtype=np.int64)
            yield pa.RecordBatch.from_arrays(
                [
                    pa.array([task.split] * len(images), pa.string()),
                    pa.array(index),
                    pa.array(labels[offset:stop].astype(np.int32)),
                    image_struct_array(images, [f"idx:{image_name}#{i}" for i in index]),
                ],
                names=["split", "index", "label", "image"],
            )
            offset = stop


def idx_dataframe(spark, files, *, splits=("train", "test"), partitions=None, limit=None, num_classes=None):
    """A DataFrame of the IDX dataset ``files``, read in parallel by the executors.

    Parameters
    ----------
    spark : SparkSession
    files : mnist_spark.datasets.DatasetFiles
        The located files (see :func:`mnist_spark.datasets.locate`).
    splits : sequence of str
        Which splits to read.
    partitions : int, optional
        Slices in all. Default: the cluster's task slots.
    limit : int, optional
        Read only the first ``limit`` items of each split.
    num_classes : int, optional
        Labels must lie in ``[0, num_classes)``. Default: the dataset's.

    Returns
    -------
    (DataFrame, list of SplitInfo)
        The lazy DataFrame (:func:`dataset_schema`) and what validation found.

    Raises
    ------
    ValueError
        For a bad file, an unknown split or a bad size, before any task runs.

    Examples
    --------
    >>> from mnist_spark import datasets
    >>> df, infos = idx_dataframe(spark, datasets.locate(), limit=100)  # doctest: +SKIP
    >>> df.count()  # doctest: +SKIP
    200
    """
    from mnist_spark.session import task_slots

    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be above 0, found {limit}")
    if partitions is not None and partitions <= 0:
        raise ValueError(f"partitions must be above 0, found {partitions}")
    num_classes = num_classes or files.dataset.num_classes
    started = time.perf_counter()
    infos = [validate_split(split, files.images(split), files.labels(split), num_classes, limit) for split in splits]
    logger.info(
        "validated %s (%s) in %.2f s",
        ", ".join(f"{i.split}: {i.count} images of {_shape_text(i.image_shape)}" for i in infos),
        files.directory,
        time.perf_counter() - started,
    )
    tasks = plan_tasks(infos, partitions or task_slots(spark))
    # One row per task, one task per partition: spark.range needs no Python stage.
    plan = spark.range(0, len(tasks), 1, numPartitions=len(tasks))

    def read(batches):
        for batch in batches:
            for number in batch.column(0).to_pylist():
                yield from _read_task_batches(tasks[number])

    return plan.mapInArrow(read, dataset_schema()), infos


def write_dataset(df, location: str) -> None:
    """Write an image DataFrame as Parquet partitioned by split.

    Dictionary encoding is off: pixel blobs are nearly all distinct, and
    trying to build a dictionary for them costs time and saves nothing.
    The Spark jobs are in the phase ``write Parquet``.
    """
    from mnist_spark.session import phase

    with phase(df.sparkSession, "write Parquet"):
        df.write.partitionBy("split").option("parquet.enable.dictionary", "false").parquet(storage.to_uri(location))


def read_dataset(spark, location: str):
    """Read a dataset written by :func:`write_dataset` (or the ingest job's output folder).

    Returns the columns in :func:`dataset_schema` order.
    """
    path = storage.to_uri(location)
    if storage.exists(storage.join(path, PARQUET_NAME)):
        path = storage.join(path, PARQUET_NAME)
    if not storage.exists(path):
        raise ValueError(f"no dataset at {location}: expected a Parquet folder written by jobs/ingest.py")
    return spark.read.parquet(path).select("split", "index", "label", "image")


def dataset_metrics(files, infos: list[SplitInfo]) -> dict:
    """What a job's ``metrics.json`` says of the IDX dataset it read: name, folder, rows and shapes per split."""
    return {
        "dataset": files.dataset.name,
        "source": {"directory": files.directory, "found_by": files.source},
        "rows": {info.split: info.count for info in infos},
        "label_counts": {info.split: list(info.label_counts) for info in infos},
        "image_shape": {info.split: list(info.image_shape) for info in infos},
    }


def rate(count: int, seconds: float) -> float:
    """Items per second, safe for a zero duration."""
    return count / seconds if seconds > 0 else math.inf
