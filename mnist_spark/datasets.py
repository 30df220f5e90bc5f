"""Where a dataset's files are: find, verify and download MNIST-layout IDX files.

A dataset in the *four-file IDX layout* has a train and a test split, each an
images file and a labels file (MNIST, Fashion-MNIST, KMNIST, EMNIST, ...).
:func:`locate` finds them, in this order:

1. an explicit folder (``--data-dir``), local or a URI on a shared file system
   (``hdfs://``, ``s3://``, read through ``pyarrow.fs``); when given it is the only
   place looked at;
2. the folder named by the ``MNIST_SPARK_DATA`` environment variable (equally strict);
3. ``data/mnist`` in the working folder, then in the project (:func:`default_data_dirs`);
4. the user cache folder (:func:`cache_dir`);
5. a download from the dataset's mirrors into the cache folder (``download=True``).

Files found in ``data/mnist``, the cache, or downloaded must match the published
MD5 of their uncompressed content where one is known. A folder the user names
explicitly may hold another dataset with the same file names (Fashion-MNIST), so
there a mismatch only logs a warning and the result describes a derived dataset.

Examples
--------
>>> from mnist_spark import datasets
>>> files = datasets.locate()                        # doctest: +SKIP
>>> files.source, files.images("train")              # doctest: +SKIP
('data/mnist', '/home/me/mnist_spark/data/mnist/train-images-idx3-ubyte.gz')
"""

from __future__ import annotations

import contextlib
import fnmatch
import http.client
import logging
import os
import posixpath
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from mnist_spark import __version__, idx, storage

logger = logging.getLogger(__name__)

ENV_DATA = "MNIST_SPARK_DATA"
ENV_MIRRORS = "MNIST_SPARK_MIRRORS"
ENV_CACHE = "MNIST_SPARK_CACHE"

SPLITS = ("train", "test")

# Sidecar files that may sit next to the data and match a name pattern.
_IGNORED_SUFFIXES = (".md5", ".sha1", ".sha256", ".txt", ".md", ".json", ".part", ".tmp", ".crdownload", ".download")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class IdxDataset:
    """A dataset in the four-file IDX layout.

    Parameters
    ----------
    name : str
        Short name, used for the cache folder (``"mnist"``).
    files : Mapping[str, tuple[str, str]]
        Split (``"train"``, ``"test"``) to ``(images file name, labels file name)``.
    num_classes : int
        Number of classes of the labels.
    md5 : Mapping[str, str]
        File name to the MD5 (hex) of its *uncompressed* content, where known.
        A raw file (the name without ``.gz``) has the same checksum.
    class_counts : Mapping[str, tuple[int, ...]]
        Split to the number of examples per class, where known.
    mirrors : tuple[str, ...]
        Base URLs to download from; the file name is appended.
    """

    name: str
    files: Mapping[str, tuple[str, str]]
    num_classes: int = 10
    md5: Mapping[str, str] = field(default_factory=dict)
    class_counts: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    mirrors: tuple[str, ...] = ()

    def __post_init__(self):
        for split, pair in self.files.items():
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ValueError(
                    f"dataset {self.name!r}: split {split!r} must map to (images file, labels file), got {pair!r}"
                )

    def __hash__(self) -> int:
        # The mappings are not hashable; the name and file names identify a dataset.
        return hash((self.name, self.file_names))

    @property
    def file_names(self) -> tuple[str, ...]:
        """All file names, split by split, images before labels."""
        return tuple(name for pair in self.files.values() for name in pair)

    @property
    def title(self) -> str:
        """The name as shown in messages (``"MNIST"``)."""
        return self.name.upper()

    def known_md5(self, file_name: str) -> str | None:
        """The published MD5 of ``file_name``'s uncompressed content, or None.

        The raw (uncompressed) file name, without ``.gz``, has the same checksum.
        """
        name = os.path.basename(file_name)
        return self.md5.get(name) or self.md5.get(name + ".gz")


MNIST = IdxDataset(
    name="mnist",
    files=MappingProxyType(
        {
            "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
            "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
        }
    ),
    num_classes=10,
    md5=MappingProxyType(
        {
            "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
        }
    ),
    class_counts=MappingProxyType(
        {
            "train": (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
            "test": (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
        }
    ),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
)


@dataclass(frozen=True)
class DatasetFiles:
    """The located files of one dataset.

    Parameters
    ----------
    directory : str
        The folder (or, later, URI) the files were found in.
    source : str
        How it was found: ``"--data-dir"``, ``"MNIST_SPARK_DATA"``, ``"data/mnist"``,
        ``"cache"`` or ``"download"``.
    splits : Mapping[str, tuple[str, str]]
        Split to ``(images path, labels path)``, full paths.
    dataset : IdxDataset
        :data:`MNIST`, or a derived dataset (no checksums, no class counts) for
        another dataset in the same layout.
    """

    directory: str
    source: str
    splits: Mapping[str, tuple[str, str]]
    dataset: IdxDataset

    def _pair(self, split: str) -> tuple[str, str]:
        try:
            return self.splits[split]
        except KeyError:
            raise ValueError(
                f"unknown split {split!r} of dataset {self.dataset.name!r} in {self.directory}; "
                f"available: {', '.join(self.splits)}"
            ) from None

    def images(self, split: str) -> str:
        """Full path of the images file of ``split``.

        Raises
        ------
        ValueError
            When the split does not exist; the message lists the available ones.
        """
        return self._pair(split)[0]

    def labels(self, split: str) -> str:
        """Full path of the labels file of ``split``.

        Raises
        ------
        ValueError
            When the split does not exist; the message lists the available ones.
        """
        return self._pair(split)[1]


# --------------------------------------------------------------------------- folders


def default_data_dirs() -> list[Path]:
    """The ``data/mnist`` folders looked at: the working folder's, then the project's.

    Returns
    -------
    list of Path
        ``<cwd>/data/mnist`` and, when different, ``<project root>/data/mnist``.
    """
    dirs = [Path.cwd() / "data" / "mnist"]
    project = Path(__file__).resolve().parents[1] / "data" / "mnist"
    if project.resolve() != dirs[0].resolve():
        dirs.append(project)
    return dirs


def cache_dir(dataset: IdxDataset = MNIST) -> Path:
    """The user cache folder of ``dataset``.

    ``$MNIST_SPARK_CACHE`` when set (used as is), else
    ``$XDG_CACHE_HOME/mnist_spark/<name>``, else ``~/.cache/mnist_spark/<name>``.
    The folder is not created.
    """
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    root = Path(base).expanduser() if base else Path.home() / ".cache"
    return root / "mnist_spark" / dataset.name


def _local_dir(directory: str | os.PathLike) -> Path | str:
    """The folder ``directory`` names: a local ``Path``, or the URI itself (``hdfs://``,
    ``s3://``...) for a folder on a shared file system, read through ``pyarrow.fs``.

    ``file://`` URIs become paths.
    """
    location = os.fspath(directory)
    if storage.is_uri(location):
        parts = urllib.parse.urlsplit(location)
        if parts.scheme == "file":
            return Path(urllib.request.url2pathname(parts.path))
        return location.rstrip("/")
    return Path(location).expanduser()


def _list_files(directory: Path | str) -> list[str] | None:
    """Names of the regular files in ``directory``, or None when it is not a folder."""
    if isinstance(directory, str):
        try:
            return storage.list_files(directory)
        except OSError as error:
            raise ValueError(
                f"{directory}: cannot list the folder ({error}); check the URI and the file system's credentials"
            ) from None
    if not directory.is_dir():
        return None
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_file())


def _describe_found(names: list[str] | None, directory: Path | str, limit: int = 20) -> str:
    if names is None:
        if isinstance(directory, str):
            return "no such folder"
        return "the folder does not exist" if not directory.exists() else "it is not a folder"
    if not names:
        return "found: nothing (empty folder)"
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names)} files)" if len(names) > limit else ""
    return f"found: {shown}{more}"


# --------------------------------------------------------------------------- discovery


def _exact(names: set[str], wanted: str) -> str | None:
    """``wanted`` or its raw / gzip twin, if present (the dataset's own name first)."""
    twin = wanted[:-3] if wanted.endswith(".gz") else wanted + ".gz"
    for candidate in (wanted, twin):
        if candidate in names:
            return candidate
    return None


def _candidates(names: list[str], patterns: Sequence[str]) -> list[str]:
    hits = [
        name
        for name in names
        if not name.startswith(".")
        and not name.lower().endswith(_IGNORED_SUFFIXES)
        and any(fnmatch.fnmatchcase(name.lower(), pattern) for pattern in patterns)
    ]
    # A file and its gzip twin are one candidate; keep the compressed one.
    return [name for name in hits if not (not name.endswith(".gz") and name + ".gz" in hits)]


_PATTERNS = {
    ("train", 0): ("*train-images*",),
    ("train", 1): ("*train-labels*",),
    ("test", 0): ("*t10k-images*", "*test-images*"),
    ("test", 1): ("*t10k-labels*", "*test-labels*"),
}


def find_files(directory: str | os.PathLike, dataset: IdxDataset = MNIST) -> dict[str, tuple[str, str]] | None:
    """Find a dataset's four files in a folder.

    First the dataset's exact file names are tried, each also without ``.gz``
    (raw IDX) or with it. Failing that, any dataset in the same layout is
    accepted by name pattern: one file matching ``*train-images*`` and one
    ``*train-labels*``, one ``*t10k-images*`` or ``*test-images*`` and one
    ``*t10k-labels*`` or ``*test-labels*`` (case-insensitive; hidden files and
    sidecars such as ``.md5`` or ``.txt`` are ignored, and a file with its
    gzip twin counts once, the ``.gz`` preferred).

    Parameters
    ----------
    directory : str or PathLike
        A local folder, or a URI read through ``pyarrow.fs`` (``file://``,
        ``hdfs://``, ``s3://``).
    dataset : IdxDataset
        Whose file names to look for.

    Returns
    -------
    dict or None
        Split to ``(images path, labels path)``, or None when the folder does not
        exist or does not hold a complete set (both splits).

    Raises
    ------
    ValueError
        When a name pattern matches more than one file; the message lists them.
    """
    folder = _local_dir(directory)
    names = _list_files(folder)
    if not names:
        return None
    present = set(names)

    exact: dict[str, tuple[str, str]] = {}
    for split, (images, labels) in dataset.files.items():
        pair = (_exact(present, images), _exact(present, labels))
        if None in pair:
            break
        exact[split] = pair
    else:
        if exact:
            return {split: (storage.join(folder, a), storage.join(folder, b)) for split, (a, b) in exact.items()}

    found: dict[tuple[str, int], str] = {}
    ambiguous = []
    for key, patterns in _PATTERNS.items():
        hits = _candidates(names, patterns)
        if len(hits) > 1:
            role = f"{key[0]} {'images' if key[1] == 0 else 'labels'}"
            ambiguous.append(f"{role} ({' or '.join(patterns)}): {', '.join(hits)}")
        elif hits:
            found[key] = hits[0]
    if ambiguous:
        raise ValueError(
            f"{folder}: cannot tell which files to use, more than one file matches:\n  "
            + "\n  ".join(ambiguous)
            + "\nKeep one dataset per folder, or pass the folder holding just the four files."
        )
    if len(found) < len(_PATTERNS):
        return None
    return {
        split: (storage.join(folder, found[(split, 0)]), storage.join(folder, found[(split, 1)])) for split in SPLITS
    }


# --------------------------------------------------------------------------- checksums


def _md5_mismatches(dataset: IdxDataset, splits: Mapping[str, tuple[str, str]]) -> list[tuple]:
    """``(path, expected, found)`` for each file whose known MD5 differs."""
    bad = []
    for pair in splits.values():
        for path in pair:
            expected = dataset.known_md5(path)
            if expected is None:
                continue
            if storage.is_uri(path):
                with storage.open_input(path) as stream:
                    _, found = idx.inspect(stream, md5=True, name=path)
            else:
                _, found = idx.inspect(path, md5=True)
            logger.debug("md5 %s: %s (expected %s)", path, found, expected)
            if found != expected:
                bad.append((path, expected, found))
    return bad


def _uses_dataset_names(dataset: IdxDataset, splits: Mapping[str, tuple[str, str]]) -> bool:
    for split, pair in splits.items():
        wanted = dataset.files.get(split)
        if wanted is None:
            return False
        for path, name in zip(pair, wanted, strict=True):
            if _exact({os.path.basename(path)}, name) is None:
                return False
    return True


def _derived(dataset: IdxDataset, folder: Path, splits: Mapping[str, tuple[str, str]]) -> IdxDataset:
    name = (posixpath.basename(folder) if isinstance(folder, str) else folder.resolve().name) or "idx"
    return IdxDataset(
        name=name,
        files={split: (os.path.basename(a), os.path.basename(b)) for split, (a, b) in splits.items()},
        num_classes=dataset.num_classes,
    )


def _identify(
    dataset: IdxDataset,
    folder: Path,
    splits: Mapping[str, tuple[str, str]],
    *,
    source: str,
    strict: bool,
    verify: bool,
) -> DatasetFiles:
    """Check checksums where known and decide which dataset the files are."""
    same = _uses_dataset_names(dataset, splits)
    bad = _md5_mismatches(dataset, splits) if verify else []
    if bad and strict:
        lines = "\n  ".join(f"{p}: MD5 {found}, expected {exp}" for p, exp, found in bad)
        if source == "data/mnist":
            fix = (
                f"Replace them with good copies, or delete them to fall back to the cache "
                f"({cache_dir(dataset)}) and downloading."
            )
        else:
            fix = "Delete them and run again to download fresh copies."
        raise ValueError(
            f"{dataset.title} files in {folder} ({source}) do not match the published checksum "
            f"of their uncompressed content (corrupt or incomplete):\n  {lines}\n{fix}"
        )
    result = dataset
    if bad:
        logger.warning(
            "%s: %d of the files (%s) do not match %s's published checksums; treating the "
            "folder as another dataset in the %s layout",
            folder,
            len(bad),
            ", ".join(Path(path).name for path, _, _ in bad),
            dataset.title,
            dataset.title,
        )
        result = _derived(dataset, folder, splits)
    elif not same:
        result = _derived(dataset, folder, splits)
    return DatasetFiles(directory=str(folder), source=source, splits=dict(splits), dataset=result)


# --------------------------------------------------------------------------- locate


def _expected_names(dataset: IdxDataset) -> str:
    return ", ".join(dataset.file_names)


def _explicit(location, source: str, dataset: IdxDataset, verify: bool) -> DatasetFiles:
    """Files in a folder the user named: it must hold them, no fallback."""
    text = os.fspath(location)
    if not text.strip():
        raise ValueError(f"{source} is empty; give the folder holding the {dataset.title} files")
    folder = _local_dir(text)
    if not storage.is_uri(text):
        folder = folder.absolute()
    splits = find_files(folder, dataset)
    if splits is None:
        names = _list_files(folder)
        problem = (
            _describe_found(names, folder)
            if names is None
            else f"the {dataset.title} files are not there; {_describe_found(names, folder)}"
        )
        raise ValueError(
            f"{source} {folder}: {problem}.\n"
            f"Expected a folder holding: {_expected_names(dataset)} (also without .gz), "
            "or for another dataset in the same layout one file each matching *train-images*, "
            "*train-labels*, "
            "*t10k-images* or *test-images*, *t10k-labels* or *test-labels*."
        )
    files = _identify(dataset, folder, splits, source=source, strict=False, verify=verify)
    logger.info("%s files: %s (%s)", files.dataset.title, folder, source)
    return files


def locate(
    data_dir: str | os.PathLike | None = None,
    *,
    dataset: IdxDataset = MNIST,
    download: bool = True,
    verify: bool = True,
    timeout: float = 30.0,
) -> DatasetFiles:
    """Find a dataset's files, downloading them into the cache if needed.

    Looks, in order, at ``data_dir``, ``$MNIST_SPARK_DATA``, :func:`default_data_dirs`,
    :func:`cache_dir`, then downloads (see the module docstring). ``data_dir``, when
    given, is the only place looked at; so is ``$MNIST_SPARK_DATA`` when set.

    Parameters
    ----------
    data_dir : str or PathLike, optional
        A folder holding the four files (``--data-dir``).
    dataset : IdxDataset
        The dataset to find.
    download : bool
        Download missing files from the mirrors into the cache folder.
    verify : bool
        Check the MD5 of files found on disk where known. Downloads are always
        checked.
    timeout : float
        Seconds a download may wait on the network per operation.

    Returns
    -------
    DatasetFiles

    Raises
    ------
    ValueError
        When an explicit folder lacks the files, when a checksum does not match
        (``data/mnist``, cache, download), or when nothing is found anywhere: the
        message lists every place looked at and how to supply the files.
    """
    if data_dir is not None:
        return _explicit(data_dir, "--data-dir", dataset, verify)
    env = os.environ.get(ENV_DATA)
    if env:
        return _explicit(env, ENV_DATA, dataset, verify)

    looked = [f"{ENV_DATA}: not set"]
    for folder in default_data_dirs():
        splits = find_files(folder, dataset)
        if splits is not None:
            files = _identify(dataset, folder, splits, source="data/mnist", strict=True, verify=verify)
            logger.info("%s files: %s (data/mnist)", files.dataset.title, folder)
            return files
        looked.append(f"data/mnist: {folder} ({_describe_found(_list_files(folder), folder)})")

    cache = cache_dir(dataset)
    splits = find_files(cache, dataset)
    if splits is not None:
        files = _identify(dataset, cache, splits, source="cache", strict=True, verify=verify)
        logger.info("%s files: %s (cache)", files.dataset.title, cache)
        return files
    looked.append(f"cache: {cache} ({_describe_found(_list_files(cache), cache)})")

    failure = None
    if not download:
        looked.append("download: not allowed (download=False)")
    elif not _mirrors(dataset, None):
        looked.append(f"download: no mirrors known for {dataset.name} (set {ENV_MIRRORS})")
    else:
        try:
            return _download(dataset, cache, timeout=timeout)
        except ValueError as exc:
            failure = exc
            looked.append(f"download into {cache}: failed:\n     " + str(exc).replace("\n", "\n     "))

    places = "\n".join(f"  {i}. {place}" for i, place in enumerate(looked, 1))
    needed = "\n".join(f"  {name}" for name in dataset.file_names)
    raise ValueError(
        f"{dataset.title} files not found. Looked in, in order:\n{places}\n"
        f"To supply them, put these four files (gzip-compressed or raw) in a folder and pass "
        f"--data-dir DIR or set {ENV_DATA}=DIR, or allow downloading:\n{needed}"
    ) from failure


# --------------------------------------------------------------------------- download


def _mirrors(dataset: IdxDataset, mirrors: Sequence[str] | None) -> tuple[str, ...]:
    if mirrors is None:
        env = os.environ.get(ENV_MIRRORS, "")
        mirrors = [m for m in (part.strip() for part in env.split(",")) if m] or dataset.mirrors
    elif isinstance(mirrors, str):
        mirrors = [m.strip() for m in mirrors.split(",") if m.strip()]
    return tuple(m if m.endswith("/") else m + "/" for m in mirrors)


def _fetch(url: str, target: Path, dataset: IdxDataset, name: str, timeout: float) -> int:
    """Download ``url`` to ``target`` through a temporary file; returns the bytes."""
    suffix = ".gz" if name.endswith(".gz") else ""
    stem = name[: -len(suffix)] if suffix else name
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{stem}.", suffix=f".part{suffix}")
    try:
        request = urllib.request.Request(url, headers={"User-Agent": f"mnist_spark/{__version__}"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            shutil.copyfileobj(response, out, _CHUNK)
        size = os.path.getsize(tmp)
        try:
            _, digest = idx.inspect(tmp, md5=True, name=url)
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"not a valid IDX file ({exc})") from exc
        expected = dataset.known_md5(name)
        if expected is not None and digest != expected:
            raise ValueError(f"checksum mismatch: MD5 of the uncompressed content is {digest}, expected {expected}")
        os.replace(tmp, target)
        return size
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def download(
    dataset: IdxDataset = MNIST,
    directory: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    timeout: float = 30.0,
) -> DatasetFiles:
    """Download the files of ``dataset`` missing from ``directory``.

    Each missing file is tried on each mirror in order and streamed to a
    temporary file beside its target; it is kept (moved into place atomically)
    only when it parses as IDX and, where known, the MD5 of its uncompressed
    content matches. A failing mirror (HTTP error, refused connection, timeout,
    bad checksum, not IDX) is logged as a warning and the next one tried.
    Files already present (or their raw twins) are not downloaded again, but
    their known checksums are checked.

    Parameters
    ----------
    dataset : IdxDataset
        What to download.
    directory : str or PathLike, optional
        Where to; :func:`cache_dir` by default. Created if missing.
    mirrors : sequence of str, optional
        Base URLs (the file name is appended). Default: ``$MNIST_SPARK_MIRRORS``
        (comma-separated) if set, else ``dataset.mirrors``.
    timeout : float
        Seconds to wait on the network per operation.

    Returns
    -------
    DatasetFiles
        With ``source="download"``.

    Raises
    ------
    ValueError
        When every mirror fails for a file (each mirror and its failure listed),
        when no mirrors are known, or when a file already present has a bad checksum.
    """
    folder = cache_dir(dataset) if directory is None else _local_dir(directory)
    if isinstance(folder, str):
        raise ValueError(
            f"{folder}: downloads go to a local folder; download locally, then copy "
            "the four files to the shared file system"
        )
    folder = folder.absolute()
    bases = _mirrors(dataset, mirrors)
    folder.mkdir(parents=True, exist_ok=True)
    present = set(_list_files(folder) or ())

    existing = {name: str(folder / have) for name in dataset.file_names if (have := _exact(present, name)) is not None}
    bad = _md5_mismatches(dataset, {"present": tuple(existing.values())})
    if bad:
        lines = "\n  ".join(f"{p}: MD5 {found}, expected {exp}" for p, exp, found in bad)
        raise ValueError(
            f"{dataset.title} files already in {folder} do not match the published checksum "
            f"of their uncompressed content:\n  {lines}\nDelete them and run again to "
            "download fresh copies."
        )
    missing = [name for name in dataset.file_names if name not in existing]
    if missing and not bases:
        raise ValueError(
            f"cannot download {', '.join(missing)}: no mirrors known for {dataset.name}; "
            f"set {ENV_MIRRORS}=URL[,URL...] or pass mirrors="
        )
    for name in missing:
        existing[name] = str(_download_one(dataset, name, folder, bases, timeout))
    splits = {split: (existing[a], existing[b]) for split, (a, b) in dataset.files.items()}
    return DatasetFiles(directory=str(folder), source="download", splits=splits, dataset=dataset)


def _download_one(dataset: IdxDataset, name: str, folder: Path, bases: Sequence[str], timeout: float) -> Path:
    target = folder / name
    failures = []
    for base in bases:
        url = base + name
        start = time.monotonic()
        try:
            size = _fetch(url, target, dataset, name, timeout)
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            reason = f"{type(exc.reason).__name__}: {exc.reason}"
        except (OSError, ValueError, EOFError, zlib.error, http.client.HTTPException) as exc:
            reason = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc)
        else:
            logger.info("downloaded %s from %s: %d bytes in %.1f s", name, url, size, time.monotonic() - start)
            return target
        logger.warning("download of %s from %s failed: %s; trying the next mirror", name, url, reason)
        failures.append(f"{url}: {reason}")
    raise ValueError(
        f"could not download {name} from any mirror:\n  "
        + "\n  ".join(failures)
        + f"\nCheck the network, set {ENV_MIRRORS} to a mirror that works, or put the files in "
        f"a folder and pass --data-dir DIR (or set {ENV_DATA})."
    )


_download = download  # locate() has a parameter named download
