"""ImageNet weights downloaded once on the driver, through keras.utils.get_file with Keras' MD5.

A local HTTP server stands in for Keras' storage ($MNIST_SPARK_WEIGHTS_URL), serving a small
weights file the test writes; the published MD5 is replaced by that file's."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import threading

import pytest

from mnist_spark import cli, weights

NAME = "VGG16"
PUBLISHED = weights.IMAGENET_WEIGHTS[NAME]


def _weights_bytes(tmp_path) -> bytes:
    """A small HDF5 file in the layout of Keras' published weights (``layer_names``)."""
    import h5py
    import numpy as np

    path = tmp_path / "made.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"block1_conv1"]
        f.create_group("block1_conv1").create_dataset("kernel", data=np.arange(27, dtype=np.float32))
    return path.read_bytes()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A local mirror of Keras' storage holding VGG16's file; yields its folder and the requests it served."""
    served = tmp_path / "served"
    (served / PUBLISHED.url_folder).mkdir(parents=True)
    payload = _weights_bytes(tmp_path)
    (served / PUBLISHED.url_folder / PUBLISHED.weights_file).write_bytes(payload)
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=served))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv(weights.ENV_WEIGHTS_URL, f"http://127.0.0.1:{server.server_port}/")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv(weights.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(weights.ENV_OFFLINE, raising=False)
    monkeypatch.setitem(
        weights.IMAGENET_WEIGHTS, NAME, dataclasses.replace(PUBLISHED, weights_md5=hashlib.md5(payload).hexdigest())
    )
    yield {
        "file": served / PUBLISHED.url_folder / PUBLISHED.weights_file,
        "payload": payload,
        "requests": requests,
        "cache": tmp_path / "keras" / "models",
    }
    server.shutdown()
    server.server_close()


def test_imagenet_weights_are_downloaded_once_into_keras_cache(mirror):
    found = weights.resolve_weights("imagenet", NAME)
    assert found.source == "download" and found.suffix == ".h5"
    assert found.location == str(mirror["cache"] / PUBLISHED.weights_file)
    assert found.digest == hashlib.sha256(mirror["payload"]).hexdigest()
    assert mirror["requests"] == [f"/{PUBLISHED.url_folder}/{PUBLISHED.weights_file}"]
    assert os.listdir(mirror["cache"]) == [PUBLISHED.weights_file]  # no scratch folder left
    again = weights.resolve_weights("imagenet", NAME)  # found in the cache now
    assert again.location == found.location and len(mirror["requests"]) == 1


def test_a_corrupt_download_is_refused_in_one_line_and_not_kept(mirror):
    damaged = bytearray(mirror["payload"])
    damaged[-1] ^= 0xFF
    mirror["file"].write_bytes(bytes(damaged))
    with pytest.raises(weights.WeightsDownloadError) as error:
        weights.resolve_weights("imagenet", NAME)
    message = str(error.value)
    assert "\n" not in message
    for part in (
        PUBLISHED.weights_file,
        hashlib.md5(damaged).hexdigest(),
        weights.IMAGENET_WEIGHTS[NAME].weights_md5,
        "it was not kept",
        "$MNIST_SPARK_WEIGHTS",
    ):
        assert part in message, part
    assert os.listdir(mirror["cache"]) == []  # the next run downloads again, never uses the bad file
    status, line = cli.classify(error.value)
    assert status == cli.EXIT_FAILED and line == f"WeightsDownloadError: {message}"  # a retry may help


def test_offline_never_downloads(mirror, monkeypatch):
    with pytest.raises(ValueError, match="are not on this machine.*may not download them"):
        weights.resolve_weights("imagenet", NAME, offline=True)
    monkeypatch.setenv(weights.ENV_OFFLINE, "1")
    with pytest.raises(ValueError, match=rf"needs {PUBLISHED.weights_file}.*--offline"):
        weights.resolve_weights("imagenet", NAME)
    assert mirror["requests"] == [] and not mirror["cache"].exists()


def test_an_unreachable_mirror_is_one_line_that_a_retry_may_help(mirror, monkeypatch):
    monkeypatch.setenv(weights.ENV_WEIGHTS_URL, "http://127.0.0.1:9/nothing/")  # the discard port
    with pytest.raises(
        weights.WeightsDownloadError,
        match=r"could not download the ImageNet weights of "
        r"VGG16 from http://127\.0\.0\.1:9/nothing/vgg16/.*--offline",
    ) as error:
        weights.resolve_weights("imagenet", NAME)
    assert cli.classify(error.value)[0] == cli.EXIT_FAILED
