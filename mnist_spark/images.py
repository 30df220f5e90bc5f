"""Spark's image struct, the one image representation used end to end.

Every DataFrame of images carries Spark's own struct
(:data:`pyspark.ml.image.ImageSchema.imageSchema`)::

    image: struct<origin: string, height: int, width: int, nChannels: int,
                  mode: int, data: binary>

This is exactly what ``spark.read.format("image")`` gives for a PNG, so a
DataFrame ingested from IDX files and one read back from a PNG set are the same
kind of thing. ``data`` holds the pixels row by row, channels interleaved, in
OpenCV's order (BGR for colour).

This module converts between that struct and numpy arrays, on the Arrow path
(no Python object per image).
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

#: OpenCV type codes Spark uses for 8-bit images with 1, 3 and 4 channels.
OCV_MODES = {1: 0, 3: 16, 4: 24}


def image_struct_type():
    """The Spark SQL type of the image struct, equal to ``ImageSchema.imageSchema``'s field.

    Built locally so the driver does not need a JVM round trip to know it.
    """
    from pyspark.sql.types import BinaryType, IntegerType, StringType, StructField, StructType

    return StructType(
        [
            StructField("origin", StringType(), True),
            StructField("height", IntegerType(), False),
            StructField("width", IntegerType(), False),
            StructField("nChannels", IntegerType(), False),
            StructField("mode", IntegerType(), False),
            StructField("data", BinaryType(), False),
        ]
    )


def mode_for_channels(channels: int, where: str = "image") -> int:
    """The OpenCV mode of an 8-bit image with ``channels`` channels."""
    try:
        return OCV_MODES[channels]
    except KeyError:
        raise ValueError(
            f"{where}: Spark's image struct holds 1, 3 or 4 channels of uint8, found {channels} "
            "channels; convert the images to grayscale, BGR or BGRA first"
        ) from None


def image_struct_array(images: np.ndarray, origins):
    """Arrow struct array of Spark image structs from a stack of uint8 images.

    Parameters
    ----------
    images : numpy.ndarray
        ``(n, height, width)`` grayscale or ``(n, height, width, channels)``
        with channels already in Spark's order (BGR / BGRA), dtype uint8.
    origins : sequence of str or pyarrow.Array
        One origin string per image.

    Returns
    -------
    pyarrow.StructArray
        With fields origin, height, width, nChannels, mode, data. ``data``
        shares the images' memory (no copy per image).

    Examples
    --------
    >>> arr = image_struct_array(np.zeros((2, 28, 28), np.uint8), ["a", "b"])
    >>> arr.type.names
    ['origin', 'height', 'width', 'nChannels', 'mode', 'data']
    """
    import pyarrow as pa

    if images.dtype != np.uint8:
        raise TypeError(
            f"Spark's image struct holds uint8 pixels, found {images.dtype}; scale the images "
            "to 0-255 and convert them to uint8"
        )
    if images.ndim not in (3, 4):
        raise ValueError(
            f"expected images of shape (n, height, width) or (n, height, width, channels), "
            f"found shape {images.shape}"
        )
    count, height, width = images.shape[:3]
    channels = images.shape[3] if images.ndim == 4 else 1
    mode = mode_for_channels(channels)
    pixels = np.ascontiguousarray(images).reshape(-1)
    item_bytes = height * width * channels
    offsets = np.arange(0, (count + 1) * item_bytes, item_bytes, dtype=np.int32)
    if count and offsets[-1] != pixels.size:  # pragma: no cover - guards int32 overflow
        raise ValueError(f"{count} images of {item_bytes} bytes exceed one Arrow batch; use smaller batches")
    data = pa.Array.from_buffers(
        pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(pixels)]
    )

    def constant(value):
        return pa.array(np.full(count, value, dtype=np.int32))

    return pa.StructArray.from_arrays(
        [pa.array(origins, pa.string()), constant(height), constant(width),
         constant(channels), constant(mode), data],
        names=["origin", "height", "width", "nChannels", "mode", "data"],
    )


def struct_to_array(image) -> np.ndarray:
    """One image struct (a Row or dict) as a ``(height, width, nChannels)`` uint8 array."""
    get = image.__getitem__
    height, width, channels = get("height"), get("width"), get("nChannels")
    pixels = np.frombuffer(get("data"), dtype=np.uint8)
    if pixels.size != height * width * channels:
        raise ValueError(
            f"image {get('origin')}: struct says {height}x{width}x{channels} "
            f"({height * width * channels} bytes) but data holds {pixels.size} bytes"
        )
    return pixels.reshape(height, width, channels)
