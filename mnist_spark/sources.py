"""Any image data as the pipeline's DataFrame: ``split, index, label, image``.

:func:`read_source` takes what the jobs' ``--input`` names and gives every
job the same DataFrame that ingest writes, with Spark's image struct:

* an ingest output folder (``data.parquet`` inside);
* a PNG set written by export_png (``manifest.parquet`` inside);
* any Parquet dataset, or a table (``--input-table db.name``), whose image
  column holds Spark's image struct, with a label column and optionally a
  split column (``--image-col``, ``--label-col``, ``--split-col``);
* a folder of images in the folder-per-class layout that Keras reads
  (``<class>/<file>``, or ``<split>/<class>/<file>`` when the top folders are
  ``train``, ``test`` and the like), PNG or JPEG, any size, 1, 3 or 4
  channels, decoded by Spark's image source.

Labels that are not class numbers (``"cat"``, ``"dog"``) are indexed in
sorted order; :attr:`Source.classes` keeps the original label of each class,
which training writes beside the model as ``labels.json``. Where there is no
split, a seeded hash of each row's ``index`` puts ``test_fraction`` of the
rows in ``test``: the same seed gives the same split on any partitioning.

Files (a PNG set, a folder of images) are decoded once and persisted, in
memory and spilling to disk, so a job's later passes over them (training,
evaluation, the report) do not decode every file again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from mnist_spark import storage

logger = logging.getLogger(__name__)

#: Folder names that a folder-per-class layout may use one level up, as splits.
SPLIT_FOLDERS = ("train", "test", "val", "validation")
#: Share of the rows that go to ``test`` when the data has no split.
DEFAULT_TEST_FRACTION = 0.2


@dataclass
class Source:
    """Image data read by :func:`read_source`."""

    frame: Any  #: DataFrame of ``split, index, label, image``; ``label`` is the class number
    kind: str  #: ``ingest``, ``pngset``, ``parquet``, ``table`` or ``folder``
    location: str
    classes: tuple | None = None  #: the original label of each class, when labels were indexed
    num_classes: int = 0  #: the dataset's classes, when known (0: count the labels found)
    split_given: bool = True  #: False when the split was made by ``test_fraction``

    @property
    def class_count(self) -> int:
        """Classes of the data: as many as the indexed labels, else the dataset's (0: unknown)."""
        return len(self.classes) if self.classes else self.num_classes


#: The jobs' flags that say where the images come from, by read_source's keywords.
SOURCE_OPTIONS = {
    "input": "location",
    "input_table": "table",
    "image_col": "image_col",
    "label_col": "label_col",
    "split_col": "split_col",
    "test_fraction": "test_fraction",
    "seed": "seed",
}


def source_from_options(spark, options: dict, *, unlabelled: bool = False) -> Source | None:
    """The :class:`Source` that a job's ``--input`` or ``--input-table`` names; None for neither (IDX files)."""
    if not options.get("input") and not options.get("input_table"):
        return None
    if options.get("data_dir"):
        raise ValueError("give --data-dir (IDX files) or --input/--input-table, not both")
    given = {key: options[name] for name, key in SOURCE_OPTIONS.items() if options.get(name) is not None}
    return read_source(spark, **given, unlabelled=unlabelled)


def read_images(spark, options: dict, *, splits=None, unlabelled: bool = False) -> Source:
    """The images a job's options name: ``--input``/``--input-table``, else the IDX files of ``--data-dir``.

    ``splits`` keeps those splits of data that has its own (a split made by
    ``--test-fraction`` is kept whole). ``unlabelled`` (scoring) also takes a
    folder of images without class folders, as split ``unlabelled``, label -1.
    """
    from pyspark.sql import functions as F

    source = source_from_options(spark, options, unlabelled=unlabelled)
    if source is None:
        from mnist_spark import datasets
        from mnist_spark.ingest import idx_dataframe

        files = datasets.locate(options.get("data_dir"))
        frame, _ = idx_dataframe(spark, files, splits=tuple(splits or datasets.SPLITS))
        return Source(frame, "idx", files.directory, num_classes=files.dataset.num_classes)
    if splits and source.split_given and source.kind != "images":
        source.frame = source.frame.where(F.col("split").isin(list(splits)))
    return source


@dataclass
class SplitImages:
    """Images to export, with what the job reports of them (:func:`split_images`)."""

    frame: Any  #: ``split, index, label, image`` of the splits asked for
    rows: dict  #: images per split
    num_classes: int
    title: str  #: the dataset's name for people
    metrics: dict  #: what ``metrics.json`` says of the input
    first: Any  #: ``first(n)``: the first ``n`` images of the first split as ``(index, label, pixels)``


def split_images(spark, options: dict, *, splits, partitions: int, limit=None, num_classes=None) -> SplitImages:
    """The ``splits`` of the images that a job's options name, in about ``partitions`` tasks.

    From the IDX files (read in ``partitions`` tasks, counted from their
    headers, pictures read without Spark) or from ``--input`` (its first
    ``limit`` images of each split by ``index``, counted in the phase ``read
    images``; the pictures' images collected in the phase ``figures``).
    """
    from pyspark.sql import functions as F

    from mnist_spark import ingest
    from mnist_spark.session import phase

    source = source_from_options(spark, options)
    if source is None:
        from mnist_spark import datasets

        files = datasets.locate(options.get("data_dir"))
        frame, infos = ingest.idx_dataframe(
            spark, files, splits=splits, partitions=partitions, limit=limit, num_classes=num_classes
        )
        rows = {info.split: info.count for info in infos}
        return SplitImages(
            frame,
            rows,
            num_classes or files.dataset.num_classes,
            files.dataset.title,
            ingest.dataset_metrics(files, infos),
            lambda n: ingest.first_images(infos[0], n),
        )
    frames = [source.frame.where(F.col("split") == split) for split in splits]
    with phase(spark, "read images"):
        if limit:
            frames = [df.where(F.col("index") < ingest._index_bound(df, limit)) for df in frames]
        frame = frames[0]
        for other in frames[1:]:
            frame = frame.unionByName(other)
        frame = frame.repartition(partitions)
        rows = {split: int(count) for split, count in frame.groupBy("split").count().collect()}
        missing = [split for split in splits if not rows.get(split)]
        if missing:
            raise ValueError(f"--input {source.location} has no images of split {', '.join(missing)}; check --splits")
        label_counts = {r["label"]: r["count"] for r in frame.groupBy("label").count().collect()}
    classes = num_classes or source.class_count or max(label_counts) + 1

    def first(n: int) -> list:
        from mnist_spark.images import first_rows_numpy

        with phase(spark, "figures"):
            pixels, labels, index = first_rows_numpy(frames[0], n)
        return list(zip(index.tolist(), labels.tolist(), pixels, strict=True))

    metrics = {"source": {"input": source.location, "kind": source.kind}, "rows": rows}
    return SplitImages(frame, rows, classes, f"--input {source.location}", metrics, first)


def source_kind(location: str) -> str:
    """What ``location`` holds: ``ingest``, ``pngset``, ``parquet`` or ``folder`` (of images).

    Raises
    ------
    ValueError
        When nothing is there.
    """
    from mnist_spark.ingest import PARQUET_NAME
    from mnist_spark.pngset import MANIFEST_NAME

    if storage.exists(storage.join(location, PARQUET_NAME)):
        return "ingest"
    if storage.exists(storage.join(location, MANIFEST_NAME)):
        return "pngset"
    if not storage.exists(location):
        raise ValueError(
            f"--input {location} does not exist; give an ingest output, a PNG set, a Parquet dataset "
            "or a folder of images"
        )
    files = storage.list_files(location)
    if files is None or location.rstrip("/").endswith(".parquet") or any(n.endswith(".parquet") for n in files):
        return "parquet"  # a Parquet file, or a folder of them
    return "folder"


def read_source(
    spark,
    location: str | None = None,
    *,
    table: str | None = None,
    image_col: str = "image",
    label_col: str = "label",
    split_col: str = "split",
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    unlabelled: bool = False,
) -> Source:
    """Read ``location`` (or the table ``table``) as the pipeline's DataFrame; see the module's text.

    ``unlabelled`` also takes a folder of images without class folders (kind
    ``images``: split ``unlabelled``, label -1), for scoring. The Spark jobs
    that list, check and index the data are in the phase ``read images``.
    """
    from mnist_spark.session import phase

    if (location is None) == (table is None):
        raise ValueError("give one of --input (a folder or URI) and --input-table (a table name)")
    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction must lie between 0 and 1, found {test_fraction}")
    with phase(spark, "read images"):
        return _read(spark, location, table, image_col, label_col, split_col, test_fraction, seed, unlabelled)


def _read(spark, location, table, image_col, label_col, split_col, test_fraction, seed, unlabelled) -> Source:
    if table is not None:
        df = spark.table(table)
        return _columns(df, "table", table, image_col, label_col, split_col, test_fraction, seed)
    assert location is not None  # one of the two, checked above
    kind = source_kind(location)
    if kind == "ingest":
        from mnist_spark.ingest import read_dataset

        return Source(read_dataset(spark, location), kind, location, num_classes=_declared_classes(location))
    if kind == "pngset":
        from mnist_spark.pngset import read_png_set

        frame = read_png_set(spark, location, persist=True)[0]
        return Source(frame, kind, location, num_classes=_declared_classes(location))
    if kind == "parquet":
        df = spark.read.parquet(storage.to_uri(location))
        return _columns(df, kind, location, image_col, label_col, split_col, test_fraction, seed)
    return _image_folder(spark, location, test_fraction, seed, unlabelled)


def _declared_classes(location: str) -> int:
    """The number of classes that ingest's or export_png's ``metrics.json`` records; 0 when it does not."""
    import json

    try:
        metrics = json.loads(storage.read_bytes(storage.join(location, "metrics.json")))
    except (OSError, ValueError):
        return 0
    if metrics.get("num_classes"):
        return int(metrics["num_classes"])
    counts = metrics.get("label_counts") or {}
    return max((len(per_split) for per_split in counts.values()), default=0)


def _columns(df, kind, location, image_col, label_col, split_col, test_fraction, seed) -> Source:
    """A DataFrame with an image struct column, a label column and maybe a split and an index."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    from mnist_spark.images import image_struct_type

    where = f"--input {location}" if kind != "table" else f"--input-table {location}"
    for column, flag in ((image_col, "--image-col"), (label_col, "--label-col")):
        if column not in df.columns:
            raise ValueError(
                f"{where} has no column {column!r} (columns: {', '.join(df.columns)}); name it with {flag}"
            )
    found = df.schema[image_col].dataType
    wanted = {f.name for f in image_struct_type().fields}
    if not isinstance(found, StructType) or not wanted <= {f.name for f in found.fields}:
        raise ValueError(
            f"{where}: column {image_col!r} is {found.simpleString()}; expected Spark's image struct "
            f"({', '.join(sorted(wanted))}), as spark.read.format('image') and ingest write it"
        )
    index = (
        F.col("index").cast("long")
        if "index" in df.columns
        else F.xxhash64(F.col(image_col + ".data"), F.col(label_col).cast("string")).bitwiseAND(F.lit(2**63 - 1))
    )
    frame = df.select(
        (F.col(split_col).cast("string") if split_col in df.columns else F.lit(None).cast("string")).alias("split"),
        index.alias("index"),
        F.col(label_col).alias("label"),
        F.col(image_col).alias("image"),
    )
    frame, classes = _index_labels(frame)
    if split_col not in df.columns:
        frame = _split_by_hash(frame, test_fraction, seed)
    return Source(frame, kind, location, classes, split_given=split_col in df.columns)


def _image_folder(spark, location: str, test_fraction: float, seed: int, unlabelled: bool) -> Source:
    """Images in the folder-per-class layout, split by their top folder or by hash."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    layout = _folder_layout(location)
    if layout is None and unlabelled:
        images = (
            spark.read.format("image")
            .option("recursiveFileLookup", "true")
            .option("dropInvalid", "true")
            .load(storage.to_uri(location))
        )
        index = (F.row_number().over(Window.orderBy("image.origin")) - 1).cast("long")
        frame = images.select(
            F.lit("unlabelled").alias("split"), index.alias("index"), F.lit(-1).alias("label"), "image"
        )
        return Source(_decoded_once(frame), "images", location)
    if layout is None:
        raise ValueError(
            f"--input {location} holds no class folders with images in them; put each class's images in a "
            "folder named after the class (<class>/<file>, or <split>/<class>/<file>)"
        )
    by_split = layout == "split"
    images = (
        spark.read.format("image")
        .option("recursiveFileLookup", "true")
        .option("dropInvalid", "true")
        .load(storage.to_uri(location))
    )
    parts = F.split(F.col("image.origin"), "/")
    label = F.element_at(parts, -2)
    split = F.element_at(parts, -3) if by_split else F.lit(None).cast("string")
    # A stable index: the file's place among all files by path.
    index = F.row_number().over(Window.orderBy("image.origin")) - 1
    frame = images.select(split.alias("split"), index.cast("long").alias("index"), label.alias("label"), "image")
    frame, classes = _index_labels(frame)
    if not by_split:
        frame = _split_by_hash(frame, test_fraction, seed)
    return Source(_decoded_once(frame), "folder", location, classes, split_given=by_split)


def _decoded_once(frame):
    """``frame``, persisted (in memory, spilling to disk): a job's passes over a folder of image
    files (training, evaluation, the report) decode and index the files once, not on every pass."""
    from pyspark import StorageLevel

    return frame.persist(StorageLevel.MEMORY_AND_DISK)


def _folders(location: str) -> list:
    return [name for name in storage.list_files(location, folders=True) or () if not name.startswith((".", "_"))]


def _folder_layout(location: str) -> str | None:
    """``class`` for ``<class>/<file>``, ``split`` for ``<split>/<class>/<file>``, else None.

    Every class folder must hold images of its own (not only sub-folders).
    """
    top = _folders(location)
    if not top:
        return None
    if all(name in SPLIT_FOLDERS for name in top):
        classes = [
            storage.join(location, split, name) for split in top for name in _folders(storage.join(location, split))
        ]
        return "split" if classes and all(storage.list_files(c) for c in classes) else None
    return "class" if all(storage.list_files(storage.join(location, name)) for name in top) else None


def _index_labels(frame) -> tuple:
    """Labels as class numbers: whole numbers from 0 stay; others are indexed in sorted order."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegralType, StringType

    data_type = frame.schema["label"].dataType
    if isinstance(data_type, IntegralType):
        return frame, None
    values = [row[0] for row in frame.select("label").distinct().collect()]
    if any(value is None for value in values):
        raise ValueError("some rows have no label; drop them or give them one")
    if isinstance(data_type, StringType) and all(v.isascii() and v.isdigit() for v in values):
        return frame.withColumn("label", F.col("label").cast("int")), None
    classes = tuple(sorted(values))
    position = F.create_map(*[F.lit(v) for pair in zip(classes, range(len(classes)), strict=True) for v in pair])
    logger.info("labels indexed as classes 0..%d: %s", len(classes) - 1, ", ".join(map(str, classes)))
    return frame.withColumn("label", position[F.col("label")].cast("int")), classes


def _split_by_hash(frame, test_fraction: float, seed: int):
    """``test`` for a seeded hash share of ``test_fraction`` of the rows, by ``index``; else ``train``."""
    from pyspark.sql import functions as F

    bucket = F.pmod(F.xxhash64(F.lit(seed), F.col("index")), F.lit(1_000_000))
    return frame.withColumn("split", F.when(bucket < F.lit(int(test_fraction * 1_000_000)), "test").otherwise("train"))
