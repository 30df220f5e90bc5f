"""Tests of mnist_spark.datasets: lookup order, file discovery, checksums, downloads.

Downloads go to a local HTTP server on 127.0.0.1 only; no test reaches the internet.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import logging
import os
import shutil
import socket
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mnist_spark import datasets, idx
from mnist_spark.datasets import MNIST, IdxDataset

MNIST_DIR = Path(__file__).resolve().parents[1] / "data" / "mnist"
MNIST_NAMES = MNIST.file_names

# Only the (small) test split of MNIST, for download tests that need not move 11 MB.
MNIST_TEST_SPLIT = IdxDataset(name="mnist", files={"test": MNIST.files["test"]}, md5=MNIST.md5)


# --------------------------------------------------------------------------- helpers


def write_tiny(folder: Path, names=MNIST_NAMES, seed: int = 0, count: int = 6) -> Path:
    """Write a tiny four-file IDX dataset (4x4 images) under the given file names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    train_images, train_labels, test_images, test_labels = names
    for images, labels in ((train_images, train_labels), (test_images, test_labels)):
        idx.write_idx(folder / images, rng.integers(0, 256, size=(count, 4, 4), dtype=np.uint8))
        idx.write_idx(folder / labels, (np.arange(count) % 10).astype(np.uint8))
    return folder


def tiny_dataset(folder: Path) -> IdxDataset:
    """A dataset with MNIST's file names and the checksums of the tiny files in ``folder``."""
    md5 = {name: idx.inspect(folder / name, md5=True)[1] for name in MNIST_NAMES}
    return IdxDataset(name="tiny", files=MNIST.files, md5=md5)


def md5_of(path) -> str:
    return idx.inspect(path, md5=True)[1]


def corrupt_copy(source: Path, target: Path) -> None:
    """Copy a gzip IDX file with one byte of the uncompressed data flipped (still valid IDX)."""
    data = bytearray(gzip.decompress(source.read_bytes()))
    data[-1] ^= 0xFF
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(gzip.compress(bytes(data), compresslevel=1))


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def leftovers(folder: Path) -> list[str]:
    """Hidden or temporary files left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".part" in p.name)


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.server.hits[self.path.lstrip("/")] += 1
        super().do_GET()

    def log_message(self, *args):
        pass


class Mirror:
    """A folder served over HTTP on 127.0.0.1, counting requests per file name."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        handler = functools.partial(_Handler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.hits = Counter()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def hits(self) -> Counter:
        return self.server.hits

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No env settings from outside; an empty cache; no data/mnist unless a test makes one."""
    for name in (datasets.ENV_DATA, datasets.ENV_MIRRORS, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(datasets.ENV_CACHE, str(cache))
    monkeypatch.setattr(datasets, "default_data_dirs", lambda: [tmp_path / "no-data" / "mnist"])
    return cache


@pytest.fixture
def serve():
    """``serve(folder) -> Mirror``; every server is shut down after the test."""
    mirrors = []

    def start(folder: Path) -> Mirror:
        mirror = Mirror(folder)
        mirrors.append(mirror)
        return mirror

    yield start
    for mirror in mirrors:
        mirror.close()


@pytest.fixture(scope="session")
def mnist_mirror_dir(tmp_path_factory) -> Path:
    """A folder with copies of the four bundled MNIST files, to be served."""
    folder = tmp_path_factory.mktemp("mirror-good")
    for name in MNIST_NAMES:
        shutil.copyfile(MNIST_DIR / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def corrupt_mirror_dir(tmp_path_factory) -> Path:
    """The MNIST test split with a corrupted labels file (bad checksum, valid IDX)."""
    folder = tmp_path_factory.mktemp("mirror-bad")
    shutil.copyfile(MNIST_DIR / "t10k-images-idx3-ubyte.gz", folder / "t10k-images-idx3-ubyte.gz")
    corrupt_copy(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz")
    return folder


# --------------------------------------------------------------------------- the dataset


def test_mnist_class_counts_match_the_bundled_labels():
    for split, (_, labels) in MNIST.files.items():
        counts = np.bincount(idx.read_idx(MNIST_DIR / labels), minlength=MNIST.num_classes)
        assert tuple(int(c) for c in counts) == MNIST.class_counts[split]
    assert sum(MNIST.class_counts["train"]) == 60000
    assert sum(MNIST.class_counts["test"]) == 10000


def test_default_data_dirs_and_cache_dir(tmp_path, monkeypatch):
    monkeypatch.undo()  # the real default_data_dirs and environment
    monkeypatch.chdir(tmp_path)
    for name in (datasets.ENV_CACHE, "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    assert datasets.default_data_dirs() == [tmp_path / "data" / "mnist", MNIST_DIR]
    monkeypatch.chdir(MNIST_DIR.parents[1])
    assert datasets.default_data_dirs() == [Path.cwd() / "data" / "mnist"]

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.cache_dir() == tmp_path / "home" / ".cache" / "mnist_spark" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.cache_dir() == tmp_path / "xdg" / "mnist_spark" / "mnist"
    fashion = IdxDataset("fashion", MNIST.files)
    assert datasets.cache_dir(fashion) == tmp_path / "xdg" / "mnist_spark" / "fashion"
    monkeypatch.setenv(datasets.ENV_CACHE, str(tmp_path / "mine"))
    assert datasets.cache_dir() == tmp_path / "mine"


def test_bundled_data_is_found_and_verified(monkeypatch):
    monkeypatch.setattr(datasets, "default_data_dirs", lambda: [MNIST_DIR])
    files = datasets.locate(download=False)
    assert files.source == "data/mnist"
    assert files.dataset is MNIST
    assert files.directory == str(MNIST_DIR)
    assert files.images("train") == str(MNIST_DIR / "train-images-idx3-ubyte.gz")
    assert files.labels("test") == str(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")


def test_unknown_split_names_the_available_ones():
    files = datasets.locate(MNIST_DIR, verify=False)
    with pytest.raises(ValueError, match=r"'validation'.*available: train, test"):
        files.images("validation")
    with pytest.raises(ValueError, match="available: train, test"):
        files.labels("val")


# --------------------------------------------------------------------------- download


def test_download_into_empty_cache_then_reuse(isolated, serve, mnist_mirror_dir, monkeypatch, caplog):
    mirror = serve(mnist_mirror_dir)
    monkeypatch.setenv(datasets.ENV_MIRRORS, mirror.url)
    caplog.set_level(logging.INFO, logger="mnist_spark.datasets")

    files = datasets.locate()
    assert files.source == "download"
    assert files.directory == str(isolated)
    assert files.dataset is MNIST
    assert sorted(os.listdir(isolated)) == sorted(MNIST_NAMES)
    for name in MNIST_NAMES:
        assert md5_of(isolated / name) == MNIST.md5[name]
    assert files.images("train") == str(isolated / "train-images-idx3-ubyte.gz")
    assert mirror.hits == Counter({name: 1 for name in MNIST_NAMES})
    downloaded = [r.getMessage() for r in caplog.records if r.getMessage().startswith("downloaded")]
    assert len(downloaded) == 4
    assert any("9630610 bytes" in line for line in downloaded)

    again = datasets.locate()
    assert again.source == "cache"
    assert again.splits == files.splits
    assert sum(mirror.hits.values()) == 4  # nothing downloaded the second time


def test_download_only_the_missing_file(isolated, serve, mnist_mirror_dir):
    isolated.mkdir()
    shutil.copyfile(MNIST_DIR / "t10k-images-idx3-ubyte.gz", isolated / "t10k-images-idx3-ubyte.gz")
    mirror = serve(mnist_mirror_dir)
    files = datasets.download(MNIST_TEST_SPLIT, mirrors=[mirror.url.rstrip("/")])
    assert mirror.hits == Counter({"t10k-labels-idx1-ubyte.gz": 1})
    assert files.labels("test") == str(isolated / "t10k-labels-idx1-ubyte.gz")
    assert md5_of(files.labels("test")) == MNIST.md5["t10k-labels-idx1-ubyte.gz"]


def test_corrupt_first_mirror_falls_back_to_the_second(isolated, serve, mnist_mirror_dir, corrupt_mirror_dir, caplog):
    bad, good = serve(corrupt_mirror_dir), serve(mnist_mirror_dir)
    files = datasets.download(MNIST_TEST_SPLIT, isolated, mirrors=[bad.url, good.url])
    labels = isolated / "t10k-labels-idx1-ubyte.gz"
    assert files.labels("test") == str(labels)
    assert md5_of(labels) == MNIST.md5[labels.name]
    assert labels.read_bytes() == (mnist_mirror_dir / labels.name).read_bytes()
    # The images came from the first mirror; only the corrupt labels from the second.
    assert bad.hits == Counter({"t10k-images-idx3-ubyte.gz": 1, "t10k-labels-idx1-ubyte.gz": 1})
    assert good.hits == Counter({"t10k-labels-idx1-ubyte.gz": 1})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and bad.url in warnings[0] and "checksum" in warnings[0]
    assert leftovers(isolated) == []


def test_only_a_corrupt_mirror_leaves_nothing(isolated, serve, corrupt_mirror_dir):
    bad = serve(corrupt_mirror_dir)
    with pytest.raises(ValueError) as info:
        datasets.download(MNIST_TEST_SPLIT, mirrors=[bad.url])
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message
    assert "checksum" in message
    assert MNIST.md5["t10k-labels-idx1-ubyte.gz"] in message
    assert bad.url + "t10k-labels-idx1-ubyte.gz" in message
    assert not (isolated / "t10k-labels-idx1-ubyte.gz").exists()
    assert sorted(os.listdir(isolated)) == ["t10k-images-idx3-ubyte.gz"]  # the good file is kept


def test_not_idx_mirror_is_skipped(isolated, serve, mnist_mirror_dir, tmp_path):
    portal = tmp_path / "portal"
    portal.mkdir()
    for name in MNIST_TEST_SPLIT.file_names:
        (portal / name).write_text("<html>Please log in</html>")
    bad, good = serve(portal), serve(mnist_mirror_dir)
    files = datasets.download(MNIST_TEST_SPLIT, mirrors=[bad.url, good.url])
    assert md5_of(files.images("test")) == MNIST.md5["t10k-images-idx3-ubyte.gz"]
    assert sum(bad.hits.values()) == 2 and sum(good.hits.values()) == 2
    assert leftovers(isolated) == []


def test_404_refused_and_timeout_mirrors_fall_through(isolated, serve, mnist_mirror_dir, tmp_path, caplog):
    empty, good = serve(tmp_path / "empty"), serve(mnist_mirror_dir)
    refused = f"http://127.0.0.1:{free_port()}/"
    with socket.socket() as silent:  # accepts connections (backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hanging = f"http://127.0.0.1:{silent.getsockname()[1]}/"
        files = datasets.download(MNIST_TEST_SPLIT, mirrors=[empty.url, refused, hanging, good.url], timeout=0.3)
    assert md5_of(files.labels("test")) == MNIST.md5["t10k-labels-idx1-ubyte.gz"]
    assert empty.hits == Counter({name: 1 for name in MNIST_TEST_SPLIT.file_names})
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6
    assert sum("HTTP 404" in w for w in warnings) == 2
    assert sum(refused in w and "refused" in w.lower() for w in warnings) == 2
    assert sum(hanging in w and "timed out" in w.lower() for w in warnings) == 2
    assert leftovers(isolated) == []


def test_every_mirror_failing_lists_each(isolated, serve, tmp_path):
    empty = serve(tmp_path / "empty")
    refused = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError) as info:
        datasets.download(mirrors=[empty.url, refused])
    message = str(info.value)
    assert "could not download train-images-idx3-ubyte.gz from any mirror" in message
    assert f"{empty.url}train-images-idx3-ubyte.gz: HTTP 404" in message
    assert f"{refused}/train-images-idx3-ubyte.gz: ConnectionRefusedError" in message
    assert os.listdir(isolated) == []


def test_locate_reports_a_failed_download_among_the_places(isolated, monkeypatch):
    monkeypatch.setenv(datasets.ENV_MIRRORS, f"http://127.0.0.1:{free_port()}/")
    with pytest.raises(ValueError) as info:
        datasets.locate()
    message = str(info.value)
    assert "4. download into" in message and "ConnectionRefusedError" in message
    assert "--data-dir DIR" in message


def test_bad_file_already_in_the_download_folder(isolated, serve, mnist_mirror_dir):
    corrupt_copy(MNIST_DIR / "t10k-images-idx3-ubyte.gz", isolated / "t10k-images-idx3-ubyte.gz")
    mirror = serve(mnist_mirror_dir)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz: MD5 \w+, expected 2646ac"):
        datasets.download(MNIST_TEST_SPLIT, mirrors=[mirror.url])
    assert sum(mirror.hits.values()) == 0


# --------------------------------------------------------------------------- lookup order


def test_lookup_order(tmp_path, isolated, monkeypatch):
    explicit = write_tiny(tmp_path / "explicit")
    env = write_tiny(tmp_path / "env")
    write_tiny(tmp_path / "work" / "data" / "mnist")
    write_tiny(isolated)
    tiny = tiny_dataset(explicit)
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(datasets, "default_data_dirs", lambda: [Path.cwd() / "data" / "mnist"])
    monkeypatch.setenv(datasets.ENV_DATA, str(env))

    def where(*args):
        files = datasets.locate(*args, dataset=tiny, download=False)
        return files.source, files.directory

    assert where(explicit) == ("--data-dir", str(explicit))
    assert where() == ("MNIST_SPARK_DATA", str(env))
    monkeypatch.delenv(datasets.ENV_DATA)
    assert where() == ("data/mnist", str(tmp_path / "work" / "data" / "mnist"))
    shutil.rmtree(tmp_path / "work" / "data")
    files = datasets.locate(dataset=tiny, download=False)
    assert (files.source, files.directory, files.dataset) == ("cache", str(isolated), tiny)
    assert files.images("test") == str(isolated / "t10k-images-idx3-ubyte.gz")


def test_cwd_data_dir_comes_before_the_project_one(tmp_path, monkeypatch):
    monkeypatch.undo()
    monkeypatch.setenv(datasets.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(datasets.ENV_DATA, raising=False)
    write_tiny(tmp_path / "data" / "mnist")
    monkeypatch.chdir(tmp_path)
    files = datasets.locate(dataset=tiny_dataset(tmp_path / "data" / "mnist"), download=False)
    assert files.directory == str(tmp_path / "data" / "mnist")


def test_missing_explicit_dir_is_an_error_even_if_others_exist(tmp_path, isolated, monkeypatch):
    write_tiny(isolated)
    env = write_tiny(tmp_path / "env")
    monkeypatch.setattr(datasets, "default_data_dirs", lambda: [MNIST_DIR])
    monkeypatch.setenv(datasets.ENV_DATA, str(env))
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError) as info:
        datasets.locate(missing)
    message = str(info.value)
    assert message.startswith(f"--data-dir {missing}: the folder does not exist")
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message

    incomplete = tmp_path / "incomplete"
    incomplete.mkdir()
    (incomplete / "train-images-idx3-ubyte.gz").write_bytes(b"")
    (incomplete / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"found: notes\.txt, train-images-idx3-ubyte\.gz\.\nExpected"):
        datasets.locate(incomplete)

    monkeypatch.setenv(datasets.ENV_DATA, str(missing))
    with pytest.raises(ValueError, match=f"^MNIST_SPARK_DATA {missing}: the folder does not exist"):
        datasets.locate()


def test_all_fail_lists_every_place_and_the_fix(tmp_path, isolated, monkeypatch):
    first, second = tmp_path / "a" / "data" / "mnist", tmp_path / "b" / "data" / "mnist"
    second.mkdir(parents=True)
    (second / "README.md").write_text("no data here")
    monkeypatch.setattr(datasets, "default_data_dirs", lambda: [first, second])
    with pytest.raises(ValueError) as info:
        datasets.locate(download=False)
    message = str(info.value)
    places = [
        "MNIST_SPARK_DATA: not set",
        f"data/mnist: {first} (the folder does not exist)",
        f"data/mnist: {second} (found: README.md)",
        f"cache: {isolated} (the folder does not exist)",
        "download: not allowed (download=False)",
    ]
    positions = [message.index(place) for place in places]
    assert positions == sorted(positions)
    assert "--data-dir DIR" in message and "MNIST_SPARK_DATA=DIR" in message
    assert "allow downloading" in message
    for name in MNIST_NAMES:
        assert f"\n  {name}" in message


def test_uri_folders(tmp_path):
    folder = write_tiny(tmp_path / "uri")
    files = datasets.locate(folder.as_uri(), dataset=tiny_dataset(folder))
    assert files.images("train") == str(folder / "train-images-idx3-ubyte.gz")
    # A file system that cannot be reached (here: no libhdfs) is one clear error.
    with pytest.raises(ValueError, match="hdfs://namenode/data/mnist: cannot list the folder"):
        datasets.locate("hdfs://namenode/data/mnist")
    with pytest.raises(ValueError, match="downloads go to a local folder"):
        datasets.download(directory="hdfs://namenode/data/mnist")


# --------------------------------------------------------------------------- discovery


EMNIST_NAMES = tuple(
    f"emnist-digits-{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
    for split in ("train", "test")
    for kind in ("images", "labels")
)


def test_emnist_style_folder_by_pattern(tmp_path, caplog):
    folder = write_tiny(tmp_path / "emnist", EMNIST_NAMES)
    (folder / "emnist-digits-mapping.txt").write_text("0 48\n")
    (folder / "emnist-digits-train-images-idx3-ubyte.gz.md5").write_text("abc\n")
    (folder / ".emnist-digits-train-labels-idx1-ubyte.gz.part").write_bytes(b"")
    found = datasets.find_files(folder)
    assert found == {
        "train": (str(folder / EMNIST_NAMES[0]), str(folder / EMNIST_NAMES[1])),
        "test": (str(folder / EMNIST_NAMES[2]), str(folder / EMNIST_NAMES[3])),
    }
    files = datasets.locate(folder)
    assert files.source == "--data-dir"
    assert files.dataset.name == "emnist"
    assert files.dataset.md5 == {} and files.dataset.class_counts == {}
    assert files.dataset.files["test"] == EMNIST_NAMES[2:]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_raw_files_and_gzip_twins(tmp_path):
    raw_names = tuple(name[:-3] for name in MNIST_NAMES)
    folder = write_tiny(tmp_path / "raw", raw_names)
    tiny = tiny_dataset(write_tiny(tmp_path / "gz"))  # checksums of the same content, gzipped
    files = datasets.locate(folder, dataset=tiny)
    assert files.dataset is tiny  # raw names count as the dataset's names; checksums match
    assert files.labels("train") == str(folder / "train-labels-idx1-ubyte")
    write_tiny(folder)  # now both twins of each file: the .gz is taken
    assert datasets.find_files(folder)["test"][0] == str(folder / "t10k-images-idx3-ubyte.gz")
    twins = write_tiny(tmp_path / "twins", EMNIST_NAMES)
    for name in EMNIST_NAMES:
        (twins / name[:-3]).write_bytes(gzip.decompress((twins / name).read_bytes()))
    assert datasets.find_files(twins)["train"][1] == str(twins / EMNIST_NAMES[1])


def test_test_images_with_t10k_labels_and_incomplete_folder(tmp_path):
    names = ("x-train-images.gz", "x-train-labels.gz", "x-test-images.gz", "x-t10k-labels.gz")
    folder = write_tiny(tmp_path / "mixed", names)
    assert datasets.find_files(folder)["test"] == (str(folder / names[2]), str(folder / names[3]))
    (folder / names[3]).unlink()
    assert datasets.find_files(folder) is None
    assert datasets.find_files(tmp_path / "nothing") is None


def test_ambiguous_folder(tmp_path):
    folder = write_tiny(tmp_path / "two", EMNIST_NAMES)
    write_tiny(folder, tuple(name.replace("digits", "letters") for name in EMNIST_NAMES))
    with pytest.raises(ValueError) as info:
        datasets.locate(folder)
    message = str(info.value)
    assert str(folder) in message and "more than one file matches" in message
    assert "emnist-digits-train-images-idx3-ubyte.gz, emnist-letters-train-images-idx3-ubyte.gz" in message
    assert "emnist-digits-test-labels-idx1-ubyte.gz, emnist-letters-test-labels-idx1-ubyte.gz" in message


# --------------------------------------------------------------------------- checksums


def test_md5_mismatch_in_data_mnist_is_an_error(tmp_path, monkeypatch):
    folder = write_tiny(tmp_path / "work" / "data" / "mnist")
    monkeypatch.setattr(datasets, "default_data_dirs", lambda: [folder, MNIST_DIR])
    with pytest.raises(ValueError) as info:
        datasets.locate(download=False)
    message = str(info.value)
    for name in MNIST_NAMES:
        assert f"{folder / name}: MD5 {md5_of(folder / name)}, expected {MNIST.md5[name]}" in message
    assert "data/mnist" in message and "delete them" in message
    files = datasets.locate(download=False, verify=False)
    assert files.directory == str(folder) and files.dataset is MNIST


def test_md5_mismatch_in_the_cache_is_an_error(isolated):
    write_tiny(isolated)
    with pytest.raises(ValueError, match="Delete them and run again to download fresh copies"):
        datasets.locate(download=False)


def test_md5_mismatch_in_explicit_folder_is_a_warning(tmp_path, monkeypatch, caplog):
    folder = write_tiny(tmp_path / "fashion-mnist")
    files = datasets.locate(folder)
    assert files.source == "--data-dir"
    assert files.dataset.name == "fashion-mnist"
    assert files.dataset.md5 == {} and files.dataset.class_counts == {}
    assert files.dataset.files == dict(MNIST.files)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "4 of the files" in warnings[0] and "train-images-idx3-ubyte.gz" in warnings[0]
    assert "do not match MNIST's published checksums" in warnings[0]
    assert "treating the folder as another dataset in the MNIST layout" in warnings[0]

    caplog.clear()
    monkeypatch.setenv(datasets.ENV_DATA, str(folder))
    assert datasets.locate().dataset.name == "fashion-mnist"
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    caplog.clear()
    files = datasets.locate(folder, verify=False)
    assert files.dataset is MNIST and not caplog.records
