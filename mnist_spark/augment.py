"""Augmentation: random variants of images, as a Spark step and as a plain numpy function.

Five transforms, each applied with its own probability, like an Augmentor
pipeline (``Pipeline.rotate(probability=0.9, max_left_rotation=25,
max_right_rotation=25)`` then ``sample(n)``):

* **rotate**: by an angle from ``-max_right_rotation`` to ``+max_left_rotation``
  degrees; positive turns counter-clockwise (to the left), as Pillow's
  ``Image.rotate`` does;
* **shear**: horizontal, by an angle from ``-max_shear`` to ``+max_shear`` degrees;
* **zoom**: by a factor from ``min_zoom`` to ``max_zoom`` (above 1 enlarges);
* **shift**: by up to ``max_shift`` of the width and of the height, each way;
* **elastic**: Simard et al. (2003) elastic distortion, a random displacement
  field smoothed by a Gaussian of ``elastic_sigma`` pixels and scaled by
  ``elastic_alpha`` pixels.

Shear, rotation, zoom and shift make one affine map about the image centre;
the elastic field is added to its coordinates, and each image is resampled
once, bilinearly, by :func:`scipy.ndimage.map_coordinates`. Pixels from
outside the image take ``fill`` (0, MNIST's background).

Randomness comes from ``numpy.random.default_rng([seed, crc32(split), index,
variant])``, one generator per image and variant. The same seed therefore
gives the same images whichever partition, task attempt or batch makes them.

:func:`augment_batch` is the plain function (numpy in, numpy out) a training
loop can call on the fly; :func:`add_variants` is the Spark step that adds
``n`` variants of every row of an image DataFrame.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from dataclasses import dataclass

import numpy as np

from mnist_spark.images import binary_buffers, image_struct_array, mode_for_channels

#: Separator of the transforms in an ``augmentation`` string.
SEPARATOR = ";"


@dataclass(frozen=True)
class AugmentParams:
    """Probabilities and ranges of the five transforms; all off by default.

    Build one with keywords, or chain the Augmentor-style methods, which
    return a new object each:

    >>> params = AugmentParams().rotate(0.9, 25, 25).zoom(0.5, 0.9, 1.1)
    >>> params.rotate_probability, params.max_zoom
    (0.9, 1.1)

    Raises
    ------
    ValueError
        For a probability outside [0, 1], a negative range, a zoom factor of 0
        or less, or a minimum above its maximum.
    """

    rotate_probability: float = 0.0
    max_left_rotation: float = 0.0
    max_right_rotation: float = 0.0
    shear_probability: float = 0.0
    max_shear: float = 0.0
    zoom_probability: float = 0.0
    min_zoom: float = 1.0
    max_zoom: float = 1.0
    shift_probability: float = 0.0
    max_shift: float = 0.0
    elastic_probability: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    fill: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"augmentation {field.name} must be a number, found {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"augmentation {field.name} must be finite, found {value}")
        for name in ("rotate", "shear", "zoom", "shift", "elastic"):
            probability = getattr(self, f"{name}_probability")
            if not 0.0 <= probability <= 1.0:
                raise ValueError(
                    f"augmentation {name}_probability must lie in [0, 1], found {probability}; "
                    "give the chance that the transform is applied to a variant"
                )
        for name in ("max_left_rotation", "max_right_rotation", "max_shear", "max_shift", "elastic_alpha"):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"augmentation {name} must be 0 or more, found {getattr(self, name)}; "
                    "ranges are given as sizes, each way"
                )
        if not 0 <= self.max_left_rotation <= 180 or not 0 <= self.max_right_rotation <= 180:
            raise ValueError(
                f"rotation ranges must lie in [0, 180] degrees, found "
                f"{self.max_left_rotation} left and {self.max_right_rotation} right"
            )
        if self.max_shear >= 90:
            raise ValueError(f"max_shear must be below 90 degrees, found {self.max_shear}")
        if not 0 < self.min_zoom <= self.max_zoom:
            raise ValueError(
                f"zoom factors need 0 < min_zoom <= max_zoom, found min_zoom "
                f"{self.min_zoom} and max_zoom {self.max_zoom}"
            )
        if self.max_shift > 1:
            raise ValueError(f"max_shift is a fraction of the image size, at most 1, found {self.max_shift}")
        if self.elastic_sigma <= 0:
            raise ValueError(f"elastic_sigma must be above 0 pixels, found {self.elastic_sigma}")
        if not 0 <= self.fill <= 255 or int(self.fill) != self.fill:
            raise ValueError(f"fill must be a whole number from 0 to 255, found {self.fill}")

    # Augmentor-style builders -------------------------------------------------

    def rotate(self, probability: float, max_left_rotation: float, max_right_rotation: float):
        """Rotate by up to ``max_left_rotation`` degrees left or ``max_right_rotation`` right."""
        return dataclasses.replace(
            self,
            rotate_probability=probability,
            max_left_rotation=max_left_rotation,
            max_right_rotation=max_right_rotation,
        )

    def shear(self, probability: float, max_shear: float):
        """Shear horizontally by up to ``max_shear`` degrees either way."""
        return dataclasses.replace(self, shear_probability=probability, max_shear=max_shear)

    def zoom(self, probability: float, min_factor: float, max_factor: float):
        """Zoom by a factor from ``min_factor`` to ``max_factor``."""
        return dataclasses.replace(self, zoom_probability=probability, min_zoom=min_factor, max_zoom=max_factor)

    def shift(self, probability: float, max_fraction: float):
        """Shift by up to ``max_fraction`` of the width and height, each way."""
        return dataclasses.replace(self, shift_probability=probability, max_shift=max_fraction)

    def elastic(self, probability: float, alpha: float, sigma: float):
        """Elastic distortion of strength ``alpha`` pixels, smoothed over ``sigma`` pixels."""
        return dataclasses.replace(self, elastic_probability=probability, elastic_alpha=alpha, elastic_sigma=sigma)

    @property
    def active(self) -> bool:
        """True when at least one transform can happen."""
        return any(getattr(self, f"{name}_probability") > 0 for name in ("rotate", "shear", "zoom", "shift", "elastic"))

    @classmethod
    def mnist(cls) -> AugmentParams:
        """Defaults for handwritten digits: small rotations, shears, zooms, shifts, mild elastic."""
        return cls().rotate(0.9, 15, 15).shear(0.5, 10).zoom(0.5, 0.9, 1.1).shift(0.5, 0.1).elastic(0.3, 8, 3)


@dataclass(frozen=True)
class Transform:
    """What was done to one variant; ``None`` for a transform not applied."""

    rotation: float | None = None  #: degrees, positive counter-clockwise
    shear: float | None = None  #: degrees
    zoom: float | None = None  #: factor
    shift: tuple | None = None  #: (x, y) pixels, positive right and down
    elastic: tuple | None = None  #: (alpha, sigma) pixels

    @property
    def identity(self) -> bool:
        return (
            self.rotation is None
            and self.shear is None
            and self.zoom is None
            and self.shift is None
            and self.elastic is None
        )

    def describe(self) -> str:
        """Like ``"rotate=12.31;zoom=1.052"``; empty when nothing was applied."""
        parts = []
        if self.rotation is not None:
            parts.append(f"rotate={self.rotation:.2f}")
        if self.shear is not None:
            parts.append(f"shear={self.shear:.2f}")
        if self.zoom is not None:
            parts.append(f"zoom={self.zoom:.3f}")
        if self.shift is not None:
            parts.append(f"shift={self.shift[0]:.2f},{self.shift[1]:.2f}")
        if self.elastic is not None:
            parts.append(f"elastic={self.elastic[0]:g},{self.elastic[1]:g}")
        return SEPARATOR.join(parts)

    __str__ = describe


def parse_augmentation(text: str) -> dict:
    """An ``augmentation`` string back as ``{name: float or tuple of floats}``.

    Examples
    --------
    >>> parse_augmentation("rotate=12.31;shift=1.00,-2.50")
    {'rotate': 12.31, 'shift': (1.0, -2.5)}
    """
    result = {}
    for part in filter(None, text.split(SEPARATOR)):
        name, _, value = part.partition("=")
        numbers = tuple(float(v) for v in value.split(","))
        result[name] = numbers[0] if len(numbers) == 1 else numbers
    return result


def generator(seed: int, split: str, index: int, variant: int) -> np.random.Generator:
    """The random generator of one variant of one image: ``default_rng([seed, crc32(split), index, variant])``."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index), int(variant)])


def draw_transform(rng: np.random.Generator, params: AugmentParams, shape) -> Transform:
    """Draw one variant's transform. Always draws the same numbers in the same order,
    so changing one transform's settings leaves the others' values unchanged."""
    height, width = shape[:2]
    coins = rng.random(5)
    values = rng.random(5)
    rotation = shear = zoom = shift = elastic = None
    if coins[0] < params.rotate_probability:
        low, high = -params.max_right_rotation, params.max_left_rotation
        rotation = float(low + (high - low) * values[0])
    if coins[1] < params.shear_probability:
        shear = float(params.max_shear * (2 * values[1] - 1))
    if coins[2] < params.zoom_probability:
        zoom = float(params.min_zoom + (params.max_zoom - params.min_zoom) * values[2])
    if coins[3] < params.shift_probability:
        shift = (
            float(params.max_shift * width * (2 * values[3] - 1)),
            float(params.max_shift * height * (2 * values[4] - 1)),
        )
    if coins[4] < params.elastic_probability:
        elastic = (float(params.elastic_alpha), float(params.elastic_sigma))
    return Transform(rotation, shear, zoom, shift, elastic)


@functools.lru_cache(maxsize=16)
def _grid(height: int, width: int):
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float64)
    rows.setflags(write=False)
    cols.setflags(write=False)
    return rows, cols


def _source_coordinates(transform: Transform, height: int, width: int, rng):
    """Where each output pixel samples the input: the inverse affine map, plus the elastic field."""
    from scipy import ndimage

    rows, cols = _grid(height, width)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    theta = math.radians(transform.rotation or 0.0)
    slope = math.tan(math.radians(transform.shear or 0.0))
    zoom = transform.zoom or 1.0
    dx, dy = transform.shift or (0.0, 0.0)
    cos, sin = math.cos(theta), math.sin(theta)
    # Forward map on (x, y) about the centre, y pointing down: zoom * rotate * shear.
    a, b = zoom * cos, zoom * (cos * slope + sin)
    c, d = -zoom * sin, zoom * (cos - sin * slope)
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    x = cols - (cx + dx)
    y = rows - (cy + dy)
    source_x = ia * x + ib * y + cx
    source_y = ic * x + id_ * y + cy
    if transform.elastic is not None:
        alpha, sigma = transform.elastic
        field = rng.uniform(-1.0, 1.0, size=(2, height, width))
        source_x = source_x + alpha * ndimage.gaussian_filter(field[0], sigma, mode="constant")
        source_y = source_y + alpha * ndimage.gaussian_filter(field[1], sigma, mode="constant")
    return source_y, source_x


def apply_transform(image: np.ndarray, transform: Transform, *, rng=None, fill: int = 0) -> np.ndarray:
    """Resample one image through a transform: one bilinear pass of ``scipy.ndimage.map_coordinates``.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 ``(height, width)`` or ``(height, width, channels)``.
    transform : Transform
        What to do; an identity transform returns a copy.
    rng : numpy.random.Generator, optional
        Draws the elastic displacement field; needed when ``transform.elastic`` is set.
    fill : int
        Value of pixels that come from outside the image.

    Examples
    --------
    >>> image = np.zeros((5, 5), np.uint8); image[2, 3] = 255
    >>> int(apply_transform(image, Transform(shift=(1.0, 0.0)))[2, 4])
    255
    """
    from scipy import ndimage

    if transform.identity:
        return image.copy()
    if transform.elastic is not None and rng is None:
        raise ValueError("apply_transform: an elastic transform needs rng, the generator of its field")
    height, width = image.shape[:2]
    source = _source_coordinates(transform, height, width, rng)
    planes = image[..., None] if image.ndim == 2 else image
    out = np.empty(planes.shape, np.uint8)
    sampled = np.empty((height, width), np.float64)
    for channel in range(planes.shape[2]):
        ndimage.map_coordinates(
            planes[..., channel], source, output=sampled, order=1, mode="constant", cval=float(fill)
        )
        np.clip(np.rint(sampled), 0, 255, out=sampled)
        out[..., channel] = sampled
    return out[..., 0] if image.ndim == 2 else out


def augment_image(image: np.ndarray, rng: np.random.Generator, params: AugmentParams):
    """One random variant of one image: ``(pixels, Transform)``.

    ``image`` is uint8 ``(height, width)`` or ``(height, width, channels)``;
    the result has the same shape and dtype.
    """
    transform = draw_transform(rng, params, image.shape)
    return apply_transform(image, transform, rng=rng, fill=int(params.fill)), transform


def augment_batch(images: np.ndarray, keys, params: AugmentParams, *, seed: int = 0):
    """Random variants of a batch of images, reproducible from ``(seed, split, index, variant)``.

    The pure function behind :func:`add_variants`; a training loop can call it
    on the fly (for example with the epoch as ``variant``) and gets the same
    images the Spark step writes.

    Parameters
    ----------
    images : numpy.ndarray
        uint8, ``(n, height, width)`` or ``(n, height, width, channels)``.
    keys : sequence of (str, int, int)
        ``(split, index, variant)`` of each image; the variant numbers the
        copies of one image (1, 2, ...).
    params : AugmentParams
    seed : int

    Returns
    -------
    (numpy.ndarray, list of Transform)
        The variants, same shape and dtype as ``images``, and what was applied
        to each (``str(t)`` gives the ``augmentation`` text).

    Examples
    --------
    >>> params = AugmentParams().rotate(1.0, 25, 25)
    >>> out, done = augment_batch(np.zeros((2, 28, 28), np.uint8), [("train", 0, 1), ("train", 1, 1)], params)
    >>> out.shape, all(-25 <= t.rotation <= 25 for t in done)
    ((2, 28, 28), True)
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(
            f"augment_batch takes a uint8 numpy array of images, found "
            f"{getattr(images, 'dtype', type(images).__name__)}"
        )
    if images.ndim not in (3, 4):
        raise ValueError(
            f"expected images of shape (n, height, width) or (n, height, width, channels), found shape {images.shape}"
        )
    keys = list(keys)
    if len(keys) != len(images):
        raise ValueError(
            f"augment_batch: {len(images)} images but {len(keys)} keys; give one (split, index, variant) per image"
        )
    if not isinstance(params, AugmentParams):
        raise TypeError(f"params must be an AugmentParams, found {type(params).__name__}")
    out = np.empty_like(images)
    transforms = []
    for position, (split, index, variant) in enumerate(keys):
        rng = generator(seed, split, index, variant)
        out[position], transform = augment_image(images[position], rng, params)
        transforms.append(transform)
    return out, transforms


def variant_schema():
    """The schema :func:`add_variants` gives: the dataset's columns plus variant and augmentation."""
    from pyspark.sql.types import IntegerType, StringType, StructField, StructType

    from mnist_spark.ingest import dataset_schema

    return StructType(
        dataset_schema().fields
        + [
            StructField("variant", IntegerType(), False),
            StructField("augmentation", StringType(), False),
        ]
    )


def _variant_batches(batch, n: int, params: AugmentParams, seed: int):
    """The originals of one Arrow batch (variant 0), then ``n`` augmented copies of each row."""
    import pyarrow as pa

    count = batch.num_rows
    names = [field.name for field in variant_schema().fields]
    splits = batch.column(0)
    index = batch.column(1)
    labels = batch.column(2)
    image = batch.column(3)
    yield pa.RecordBatch.from_arrays(
        [splits, index, labels, image, pa.array(np.zeros(count, np.int32)), pa.array([""] * count, pa.string())],
        names=names,
    )
    if not count or not n:
        return
    if image.null_count:
        raise ValueError("add_variants: some rows have no image; drop rows with a null image first")
    fields = dict(zip(image.type.names, image.flatten(), strict=True))
    split_list = splits.to_pylist()
    index_array = index.to_numpy(zero_copy_only=False)
    origins = fields["origin"].to_pylist()
    shapes = np.stack([fields["height"].to_numpy(), fields["width"].to_numpy(), fields["nChannels"].to_numpy()], axis=1)
    offsets, values = binary_buffers(fields["data"])
    # Rows of one shape go through together (MNIST: all of them).
    for shape in np.unique(shapes, axis=0):
        rows = np.flatnonzero((shapes == shape).all(axis=1))
        height, width, channels = (int(s) for s in shape)
        mode_for_channels(channels, "add_variants")
        stack = np.stack([values[offsets[r] : offsets[r + 1]] for r in rows]).reshape(
            len(rows), height, width, channels
        )
        if channels == 1:
            stack = stack[..., 0]
        take = pa.array(rows)
        for variant in range(1, n + 1):
            keys = [(split_list[r], int(index_array[r]), variant) for r in rows]
            pixels, transforms = augment_batch(stack, keys, params, seed=seed)
            yield pa.RecordBatch.from_arrays(
                [
                    splits.take(take),
                    index.take(take),
                    labels.take(take),
                    # Cast to the input's struct type: Spark marks some of its fields non-null.
                    image_struct_array(pixels, [f"{origins[r]}|variant={variant}" for r in rows]).cast(image.type),
                    pa.array(np.full(len(rows), variant, np.int32)),
                    pa.array([t.describe() for t in transforms], pa.string()),
                ],
                names=names,
            )


def add_variants(df, n: int, params: AugmentParams, seed: int = 0):
    """Add ``n`` augmented variants of every image to an image DataFrame (a lazy Spark step).

    Each partition augments its own rows (``mapInArrow``); nothing is
    collected. Every image comes out once as itself (``variant`` 0,
    ``augmentation`` ``""``) and ``n`` times transformed (``variant`` 1 to
    ``n``), keeping its split, index and label. The variants' ``origin`` is the
    original's plus ``|variant=<v>``.

    Parameters
    ----------
    df : DataFrame
        Columns split, index, label, image (:func:`mnist_spark.ingest.dataset_schema`).
    n : int
        Variants per image, 0 or more.
    params : AugmentParams
        Must enable at least one transform when ``n`` is above 0.
    seed : int
        With ``(split, index, variant)``, fixes every variant's pixels.

    Returns
    -------
    DataFrame
        :func:`variant_schema`: the input columns plus ``variant`` (int) and
        ``augmentation`` (str, e.g. ``"rotate=12.31;zoom=1.052"``).

    Raises
    ------
    ValueError, TypeError
        On the driver, before any task runs, for bad columns or parameters.

    Examples
    --------
    >>> params = AugmentParams().rotate(0.9, 25, 25)
    >>> more = add_variants(df, 4, params, seed=7)  # doctest: +SKIP
    >>> more.count() == 5 * df.count()  # doctest: +SKIP
    True
    """
    from mnist_spark.images import check_image_frame

    check_image_frame(df, "add_variants")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"add_variants: n (variants per image) must be a whole number of 0 or more, found {n!r}")
    if not isinstance(params, AugmentParams):
        raise TypeError(f"add_variants: params must be an AugmentParams, found {type(params).__name__}")
    if n and not params.active:
        raise ValueError(
            f"add_variants: {n} variants asked for but every transform has probability 0, so each "
            "variant would equal its original; enable a transform (e.g. AugmentParams().rotate(0.9, 15, 15), "
            "or --rotate 0.9,15,15)"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"add_variants: seed must be a whole number of 0 or more, found {seed!r}")
    n, seed = int(n), int(seed)

    def augment(batches):
        for batch in batches:
            yield from _variant_batches(batch, n, params, seed)

    return df.select("split", "index", "label", "image").mapInArrow(augment, variant_schema())
