"""Tests for mnist_spark.idx: the IDX file format (numpy only, no Spark)."""

import gzip
import hashlib
import io
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from mnist_spark import idx
from mnist_spark.idx import IdxError, IdxFileNotFoundError

MNIST = Path(__file__).resolve().parents[1] / "data" / "mnist"
CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}
SHAPES = [(7,), (4, 5), (3, 28, 28), (5, 8, 6, 3), (0, 28, 28)]


def header_bytes(code, shape):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def put(path, content, gz=None):
    """Write raw bytes to ``path``, gzip-compressed when gz (default: when the name ends with .gz)."""
    if gz if gz is not None else str(path).endswith(".gz"):
        content = gzip.compress(content, mtime=0)
    path.write_bytes(content)
    return path


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


class Unseekable:
    """A minimal stream with only read(), like a network input stream."""

    def __init__(self, data, name=None):
        self._buffer = io.BytesIO(data)
        if name:
            self.name = name

    def read(self, n=-1):
        return self._buffer.read(n)


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", list(CODES), ids=lambda t: t.__name__)
def test_round_trip(tmp_path, dtype, shape, suffix):
    array = sample(dtype, shape)
    path = tmp_path / f"data-idx{len(shape)}-ubyte{suffix}"
    idx.write_idx(path, array)
    back = idx.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)
    content = gzip.decompress(path.read_bytes()) if suffix else path.read_bytes()
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\0\0")
    assert content == header_bytes(CODES[dtype], shape) + array.astype(np.dtype(dtype).newbyteorder(">")).tobytes()
    header, _ = idx.inspect(path)
    assert (header.shape, header.compressed, header.header_bytes) == (shape, bool(suffix), 4 + 4 * len(shape))
    assert header.dtype == np.dtype(dtype).newbyteorder(">") or header.dtype.itemsize == 1
    assert header.data_bytes == array.nbytes and header.count == shape[0] and header.item_shape == shape[1:]


def test_write_big_endian_input_and_lists(tmp_path):
    array = np.arange(-5, 5, dtype=">i2").reshape(2, 5)
    idx.write_idx(tmp_path / "a", array)
    back = idx.read_idx(str(tmp_path / "a"))
    assert back.dtype == np.int16 and back.dtype.isnative and back.tolist() == array.tolist()
    assert back.flags.writeable


@pytest.mark.parametrize("gz", [False, True])
def test_read_from_file_objects(tmp_path, gz):
    array = sample(np.int32, (6, 3))
    content = header_bytes(0x0C, (6, 3)) + array.astype(">i4").tobytes()
    data = gzip.compress(content) if gz else content
    buffer = io.BytesIO(data)
    np.testing.assert_array_equal(idx.read_idx(buffer, name="x"), array)
    assert not buffer.closed  # the caller's stream is left open
    np.testing.assert_array_equal(idx.read_idx(Unseekable(data), name="x"), array)
    header, part = idx.read_records(Unseekable(data), 2, 5, name="stream-x")
    assert header.path == "stream-x" and header.compressed == gz
    np.testing.assert_array_equal(part, array[2:5])
    assert idx.inspect(io.BytesIO(data), md5=True)[1] == hashlib.md5(content).hexdigest()
    # A stream named .gz may already be gunzipped (pyarrow's open_input_stream does that): read by content.
    np.testing.assert_array_equal(idx.read_idx(Unseekable(content), name="images.gz"), array)


def test_name_overrides_path_in_messages(tmp_path):
    path = put(tmp_path / "download.part.gz", header_bytes(0x08, (4,)) + b"ab")
    with pytest.raises(IdxError, match=r"^https://example.org/x-idx1-ubyte.gz: header says 4 uint8 items \(4 data"):
        idx.inspect(path, md5=True, name="https://example.org/x-idx1-ubyte.gz")


def test_open_stream_gunzips(tmp_path):
    content = header_bytes(0x08, (3,)) + b"abc"
    for path in (put(tmp_path / "f.gz", content), put(tmp_path / "f-gz-without-suffix", content, gz=True)):
        with idx.open_stream(path) as stream:
            assert stream.read() == content


# --- read_records ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("start,stop", [(0, 0), (0, 1), (3, 7), (9, 10), (0, 10), (10, 10)])
def test_read_records(tmp_path, suffix, start, stop):
    array = sample(np.float32, (10, 4, 3))
    path = tmp_path / f"r{suffix}"
    idx.write_idx(path, array)
    header, part = idx.read_records(path, start, stop)
    assert header.shape == (10, 4, 3)
    if stop == 10:
        np.testing.assert_array_equal(idx.read_records(path, start, None)[1], part)
    assert part.shape == (stop - start, 4, 3) and part.dtype == np.float32
    np.testing.assert_array_equal(part, idx.read_idx(path)[start:stop])


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("start,stop", [(-1, 2), (5, 3), (0, 11), (11, 11)])
def test_read_records_out_of_range(tmp_path, suffix, start, stop):
    path = tmp_path / f"r{suffix}"
    idx.write_idx(path, np.zeros(10, np.uint8))
    with pytest.raises(IdxError, match=rf"r{suffix}: cannot read records \[{start}, {stop}\).*holds 10 items"):
        idx.read_records(path, start, stop)


# --- inspect and the real MNIST files ------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_inspect_md5(tmp_path, suffix):
    array = sample(np.float64, (9, 5))
    path = tmp_path / f"m{suffix}"
    idx.write_idx(path, array)
    content = header_bytes(0x0E, (9, 5)) + array.astype(">f8").tobytes()
    header, md5 = idx.inspect(path, md5=True)
    assert md5 == hashlib.md5(content).hexdigest()
    assert idx.inspect(path) == (header, None)


MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("6bbc9ace898e44ae57da46a324031adb", (60000, 28, 28)),
    "train-labels-idx1-ubyte.gz": ("a25bea736e30d166cdddb491f175f624", (60000,)),
    "t10k-images-idx3-ubyte.gz": ("2646ac647ad5339dbf082846283269ea", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte.gz": ("27ae3e4e09519cfbb04c329615203637", (10000,)),
}


@pytest.mark.parametrize("filename", list(MNIST_FILES))
def test_real_mnist_inspect(filename):
    md5, shape = MNIST_FILES[filename]
    header, found = idx.inspect(MNIST / filename, md5=True)
    assert found == md5
    assert header.shape == shape and header.dtype == np.uint8 and header.compressed


def test_real_mnist_read():
    start = time.perf_counter()
    arrays = {f: idx.read_idx(MNIST / f) for f in MNIST_FILES}
    elapsed = time.perf_counter() - start
    assert elapsed < 2.0, f"reading MNIST took {elapsed:.2f} s"
    for f, array in arrays.items():
        assert array.shape == MNIST_FILES[f][1] and array.dtype == np.uint8
    for part in ("train", "t10k"):
        labels = arrays[f"{part}-labels-idx1-ubyte.gz"]
        idx.check_labels(labels, 10, part)
        idx.check_pair(
            idx.inspect(MNIST / f"{part}-images-idx3-ubyte.gz")[0],
            idx.inspect(MNIST / f"{part}-labels-idx1-ubyte.gz")[0],
        )
    assert np.bincount(arrays["t10k-labels-idx1-ubyte.gz"]).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    assert np.bincount(arrays["train-labels-idx1-ubyte.gz"]).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    _, part = idx.read_records(MNIST / "train-images-idx3-ubyte.gz", 59990, 60000)
    np.testing.assert_array_equal(part, arrays["train-images-idx3-ubyte.gz"][59990:])


# --- bad input -----------------------------------------------------------------------------------

READERS = {
    "read_idx": idx.read_idx,
    "inspect": lambda p: idx.inspect(p, md5=True),
    "read_records": lambda p: idx.read_records(p, 0, 1),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_missing_file(tmp_path, reader):
    with pytest.raises(IdxFileNotFoundError, match="nope-idx3-ubyte.gz: no such file") as info:
        READERS[reader](tmp_path / "nope-idx3-ubyte.gz")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["empty-idx1-ubyte", "empty-idx1-ubyte.gz"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(IdxError, match=rf"{name}: the file is empty \(0 bytes\)"):
        idx.read_idx(tmp_path / name)


def test_gz_name_but_not_gzip(tmp_path):
    path = put(tmp_path / "labels-idx1-ubyte.gz", header_bytes(0x08, (2,)) + b"\1\2", gz=False)
    with pytest.raises(IdxError, match=r"labels-idx1-ubyte.gz: .* not gzip-compressed: .*bytes 00 00, not 1f 8b"):
        idx.read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_not_idx(tmp_path, suffix):
    path = put(tmp_path / f"page{suffix}", b"<html><body>Not found</body></html>")
    with pytest.raises(IdxError, match=rf"page{suffix}: not an IDX file: .*must start with bytes 00 00 .*3c 68 74 6d"):
        idx.read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "content,needed,found",
    [
        (b"\0\0\x08", 4, 3),
        (b"\0\0\x08\x03" + b"\0\0\0\1\0\0", 16, 10),
    ],
)
def test_truncated_header(tmp_path, suffix, content, needed, found):
    path = put(tmp_path / f"h{suffix}", content)
    with pytest.raises(IdxError, match=rf"h{suffix}: truncated header: .*{needed}.* holds {found}\b.*download"):
        idx.inspect(path)


@pytest.mark.parametrize(
    "content,pattern",
    [
        (b"\x01\x00\x08\x01\0\0\0\1\0", r"must start with bytes 00 00 .*01 00 08 01"),
        (b"\0\0\x0a\x01\0\0\0\1\0", r"unknown type code 0x0A.*0x08 \(uint8\).*0x0E \(float64\)"),
        (b"\0\0\x08\x00", r"0 dimensions, expected at least 1"),
    ],
)
def test_wrong_magic(tmp_path, content, pattern):
    path = put(tmp_path / "magic-idx1-ubyte", content)
    with pytest.raises(IdxError, match="magic-idx1-ubyte: .*" + pattern):
        idx.read_idx(path)


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_data(tmp_path, reader, suffix):
    path = put(tmp_path / f"t10k-images-idx3-ubyte{suffix}", header_bytes(0x08, (100, 28, 28)) + bytes(50000))
    if reader == "read_records" and suffix:  # gzip: a slice within the data present still reads
        assert idx.read_records(path, 0, 50)[1].shape == (50, 28, 28)
    pattern = (
        rf"t10k-images-idx3-ubyte{suffix}: header says 100 items of 28x28 uint8 \(78400 data bytes\) "
        r"but the file holds 50000 data bytes.*truncated, download it again"
    )
    with pytest.raises(IdxError, match=pattern):
        READERS[reader](path) if reader != "read_records" else idx.read_records(path, 60, 100)


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_trailing_garbage(tmp_path, reader, suffix):
    path = put(tmp_path / f"labels{suffix}", header_bytes(0x0C, (5,)) + bytes(20) + b"xyz")
    pattern = rf"labels{suffix}: header says 5 int32 items \(20 data bytes\) but the file holds 23 .*3 extra bytes"
    with pytest.raises(IdxError, match=pattern):
        READERS[reader](path) if reader != "read_records" else idx.read_records(path, 0, 5)


HUGE = header_bytes(0x08, (2_000_000, 28, 28)) + bytes(1000)  # 1.57e9 elements: below the limit
HUGE_MESSAGE = r"header says 2000000 items of 28x28 uint8 \(1568000000 data bytes\) but the file holds 1000 "


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_huge_header_fails_fast(tmp_path, reader, suffix):
    path = put(tmp_path / f"huge{suffix}", HUGE)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(IdxError, match=f"huge{suffix}: " + HUGE_MESSAGE):
            READERS[reader](path) if reader != "read_records" else idx.read_records(path, 2_000_000 - 1, 2_000_000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0
    assert peak < 64 * 2**20, f"peak {peak} bytes"


def test_huge_header_under_memory_limit(tmp_path):
    """In a child process whose address space may grow by only 512 MiB, the huge headers still give IdxError."""
    put(tmp_path / "huge", HUGE)
    put(tmp_path / "huge.gz", HUGE)
    script = textwrap.dedent(f"""
        import resource, sys
        from mnist_spark import idx
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + 512 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
        for name in ("huge", "huge.gz"):
            for read in (idx.read_idx, idx.inspect, lambda p: idx.read_records(p, 5, 10)):
                try:
                    read({str(tmp_path)!r} + "/" + name)
                except idx.IdxError as exc:
                    assert "1568000000 data bytes" in str(exc), exc
                else:
                    sys.exit("no error for " + name)
        print("ok")
    """)
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def _corrupt(kind):
    data = bytearray(gzip.compress(header_bytes(0x08, (2000,)) + bytes(range(250)) * 8, mtime=0))
    if kind == "cut short":
        return bytes(data[: len(data) // 2])
    if kind == "bad deflate":
        data[10] |= 0x06  # first deflate block header: reserved block type 3
    else:  # bad CRC in the trailer
        data[-8] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("kind", ["cut short", "bad deflate", "bad crc"])
def test_corrupt_gzip(tmp_path, kind, reader):
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(_corrupt(kind))
    with pytest.raises(IdxError, match=r"broken-idx1-ubyte.gz: the gzip data is corrupt or cut short .*download"):
        READERS[reader](path) if reader != "read_records" else idx.read_records(path, 0, 2000)


def test_check_pair(tmp_path):
    idx.write_idx(tmp_path / "images.gz", np.zeros((10, 2, 2), np.uint8))
    idx.write_idx(tmp_path / "labels.gz", np.zeros(9, np.uint8))
    images, labels = idx.inspect(tmp_path / "images.gz")[0], idx.inspect(tmp_path / "labels.gz")[0]
    with pytest.raises(IdxError, match=r"images.gz holds 10 images but .*labels.gz holds 9 labels"):
        idx.check_pair(images, labels)
    with pytest.raises(IdxError, match=r"images.gz: expected 1-D labels to go with .*images.gz"):
        idx.check_pair(images, images)
    idx.check_pair(images, idx.IdxHeader("l", np.dtype("u1"), (10,), 8, False))


@pytest.mark.parametrize(
    "labels,pattern",
    [
        (
            np.array([0, 1, 9, 10, 3, 12], np.uint8),
            r"label 10 at index 3 is outside the 10 classes \(allowed 0 to 9, 2 bad",
        ),
        (np.array([0, -1, 2], np.int8), r"label -1 at index 1 is outside the 10 classes \(allowed 0 to 9"),
        (np.array([0.0, 1.0]), r"expected labels as a 1-D integer array, found shape \(2,\) of float64"),
        (np.zeros((2, 2), np.uint8), r"expected labels as a 1-D integer array, found shape \(2, 2\)"),
    ],
)
def test_check_labels(labels, pattern):
    with pytest.raises(IdxError, match="train-labels-idx1-ubyte.gz: " + pattern):
        idx.check_labels(labels, 10, "train-labels-idx1-ubyte.gz")
    idx.check_labels(np.arange(10), 10, "ok")


# --- write_idx failures ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.int64, np.float16, np.complex64, bool, object])
def test_write_unsupported_dtype(tmp_path, dtype):
    with pytest.raises(TypeError, match=rf"dtype {np.dtype(dtype)} is not supported.*uint8, int8, int16, int32"):
        idx.write_idx(tmp_path / "x.gz", np.zeros(3, dtype))
    assert list(tmp_path.iterdir()) == []


def test_write_zero_dimensions(tmp_path):
    with pytest.raises(ValueError, match="at least 1 dimension"):
        idx.write_idx(tmp_path / "x", np.uint8(3))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, suffix):
    old = tmp_path / f"keep{suffix}"
    idx.write_idx(old, np.arange(3, dtype=np.uint8))
    before = old.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(idx.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        idx.write_idx(tmp_path / f"new{suffix}", np.arange(5, dtype=np.int32))
    with pytest.raises(OSError, match="disk full"):
        idx.write_idx(old, np.arange(5, dtype=np.int32))
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.name]
    assert old.read_bytes() == before


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_iter_records_batches_equal_the_slice(tmp_path, suffix):
    data = np.arange(50 * 3 * 2, dtype=np.int32).reshape(50, 3, 2)
    path = tmp_path / f"x-idx3-int{suffix}"
    idx.write_idx(path, data)
    parts = list(idx.iter_records(path, 7, 50, 8))
    assert [len(p) for p in parts] == [8, 8, 8, 8, 8, 3]
    np.testing.assert_array_equal(np.concatenate(parts), data[7:50])
    with pytest.raises(idx.IdxError, match="0 <= start <= stop <= 50"):
        list(idx.iter_records(path, 10, 51, 8))


def test_iter_records_reports_trailing_garbage_at_the_end(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    import gzip

    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 1, 0, 0, 0, 4, 1, 2, 3, 4, 99, 99]))
    assert [p.tolist() for p in idx.iter_records(path, 0, 2, 2)] == [[1, 2]]
    with pytest.raises(idx.IdxError, match="2 extra bytes of trailing garbage"):
        list(idx.iter_records(path, 0, 4, 2))


# --- absurd headers ------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "shape, pattern",
    [
        ((10, 0, 28), r"dimension 2 of 10x0x28 is 0"),
        ((10, 28, 0), r"dimension 3 of 10x28x0 is 0"),
        ((10**9, 28, 28), r"dimensions 1000000000x28x28 make 784000000000 elements, more than the 2147483648"),
        ((2**31 + 1,), r"dimensions 2147483649 make 2147483649 elements"),
    ],
    ids=["zero height", "zero width", "784e9 elements", "2**31+1 labels"],
)
def test_zero_or_absurd_dimensions_are_refused(tmp_path, reader, suffix, shape, pattern):
    path = put(tmp_path / f"bad-idx{suffix}", header_bytes(0x08, shape) + bytes(100))
    with pytest.raises(IdxError, match=rf"bad-idx{suffix}: invalid IDX header: {pattern}"):
        READERS[reader](path)
    with pytest.raises(IdxError, match=rf"bad-idx{suffix}: invalid IDX header"):
        idx.header(path)


def test_an_empty_file_of_valid_items_is_still_valid(tmp_path):
    path = put(tmp_path / "empty-idx3", header_bytes(0x08, (0, 28, 28)))
    assert idx.header(path).shape == (0, 28, 28)
    assert idx.read_idx(path).shape == (0, 28, 28)


def test_the_labels_header_is_checked_before_any_body_is_read(tmp_path, monkeypatch):
    """A labels file whose header disagrees with the images is refused from its header alone."""
    from mnist_spark import ingest

    images = tmp_path / "train-images-idx3-ubyte.gz"
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    idx.write_idx(images, np.zeros((3, 28, 28), np.uint8))
    put(labels, header_bytes(0x08, (10**9,)) + bytes(3))  # claims a gigabyte of labels

    def refuse(*args, **kwargs):
        raise AssertionError("a body was read")

    monkeypatch.setattr(idx, "_read_exact", refuse)
    monkeypatch.setattr(idx, "_iter_slice", refuse)
    with pytest.raises(
        IdxError,
        match=r"train-images-idx3-ubyte.gz holds 3 images but "
        r"train-labels-idx1-ubyte.gz holds 1000000000 labels",
    ):
        ingest.validate_split("train", str(images), str(labels), 10)
