"""What every job's command line shares: the common flags, logging, and clean failure.

A job is ``_arg_parser()`` plus ``run(spark, ...)`` plus ``main()``;
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

import argparse
import builtins
import contextlib
import importlib
import logging
import math
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


def finite_float(text: str) -> float:
    """argparse type: a finite number (NaN and infinities refused).

    Examples
    --------
    >>> finite_float("1e-3")
    0.001
    >>> finite_float("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a finite number, found 'nan'
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, found {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return value


def split_list(text: str) -> tuple:
    """argparse type: a comma-separated list of names, at least one (``--splits``)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError(f"expected one or more comma-separated names, found {text!r}")
    return names


def label_list(text: str) -> tuple:
    """argparse type: distinct labels separated by commas (``--labels 0,1,2,3,4``)."""
    from mnist_spark.labels import parse_labels

    try:
        return parse_labels(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def positive_int(text: str) -> int:
    """argparse type: an integer above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, found {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of zero or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, found {value}")
    return value


def _transform_numbers(flag: str, names: tuple, build):
    """argparse type: comma-separated numbers for one transform, checked by ``build``."""

    def parse(text: str):
        from mnist_spark.augment import AugmentParams

        parts = [p.strip() for p in text.split(",")]
        try:
            values = [finite_float(p) for p in parts]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {','.join(names)} as finite numbers, found {text!r}") from None
        if len(values) != len(names):
            raise argparse.ArgumentTypeError(
                f"expected {len(names)} numbers {','.join(names)}, found {len(values)} in {text!r}"
            )
        try:
            build(AugmentParams(), *values)
        except (ValueError, TypeError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return tuple(values)

    parse.__name__ = flag
    return parse


def add_transform_flags(group) -> None:
    """Add the augmentation transforms' flags (probability and range of each) to a parser or group.

    Defaults are :meth:`mnist_spark.augment.AugmentParams.mnist`; read the
    result back with :func:`augment_params`.
    """
    from mnist_spark.augment import AugmentParams

    defaults = AugmentParams.mnist()
    group.add_argument(
        "--rotate",
        metavar="P,LEFT,RIGHT",
        type=_transform_numbers("rotate", ("P", "LEFT", "RIGHT"), AugmentParams.rotate),
        default=(defaults.rotate_probability, defaults.max_left_rotation, defaults.max_right_rotation),
        help="rotate by up to LEFT degrees counter-clockwise or RIGHT clockwise",
    )
    group.add_argument(
        "--shear",
        metavar="P,MAX",
        type=_transform_numbers("shear", ("P", "MAX"), AugmentParams.shear),
        default=(defaults.shear_probability, defaults.max_shear),
        help="shear horizontally by up to MAX degrees either way",
    )
    group.add_argument(
        "--zoom",
        metavar="P,MIN,MAX",
        type=_transform_numbers("zoom", ("P", "MIN", "MAX"), AugmentParams.zoom),
        default=(defaults.zoom_probability, defaults.min_zoom, defaults.max_zoom),
        help="zoom by a factor from MIN to MAX",
    )
    group.add_argument(
        "--shift",
        metavar="P,MAX",
        type=_transform_numbers("shift", ("P", "MAX"), AugmentParams.shift),
        default=(defaults.shift_probability, defaults.max_shift),
        help="shift by up to MAX of the width and height, each way",
    )
    group.add_argument(
        "--elastic",
        metavar="P,ALPHA,SIGMA",
        type=_transform_numbers("elastic", ("P", "ALPHA", "SIGMA"), AugmentParams.elastic),
        default=(defaults.elastic_probability, defaults.elastic_alpha, defaults.elastic_sigma),
        help="elastic distortion of ALPHA pixels smoothed over SIGMA pixels",
    )


def augment_params(args):
    """The :class:`mnist_spark.augment.AugmentParams` that the transform flags describe."""
    from mnist_spark.augment import AugmentParams

    return (
        AugmentParams()
        .rotate(*args.rotate)
        .shear(*args.shear)
        .zoom(*args.zoom)
        .shift(*args.shift)
        .elastic(*args.elastic)
    )


class JobArgumentParser(argparse.ArgumentParser):
    """An argument parser whose result also says ``overwrite`` (``--if-exists overwrite``)."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, extras = super().parse_known_args(args, namespace)
        if hasattr(parsed, "if_exists"):
            parsed.overwrite = parsed.if_exists == "overwrite"
        if hasattr(parsed, "mlflow"):
            from mnist_spark import tracking

            tracking.request(parsed.mlflow)
        if hasattr(parsed, "remote"):
            from mnist_spark import session

            session.request_remote(parsed.remote)
        return parsed, extras


class _DeprecatedFlag(argparse.Action):
    """An old flag spelling: works as the new one for one more release, with a warning line."""

    def __init__(self, option_strings, dest, *, advice: str, **kwargs):
        self.advice = advice
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        logger.warning("%s is deprecated and will be removed in the next release; %s", option_string, self.advice)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated_flag(parser, old: str, new: str, *, switch: bool = False, **kwargs) -> None:
    """Accept ``old`` as a deprecated spelling of the flag ``new`` (hidden from ``--help``).

    ``switch=True`` for an ``on/off`` flag (``store_true``).
    """
    dest = new.lstrip("-").replace("-", "_")
    extra = dict(nargs=0, const=True) if switch else kwargs
    parser.add_argument(
        old,
        dest=dest,
        action=_DeprecatedFlag,
        advice=f"use {new}",
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        **extra,
    )


def compress_level(text: str) -> int:
    """argparse type: a zlib level, 0 (none) to 9 (smallest)."""
    value = non_negative_int(text)
    if value > 9:
        raise argparse.ArgumentTypeError(f"expected a zlib level from 0 to 9, found {value}")
    return value


def float_list(text: str) -> tuple:
    """argparse type: comma-separated finite numbers (``--tune-reg-params 0.01,0.1``)."""
    values = tuple(finite_float(part) for part in split_list(text))
    return values


def run_options(run, args) -> dict:
    """The parsed flags that ``run(spark, **options)`` takes, by its keyword names.

    Each flag's ``dest`` is the keyword of ``run``, so ``main`` is one call
    and ``metrics.json``'s ``params`` (:func:`run_params`) holds the same
    names in every job.
    """
    import inspect

    names = [name for name, p in inspect.signature(run).parameters.items() if p.kind == p.KEYWORD_ONLY]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def run_defaults(run) -> dict:
    """The defaults of ``run``'s keyword arguments."""
    import inspect

    return {
        name: p.default
        for name, p in inspect.signature(run).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


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


def run_params(values: dict) -> dict:
    """A job's ``run`` arguments (its ``locals()`` on entry) as JSON values, for ``metrics.json``."""
    return {
        name: list(value) if isinstance(value, tuple) else value for name, value in values.items() if name != "spark"
    }


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


def job_parser(doc: str | None, job: str, *, seed: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the flags every job shares.

    ``--data-dir``, ``--output``, ``--if-exists`` (``--overwrite`` is short for
    ``--if-exists overwrite``), ``--remote``, ``--mlflow`` and, for a job that draws
    random numbers (``seed=True``), ``--seed``; defaults are shown in ``--help``. The
    parsed arguments carry ``if_exists`` and ``overwrite``.
    """
    from mnist_spark.storage import IF_EXISTS

    parser = JobArgumentParser(
        prog=f"{job}.py",
        description=doc,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="folder (or URI) with the four IDX files; default: $MNIST_SPARK_DATA, then "
        "data/mnist, then the user cache, then a download",
    )
    parser.add_argument("--output", default=None, help=f"run folder; default: runs/{job}-<timestamp>")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--if-exists",
        choices=IF_EXISTS,
        default="error",
        help="when --output exists: error (exit 2); overwrite a run folder this project wrote; "
        "skip (exit 0 at once) when it is a complete output of this job",
    )
    existing.add_argument(
        "--overwrite",
        dest="if_exists",
        action="store_const",
        const="overwrite",
        default=argparse.SUPPRESS,
        help="short for --if-exists overwrite",
    )
    if seed:
        parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    else:
        parser.add_argument(
            "--seed",
            dest="unused_seed",
            action=_DeprecatedFlag,
            type=non_negative_int,
            advice=f"{job} is deterministic and takes no seed",
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
        )
    parser.add_argument(
        "--remote",
        default=None,
        metavar="URL",
        help="run on a Spark Connect server, sc://host:port (default: $SPARK_REMOTE; local[N] starts "
        "one in this process)",
    )
    parser.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="log params, metrics, figures and the model to MLflow at URI (default: "
        "$MLFLOW_TRACKING_URI); on whenever MLFLOW_TRACKING_URI is set",
    )
    return parser


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

    Every failure prints one line, ``<job>: error: <message>``, and returns 2
    when a retry cannot help (bad input or settings, an existing output; see
    :func:`classify`) or 1 when it may, with "a retry may help" at the end.
    SIGINT returns 130 and SIGTERM 143, each with one line; SIGTERM raises
    :class:`Terminated` in the main thread, so open outputs are cleaned up.
    Set ``MNIST_SPARK_DEBUG=1`` to see the traceback too.
    """
    from mnist_spark import tracking
    from mnist_spark.session import get_spark

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
