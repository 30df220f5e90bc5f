"""Read, write and validate IDX files (the MNIST file format), with numpy only.

An IDX file is a 4-byte magic number (two zero bytes, a type-code byte and the
number of dimensions), one big-endian uint32 size per dimension, then the data,
big-endian in C order. Files may be gzip-compressed; compression is detected from
the content (bytes ``1f 8b``), not from the name.

Every problem with a file is reported as an :class:`IdxError` (a ``ValueError``)
whose message names the file, what was expected, what was found and how to fix it.
Data is always read in bounded chunks, so a corrupt header that claims terabytes of
data fails fast instead of allocating that memory.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import math
import operator
import os
import secrets
import struct
import zlib
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "IdxError",
    "IdxFileNotFoundError",
    "IdxHeader",
    "open_stream",
    "read_header",
    "header",
    "inspect",
    "read_idx",
    "read_records",
    "iter_records",
    "write_idx",
    "check_labels",
    "check_pair",
]

_CHUNK = 4 * 1024 * 1024  # read size: memory stays bounded whatever a header claims
_GZIP_MAGIC = b"\x1f\x8b"
_CODE_TO_DTYPE = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_CODE = {(dt.kind, dt.itemsize): code for code, dt in _CODE_TO_DTYPE.items()}
_VALID_CODES = ", ".join(f"0x{c:02X} ({dt.name})" for c, dt in _CODE_TO_DTYPE.items())
_CORRUPT_GZIP = (gzip.BadGzipFile, zlib.error, EOFError)


class IdxError(ValueError):
    """A file that is not a valid IDX file, or a pair of files that do not belong together."""


class IdxFileNotFoundError(IdxError, FileNotFoundError):
    """The IDX file does not exist."""


@dataclass(frozen=True)
class IdxHeader:
    """The parsed header of an IDX file."""

    path: str  #: the file's path or name, as given
    dtype: np.dtype  #: element type as stored: big-endian, e.g. ``dtype('>i4')``
    shape: tuple[int, ...]  #: size of each dimension
    header_bytes: int  #: ``4 + 4 * ndim``
    compressed: bool  #: whether the file is gzip-compressed

    @property
    def data_bytes(self) -> int:
        """Number of data bytes the header promises."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def count(self) -> int:
        """Number of items along the first axis."""
        return self.shape[0] if self.shape else 0

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Shape of one item (all axes but the first)."""
        return self.shape[1:]

    def describe(self) -> str:
        """Return e.g. ``'10000 items of 28x28 uint8 (7840000 data bytes)'``."""
        items = (
            f"{self.count} items of {'x'.join(map(str, self.item_shape))} {self.dtype.name}"
            if self.item_shape
            else f"{self.count} {self.dtype.name} items"
        )
        return f"{items} ({self.data_bytes} data bytes)"


def _name_of(path_or_file, name: str | None) -> str:
    if name is not None:
        return str(name)
    if isinstance(path_or_file, (str, os.PathLike)):
        return os.fspath(path_or_file)
    return str(getattr(path_or_file, "name", None) or "<stream>")


def _pack_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    code = _KIND_TO_CODE[dtype.kind, dtype.itemsize]
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


@contextlib.contextmanager
def _opened(path_or_file, name: str | None):
    """Yield ``(stream, name)``; close the stream afterwards unless it is the caller's own object."""
    stream = open_stream(path_or_file, name=name)
    try:
        yield stream, _name_of(path_or_file, name)
    finally:
        if stream is not path_or_file:
            stream.close()


def _read(stream, n: int, name: str, full: bool = False) -> bytes:
    """``stream.read(n)`` (n bounded) reporting corrupt gzip data as IdxError; ``full``: retry short reads."""
    try:
        data = stream.read(n)
        while full and 0 < len(data) < n and (more := stream.read(n - len(data))):
            data += more
        return data
    except _CORRUPT_GZIP as exc:
        raise IdxError(f"{name}: the gzip data is corrupt or cut short ({exc}); download the file again") from exc


class _Prefixed(io.RawIOBase):
    """A read-only stream that returns ``prefix`` then the rest of ``stream`` (not closed with it)."""

    def __init__(self, prefix: bytes, stream):
        super().__init__()
        self._prefix, self._stream = prefix, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(view), len(self._prefix))
            view[:n], self._prefix = self._prefix[:n], self._prefix[n:]
            return n
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)


def _check_start(first: bytes, name: str, path: str | None) -> bool:
    """Validate the first two bytes of a file; return whether it is gzip-compressed."""
    if not first:
        raise IdxError(f"{name}: the file is empty (0 bytes); expected an IDX file, download it again")
    compressed = first[:2] == _GZIP_MAGIC
    if path is not None and path.endswith(".gz") and not compressed:
        raise IdxError(
            f"{name}: the name ends with .gz but the file is not gzip-compressed: it starts with "
            f"bytes {first.hex(' ')}, not 1f 8b; if it is a raw IDX file, rename it without .gz, "
            "otherwise download it again"
        )
    return compressed


def open_stream(path_or_file, *, name: str | None = None):
    """Open an IDX file for reading, gunzipping transparently when it is gzip-compressed.

    Parameters
    ----------
    path_or_file : str, os.PathLike or binary file object
        A path, or an open binary stream (anything with ``read()``, e.g. a pyarrow input
        stream). A raw seekable stream is returned itself, rewound by the two bytes read;
        otherwise the returned wrapper does not close the given stream.
    name : str, optional
        The name used in messages; defaults to the path or the stream's ``name``.

    Returns
    -------
    binary file object
        A readable stream of the uncompressed content, positioned at its start.

    Raises
    ------
    IdxFileNotFoundError
        If the path does not exist.
    IdxError
        If the file is empty, or a path ends with ``.gz`` but the file is not gzip-compressed
        (not checked for streams: e.g. pyarrow's ``open_input_stream`` already gunzips).
    """
    name = _name_of(path_or_file, name)
    if isinstance(path_or_file, (str, os.PathLike)):
        path = os.fspath(path_or_file)
        try:
            with open(path, "rb") as f:
                first = f.read(2)
        except FileNotFoundError as exc:
            raise IdxFileNotFoundError(
                f"{name}: no such file; check the path or download the file (working directory: {os.getcwd()})"
            ) from exc
        except IsADirectoryError as exc:
            raise IdxError(f"{name}: is a directory, expected an IDX file; give the path of the file") from exc
        return gzip.open(path, "rb") if _check_start(first, name, path) else open(path, "rb")
    first = _read(path_or_file, 2, name, full=True)
    compressed = _check_start(first, name, None)
    if getattr(path_or_file, "seekable", lambda: False)():
        path_or_file.seek(-len(first), io.SEEK_CUR)
        stream = path_or_file
    else:
        stream = io.BufferedReader(_Prefixed(first, path_or_file), _CHUNK)
    return gzip.GzipFile(fileobj=stream, mode="rb") if compressed else stream


def read_header(stream, name: str) -> IdxHeader:
    """Parse and validate the header of an open, uncompressed IDX stream.

    Parameters
    ----------
    stream : binary file object
        A stream positioned at the start of the (uncompressed) content, as returned by
        :func:`open_stream`; it is left positioned at the first data byte.
    name : str
        The file's name, used in messages and stored in the header.

    Returns
    -------
    IdxHeader

    Raises
    ------
    IdxError
        If the header is incomplete, the magic number is wrong, the type code is
        unknown, the number of dimensions is 0, a dimension after the first is 0,
        or the dimensions make more than :data:`MAX_ELEMENTS` elements.
    """
    compressed = isinstance(stream, gzip.GzipFile)
    magic = _read(stream, 4, name, full=True)
    if magic[:2].strip(b"\0"):
        raise IdxError(
            f"{name}: not an IDX file: the magic number must start with bytes 00 00 but the file "
            f"starts with {magic.hex(' ')} ({magic!r}); check that this is the right file or "
            "download it again"
        )
    if len(magic) < 4:
        raise IdxError(
            f"{name}: truncated header: an IDX header needs at least 4 bytes but the file holds "
            f"{len(magic)}; the file is truncated, download it again"
        )
    code, ndim = magic[2], magic[3]
    if code not in _CODE_TO_DTYPE:
        raise IdxError(
            f"{name}: not an IDX file: unknown type code 0x{code:02X} in the magic number "
            f"{magic.hex(' ')}; valid codes are {_VALID_CODES}; download the file again"
        )
    if ndim == 0:
        raise IdxError(
            f"{name}: invalid IDX header: the magic number {magic.hex(' ')} gives 0 dimensions, "
            "expected at least 1; download the file again"
        )
    sizes = _read(stream, 4 * ndim, name, full=True)
    if len(sizes) < 4 * ndim:
        raise IdxError(
            f"{name}: truncated header: {ndim} dimensions need a {4 + 4 * ndim}-byte header but the "
            f"file holds {4 + len(sizes)} bytes; the file is truncated, download it again"
        )
    shape = struct.unpack(f">{ndim}I", sizes)
    _check_shape(shape, name)
    return IdxHeader(name, _CODE_TO_DTYPE[code], shape, 4 + 4 * ndim, compressed)


#: The most elements a header may promise: more is a corrupt header, not data.
MAX_ELEMENTS = 2**31


def _check_shape(shape: tuple[int, ...], name: str) -> None:
    """Refuse items of zero size and headers promising more than :data:`MAX_ELEMENTS` elements.

    A zero count (an empty file) is valid; a zero size along any other axis is not.
    """
    text = "x".join(map(str, shape))
    for axis, size in enumerate(shape[1:], start=2):
        if size == 0:
            raise IdxError(
                f"{name}: invalid IDX header: dimension {axis} of {text} is 0, so every item is "
                "empty; expected sizes above 0; the header is corrupt, download the file again"
            )
    elements = math.prod(shape)
    if elements > MAX_ELEMENTS:
        raise IdxError(
            f"{name}: invalid IDX header: dimensions {text} make {elements} elements, more than "
            f"the {MAX_ELEMENTS} (2**31) a file may hold; the header is corrupt, download the "
            "file again"
        )


def header(path_or_file, *, name: str | None = None) -> IdxHeader:
    """Read and validate only the header of an IDX file (no data is read).

    Raises
    ------
    IdxError
        As :func:`read_header`, or when the file is missing or empty.
    """
    with _opened(path_or_file, name) as (stream, label):
        return read_header(stream, label)


def _raw_data_size(stream, header: IdxHeader) -> int | None:
    """Bytes from the position (just after the header) to the end of a raw seekable stream, else None."""
    if header.compressed:
        return None
    try:
        if not stream.seekable():
            return None
        pos = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        end = stream.tell() if end is None else end
        stream.seek(pos)
        return end - pos
    except (OSError, AttributeError, ValueError):
        return None


def _size_error(header: IdxHeader, found: int) -> IdxError:
    if found < header.data_bytes:
        return IdxError(
            f"{header.path}: header says {header.describe()} but the file holds {found} data bytes "
            f"after its {header.header_bytes}-byte header; the file is truncated, download it again"
        )
    return IdxError(
        f"{header.path}: header says {header.describe()} but the file holds {found} data bytes, "
        f"{found - header.data_bytes} extra bytes of trailing garbage after the data; "
        "the file is corrupt or not what it claims to be, download it again"
    )


def _read_exact(stream, header: IdxHeader, n: int, done: int, keep: bool, hasher=None) -> list[bytes]:
    """Read ``n`` data bytes in chunks (``done`` already read); raise if the data ends early."""
    chunks, remaining = [], n
    while remaining:
        chunk = _read(stream, min(remaining, _CHUNK), header.path)
        if not chunk:
            raise _size_error(header, done + n - remaining)
        remaining -= len(chunk)
        if hasher is not None:
            hasher.update(chunk)
        if keep:
            chunks.append(chunk)
    return chunks


def _check_end(stream, header: IdxHeader, hasher=None) -> None:
    """Raise if anything follows the data (reading it in chunks to count it)."""
    extra = 0
    while chunk := _read(stream, _CHUNK, header.path):
        extra += len(chunk)
        if hasher is not None:
            hasher.update(chunk)
    if extra:
        raise _size_error(header, header.data_bytes + extra)


def inspect(path, *, md5: bool = False, name: str | None = None) -> tuple[IdxHeader, str | None]:
    """Validate a whole IDX file without keeping its data in memory.

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        The file to check.
    md5 : bool, default False
        Also compute the MD5 of the uncompressed content (header included).
    name : str, optional
        The name used in messages when ``path`` is a stream.

    Returns
    -------
    header : IdxHeader
    md5 : str or None
        The hex MD5 digest, or None when ``md5`` is False.

    Raises
    ------
    IdxError
        If the file is missing, not IDX, corrupt, truncated or has trailing data.
    """
    hasher = hashlib.md5() if md5 else None
    with _opened(path, name) as (stream, label):
        header = read_header(stream, label)
        raw_size = _raw_data_size(stream, header)
        if raw_size is not None and raw_size != header.data_bytes:
            raise _size_error(header, raw_size)
        if hasher is not None:
            hasher.update(_pack_header(header.dtype, header.shape))
        _read_exact(stream, header, header.data_bytes, 0, keep=False, hasher=hasher)
        _check_end(stream, header, hasher)
    logger.debug("inspected %s: %s", header.path, header.describe())
    return header, hasher.hexdigest() if hasher is not None else None


def _to_array(chunks: list[bytes], header: IdxHeader, count: int) -> np.ndarray:
    """Assemble big-endian data chunks into a native-byte-order array of ``count`` items."""
    out = np.empty((count, *header.item_shape), dtype=header.dtype.newbyteorder("="))
    flat, pos = out.reshape(-1).view(np.uint8), 0
    for i, chunk in enumerate(chunks):
        flat[pos : pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
        pos += len(chunk)
        chunks[i] = b""  # free each chunk as soon as it is copied
    if not header.dtype.isnative:
        out.byteswap(inplace=True)
    return out


def read_records(
    path_or_file, start: int, stop: int | None, *, name: str | None = None
) -> tuple[IdxHeader, np.ndarray]:
    """Read items ``[start, stop)`` along the first axis of an IDX file.

    The bytes before ``start`` are skipped in bounded chunks (or by seeking, for raw
    seekable files), so each Spark task can read its own slice of a large file.

    Parameters
    ----------
    path_or_file : str, os.PathLike or binary file object
        The file to read.
    start, stop : int
        The items to read, ``0 <= start <= stop <= header.count``; ``stop=None`` reads to the end.
    name : str, optional
        The name used in messages when ``path_or_file`` is a stream.

    Returns
    -------
    header : IdxHeader
    records : numpy.ndarray
        Shape ``(stop - start, *header.item_shape)``, native byte order.

    Raises
    ------
    IdxError
        If the file is invalid, or ``start``/``stop`` are out of range. The size of a raw
        seekable file is checked exactly; for a gzip file, only the data up to ``stop``
        is checked (and trailing data when ``stop`` is the last item): use :func:`inspect`
        to validate a whole file.
    """
    with _opened(path_or_file, name) as (stream, label):
        header = read_header(stream, label)
        return header, _read_slice(stream, header, start, header.count if stop is None else stop)


def _iter_slice(stream, header: IdxHeader, start: int, stop: int, batch: int):
    """Yield items ``[start, stop)`` as arrays of at most ``batch`` items, reading as it goes."""
    start, stop, batch = operator.index(start), operator.index(stop), operator.index(batch)
    if not 0 <= start <= stop <= header.count:
        raise IdxError(
            f"{header.path}: cannot read records [{start}, {stop}): the file holds {header.count} "
            f"items, so 0 <= start <= stop <= {header.count} is required"
        )
    if batch <= 0:
        raise ValueError(f"batch must be above 0, found {batch}")
    item_bytes = math.prod(header.item_shape) * header.dtype.itemsize
    raw_size = _raw_data_size(stream, header)
    if raw_size is not None and raw_size != header.data_bytes:
        raise _size_error(header, raw_size)
    if raw_size is not None and start:
        stream.seek(start * item_bytes, io.SEEK_CUR)
    else:
        _read_exact(stream, header, start * item_bytes, 0, keep=False)
    done = start
    while done < stop:
        count = min(batch, stop - done)
        chunks = _read_exact(stream, header, count * item_bytes, done * item_bytes, keep=True)
        done += count
        if done == header.count and raw_size is None:
            _check_end(stream, header)
        yield _to_array(chunks, header, count)


def _read_slice(stream, header: IdxHeader, start: int, stop: int) -> np.ndarray:
    parts = list(_iter_slice(stream, header, start, stop, max(stop - start, 1)))
    if parts:
        return parts[0]
    return np.empty((0, *header.item_shape), dtype=header.dtype.newbyteorder("="))


def iter_records(path_or_file, start: int, stop: int, batch: int, *, name: str | None = None):
    """Yield items ``[start, stop)`` of an IDX file in arrays of at most ``batch`` items.

    Like :func:`read_records`, but reads as the caller consumes, so a Spark
    task holds one batch at a time and starts handing rows on at once.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte.gz")
    >>> write_idx(path, np.arange(10, dtype=np.uint8))
    >>> [part.tolist() for part in iter_records(path, 2, 9, 3)]
    [[2, 3, 4], [5, 6, 7], [8]]
    """
    with _opened(path_or_file, name) as (stream, label):
        header = read_header(stream, label)
        yield from _iter_slice(stream, header, start, stop, batch)


def read_idx(path_or_file, *, name: str | None = None) -> np.ndarray:
    """Read a whole IDX file into a numpy array.

    Parameters
    ----------
    path_or_file : str, os.PathLike or binary file object
        The file to read, raw or gzip-compressed.
    name : str, optional
        The name used in messages when ``path_or_file`` is a stream.

    Returns
    -------
    numpy.ndarray
        The data, shaped as the header says, in native byte order (``int32``, not ``>i4``).

    Raises
    ------
    IdxFileNotFoundError
        If the file does not exist.
    IdxError
        If the file is not a valid IDX file, is corrupt, truncated or has trailing data.

    Examples
    --------
    >>> images = read_idx("data/mnist/t10k-images-idx3-ubyte.gz")
    >>> images.shape, images.dtype
    ((10000, 28, 28), dtype('uint8'))
    """
    with _opened(path_or_file, name) as (stream, label):
        header = read_header(stream, label)
        array = _read_slice(stream, header, 0, header.count)
    logger.debug("read %s: %s", header.path, header.describe())
    return array


def write_idx(path, array) -> None:
    """Write an array as an IDX file, gzip-compressed when ``path`` ends with ``.gz``.

    The data goes to a temporary file in the same folder, renamed over ``path`` only
    once complete, so a failure never leaves a half-written file.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    array : array_like
        At least 1-D, of dtype uint8, int8, int16, int32, float32 or float64
        (either byte order).

    Raises
    ------
    TypeError
        If the dtype is not supported by the IDX format.
    ValueError
        If the array is 0-D or a dimension does not fit in a uint32.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte.gz")
    >>> write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    >>> read_idx(path)
    array([7, 2, 1], dtype=uint8)
    """
    array = np.asarray(array)
    if (array.dtype.kind, array.dtype.itemsize) not in _KIND_TO_CODE:
        supported = ", ".join(dt.name for dt in _CODE_TO_DTYPE.values())
        raise TypeError(
            f"write_idx({os.fspath(path)!r}): dtype {array.dtype} is not supported by the IDX format; "
            f"supported dtypes are {supported}; convert first, e.g. array.astype(numpy.int32)"
        )
    if array.ndim == 0 or any(n >= 2**32 for n in array.shape):
        raise ValueError(
            f"write_idx({os.fspath(path)!r}): IDX needs at least 1 dimension, each below 2**32; got shape {array.shape}"
        )
    path = os.fspath(path)
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    data = np.ascontiguousarray(array, dtype=big).reshape(-1).view(np.uint8)
    folder, base = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            if path.endswith(".gz"):
                with gzip.GzipFile(filename=base, mode="wb", fileobj=f, compresslevel=6, mtime=0) as gz:
                    gz.write(_pack_header(array.dtype, array.shape))
                    gz.write(data)
            else:
                f.write(_pack_header(array.dtype, array.shape))
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    logger.debug("wrote %s: %s %s", path, array.shape, array.dtype)


def check_labels(labels, num_classes: int, name: str) -> None:
    """Check that labels are a 1-D integer array with values in ``[0, num_classes)``.

    Parameters
    ----------
    labels : numpy.ndarray
        The labels.
    num_classes : int
        The number of classes.
    name : str
        The labels file's name, used in messages.

    Raises
    ------
    IdxError
        If the labels are not 1-D integers, or a value is outside the classes (the
        message gives the first bad index and value).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "ui":
        raise IdxError(
            f"{name}: expected labels as a 1-D integer array, found shape {labels.shape} of "
            f"{labels.dtype}; check that this is a labels file (...-labels-idx1-ubyte), not images"
        )
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        i = int(bad.argmax())
        raise IdxError(
            f"{name}: label {labels[i]} at index {i} is outside the {num_classes} classes "
            f"(allowed 0 to {num_classes - 1}, {int(bad.sum())} bad labels in all); check the "
            "number of classes or download the file again"
        )


def check_pair(images_header: IdxHeader, labels_header: IdxHeader) -> None:
    """Check that an images file and a labels file belong together.

    Parameters
    ----------
    images_header, labels_header : IdxHeader
        The headers of the two files.

    Raises
    ------
    IdxError
        If the labels are not 1-D or the counts differ.
    """
    if len(labels_header.shape) != 1:
        raise IdxError(
            f"{labels_header.path}: expected 1-D labels to go with {images_header.path}, found shape "
            f"{labels_header.shape}; check that the labels file is not an images file"
        )
    if images_header.count != labels_header.count:
        raise IdxError(
            f"{images_header.path} holds {images_header.count} images but {labels_header.path} holds "
            f"{labels_header.count} labels; they do not belong together, pair each images file with "
            "its own labels file (train with train, t10k with t10k)"
        )
