"""Where files live: local paths and URIs through ``pyarrow.fs``, and atomic outputs.

Every path a job reads or writes goes through :func:`resolve`, so a plain path,
``file://``, ``hdfs://`` and ``s3://`` work the same from the driver and from
executors.

Every job output is written with :class:`AtomicOutput`: into a temporary
sibling folder, moved into position only when complete, and marked with a
``_SUCCESS`` file and an ``_MNIST_SPARK`` file (which job wrote it, when, with
which version). An existing output is refused unless ``overwrite=True``, and
even then only a folder carrying ``_MNIST_SPARK`` is replaced. A job that
fails leaves nothing where a finished output is expected. A staging folder is
named ``<output>.tmp-<8 hex digits>`` and holds an ``_OWNER`` file (host,
process id, process start time); a later run removes it only when that owner
is gone, and refuses to start while it is alive.

:func:`check_output_location` refuses outputs that would put inputs or
whole folders (the working folder, the home folder, a filesystem root) at risk.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import posixpath
import re
import socket
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"
#: In every finished output folder: JSON naming the job, the version and the time it was written.
OUTPUT_MARKER = "_MNIST_SPARK"
#: In every staging folder while a run writes it: JSON naming the host and process.
OWNER_MARKER = "_OWNER"
#: The folder of a resumable output that holds its checkpoints.
CHECKPOINT_FOLDER = "checkpoints"
#: What ``--if-exists`` may say.
IF_EXISTS = ("error", "overwrite", "skip")


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations (not Windows drive letters)."""
    head, sep, _ = location.partition("://")
    return bool(sep) and head.isidentifier() and len(head) > 1


#: Hadoop's names for S3 (what Spark's own readers and writers take) and pyarrow's.
_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3"}

#: The URI schemes ``pyarrow.fs`` serves, with the pyarrow module each needs.
SCHEMES = {
    "file": None,
    "s3": "pyarrow._s3fs",
    "s3a": "pyarrow._s3fs",
    "s3n": "pyarrow._s3fs",
    "gs": "pyarrow._gcsfs",
    "gcs": "pyarrow._gcsfs",
    "abfs": "pyarrow._azurefs",
    "abfss": "pyarrow._azurefs",
    "hdfs": "pyarrow._hdfs",
    "viewfs": "pyarrow._hdfs",
}
_SERVED = "local paths, file://, s3:// (s3a://), gs://, abfs:// (abfss://) and hdfs://"
#: ``scheme:`` at the start of a location; one letter is a Windows drive, not a scheme.
_SCHEME_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9+.-]+):")


def check_location(location: str | os.PathLike, what: str | None = None) -> None:
    """Refuse a location whose scheme no file system here serves, in one line with the fix.

    Every file a job reads or writes goes through ``pyarrow.fs``, so a URI it
    cannot open (Databricks' ``dbfs:``, ``wasbs://``, ``http://``, a typo)
    would fail only once Spark has started, or be taken for a relative folder
    named ``dbfs:``. Jobs call this for every input and output before Spark
    starts; :func:`resolve` calls it too. ``what`` names the flag.

    Raises
    ------
    ValueError
        Naming the location, why it cannot be used and what to use instead.

    Examples
    --------
    >>> check_location("s3a://bucket/runs/a")
    >>> check_location("dbfs:/mnt/runs/a", "--output")
    Traceback (most recent call last):
    ...
    ValueError: --output dbfs:/mnt/runs/a: dbfs: is Databricks' file system, ...
    """
    location = os.fspath(location)
    found = _SCHEME_PREFIX.match(location)
    if found is None:
        return
    scheme = found.group(1).lower()
    name = f"{what} {location}" if what else location
    if scheme == "dbfs":
        fuse = "/dbfs/" + location[found.end() :].lstrip("/")
        raise ValueError(
            f"{name}: dbfs: is Databricks' file system, which pyarrow (through which every file of a "
            f"job is read and written) cannot open; use its local mount {fuse}, or the cloud storage "
            "URI behind it (s3a://, abfss://, gs://)"
        )
    if scheme not in SCHEMES:
        raise ValueError(
            f"{name}: {scheme}: locations cannot be read or written here (pyarrow serves "
            f"{_SERVED}); copy the data to one of those, or give a local path"
        )
    if not location[found.end() :].startswith("//"):
        raise ValueError(
            f"{name}: a {scheme} URI starts with {scheme}://; write it in full, "
            f"{scheme}://<bucket or host>/<path> (or {scheme}:///<path>)"
        )
    module = SCHEMES[scheme]
    if module is not None:
        import importlib

        try:
            importlib.import_module(module)
        except ImportError:
            raise ValueError(
                f"{name}: this pyarrow was built without {scheme}:// support; install "
                "pyarrow's wheel from PyPI, which has it"
            ) from None


def resolve(location: str | os.PathLike):
    """Return ``(filesystem, path)`` for a local path or a URI.

    Local paths become absolute, so the result means the same in an executor
    whose working folder differs. ``s3a://`` (Hadoop's name, which Spark's
    readers and writers need) means ``s3://`` here, so one URI serves both.
    S3 settings come from the environment as for any AWS client
    (``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``...);
    ``gs://`` and ``abfss://`` take Google's and Azure's default credentials.
    Other schemes are refused (:func:`check_location`).

    Examples
    --------
    >>> fs, path = resolve("/tmp/x")
    >>> type(fs).__name__, path
    ('LocalFileSystem', '/tmp/x')
    """
    from pyarrow import fs as pafs

    location = os.fspath(location)
    check_location(location)
    if is_uri(location):
        scheme, rest = location.split("://", 1)
        return pafs.FileSystem.from_uri(f"{_SCHEME_ALIASES.get(scheme.lower(), scheme)}://{rest}")
    return pafs.LocalFileSystem(), str(Path(location).expanduser().absolute())


def to_uri(location: str | os.PathLike) -> str:
    """A location Spark and executors can both use: URIs unchanged, local paths absolute."""
    location = os.fspath(location)
    check_location(location)
    return location if is_uri(location) else str(Path(location).expanduser().absolute())


def join(location: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    location = os.fspath(location)
    if is_uri(location):
        return posixpath.join(location, *parts)
    return os.path.join(location, *parts)


def parent(location: str | os.PathLike) -> str:
    """The folder holding ``location`` (a local path or a URI)."""
    location = os.fspath(location).rstrip("/")
    if is_uri(location):
        return posixpath.dirname(location)
    return os.path.dirname(os.path.abspath(location))


def exists(location: str | os.PathLike) -> bool:
    """True when a file or folder exists at ``location``."""
    from pyarrow import fs as pafs

    filesystem, path = resolve(location)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def open_input(location: str | os.PathLike):
    """Open a file for reading (a seekable binary stream)."""
    filesystem, path = resolve(location)
    return filesystem.open_input_file(path)


def read_bytes(location: str | os.PathLike) -> bytes:
    """The whole content of a file."""
    with open_input(location) as stream:
        return stream.read()


def list_files(location: str | os.PathLike, *, folders: bool = False) -> list[str] | None:
    """Sorted names of the files (with ``folders``, the sub-folders) in a folder; None when there is no folder."""
    from pyarrow import fs as pafs

    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return None
    kind = pafs.FileType.Directory if folders else pafs.FileType.File
    return sorted(info.base_name for info in filesystem.get_file_info(pafs.FileSelector(path)) if info.type == kind)


def move(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Rename a file on one file system (atomic where the file system renames atomically)."""
    filesystem, source_path = resolve(source)
    filesystem.move(source_path, resolve(destination)[1])


def delete_file(location: str | os.PathLike) -> None:
    filesystem, path = resolve(location)
    filesystem.delete_file(path)


def write_bytes(location: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a file, creating parent folders."""
    filesystem, path = resolve(location)
    filesystem.create_dir(posixpath.dirname(path), recursive=True)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def has_checkpoint(location: str | os.PathLike) -> bool:
    """True when the stopped run of ``location`` left a checkpoint in ``<location>.partial``."""
    partial = f"{to_uri(location).rstrip('/')}.partial"
    return bool(list_files(join(partial, CHECKPOINT_FOLDER)))


def default_output(job: str, root: str = "runs") -> str:
    """The default run folder of a job: ``runs/<job>-<timestamp>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{job}-{stamp}")


def _renames_folders(filesystem) -> bool:
    """False for object stores, where a folder is a key prefix and cannot be renamed.

    Azure renames folders only on accounts with a hierarchical namespace, which
    pyarrow cannot tell beforehand: it counts as an object store.
    """
    return type(filesystem).__name__ not in ("S3FileSystem", "GcsFileSystem", "AzureFileSystem")


# --------------------------------------------------------------------------- where an output may go


def _place(location) -> tuple[str, str]:
    """``(kind, path)`` to compare two locations, without touching any file system.

    Local paths (and ``file://``) become real paths (links followed); a URI
    becomes its file system and its path, the bucket first on object stores.
    """
    from urllib.parse import urlsplit

    location = os.fspath(location)
    if not is_uri(location):
        return "local", os.path.realpath(Path(location).expanduser())
    parts = urlsplit(location)
    scheme = _SCHEME_ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme == "file":
        return "local", os.path.realpath(parts.path or "/")
    if scheme in ("s3", "gs", "gcs"):
        return scheme, "/" + posixpath.normpath(f"{parts.netloc}/{parts.path}").strip("/")
    if scheme in ("abfs", "abfss"):
        # <container>@<account>.dfs.core.windows.net/<path>, or <account>.../<container>/<path>
        container, at, account = parts.netloc.rpartition("@")
        if not at:
            account, container = parts.netloc, ""
        return f"abfs:{account.lower()}", "/" + posixpath.normpath(f"{container}/{parts.path}").strip("/")
    return f"{scheme}://{parts.netloc}", posixpath.normpath(parts.path or "/")


def _relation(path: str, other: str) -> str | None:
    """How ``path`` stands to ``other``: "is", "contains", "lies inside" or None."""
    if path == other:
        return "is"
    if other.startswith(path.rstrip("/") + "/"):
        return "contains"
    if path.startswith(other.rstrip("/") + "/"):
        return "lies inside"
    return None


def check_output_location(output: str | os.PathLike, inputs=()) -> None:
    """Refuse an output whose replacement or cleanup could destroy data the job did not write.

    Refused: an output that is, contains or lies inside one of ``inputs``; one
    that is or contains the working folder or the home folder; a filesystem
    root or mount point (a bucket, for object stores). Symbolic links are
    followed. Nothing is read or written, so every job calls this before
    Spark starts.

    Parameters
    ----------
    output : str or PathLike
        The job's ``--output``.
    inputs : iterable
        The job's inputs: locations, or ``(name, location)`` pairs where
        ``name`` is the flag that gave it (``"--data-dir"``); None is skipped.

    Raises
    ------
    ValueError
        Naming the output, what it collides with, and what to do.

    Examples
    --------
    >>> check_output_location("/tmp/runs/a", [("--data-dir", "/tmp/data")])
    >>> check_output_location("/tmp/data/out", [("--data-dir", "/tmp/data")])
    Traceback (most recent call last):
    ...
    ValueError: --output /tmp/data/out lies inside the input --data-dir /tmp/data; ...
    """
    output = os.fspath(output)
    kind, path = _place(output)
    if kind == "local":
        if os.path.dirname(path) == path or os.path.ismount(path):
            raise ValueError(
                f"--output {output} is a filesystem root ({path}); choose a folder of its own "
                f"below it, such as {path.rstrip('/')}/runs/<name>"
            )
        for name, folder in (("the working folder", os.getcwd()), ("the home folder", os.path.expanduser("~"))):
            folder = os.path.realpath(folder)
            relation = _relation(path, folder)
            if relation in ("is", "contains"):
                raise ValueError(
                    f"--output {output} {relation} {name} ({folder}); choose a folder of its own, such as runs/<name>"
                )
    elif path.strip("/") == "" or (
        (kind in ("s3", "gs", "gcs") or kind.startswith("abfs:")) and "/" not in path.strip("/")
    ):
        raise ValueError(f"--output {output} is the root of a file system or bucket; choose a folder below it")
    for item in inputs:
        name, location = item if isinstance(item, tuple) else (None, item)
        if location is None:
            continue
        other_kind, other = _place(location)
        relation = _relation(path, other) if other_kind == kind else None
        if relation:
            what = f"{name} {os.fspath(location)}" if name else os.fspath(location)
            raise ValueError(
                f"--output {output} {relation} the input {what}; write the output to a folder "
                "apart from the job's inputs"
            )


# --------------------------------------------------------------------------- markers


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _read_json(filesystem, path: str) -> dict | None:
    """A small JSON object from a file; None when it is missing, unreadable or not an object."""
    try:
        with filesystem.open_input_stream(path) as stream:
            value = json.loads(stream.read(1 << 16))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(filesystem, path: str, value: dict) -> None:
    with filesystem.open_output_stream(path) as stream:
        stream.write((json.dumps(value, indent=1) + "\n").encode())


def output_marker(location: str | os.PathLike) -> dict | None:
    """The ``_MNIST_SPARK`` record of a folder this project wrote (job, version, created); else None."""
    filesystem, path = resolve(location)
    marker = _read_json(filesystem, posixpath.join(path, OUTPUT_MARKER))
    return marker if marker is not None and marker.get("writer") == "mnist_spark" else None


def finished_output(location: str | os.PathLike) -> dict | None:
    """The marker of a complete output this project wrote (``_SUCCESS`` and ``_MNIST_SPARK``); else None."""
    from pyarrow import fs as pafs

    marker = output_marker(location)
    if marker is None:
        return None
    filesystem, path = resolve(location)
    if filesystem.get_file_info(posixpath.join(path, SUCCESS_MARKER)).type != pafs.FileType.File:
        return None
    return marker


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            return stream.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """When a process started, in clock ticks after boot (``/proc/<pid>/stat``); None where unknown.

    A process id is reused after its process ends; the start time tells the
    new process from the old.
    """
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def owner_record() -> dict:
    """The ``_OWNER`` record of this process: host, pid, start time, boot id, time written."""
    pid = os.getpid()
    return {
        "writer": "mnist_spark",
        "host": socket.gethostname(),
        "pid": pid,
        "start": process_start(pid),
        "boot": _boot_id(),
        "created": _now(),
    }


def owner_state(owner: dict) -> str:
    """``"alive"``, ``"gone"`` or ``"unknown"`` (another host: it cannot be checked from here)."""
    if owner.get("host") != socket.gethostname():
        return "unknown"
    boot = _boot_id()
    if owner.get("boot") and boot and owner["boot"] != boot:
        return "gone"
    pid = owner.get("pid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return "unknown"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return "unknown"
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return "gone"  # ended, not yet reaped by its parent
    start = process_start(pid)
    if owner.get("start") is not None and start is not None and start != owner["start"]:
        return "gone"  # the id now belongs to another process
    return "alive"


#: Staging folders this process is writing now (entered, not yet left).
_WRITING: set[str] = set()


def _staging_owner(filesystem, path: str) -> tuple[dict | None, str]:
    """The owner record of a staging folder and its state; ``(None, "unmarked")`` without a valid record."""
    owner = _read_json(filesystem, posixpath.join(path, OWNER_MARKER))
    if owner is None or owner.get("writer") != "mnist_spark":
        return None, "unmarked"
    state = owner_state(owner)
    if state == "alive" and owner.get("pid") == os.getpid() and path not in _WRITING:
        state = "gone"  # this process wrote it in an AtomicOutput it has left
    return owner, state


def _describe_owner(owner: dict) -> str:
    return f"process {owner.get('pid')} on {owner.get('host')}, started {owner.get('created')}"


class AtomicOutput:
    """An output folder that appears complete or not at all.

    Use as a context manager. Write into :attr:`staging`; on a clean exit the
    staging folder gets the ``_MNIST_SPARK`` and ``_SUCCESS`` markers and is
    moved to the final location. On an exception it is deleted and the final
    location is untouched.

    The staging folder is ``<location>.tmp-<8 hex digits>`` (or
    ``<location>.partial`` when resumable) and holds an ``_OWNER`` file while
    it is written. Entering removes staging folders of the same output whose
    owner is gone; folders without a valid ``_OWNER``, or whose owner is on
    another host, are left alone.

    On object stores (S3, GCS), where a folder cannot be renamed and moving
    one means copying every file, a new output (not resumable, not replacing
    one) is written in place instead (:attr:`in_place`; :attr:`staging` is
    the location itself): it holds ``_OWNER`` while it is written, is
    deleted if the job fails, and is complete when ``_SUCCESS`` appears. A
    later run removes one whose owner is gone, as it removes staging folders.

    Parameters
    ----------
    location : str or PathLike
        The final folder (local path or URI).
    overwrite : bool
        Replace an existing output, which must be a folder carrying
        ``_MNIST_SPARK``. Without it an existing output is refused before any
        work starts.
    resumable : bool
        Stage in ``<location>.partial`` and keep it when the job fails, so a
        later run can resume from what it holds (checkpoints, in
        :data:`CHECKPOINT_FOLDER`). A new run refuses to start over a partial
        one holding a checkpoint unless ``overwrite`` or ``resume``; a partial
        one without a checkpoint, left by a run that is gone, is removed.
    resume : bool
        Continue in an existing ``<location>.partial``.
    job : str, optional
        The job's name, recorded in ``_MNIST_SPARK``.

    Raises
    ------
    FileExistsError
        When the output exists and ``overwrite`` is false, when it is a file
        or a folder this project did not write, or when another live run is
        writing the same output.
    PermissionError
        When the parent folder cannot be written.
    NotADirectoryError
        When a parent of the output is a file.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "run")
    >>> with AtomicOutput(out, job="example") as staging:
    ...     write_bytes(join(staging, "metrics.json"), b"{}")
    >>> sorted(os.listdir(out))
    ['_MNIST_SPARK', '_SUCCESS', 'metrics.json']
    >>> output_marker(out)["job"]
    'example'
    """

    def __init__(
        self,
        location: str | os.PathLike,
        *,
        overwrite: bool = False,
        resumable: bool = False,
        resume: bool = False,
        job: str | None = None,
    ):
        self.location = to_uri(location)
        self.overwrite = overwrite
        self.resumable = resumable or resume
        self.job = job
        self.filesystem, self.path = resolve(self.location)
        self._leftover = None
        suffix = ".partial" if self.resumable else f".tmp-{uuid.uuid4().hex[:8]}"
        self.staging_path = f"{self.path.rstrip('/')}{suffix}"
        self.staging = f"{self.location.rstrip('/')}{suffix}"
        self.check()
        # On an object store a folder cannot be renamed: a new output is written where it
        # belongs, so what Spark's committer writes is never copied again.
        self.in_place = (
            not self.resumable
            and not _renames_folders(self.filesystem)
            and (self._leftover is not None or not self._exists())
        )
        if self.in_place:
            self.staging_path, self.staging = self.path, self.location
        if self.resumable:
            self._check_partial(resume)

    def _exists(self) -> bool:
        from pyarrow import fs as pafs

        return self.filesystem.get_file_info(self.path).type != pafs.FileType.NotFound

    def _busy(self, path: str, owner: dict) -> str:
        return (
            f"output {self.location} is being written by another run ({_describe_owner(owner)}, "
            f"staging in {path}); wait for it to finish or stop it, then run again"
        )

    def _check_partial(self, resume: bool) -> None:
        from pyarrow import fs as pafs

        kind = self.filesystem.get_file_info(self.staging_path).type
        if kind == pafs.FileType.File:
            raise FileExistsError(f"{self.staging} is a file, not the folder of a stopped run; move it away")
        found = kind != pafs.FileType.NotFound
        if resume and not found:
            raise ValueError(f"nothing to resume: {self.staging} does not exist; start a new run without --resume")
        if not found:
            return
        owner, state = _staging_owner(self.filesystem, self.staging_path)
        if state == "alive":
            raise FileExistsError(self._busy(self.staging, owner))
        if resume:
            return
        if not self._has_checkpoint():
            if state == "gone" or self._holds_only_markers():
                logger.warning("removing %s: a stopped run left it without a checkpoint", self.staging)
                self._delete(self.staging_path)
                return
            if state == "unknown":
                raise FileExistsError(
                    f"{self.staging} was left by {_describe_owner(owner)}, which cannot be checked from "
                    f"here; if that run has stopped, delete {self.staging} and run again"
                )
            raise FileExistsError(
                f"{self.staging} holds files but no checkpoint and no {OWNER_MARKER} record of this "
                "project; move it away or choose another --output"
            )
        if not self.overwrite:
            raise FileExistsError(
                f"an unfinished run is in {self.staging}; continue it with --resume "
                f"{self.location}, or pass --overwrite to start again"
            )
        if state == "unknown":
            raise FileExistsError(
                f"{self.staging} was left by {_describe_owner(owner)}, which cannot be checked from here; "
                f"if that run has stopped, delete {self.staging} and run again"
            )
        self._delete(self.staging_path)

    def _files_in(self, path: str) -> list:
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        return [info for info in self.filesystem.get_file_info(selector) if info.type == pafs.FileType.File]

    def _has_checkpoint(self) -> bool:
        return bool(self._files_in(posixpath.join(self.staging_path, CHECKPOINT_FOLDER)))

    def _holds_only_markers(self) -> bool:
        return all(info.base_name == OWNER_MARKER for info in self._files_in(self.staging_path))

    def check(self) -> None:
        """Refuse before any work: an existing output (unless ours and ``overwrite``), an
        unwritable parent, or another live run writing the same output."""
        from pyarrow import fs as pafs

        info = self.filesystem.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            raise FileExistsError(
                f"output {self.location} is a file, not a run folder, and is never replaced; choose "
                "another --output or move the file away"
            )
        if info.type == pafs.FileType.Directory and output_marker(self.location) is None:
            owner, state = _staging_owner(self.filesystem, self.path)
            if state == "alive":
                raise FileExistsError(self._busy(self.location, owner))
            if state == "unknown":
                raise FileExistsError(
                    f"output {self.location} is being written, or was left unfinished, by "
                    f"{_describe_owner(owner)}, which cannot be checked from here; if that run has "
                    f"stopped, delete {self.location} and run again"
                )
            if state == "gone":
                self._leftover = owner  # an unfinished output written in place; removed on entry
        if info.type != pafs.FileType.NotFound and self._leftover is None:
            if not self.overwrite:
                raise FileExistsError(
                    f"output {self.location} already exists; choose another --output, pass "
                    "--if-exists skip to keep it, or --overwrite to replace it"
                )
            if output_marker(self.location) is None:
                raise FileExistsError(
                    f"output {self.location} already exists and was not written by this project (it has "
                    f"no {OUTPUT_MARKER} file); --overwrite replaces only run folders this project wrote: "
                    "choose another --output or move the folder away"
                )
        parent = posixpath.dirname(self.path.rstrip("/"))
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            existing = Path(parent)
            while not existing.exists():
                existing = existing.parent
            if not existing.is_dir():
                raise NotADirectoryError(
                    f"output {self.location} cannot be written: {existing} is a file, not a folder; "
                    "choose another --output"
                )
            if not os.access(existing, os.W_OK | os.X_OK):
                raise PermissionError(
                    f"output {self.location} cannot be written: {existing} is not writable; "
                    "choose another --output or fix the folder's permissions"
                )
        if not self.resumable:
            self._sweep(remove=False)

    def __enter__(self) -> str:
        if not self.resumable:
            self._sweep(remove=True)
        if self.in_place:
            if self._leftover is not None:
                logger.warning(
                    "removing %s, left unfinished by a run that was killed (%s)",
                    self.location,
                    _describe_owner(self._leftover),
                )
                self._delete(self.path)
                self._leftover = None
            elif self._exists():
                raise FileExistsError(
                    f"output {self.location} appeared before this job began writing it; nothing was written"
                )
        self.filesystem.create_dir(self.staging_path, recursive=True)
        _WRITING.add(self.staging_path)
        _write_json(self.filesystem, posixpath.join(self.staging_path, OWNER_MARKER), owner_record())
        return self.staging

    def _sweep(self, *, remove: bool) -> None:
        """Look at this output's other staging folders: refuse while one's owner is alive, and
        (with ``remove``) delete those whose owner is gone.

        Only folders named exactly ``<output>.tmp-<8 hex digits>`` that hold a
        valid ``_OWNER`` record are considered; a run that fails removes its own,
        so these are left by runs killed outright (SIGKILL, a lost node).
        """
        from pyarrow import fs as pafs

        parent, name = posixpath.split(self.path.rstrip("/"))
        pattern = re.compile(re.escape(name) + r"\.tmp-[0-9a-f]{8}")
        try:
            siblings = self.filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
        except OSError:  # pragma: no cover - an unlistable parent fails later, with its own message
            return
        for info in siblings:
            if (
                info.type != pafs.FileType.Directory
                or not pattern.fullmatch(info.base_name)
                or info.path.rstrip("/") == self.staging_path
            ):
                continue
            owner, state = _staging_owner(self.filesystem, info.path)
            if state == "alive":
                raise FileExistsError(self._busy(info.path, owner))
            if remove and state == "gone":
                logger.warning(
                    "removing %s, left behind by a run that was killed (%s)", info.path, _describe_owner(owner)
                )
                self._delete(info.path)
            elif remove and state == "unknown":
                logger.warning(
                    "leaving %s: its run (%s) cannot be checked from here", info.path, _describe_owner(owner)
                )

    def __exit__(self, exc_type, exc, tb) -> None:
        _WRITING.discard(self.staging_path)
        if exc_type is not None:
            if self.resumable:
                logger.warning(
                    "run stopped; its checkpoints stay in %s (continue with --resume %s)", self.staging, self.location
                )
            else:
                self._delete(self.staging_path)
            return
        try:
            from mnist_spark import __version__

            # The marker first: an output written in place is never without one of the two.
            _write_json(
                self.filesystem,
                posixpath.join(self.staging_path, OUTPUT_MARKER),
                {"writer": "mnist_spark", "job": self.job, "version": __version__, "created": _now()},
            )
            self.filesystem.delete_file(posixpath.join(self.staging_path, OWNER_MARKER))
            with self.filesystem.open_output_stream(posixpath.join(self.staging_path, SUCCESS_MARKER)):
                pass
        except BaseException:
            if not self.resumable:
                self._delete(self.staging_path)
            raise
        self.commit()

    def commit(self) -> None:
        """Move the staging folder into position, replacing an old output if allowed.

        On object stores (S3, GCS), which cannot rename a folder, a new output
        was written in place (:attr:`in_place`) and is complete as it is. One
        that replaces an existing output (``overwrite``) or continues a stopped
        run was staged beside it, and its files are copied; either way
        ``_SUCCESS`` is written last, so a reader that checks for it never
        takes an unfinished output for a finished one.
        """
        from pyarrow import fs as pafs

        if self.in_place:
            logger.info("output complete: %s", self.location)
            return
        previous = None
        kind = self.filesystem.get_file_info(self.path).type
        if kind != pafs.FileType.NotFound:
            if not self.overwrite or kind != pafs.FileType.Directory or output_marker(self.location) is None:
                self._delete(self.staging_path)
                raise FileExistsError(f"output {self.location} appeared while this job ran; nothing was replaced")
            if _renames_folders(self.filesystem):
                previous = f"{self.path.rstrip('/')}.old-{uuid.uuid4().hex[:8]}"
                self.filesystem.move(self.path, previous)
            else:
                self._delete(self.path)
        if _renames_folders(self.filesystem):
            self.filesystem.move(self.staging_path, self.path)
        else:
            self._copy_then_mark(self.staging_path, self.path)
            self._delete(self.staging_path)
        if previous is not None:
            self._delete(previous)
        logger.info("output complete: %s", self.location)

    def _copy_then_mark(self, source: str, destination: str) -> None:
        from pyarrow import fs as pafs

        self.filesystem.delete_file(posixpath.join(source, SUCCESS_MARKER))
        pafs.copy_files(
            source,
            destination,
            source_filesystem=self.filesystem,
            destination_filesystem=self.filesystem,
            use_threads=True,
        )
        with self.filesystem.open_output_stream(posixpath.join(destination, SUCCESS_MARKER)):
            pass

    def _delete(self, path: str) -> None:
        from pyarrow import fs as pafs

        info = self.filesystem.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.filesystem.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.filesystem.delete_file(path)
