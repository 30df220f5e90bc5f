"""Where files live: local paths and URIs through ``pyarrow.fs``, and atomic outputs.

Every path a job reads or writes goes through :func:`resolve`, so a plain path,
``file://``, ``hdfs://`` and ``s3://`` work the same from the driver and from
executors.

Every job output is written with :class:`AtomicOutput`: into a temporary
sibling folder, moved into position only when complete, and marked with a
``_SUCCESS`` file. An existing output is refused unless ``overwrite=True``.
A job that fails leaves nothing where a finished output is expected, and a job
killed outright (its staging folder left behind) is cleaned up by the next run
for the same output.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import posixpath
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations (not Windows drive letters)."""
    head, sep, _ = location.partition("://")
    return bool(sep) and head.isidentifier() and len(head) > 1


#: Hadoop's names for S3 (what Spark's own readers and writers take) and pyarrow's.
_SCHEME_ALIASES = {"s3a": "s3", "s3n": "s3"}


def resolve(location: str | os.PathLike):
    """Return ``(filesystem, path)`` for a local path or a URI.

    Local paths become absolute, so the result means the same in an executor
    whose working folder differs. ``s3a://`` (Hadoop's name, which Spark's
    readers and writers need) means ``s3://`` here, so one URI serves both.
    S3 settings come from the environment as for any AWS client
    (``AWS_ACCESS_KEY_ID``, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``...).

    Examples
    --------
    >>> fs, path = resolve("/tmp/x")
    >>> type(fs).__name__, path
    ('LocalFileSystem', '/tmp/x')
    """
    from pyarrow import fs as pafs

    location = os.fspath(location)
    if is_uri(location):
        scheme, rest = location.split("://", 1)
        return pafs.FileSystem.from_uri(f"{_SCHEME_ALIASES.get(scheme.lower(), scheme)}://{rest}")
    return pafs.LocalFileSystem(), str(Path(location).expanduser().absolute())


def to_uri(location: str | os.PathLike) -> str:
    """A location Spark and executors can both use: URIs unchanged, local paths absolute."""
    location = os.fspath(location)
    return location if is_uri(location) else str(Path(location).expanduser().absolute())


def join(location: str | os.PathLike, *parts: str) -> str:
    """Join path parts onto a local path or a URI."""
    location = os.fspath(location)
    if is_uri(location):
        return posixpath.join(location, *parts)
    return os.path.join(location, *parts)


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


def list_files(location: str | os.PathLike) -> list[str] | None:
    """Sorted names of the files in a folder; None when there is no such folder."""
    from pyarrow import fs as pafs

    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type != pafs.FileType.Directory:
        return None
    return sorted(info.base_name for info in filesystem.get_file_info(pafs.FileSelector(path))
                  if info.type == pafs.FileType.File)


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


def default_output(job: str, root: str = "runs") -> str:
    """The default run folder of a job: ``runs/<job>-<timestamp>``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join(root, f"{job}-{stamp}")


def _renames_folders(filesystem) -> bool:
    """False for object stores, where a folder is a key prefix and cannot be renamed."""
    return type(filesystem).__name__ not in ("S3FileSystem", "GcsFileSystem")


class AtomicOutput:
    """An output folder that appears complete or not at all.

    Use as a context manager. Write into :attr:`staging`; on a clean exit the
    staging folder gets a ``_SUCCESS`` marker and is moved to the final
    location. On an exception it is deleted and the final location is
    untouched.

    Parameters
    ----------
    location : str or PathLike
        The final folder (local path or URI).
    overwrite : bool
        Replace an existing output. Without it an existing output is refused
        before any work starts.
    resumable : bool
        Stage in ``<location>.partial`` and keep it when the job fails, so a
        later run can resume from what it holds (checkpoints). A new run
        refuses to start over a partial one unless ``overwrite`` or ``resume``.
    resume : bool
        Continue in an existing ``<location>.partial``.

    Raises
    ------
    FileExistsError
        When the output exists and ``overwrite`` is false.
    PermissionError
        When the parent folder cannot be written.
    NotADirectoryError
        When a parent of the output is a file.

    Examples
    --------
    >>> import tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "run")
    >>> with AtomicOutput(out) as staging:
    ...     write_bytes(join(staging, "metrics.json"), b"{}")
    >>> sorted(os.listdir(out))
    ['_SUCCESS', 'metrics.json']
    """

    def __init__(self, location: str | os.PathLike, *, overwrite: bool = False,
                 resumable: bool = False, resume: bool = False):
        self.location = to_uri(location)
        self.overwrite = overwrite
        self.resumable = resumable or resume
        self.filesystem, self.path = resolve(self.location)
        self.check()
        suffix = ".partial" if self.resumable else f".tmp-{uuid.uuid4().hex[:8]}"
        self.staging_path = f"{self.path.rstrip('/')}{suffix}"
        self.staging = f"{self.location.rstrip('/')}{suffix}"
        if self.resumable:
            self._check_partial(resume)

    def _check_partial(self, resume: bool) -> None:
        from pyarrow import fs as pafs

        found = self.filesystem.get_file_info(self.staging_path).type != pafs.FileType.NotFound
        if resume and not found:
            raise ValueError(
                f"nothing to resume: {self.staging} does not exist; start a new run without --resume"
            )
        if found and not resume:
            if not self.overwrite:
                raise FileExistsError(
                    f"an unfinished run is in {self.staging}; continue it with --resume "
                    f"{self.location}, or pass --overwrite to start again"
                )
            self._delete(self.staging_path)

    def check(self) -> None:
        """Refuse an existing output or an unwritable parent, before any work."""
        from pyarrow import fs as pafs

        info = self.filesystem.get_file_info(self.path)
        if info.type != pafs.FileType.NotFound and not self.overwrite:
            raise FileExistsError(
                f"output {self.location} already exists; choose another --output or pass "
                "--overwrite to replace it"
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

    def __enter__(self) -> str:
        if not self.resumable:
            self._remove_leftovers()
        self.filesystem.create_dir(self.staging_path, recursive=True)
        return self.staging

    def _remove_leftovers(self) -> None:
        """Delete ``<output>.tmp-*`` folders that killed runs for this output left behind.

        A run that fails removes its own staging folder; one killed outright
        (SIGKILL, a lost node) cannot. Two runs writing the same output at
        once are not supported: the second would remove the first's staging.
        """
        from pyarrow import fs as pafs

        parent, name = posixpath.split(self.path.rstrip("/"))
        try:
            siblings = self.filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
        except OSError:  # pragma: no cover - an unlistable parent fails later, with its own message
            return
        for info in siblings:
            if info.base_name.startswith(f"{name}.tmp-") and info.path != self.staging_path:
                logger.warning("removing %s, left behind by a run that was killed", info.path)
                self._delete(info.path)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            if self.resumable:
                logger.warning("run stopped; its checkpoints stay in %s (continue with --resume %s)",
                               self.staging, self.location)
            else:
                self._delete(self.staging_path)
            return
        with self.filesystem.open_output_stream(posixpath.join(self.staging_path, SUCCESS_MARKER)):
            pass
        self.commit()

    def commit(self) -> None:
        """Move the staging folder into position, replacing an old output if allowed.

        On object stores (S3, GCS), which cannot rename a folder, the files are
        copied and ``_SUCCESS`` is written last: a reader that checks for it
        never takes a half-copied output for a finished one.
        """
        from pyarrow import fs as pafs

        previous = None
        if self.filesystem.get_file_info(self.path).type != pafs.FileType.NotFound:
            if not self.overwrite:
                self._delete(self.staging_path)
                raise FileExistsError(
                    f"output {self.location} appeared while this job ran; nothing was replaced"
                )
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
        pafs.copy_files(source, destination, source_filesystem=self.filesystem,
                        destination_filesystem=self.filesystem, use_threads=True)
        with self.filesystem.open_output_stream(posixpath.join(destination, SUCCESS_MARKER)):
            pass

    def _delete(self, path: str) -> None:
        from pyarrow import fs as pafs

        info = self.filesystem.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.filesystem.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.filesystem.delete_file(path)
