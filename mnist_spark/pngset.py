"""PNG image sets: folders of PNG files in the layout Keras reads, with a manifest.

A PNG image set is a folder in the layout ``keras.utils.image_dataset_from_directory``
reads, one folder per split and per class, with a manifest beside it::

    <set>/<split>/<label>/<index>.png            the original image
    <set>/<split>/<label>/<index>_<variant>.png  its augmented variants (1, 2, ...)
    <set>/manifest.parquet/                      path, split, index, label, variant,
                                                 augmentation, bytes: one row per file

:func:`write_png_set` writes a DataFrame of Spark's image struct
(:mod:`mnist_spark.images`) as a set: executors write the files, each task its
own rows, through pyarrow.fs; the driver never holds the pixels.
:func:`manifest_counts` counts a set's files per split and label from its
manifest. :func:`read_png_set` reads a set back into the DataFrame shape of an
ingested dataset (``spark.read.format("image")``, labels from the paths, bad
files reported by name). :func:`encode_png` and :func:`decode_png` convert one
image; :func:`png_path` and :func:`parse_png_path` name a file in the layout.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass

import numpy as np

from mnist_spark.images import binary_buffers, check_image_frame, mode_for_channels

logger = logging.getLogger(__name__)

#: Parquet folder of a PNG set's manifest, beside the split folders.
MANIFEST_NAME = "manifest.parquet"
#: zlib level of exported PNG files. On 28x28 MNIST digits level 1 makes files
#: about 3% larger than Pillow's default (6) and encodes about 25% faster.
PNG_COMPRESS_LEVEL = 1
#: What :func:`read_png_set` can do with a file that is not a PNG of the set.
ON_BAD_CHOICES = ("fail", "skip")

# ASCII digits only: int() also reads other scripts' digits ("٣"), which Spark's path regex does not.
_PNG_NAME = re.compile(r"^(?P<index>[0-9]+)(?:_(?P<variant>[0-9]+))?\.png$")
_ANY_DIGITS_PNG_NAME = re.compile(r"^(?P<index>\d+)(?:_(?P<variant>\d+))?\.png$")
#: Largest index (Spark long) and label or variant (Spark int) a path may carry.
INDEX_MAX, LABEL_MAX = 2**63 - 1, 2**31 - 1
_LAYOUT = "not in the set's layout <split>/<label>/<index>[_<variant>].png"


def encode_png(pixels: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """PNG bytes of one image given in Spark's channel order.

    Parameters
    ----------
    pixels : numpy.ndarray
        uint8, ``(height, width)`` or ``(height, width, channels)`` with 1, 3 or
        4 channels in Spark's order (gray, BGR, BGRA).
    compress_level : int
        zlib level, 0 (none) to 9 (smallest).

    Returns
    -------
    bytes
        An 8-bit grayscale, RGB or RGBA PNG.

    Examples
    --------
    >>> png = encode_png(np.zeros((28, 28), np.uint8))
    >>> png[:4], decode_png(png).shape
    (b'\\x89PNG', (28, 28, 1))
    """
    from PIL import Image

    if pixels.dtype != np.uint8:
        raise TypeError(f"PNG export takes uint8 pixels, found {pixels.dtype}; convert to uint8 first")
    if pixels.ndim == 3:
        channels = pixels.shape[2]
        mode_for_channels(channels)
        # Spark's BGR(A) -> PNG's RGB(A)
        pixels = pixels[..., 0] if channels == 1 else pixels[..., [2, 1, 0, 3][:channels]]
    elif pixels.ndim != 2:
        raise ValueError(f"expected one image of height x width (x channels), found shape {pixels.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def decode_png(data: bytes, where: str = "image") -> np.ndarray:
    """Pixels of a PNG (or any image Pillow reads) as ``(height, width, channels)`` in Spark's order.

    Grayscale stays one channel; colour becomes BGR, or BGRA with transparency,
    as ``spark.read.format("image")`` gives it.

    Raises
    ------
    ValueError
        When ``data`` is not a readable image, or is a decompression bomb (more
        pixels than Pillow's ``Image.MAX_IMAGE_PIXELS``, a few bytes that would
        unpack to gigabytes); the message names ``where``.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                if image.mode not in ("L", "RGB", "RGBA"):
                    image = image.convert(
                        "RGBA"
                        if "A" in image.getbands() or "transparency" in image.info
                        else "L"
                        if image.mode in ("1", "I;16", "I")
                        else "RGB"
                    )
                pixels = np.asarray(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        message = " ".join(str(error).split())
        raise ValueError(
            f"{where}: refused as a possible decompression bomb ({message}); expected at most "
            f"{Image.MAX_IMAGE_PIXELS} pixels; replace or delete the file"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"{where}: not a readable image ({error}); replace or delete the file") from None
    if pixels.ndim == 2:
        return pixels[..., None]
    return np.ascontiguousarray(pixels[..., [2, 1, 0, 3][: pixels.shape[2]]])


def png_path(split: str, label: int, index: int, variant: int = 0, label_width: int = 1) -> str:
    """Path of one image inside a PNG set, relative to the set.

    Variant 0 is the original. Labels are zero-padded to ``label_width``
    digits so that the class folders sort in label order (Keras sorts them
    as text).

    Examples
    --------
    >>> png_path("train", 3, 12), png_path("test", 7, 5, variant=2, label_width=2)
    ('train/3/12.png', 'test/07/5_2.png')
    """
    name = f"{index}.png" if variant == 0 else f"{index}_{variant}.png"
    return f"{split}/{label:0{label_width}d}/{name}"


def parse_png_path(relative: str):
    """``(split, label, index, variant)`` of a path inside a PNG set, or ``None`` outside the layout.

    Examples
    --------
    >>> parse_png_path("train/3/12_2.png"), parse_png_path("train/3/notes.txt")
    (('train', 3, 12, 2), None)
    """
    parts = relative.split("/")
    if len(parts) != 3 or not re.fullmatch(r"[0-9]+", parts[1]):
        return None
    match = _PNG_NAME.match(parts[2])
    if match is None:
        return None
    return parts[0], int(parts[1]), int(match["index"]), int(match["variant"] or 0)


def png_path_problem(relative: str, num_classes: int | None = None) -> str | None:
    """Why the file at ``relative`` (inside a PNG set) is not one of its images, or None.

    The label folder and the numbers of the file name must be ASCII digits;
    the index must fit in a 64-bit integer, the variant in a 32-bit one, and
    the label in ``0 .. num_classes - 1`` (a 32-bit integer when not given).

    Examples
    --------
    >>> png_path_problem("train/3/12.png") is None, png_path_problem("train/\u0663/12.png")[:31]
    (True, 'label folder and file name must')
    """
    parts = relative.split("/")
    if len(parts) != 3 or not re.fullmatch(r"\d+", parts[1]) or not _ANY_DIGITS_PNG_NAME.match(parts[2]):
        return _LAYOUT
    if parse_png_path(relative) is None:
        return f"label folder and file name must use ASCII digits 0-9, found {parts[1]!r}/{parts[2]!r}; rename the file"
    _, label, index, variant = parse_png_path(relative)
    if index > INDEX_MAX:
        return f"index {index} does not fit in a 64-bit integer (at most {INDEX_MAX}); rename the file"
    if variant > LABEL_MAX:
        return f"variant {variant} does not fit in a 32-bit integer (at most {LABEL_MAX}); rename the file"
    top = LABEL_MAX if num_classes is None else num_classes - 1
    if label > top:
        return f"label {label} is outside 0..{top}; move the file to its class folder"
    return None


def manifest_schema():
    """The Spark schema of a PNG set's manifest: one row per file."""
    from pyspark.sql.types import IntegerType, LongType, StringType, StructField, StructType

    return StructType(
        [
            StructField("path", StringType(), False),
            StructField("split", StringType(), False),
            StructField("index", LongType(), False),
            StructField("label", IntegerType(), False),
            StructField("variant", IntegerType(), False),
            StructField("augmentation", StringType(), False),
            StructField("bytes", IntegerType(), False),
        ]
    )


def _write_png_batch(batch, filesystem, root: str, made: set, compress_level: int, label_width: int):
    """Write one Arrow batch of images as PNG files; return its manifest rows as a batch."""
    import pyarrow as pa

    count = batch.num_rows
    names = batch.schema.names
    splits = batch.column(names.index("split")).to_pylist()
    indices = batch.column(names.index("index")).to_numpy(zero_copy_only=False)
    labels = batch.column(names.index("label")).to_numpy(zero_copy_only=False)
    if "variant" in names:
        variants = batch.column(names.index("variant")).to_numpy(zero_copy_only=False)
        augmentations = batch.column(names.index("augmentation")).to_pylist()
    else:
        variants, augmentations = np.zeros(count, np.int32), [""] * count
    image = batch.column(names.index("image"))
    if image.null_count:
        at = image.is_null().to_numpy(zero_copy_only=False).argmax()
        raise ValueError(f"{splits[at]} image {indices[at]} is null; drop rows without an image first")
    fields = dict(zip(image.type.names, image.flatten(), strict=True))
    heights = fields["height"].to_numpy()
    widths = fields["width"].to_numpy()
    channels = fields["nChannels"].to_numpy()
    offsets, values = binary_buffers(fields["data"])

    paths, sizes = [], np.zeros(count, np.int32)
    for row in range(count):
        relative = png_path(splits[row], int(labels[row]), int(indices[row]), int(variants[row]), label_width)
        folder = f"{root}/{relative.rsplit('/', 1)[0]}"
        if folder not in made:
            filesystem.create_dir(folder, recursive=True)
            made.add(folder)
        pixels = values[offsets[row] : offsets[row + 1]]
        shape = (heights[row], widths[row], channels[row])
        if pixels.size != shape[0] * shape[1] * shape[2]:
            raise ValueError(
                f"{splits[row]} image {indices[row]}: struct says {shape[0]}x{shape[1]}x{shape[2]} "
                f"but data holds {pixels.size} bytes"
            )
        png = encode_png(pixels.reshape(shape), compress_level)
        # Same name on every attempt: a retried task overwrites its own files.
        with filesystem.open_output_stream(f"{root}/{relative}") as stream:
            stream.write(png)
        paths.append(relative)
        sizes[row] = len(png)
    return pa.RecordBatch.from_arrays(
        [
            pa.array(paths, pa.string()),
            pa.array(splits, pa.string()),
            pa.array(indices.astype(np.int64)),
            pa.array(labels.astype(np.int32)),
            pa.array(np.asarray(variants, np.int32)),
            pa.array(augmentations, pa.string()),
            pa.array(sizes),
        ],
        names=[field.name for field in manifest_schema().fields],
    )


def write_complete_set(df, location: str, expected: int, *, num_classes: int, **options) -> tuple:
    """:func:`write_png_set`, then make sure the manifest lists all ``expected`` files.

    ``options`` go to :func:`write_png_set`; the label folders are as wide as
    the largest of ``num_classes`` labels. Returns ``(counts, written,
    seconds)``, ``counts`` as :func:`manifest_counts` gives them.

    Raises
    ------
    RuntimeError
        When the manifest lists another number of files.
    """
    started = time.perf_counter()
    write_png_set(df, location, label_width=len(str(max(num_classes - 1, 0))), **options)
    seconds = time.perf_counter() - started
    counts = manifest_counts(location)
    written = sum(o + v for per_label in counts.values() for o, v in per_label.values())
    if written != expected:
        raise RuntimeError(
            f"the manifest lists {written} files, expected {expected}; the set is incomplete and was not "
            "moved into place"
        )
    logger.info("wrote %d PNGs in %.1f s (%.0f img/s) to %s", written, seconds, written / max(seconds, 1e-9), location)
    return counts, written, seconds


def write_png_set(df, location: str, *, compress_level: int = PNG_COMPRESS_LEVEL, label_width: int = 1) -> str:
    """Write an image DataFrame as a PNG set, in parallel from the executors.

    Each task writes the PNG files of its own rows straight to ``location``
    through one ``pyarrow.fs`` file system, and the rows of the manifest
    (:func:`manifest_schema`) go to ``<location>/manifest.parquet``, all in one
    Spark job. The driver never sees the pixels. File names depend only on the
    row, so a retried task overwrites what its failed attempt wrote.

    Write into an :class:`mnist_spark.storage.AtomicOutput` staging folder: this
    function itself does not guard against a half-written set.

    Parameters
    ----------
    df : DataFrame
        Columns split, index, label, image (:func:`mnist_spark.ingest.dataset_schema`),
        and optionally variant and augmentation (:func:`mnist_spark.augment.add_variants`).
    location : str
        Folder of the set (local path or URI).
    compress_level : int
        zlib level of the PNG files, 0 to 9.
    label_width : int
        Zero-pad the class folder names to this many digits.

    Returns
    -------
    str
        The manifest's location.

    Raises
    ------
    ValueError, TypeError
        For missing columns or bad parameters, on the driver before any task runs.

    Examples
    --------
    >>> df, _ = ingest.idx_dataframe(spark, datasets.locate(), limit=100)  # doctest: +SKIP
    >>> write_png_set(df, "runs/pngs.tmp")  # doctest: +SKIP
    'runs/pngs.tmp/manifest.parquet'
    """
    from mnist_spark import storage
    from mnist_spark.session import phase

    check_image_frame(df, "write_png_set")
    if "variant" in df.columns and "augmentation" not in df.columns:
        raise ValueError("write_png_set: a 'variant' column needs an 'augmentation' column beside it")
    if not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be a whole number from 0 to 9, found {compress_level!r}")
    if not isinstance(label_width, int) or label_width < 1:
        raise ValueError(f"label_width must be a whole number of 1 or more, found {label_width!r}")
    location = storage.to_uri(location)
    columns = [c for c in ("split", "index", "label", "variant", "augmentation", "image") if c in df.columns]

    def write(batches):
        filesystem, root = storage.resolve(location)  # one file system per task
        made = set()
        for batch in batches:
            yield _write_png_batch(batch, filesystem, root.rstrip("/"), made, compress_level, label_width)

    manifest = storage.join(location, MANIFEST_NAME)
    with phase(df.sparkSession, "write PNG set"):
        df.select(*columns).mapInArrow(write, manifest_schema()).write.parquet(manifest)
    return manifest


def manifest_counts(location: str) -> dict:
    """Files of a PNG set per split and label: ``{split: {label: [originals, variants]}}``.

    Read on the driver from three small columns of the manifest with pyarrow,
    not by listing the files or running a Spark job.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from mnist_spark import storage

    filesystem, root = storage.resolve(storage.to_uri(location))
    table = ds.dataset(f"{root.rstrip('/')}/{MANIFEST_NAME}", format="parquet", filesystem=filesystem).to_table(
        columns=["split", "label", "variant"]
    )
    table = table.append_column("original", pc.equal(table["variant"], 0))
    grouped = table.group_by(["split", "label"]).aggregate([("original", "sum"), ("original", "count")])
    counts: dict = {}
    rows = sorted(
        zip(
            grouped["split"].to_pylist(),
            grouped["label"].to_pylist(),
            grouped["original_sum"].to_pylist(),
            grouped["original_count"].to_pylist(),
            strict=True,
        )
    )
    for split, label, originals, total in rows:
        counts.setdefault(split, {})[label] = [int(originals), int(total - originals)]
    return counts


@dataclass(frozen=True)
class BadFile:
    """A file in a PNG set that is not one of its images, and why."""

    path: str  #: relative to the set, e.g. ``train/3/12.png``
    reason: str


def _split_names(filesystem, root: str, location: str, splits) -> list[str]:
    """The split folders of a set: the ones asked for (which must exist), else all."""
    from pyarrow import fs as pafs

    info = filesystem.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise ValueError(
            f"no PNG set at {location}: the folder does not exist; give the --output of jobs/export_png.py"
        )
    found = sorted(
        entry.base_name
        for entry in filesystem.get_file_info(pafs.FileSelector(root))
        if entry.type == pafs.FileType.Directory
        and entry.base_name != MANIFEST_NAME
        and not entry.base_name.startswith((".", "_"))
    )
    if splits is None:
        if not found:
            raise ValueError(
                f"no PNG set at {location}: it has no split folders (train/, test/ ...); "
                "give the --output of jobs/export_png.py"
            )
        return found
    splits = [splits] if isinstance(splits, str) else list(splits)
    missing = [split for split in splits if split not in found]
    if missing:
        raise ValueError(
            f"PNG set {location} has no split {', '.join(missing)}; it holds: {', '.join(found) or 'none'}"
        )
    return splits


def _list_png_set(filesystem, root: str, splits, num_classes: int | None = None) -> tuple[int, list[BadFile]]:
    """List a set's split folders on the driver: file count, and files outside the layout
    (:func:`png_path_problem`) or empty.

    Hidden files (``.`` or ``_`` first), which Spark skips too, are not counted.
    """
    from pyarrow import fs as pafs

    count, bad = 0, []
    for split in splits:
        selector = pafs.FileSelector(f"{root}/{split}", recursive=True)
        for entry in filesystem.get_file_info(selector):
            if entry.type != pafs.FileType.File or entry.base_name.startswith((".", "_")):
                continue
            count += 1
            relative = entry.path[len(root) + 1 :]
            problem = png_path_problem(relative, num_classes)
            if problem is not None:
                bad.append(BadFile(relative, problem))
            elif entry.size == 0:
                bad.append(BadFile(relative, "empty file"))
    return count, bad


def _describe_bad(location: str, bad: list[BadFile], shown: int = 10) -> str:
    lines = [f"  {b.path}: {b.reason}" for b in bad[:shown]]
    if len(bad) > shown:
        lines.append(f"  ... and {len(bad) - shown} more")
    return f"{len(bad)} bad file(s) in PNG set {location}:\n" + "\n".join(lines)


def read_png_set(
    spark,
    location: str,
    *,
    splits=None,
    variants: bool = False,
    on_bad: str = "fail",
    partitions: int | None = None,
    num_classes: int | None = None,
    persist: bool = False,
):
    """Read a PNG set back into the DataFrame shape of an ingested dataset.

    The images are decoded by ``spark.read.format("image")`` (the JVM's
    ImageIO), so ``image`` is Spark's own struct and its ``origin`` the file's
    URI. ``split``, ``label``, ``index`` (and ``variant``) come from the path.

    Before returning, every file is checked, so a job using the result never
    fails halfway: the driver lists the split folders (files outside the
    layout, empty files) and one Spark job decodes every file (Spark's reader
    silently skips empty files and marks undecodable ones with ``height -1``).

    Parameters
    ----------
    spark : SparkSession
    location : str
        The set's folder (local path or URI).
    splits : sequence of str, optional
        Which split folders to read. Default: all.
    variants : bool
        Also read augmented variants (``<index>_<variant>.png``) and add a
        ``variant`` column (0 for originals). Default: originals only, with
        exactly the columns of :func:`mnist_spark.ingest.dataset_schema`.
    on_bad : {"fail", "skip"}
        What to do with files that are not images of the set: raise, or leave
        them out (logged as a warning, and returned).
    partitions : int, optional
        Tasks that read the files. Spark would plan a task per few dozen small
        files; they are coalesced into this many. Default: the cluster's task slots.
    num_classes : int, optional
        Labels (folder names) must lie in ``0 .. num_classes - 1``. Default:
        any that fits in a 32-bit integer.
    persist : bool
        Keep the decoded files (in memory, spilling to disk) from the check on,
        so later passes over the result (training, evaluation, the report)
        read them from there instead of decoding every file again. The jobs
        do; ``spark.catalog.clearCache()`` frees them. Default: ``False``.

    Returns
    -------
    (DataFrame, list of BadFile)
        The lazy DataFrame, and the files left out (empty unless ``on_bad="skip"``).

    Raises
    ------
    ValueError
        For a missing set or split, an unknown ``on_bad``, or with ``on_bad="fail"``
        any bad file: the message gives their count and names.

    Examples
    --------
    >>> df, bad = read_png_set(spark, "runs/pngs", on_bad="skip")  # doctest: +SKIP
    >>> df.columns  # doctest: +SKIP
    ['split', 'index', 'label', 'image']
    """
    from pyspark.sql import functions as F

    from mnist_spark import storage
    from mnist_spark.session import task_slots

    if partitions is not None and (isinstance(partitions, bool) or not isinstance(partitions, int) or partitions <= 0):
        raise ValueError(f"partitions must be a whole number above 0, found {partitions!r}")
    if on_bad not in ON_BAD_CHOICES:
        raise ValueError(f"{on_bad!r} is not a supported on_bad; choose one of: {', '.join(ON_BAD_CHOICES)}")
    location = storage.to_uri(location)
    filesystem, root = storage.resolve(location)
    root = root.rstrip("/")
    names = _split_names(filesystem, root, location, splits)
    for split in names:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", split):
            raise ValueError(
                f"PNG set {location}: split folder {split!r} is not a plain name (letters, digits, _ and -); rename it"
            )
    started = time.perf_counter()
    count, bad = _list_png_set(filesystem, root, names, num_classes)
    if bad and on_bad == "fail":
        raise ValueError(_describe_bad(location, bad) + "\nDelete or replace them, or read with on_bad='skip'")

    raw = (
        spark.read.format("image")
        .option("dropInvalid", False)
        .option("recursiveFileLookup", True)
        .load([storage.join(location, s) for s in names])
        .coalesce(partitions or task_slots(spark))
    )
    if persist:  # the check below decodes every file once, and fills the cache as it does
        from pyspark import StorageLevel

        raw = raw.persist(StorageLevel.MEMORY_AND_DISK)
    tail = r"/(" + "|".join(names) + r")/(\d+)/(\d+)(?:_(\d+))?\.png$"
    origin = F.col("image.origin")
    in_layout = origin.rlike(tail)
    listed = {b.path for b in bad}
    # Files in the layout refused for their numbers (out of range) are left out by their path.
    refused = sorted(path for path in listed if parse_png_path(path) is not None)
    if refused:
        in_set = F.regexp_extract(origin, r"/((?:" + "|".join(names) + r")/\d+/\d+(?:_\d+)?\.png)$", 1)
        in_layout = in_layout & ~in_set.isin(refused)
    for row in raw.where((F.col("image.height") < 0) & in_layout).select(origin.alias("origin")).collect():
        relative = _relative(row.origin, root)
        if relative not in listed:
            bad.append(BadFile(relative, "not a readable image"))
    if bad:
        if on_bad == "fail":
            raise ValueError(_describe_bad(location, bad) + "\nDelete or replace them, or read with on_bad='skip'")
        logger.warning("%s\nleft out; reading the other %d", _describe_bad(location, bad), count - len(bad))

    def part(number, kind=None):
        # regexp_extract gives "" for a missing group; coalesce makes the columns non-null.
        text = F.regexp_extract(origin, tail, number)
        if kind is None:
            return F.coalesce(text, F.lit(""))
        return F.coalesce(F.when(text != "", text.cast(kind)), F.lit(0))

    # File sources mark every field nullable; the image struct of a dataset has
    # non-null fields (all present in a decoded image), so rebuild it to match.
    defaults = {"origin": None, "height": 0, "width": 0, "nChannels": 0, "mode": 0, "data": bytearray()}
    fields = [
        (F.col(f"image.{name}") if value is None else F.coalesce(F.col(f"image.{name}"), F.lit(value))).alias(name)
        for name, value in defaults.items()
    ]
    # Rows outside the layout are filtered first, so every group but the variant is present.
    df = raw.where((F.col("image.height") >= 0) & in_layout).select(
        part(1).alias("split"),
        part(3, "long").alias("index"),
        part(2, "int").alias("label"),
        F.when(F.col("image").isNotNull(), F.struct(*fields)).alias("image"),
        part(4, "int").alias("variant"),
    )
    if not variants:
        df = df.where(F.col("variant") == 0).drop("variant")
    logger.info(
        "PNG set %s: %d files in %s checked in %.1f s, %d bad",
        location,
        count,
        ", ".join(names),
        time.perf_counter() - started,
        len(bad),
    )
    return df, bad


def _relative(origin: str, root: str) -> str:
    """A file URI from Spark as a path relative to the set's root, when it lies inside it."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(origin)
    path = unquote(parsed.path)
    if parsed.netloc and not path.startswith(root):
        path = f"{parsed.netloc}{path}"  # s3://bucket/key -> bucket/key, as pyarrow names it
    marker = root.rstrip("/") + "/"
    return path[len(marker) :] if path.startswith(marker) else origin
