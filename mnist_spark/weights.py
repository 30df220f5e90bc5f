"""Weight files of the pretrained networks: found and read on the driver, shipped to the workers.

The ``weights`` param of :class:`mnist_spark.featurizer.DeepImageFeaturizer`
(and of :class:`mnist_spark.ml.DeepImagePredictor`) is ``imagenet``, ``none``
or the path of a file. On the driver, before any task runs:

1. :func:`resolve_weights` finds the file. ``imagenet`` is Keras' published
   file of the network without its top (:data:`IMAGENET_WEIGHTS`), looked for
   in ``$MNIST_SPARK_WEIGHTS``, then in Keras' cache (:func:`keras_cache_dirs`),
   and else downloaded once into that cache by ``keras.utils.get_file`` with
   Keras' MD5 (:func:`download_weights`); offline (``--offline``,
   ``$MNIST_SPARK_OFFLINE``) a missing file is one error saying where to get
   it. Anything else is a path or URI of a file, or of a folder holding the
   file under Keras' name.
2. :func:`read_weights` reads the file once per version, hashes it (the
   SHA-256 is the weights' identity in the workers' model cache) and finds how
   Keras loads it: ``.h5``, ``.weights.h5`` or ``.keras``.
3. :func:`broadcast_weights` ships the bytes to the workers: one broadcast per
   application and file, or on Spark Connect through
   :func:`mnist_spark.payloads.ship`. Executors never download.

Whether the weights fit the network is checked where the network is built,
by :func:`mnist_spark.featurizer.check_weights`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: ``weights`` values that are not a file.
WEIGHTS_IMAGENET, WEIGHTS_NONE = "imagenet", "none"
#: A folder of Keras weight files (by Keras' names) for clusters without internet access.
ENV_WEIGHTS = "MNIST_SPARK_WEIGHTS"
#: ``1`` forbids downloading weights (``--offline``): ``imagenet`` must be found on the machine.
ENV_OFFLINE = "MNIST_SPARK_OFFLINE"
#: A mirror of Keras' weight files (the same folders and names) to download from instead.
ENV_WEIGHTS_URL = "MNIST_SPARK_WEIGHTS_URL"
#: Where Keras downloads its ImageNet weights from.
KERAS_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"

#: The first bytes of an HDF5 file (``.h5``, ``.weights.h5``) and of a zip archive (``.keras``).
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"


@dataclass(frozen=True)
class ImagenetWeights:
    """Keras' published file of one network's ImageNet weights.

    Examples
    --------
    >>> IMAGENET_WEIGHTS["VGG16"].weights_file, IMAGENET_WEIGHTS["VGG16"].url_folder
    ('vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5', 'vgg16')
    """

    name: str  #: the modelName, e.g. ``InceptionV3``
    weights_file: str  #: Keras' file name
    weights_md5: str  #: that file's MD5, as Keras publishes it
    url_folder: str  #: folder of that file on Keras' storage

    @property
    def weights_url(self) -> str:
        return f"{KERAS_WEIGHTS_URL}{self.url_folder}/{self.weights_file}"


#: Keras' files of the networks of :data:`mnist_spark.featurizer.ARCHITECTURES`
#: without their top (the classifier), by modelName.
IMAGENET_WEIGHTS = {
    w.name: w
    for w in (
        ImagenetWeights(
            "InceptionV3",
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "bcbd6486424b2319ff4ef7d526e38f63",
            "inception_v3",
        ),
        ImagenetWeights(
            "Xception",
            "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "b0042744bf5b25fce3cb969f33bebb97",
            "xception",
        ),
        ImagenetWeights(
            "ResNet50",
            "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "4d473c1dd8becc155b73f8504c6f6626",
            "resnet",
        ),
        ImagenetWeights(
            "VGG16",
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "6d6bbae143d832006294945121d1f1fc",
            "vgg16",
        ),
        ImagenetWeights(
            "VGG19",
            "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5",
            "253f8cb515780f3b799900260a226db6",
            "vgg19",
        ),
    )
}


@dataclass(frozen=True)
class WeightsFile:
    """A weights file found and read on the driver."""

    location: str  #: local path or URI
    size: int  #: bytes
    digest: str  #: SHA-256 of the content: the weights' identity in the worker cache
    suffix: str  #: how Keras loads it: ``.h5`` (legacy, as Keras publishes ImageNet weights),
    #: ``.weights.h5`` (``save_weights``) or ``.keras`` (a saved model)
    source: str  #: how it was found: ``path``, ``$MNIST_SPARK_WEIGHTS``, ``keras cache`` or ``download``

    def describe(self) -> str:
        return f"{self.location} ({self.source}, {self.size / 2**20:.1f} MiB, sha256 {self.digest[:12]})"


class WeightsDownloadError(OSError):
    """Downloading ImageNet weights failed, or gave a file other than Keras' (a retry may help)."""


_FILES: dict = {}  # (location, size, mtime) -> WeightsFile: each file is read and hashed once
_BROADCASTS: dict = {}  # (application id, digest) -> Broadcast of the file's bytes


# --------------------------------------------------------------------------- finding the file


def keras_cache_dirs() -> list[str]:
    """Where Keras keeps downloaded weights, as ``keras.utils.get_file`` decides it.

    ``$KERAS_HOME/models``, else ``~/.keras/models``; Keras falls back to
    ``/tmp/.keras/models`` when the home folder is not writable.
    """
    if "KERAS_HOME" in os.environ:
        homes = [os.environ["KERAS_HOME"]]
    else:
        homes = [os.path.join(os.path.expanduser("~"), ".keras"), os.path.join("/tmp", ".keras")]
    return [os.path.join(os.path.expanduser(home), "models") for home in homes]


def resolve_weights(weights: str, model_name: str, *, offline: bool | None = None) -> WeightsFile | None:
    """Find the weights on the driver; ``None`` for ``weights="none"``.

    ``imagenet`` looks for Keras' file name (:attr:`ImagenetWeights.weights_file`)
    in ``$MNIST_SPARK_WEIGHTS``, then in Keras' cache (:func:`keras_cache_dirs`),
    and when it is in neither, downloads it into Keras' cache, once, here on
    the driver (:func:`download_weights`: ``keras.utils.get_file`` with
    Keras' published MD5). Offline (``offline=True``, or
    ``$MNIST_SPARK_OFFLINE=1``) a missing file is an error that says which
    file is needed, where to put it and how to get it. Anything else is a
    path or URI of a file, or of a folder holding the file under Keras' name.

    Raises
    ------
    ValueError
        When the file is not found (and may not be downloaded).
    WeightsDownloadError
        When the download fails or its MD5 differs from Keras' (a retry may help).
    """
    from mnist_spark import storage
    from mnist_spark.session import require_tensorflow

    require_tensorflow()  # every featurizer runs a network: say so before any task
    published = IMAGENET_WEIGHTS[model_name]
    if weights == WEIGHTS_NONE:
        return None
    if weights == WEIGHTS_IMAGENET:
        candidates = []
        folder = os.environ.get(ENV_WEIGHTS)
        if folder:
            candidates.append((storage.join(folder, published.weights_file), f"${ENV_WEIGHTS}"))
        candidates += [(os.path.join(d, published.weights_file), "keras cache") for d in keras_cache_dirs()]
        for location, source in candidates:
            if storage.exists(location):
                return read_weights(location, source, published)
        if not (is_offline() if offline is None else offline):
            return read_weights(download_weights(published), "download", published)
        places = [f"${ENV_WEIGHTS} ({folder})" if folder else f"${ENV_WEIGHTS} (not set)"]
        places.append(f"Keras' cache {keras_cache_dirs()[0]}")
        raise ValueError(
            f"the ImageNet weights of {model_name} are not on this machine: it needs "
            f"{published.weights_file}, looked for in {' and '.join(places)}, and may not download "
            f"them (--offline or ${ENV_OFFLINE}). Get the file where there is internet access, with "
            f'python -c "import keras; '
            f'keras.applications.{model_name}(include_top=False)" (it lands in ~/.keras/models) or '
            f"from {published.weights_url}; then copy it into Keras' cache folder or into a folder "
            f"named by ${ENV_WEIGHTS}, or pass its path as weights. weights='none' gives random "
            "weights for an offline smoke run"
        )
    location = weights
    if not storage.exists(location):
        raise ValueError(
            f"weights file {location} does not exist; give the path of a {model_name} weights file "
            f"without the top layers (e.g. Keras' {published.weights_file}), 'imagenet' or 'none'"
        )
    filesystem, path = storage.resolve(location)
    from pyarrow import fs as pafs

    if filesystem.get_file_info(path).type == pafs.FileType.Directory:
        inside = storage.join(location, published.weights_file)
        if not storage.exists(inside):
            raise ValueError(
                f"weights folder {location} has no {published.weights_file}, the file of {model_name}'s "
                "ImageNet weights; put it there or give the path of the weights file itself"
            )
        location = inside
    return read_weights(location, "path", published)


# --------------------------------------------------------------------------- downloading


def is_offline() -> bool:
    """True when ``$MNIST_SPARK_OFFLINE`` forbids downloads (``1``, ``true``, ``yes``)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


def forbid_downloads(forbid: bool = True) -> None:
    """``--offline``: set ``$MNIST_SPARK_OFFLINE`` in this process (a job's entry point), so
    missing ImageNet weights are an error instead of a download."""
    if forbid:
        os.environ[ENV_OFFLINE] = "1"


def weights_origin(published: ImagenetWeights) -> str:
    """Where the ImageNet weights of a network are downloaded from: Keras' storage or
    ``$MNIST_SPARK_WEIGHTS_URL``, a mirror with the same folders and file names."""
    base = os.environ.get(ENV_WEIGHTS_URL) or KERAS_WEIGHTS_URL
    return f"{base.rstrip('/')}/{published.url_folder}/{published.weights_file}"


def _writable_cache_dir() -> str:
    """The first of Keras' cache folders (:func:`keras_cache_dirs`) this process can write."""
    for folder in keras_cache_dirs():
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK | os.X_OK):
            return folder
    raise WeightsDownloadError(
        f"none of Keras' cache folders ({', '.join(keras_cache_dirs())}) can be "
        "written; set KERAS_HOME to a writable folder"
    )


def download_weights(published: ImagenetWeights) -> str:
    """Download a network's ImageNet weights into Keras' cache; return the file's path.

    ``keras.utils.get_file`` fetches the file with Keras' published MD5 into a
    scratch folder beside the cache; only a file whose MD5 matches is moved
    into the cache (atomically), so a corrupted download is never found there
    later, and two processes downloading at once each move a whole file.

    Raises
    ------
    WeightsDownloadError
        One line naming the file, the address and what went wrong.
    """
    import shutil

    import keras

    from mnist_spark.session import quiet_keras

    origin = weights_origin(published)
    folder = _writable_cache_dir()
    target = os.path.join(folder, published.weights_file)
    quiet_keras()
    logger.info("downloading the ImageNet weights of %s from %s into %s", published.name, origin, folder)
    started = time.perf_counter()
    scratch = tempfile.mkdtemp(prefix=".download-", dir=folder)
    try:
        try:
            fetched = keras.utils.get_file(
                published.weights_file,
                origin,
                file_hash=published.weights_md5,
                hash_algorithm="md5",
                cache_dir=scratch,
                cache_subdir="",
            )
        except ValueError:
            fetched = os.path.join(scratch, published.weights_file)
            if not os.path.isfile(fetched):
                raise
            with open(fetched, "rb") as stream:
                md5 = hashlib.md5(stream.read(), usedforsecurity=False).hexdigest()
            raise WeightsDownloadError(
                f"{origin}: the downloaded {published.weights_file} has MD5 {md5}, not {published.weights_md5} "
                f"as Keras publishes it (a broken download, or not Keras' file); it was not kept. Run again, or "
                f"put the file in {folder} or in ${ENV_WEIGHTS} yourself"
            ) from None
        except Exception as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise WeightsDownloadError(
                f"could not download the ImageNet weights of {published.name} from {origin}: {reason}. "
                f"Without internet access, put {published.weights_file} in {folder} or in ${ENV_WEIGHTS} "
                f"(or name a mirror in ${ENV_WEIGHTS_URL}); --offline ({ENV_OFFLINE}=1) says which file "
                "is missing without trying"
            ) from None
        os.replace(fetched, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info(
        "downloaded %s (%.1f MiB, MD5 checked) in %.1f s",
        target,
        os.path.getsize(target) / 2**20,
        time.perf_counter() - started,
    )
    return target


# --------------------------------------------------------------------------- reading and shipping


def read_weights(location: str, source: str, published: ImagenetWeights) -> WeightsFile:
    """Read a weights file once per version (size, mtime); hash it and find its format.

    A file named like ``published``'s whose MD5 differs from Keras' is read
    all the same, with a warning.
    """
    from mnist_spark import storage

    filesystem, path = storage.resolve(location)
    info = filesystem.get_file_info(path)
    key = (storage.to_uri(location), info.size, info.mtime_ns)
    known = _FILES.get(key)
    if known is not None:
        return known
    started = time.perf_counter()
    payload = storage.read_bytes(location)
    if not payload:
        raise ValueError(f"weights file {location} is empty; copy it again")
    suffix = _weights_suffix(payload, location)
    weights = WeightsFile(storage.to_uri(location), len(payload), hashlib.sha256(payload).hexdigest(), suffix, source)
    if os.path.basename(path) == published.weights_file:
        md5 = hashlib.md5(payload, usedforsecurity=False).hexdigest()
        if md5 != published.weights_md5:
            logger.warning(
                "%s is named like Keras' ImageNet weights of %s but its MD5 is %s, not %s: "
                "it is not the published file",
                location,
                published.name,
                md5,
                published.weights_md5,
            )
    _FILES.clear()  # keep one file's record at a time
    _FILES[key] = weights
    logger.info("read weights %s in %.1f s", weights.describe(), time.perf_counter() - started)
    return weights


def _weights_suffix(payload: bytes, location: str) -> str:
    """How Keras must load these bytes: ``.h5`` (legacy layout), ``.weights.h5`` or ``.keras``.

    Keras picks the loader by file name; the content decides here, so a
    ``save_weights`` file renamed to ``.h5`` still loads.
    """
    import io

    if payload.startswith(ZIP_SIGNATURE):
        return ".keras"
    if not payload.startswith(HDF5_SIGNATURE):
        raise ValueError(
            f"weights file {location} is not an HDF5 weights file (.h5 or .weights.h5) nor a .keras "
            "file; give the weights Keras publishes or a file written by model.save_weights"
        )
    import h5py

    try:
        with h5py.File(io.BytesIO(payload), "r") as f:
            legacy = "layer_names" in f.attrs or "model_weights" in f
    except OSError as error:
        raise ValueError(
            f"weights file {location} is damaged or truncated ({error}); copy or download it again"
        ) from None
    return ".h5" if legacy else ".weights.h5"


def broadcast_weights(spark, weights: WeightsFile):
    """The weight file's bytes as a broadcast: shipped once per executor, read once per worker.

    On Spark Connect (no broadcasts) they travel with the query, or through
    shared storage when large (:func:`mnist_spark.payloads.ship`).
    """
    from mnist_spark import storage
    from mnist_spark.payloads import ship
    from mnist_spark.session import is_connect

    if is_connect(spark):
        return ship(spark, storage.read_bytes(weights.location), "weights")
    context = spark.sparkContext
    key = (context.applicationId, weights.digest)
    broadcast = _BROADCASTS.get(key)
    if broadcast is None:
        for old in _BROADCASTS.values():
            with contextlib.suppress(Exception):  # a broadcast of a stopped context
                old.unpersist()
        _BROADCASTS.clear()
        broadcast = context.broadcast(storage.read_bytes(weights.location))
        _BROADCASTS[key] = broadcast
    return broadcast
