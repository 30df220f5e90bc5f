"""What every job's run shares: its output checks, logging, and clean failure.

A job is its flags (:mod:`mnist_spark.flags`) plus ``run(spark, ...)`` plus ``main()``;
``main()`` hands :func:`run_job` a function of the session and the checks
that need no Spark (:func:`prepare_output`). Every failure, on the driver or
in a Spark task, comes out as one line on stderr, never as a traceback, with
an exit status that tells a scheduler whether a retry can help:

====  =====================================================================
0     done (or ``--if-exists skip`` found the output complete)
1     a retry may help: storage, cluster or other runtime failures
2     a retry cannot help: bad input, a bad flag, an output that exists
130   stopped by SIGINT (Ctrl-C)
143   stopped by SIGTERM
====  =====================================================================
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Exit status for a failure that a retry may cure (storage, cluster, runtime).
EXIT_FAILED = 1
#: Exit status for bad input or bad flags (argparse uses the same).
EXIT_BAD_INPUT = 2
#: Exit status after SIGINT and SIGTERM (128 + the signal number, as shells report them).
EXIT_SIGINT = 128 + signal.SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM

#: Python exceptions that mean bad input or settings: a retry cannot help.
BAD_INPUT_ERRORS = (
    ValueError,
    TypeError,
    FileExistsError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
#: Java exceptions (innermost cause, by class name) that mean bad input or settings.
BAD_INPUT_JAVA = (
    "java.lang.IllegalArgumentException",
    "java.lang.NumberFormatException",
    "java.io.FileNotFoundException",
    "java.nio.file.AccessDeniedException",
    "java.nio.file.NoSuchFileException",
    "org.apache.hadoop.fs.FileAlreadyExistsException",
    "org.apache.hadoop.security.AccessControlException",
    "org.apache.spark.sql.AnalysisException",
)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM, so ``with`` blocks clean up as on Ctrl-C."""


def resume_target(resume, output):
    """The run to continue: ``resume`` itself, or for ``auto`` ``output`` when it left a checkpoint.

    ``auto`` makes the command a scheduler re-issues after a stopped driver
    finish the run, and start it when there is nothing to continue.
    """
    from mnist_spark import storage

    if resume != "auto":
        return resume
    if output is None:
        raise ValueError("--resume auto continues the run at --output; give --output")
    if storage.has_checkpoint(output):
        return output
    logger.info("--resume auto: %s left no checkpoint; starting the run", output)
    return None


def in_flag_terms(message: str, flags: dict) -> str:
    """``message`` of a library error with its param names replaced by the job's flags.

    Examples
    --------
    >>> in_flag_terms("imageSize 10 is below 75; set imageSize to 75", {"imageSize": "--image-size"})
    '--image-size 10 is below 75; set --image-size to 75'
    """
    import re

    for name, flag in flags.items():
        message = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", flag, message)
    return message


def prepare_resumable_output(job: str, args) -> bool:
    """:func:`prepare_output` for a job with ``--resume``: the run to continue is the output."""
    args.resume = resume_target(args.resume, args.output)
    if args.resume:
        args.output = args.resume
    inputs = [] if args.resume else data_inputs(args)
    return prepare_output(job, args, inputs, resumable=True, resume=bool(args.resume))


def data_inputs(args) -> list:
    """The data a job reads as ``(flag, location)``: ``--input``, else the IDX folders (default_data_inputs)."""
    if getattr(args, "input", None):
        return [("--input", args.input)]
    return default_data_inputs(args.data_dir)


def default_data_inputs(data_dir) -> list:
    """The data folders a job may read: ``--data-dir``, else every place ``datasets.locate`` looks."""
    if data_dir is not None:
        return [("--data-dir", data_dir)]
    from mnist_spark import datasets

    env = os.environ.get(datasets.ENV_DATA)
    if env:
        return [(f"${datasets.ENV_DATA}", env)]
    return [("the data folder", str(folder)) for folder in datasets.default_data_dirs()] + [
        ("the dataset cache", str(datasets.cache_dir()))
    ]


def prepare_output(job: str, args, inputs=(), *, resumable: bool = False, resume: bool = False) -> bool:
    """The checks of ``--output`` that need no Spark; True when the job has nothing to do.

    Fills in the default ``args.output``, refuses locations no file system here
    serves (:func:`mnist_spark.storage.check_location`), an output that collides with
    ``inputs`` or a whole folder (:func:`mnist_spark.storage.check_output_location`),
    and applies ``--if-exists``: ``skip`` returns True (and logs one line) when
    the output is a complete output of ``job``; otherwise an existing output
    is refused or checked for ``overwrite`` exactly as the job's
    :class:`~mnist_spark.storage.AtomicOutput` will.

    Raises
    ------
    ValueError, FileExistsError, NotADirectoryError, PermissionError
        As :func:`~mnist_spark.storage.check_output_location` and
        :class:`~mnist_spark.storage.AtomicOutput`.
    """
    from mnist_spark import storage

    if args.output is None:
        args.output = storage.default_output(job)
    storage.check_location(args.output, "--output")
    for item in inputs:
        name, location = item if isinstance(item, tuple) else (None, item)
        if location is not None:
            storage.check_location(location, name)
    storage.check_output_location(args.output, inputs)
    if args.if_exists == "skip":
        marker = storage.finished_output(args.output)
        if marker is not None:
            if marker.get("job") != job:
                raise FileExistsError(
                    f"output {args.output} is a complete output of {marker.get('job')}, not of {job}; "
                    "choose another --output"
                )
            logger.info(
                "skipped: %s is already a complete output of %s (written %s); --if-exists skip",
                args.output,
                job,
                marker.get("created"),
            )
            return True
    storage.AtomicOutput(args.output, overwrite=args.overwrite, resumable=resumable, resume=resume, job=job)
    return False


#: The format of every log line: ``2025-01-31 14:02:07 INFO mnist_spark.training: round 1/9 ...``,
#: the same as Spark's own lines (``conf/log4j2.properties``), so a scheduler's log reads as one.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


def configure_logging(level: int = logging.INFO) -> None:
    """Progress lines on stderr: date and time, level, logger, message. Only entry points call this.

    Also quiets the start-up notices of TensorFlow's C++ runtime
    (:func:`mnist_spark.session.quiet_native_logs`) before anything imports it.
    """
    from mnist_spark.session import quiet_native_logs

    quiet_native_logs()
    logging.basicConfig(
        level=level,
        format=LOG_FORMAT,
        datefmt=LOG_DATE_FORMAT,
        stream=sys.stderr,
    )
    for noisy in ("py4j", "matplotlib", "PIL", "urllib3", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if _quiet_interrupted_calls not in handler.filters:
            handler.addFilter(_quiet_interrupted_calls)


def _quiet_interrupted_calls(record: logging.LogRecord) -> bool:
    """Drop py4j's traceback of a call to the JVM cut short by Ctrl-C or SIGTERM: the job says it."""
    return not ("py4j" in record.pathname and "while sending command" in record.getMessage())


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


#: The exception line that ends a Python traceback: ``pkg.module.SomeError: message``.
_EXCEPTION_LINE = re.compile(r"([A-Za-z_][\w.]*)(?::\s?(.*))?")


def python_error_in(text: str) -> tuple[str, str] | None:
    """``(type name, message)`` of the last Python exception in a traceback embedded in ``text``.

    Spark carries the traceback of an exception raised in a task inside a
    ``PythonException`` or a Java error; this finds the exception that ended
    the last traceback, with its message on one line. None without a traceback.

    Examples
    --------
    >>> python_error_in("Traceback (most recent call last):\\n  File \\"x.py\\", line 1, in f\\n"
    ...                 "ValueError: 0x0 is not an image size\\n SQLSTATE: 38000")
    ('ValueError', '0x0 is not an image size')
    """
    head, found, rest = str(text).rpartition("Traceback (most recent call last):")
    if not found:
        return None
    lines = iter(rest.splitlines()[1:])
    for line in lines:
        if line.strip() and not line[:1].isspace():
            match = _EXCEPTION_LINE.fullmatch(line.rstrip())
            if match is None:
                return None
            message = [match.group(2) or ""]
            for more in lines:
                stripped = more.strip()
                if not stripped or stripped.startswith(("at ", "SQLSTATE:")) or more.startswith("\t"):
                    break
                message.append(stripped)
            return match.group(1), " ".join(part for part in message if part)
    return None


def _python_class(name: str):
    """The exception class a traceback names, where it can be found without side effects."""
    module, _, attribute = name.rpartition(".")
    if not module:
        return getattr(builtins, attribute, None)
    loaded = sys.modules.get(module)
    if loaded is None and module.split(".")[0] == "mnist_spark":
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            return None
    return getattr(loaded, attribute, None)


def _java_root(error) -> tuple[str, str] | None:
    """``(class name, message)`` of the innermost cause of a Java exception."""
    try:
        current = getattr(error, "java_exception", None)
        if current is None:
            return None
        while current.getCause() is not None:
            current = current.getCause()
        return current.getClass().getName(), str(current.getMessage() or "")
    except Exception:  # the JVM may be gone
        return None


def classify(error: BaseException) -> tuple[int, str]:
    """The exit status and the one-line message for an exception that ended a job.

    2 when a retry cannot help (bad input or settings, raised on the driver,
    in a Python task or by Spark's own argument checks), 1 otherwise.
    """
    from mnist_spark.session import JavaNotFoundError, TensorFlowNotFoundError

    if isinstance(error, (JavaNotFoundError, TensorFlowNotFoundError, *BAD_INPUT_ERRORS)):
        return EXIT_BAD_INPUT, _one_line(error)
    try:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import AnalysisException, IllegalArgumentException, PythonException
    except ImportError:  # pragma: no cover - pyspark is a dependency
        Py4JJavaError = PythonException = IllegalArgumentException = AnalysisException = ()
    if isinstance(error, (PythonException, Py4JJavaError)):
        found = python_error_in(str(error))
        if found is not None:
            name, message = found
            cls = _python_class(name)
            short = name.rpartition(".")[2]
            if isinstance(cls, type) and issubclass(cls, (TensorFlowNotFoundError, *BAD_INPUT_ERRORS)):
                return EXIT_BAD_INPUT, _one_line(message) or short
            return EXIT_FAILED, _one_line(f"{short}: {message}" if message else short)
    if isinstance(error, (IllegalArgumentException, AnalysisException)):
        return EXIT_BAD_INPUT, _one_line(str(error))
    if isinstance(error, Py4JJavaError):
        root = _java_root(error)
        if root is not None:
            name, message = root
            text = _one_line(f"{name.rpartition('.')[2]}: {message}" if message else name)
            return (EXIT_BAD_INPUT if name in BAD_INPUT_JAVA else EXIT_FAILED), text
    message = _one_line(error)
    return EXIT_FAILED, f"{type(error).__name__}: {message}" if message else type(error).__name__


def _raise_terminated(signum, frame):
    """SIGTERM: cancel the running Spark jobs (as pyspark does on SIGINT) and stop like Ctrl-C.

    The cancel goes through another thread's connection to the JVM: the main
    thread may be inside a call on its own. A Spark Connect session interrupts
    its running queries on the server.
    """
    from pyspark import SparkContext

    context = SparkContext._active_spark_context
    stop = context.cancelAllJobs if context is not None else None
    if stop is None and "pyspark.sql.connect.session" in sys.modules:
        remote = sys.modules["pyspark.sql.connect.session"].SparkSession.getActiveSession()
        stop = remote.interruptAll if remote is not None else None
    if stop is not None:

        def cancel():
            with contextlib.suppress(Exception):  # its JVM or server is gone: nothing to cancel
                stop()

        canceller = threading.Thread(target=cancel, name="cancel-on-sigterm", daemon=True)
        canceller.start()
        canceller.join(timeout=10)
    raise Terminated(f"stopped by signal {signum}")


def _track(job: str, metrics: dict, uri: str) -> None:
    """Log a finished run to MLflow; a failure there is logged, the run folder being complete."""
    from mnist_spark import tracking

    try:
        tracking.log_job(job, metrics, uri=uri or None)
    except Exception as error:
        if os.environ.get("MNIST_SPARK_DEBUG"):
            logger.exception("logging to MLflow failed")
        logger.error(
            "the run folder %s is complete, but logging it to MLflow (%s) failed: %s",
            metrics.get("params", {}).get("output"),
            uri or "MLflow's default",
            _one_line(error) or type(error).__name__,
        )


def run_job(job: str, work: Callable, *, spark=None, before: Callable | None = None) -> int:
    """Run ``work(spark)`` as a job's entry point and return the exit status.

    ``before()``, when given, runs first, before any SparkSession exists: the
    checks that need no Spark. When it returns True the job has nothing to do
    and exits 0 without starting Spark.

    With ``--mlflow`` or ``MLFLOW_TRACKING_URI``, the metrics ``work``
    returns (with the run folder in ``params["output"]``) are logged to
    MLflow (:func:`mnist_spark.tracking.log_job`); a failure there is logged
    as an error and leaves the exit status to the job, whose output is complete.
    ``work`` runs in :func:`mnist_spark.session.job_phases`: its Spark jobs
    carry ``job``'s name in the Spark UI, and its phases ``"<job>: <phase>"``.

    Every failure prints one line, ``<job>: error: <message>``, and returns 2
    when a retry cannot help (bad input or settings, an existing output; see
    :func:`classify`) or 1 when it may, with "a retry may help" at the end.
    SIGINT returns 130 and SIGTERM 143, each with one line; SIGTERM raises
    :class:`Terminated` in the main thread, so open outputs are cleaned up.
    Set ``MNIST_SPARK_DEBUG=1`` to see the traceback too.
    """
    from mnist_spark import tracking
    from mnist_spark.session import get_spark, job_phases

    configure_logging()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    tracking_uri = tracking.tracking_uri()
    try:
        if before is not None and before():
            return 0
        if tracking_uri is not None:
            tracking.check_available()
        if spark is None:
            spark = get_spark(job)
        with job_phases(spark, job):
            metrics = work(spark)
        if tracking_uri is not None and isinstance(metrics, dict):
            _track(job, metrics, tracking_uri)
    except Terminated:
        print(f"{job}: error: stopped by SIGTERM", file=sys.stderr)
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        print(f"{job}: error: stopped by SIGINT (Ctrl-C)", file=sys.stderr)
        return EXIT_SIGINT
    except Exception as error:
        if os.environ.get("MNIST_SPARK_DEBUG"):
            logger.exception("%s failed", job)
        status, message = classify(error)
        if status == EXIT_FAILED:
            message += "; a retry may help"
        print(f"{job}: error: {message}", file=sys.stderr)
        return status
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0
