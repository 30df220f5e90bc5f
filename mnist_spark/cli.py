"""What every job's command line shares: the common flags, logging, and clean failure.

A job is ``_arg_parser()`` plus ``run(spark, ...)`` plus ``main()``;
``main()`` hands :func:`run_job` a function of the session. Bad input and bad
flags come out as one line on stderr and exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Callable

logger = logging.getLogger(__name__)

#: Exit status for bad input or bad flags (argparse uses the same).
EXIT_BAD_INPUT = 2


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
            values = [float(p) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {','.join(names)} as numbers, found {text!r}") from None
        if len(values) != len(names):
            raise argparse.ArgumentTypeError(
                f"expected {len(names)} numbers {','.join(names)}, found {len(values)} in {text!r}")
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
    group.add_argument("--rotate", metavar="P,LEFT,RIGHT",
                       type=_transform_numbers("rotate", ("P", "LEFT", "RIGHT"), AugmentParams.rotate),
                       default=(defaults.rotate_probability, defaults.max_left_rotation,
                                defaults.max_right_rotation),
                       help="rotate by up to LEFT degrees counter-clockwise or RIGHT clockwise")
    group.add_argument("--shear", metavar="P,MAX",
                       type=_transform_numbers("shear", ("P", "MAX"), AugmentParams.shear),
                       default=(defaults.shear_probability, defaults.max_shear),
                       help="shear horizontally by up to MAX degrees either way")
    group.add_argument("--zoom", metavar="P,MIN,MAX",
                       type=_transform_numbers("zoom", ("P", "MIN", "MAX"), AugmentParams.zoom),
                       default=(defaults.zoom_probability, defaults.min_zoom, defaults.max_zoom),
                       help="zoom by a factor from MIN to MAX")
    group.add_argument("--shift", metavar="P,MAX",
                       type=_transform_numbers("shift", ("P", "MAX"), AugmentParams.shift),
                       default=(defaults.shift_probability, defaults.max_shift),
                       help="shift by up to MAX of the width and height, each way")
    group.add_argument("--elastic", metavar="P,ALPHA,SIGMA",
                       type=_transform_numbers("elastic", ("P", "ALPHA", "SIGMA"), AugmentParams.elastic),
                       default=(defaults.elastic_probability, defaults.elastic_alpha,
                                defaults.elastic_sigma),
                       help="elastic distortion of ALPHA pixels smoothed over SIGMA pixels")


def augment_params(args):
    """The :class:`mnist_spark.augment.AugmentParams` that the transform flags describe."""
    from mnist_spark.augment import AugmentParams

    return (AugmentParams().rotate(*args.rotate).shear(*args.shear).zoom(*args.zoom)
            .shift(*args.shift).elastic(*args.elastic))


def job_parser(doc: str | None, job: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every job shares.

    ``--data-dir``, ``--output``, ``--overwrite`` and ``--seed``; defaults are
    shown in ``--help``.
    """
    parser = argparse.ArgumentParser(
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
    parser.add_argument(
        "--output", default=None, help=f"run folder; default: runs/{job}-<timestamp>"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder"
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed")
    return parser


def configure_logging(level: int = logging.INFO) -> None:
    """Progress lines on stderr: time, module, message. Only entry points call this."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("py4j", "matplotlib", "PIL", "urllib3", "absl", "tensorflow", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_job(job: str, work: Callable, *, spark=None) -> int:
    """Run ``work(spark)`` as a job's entry point and return the exit status.

    Bad input (``ValueError``, ``TypeError``, ``OSError`` and a missing Java)
    prints ``<job>: error: <message>`` and returns 2. Set
    ``MNIST_SPARK_DEBUG=1`` to see the traceback too.
    """
    from mnist_spark.session import JavaNotFoundError, get_spark

    configure_logging()
    try:
        if spark is None:
            spark = get_spark(job)
        work(spark)
    except (ValueError, TypeError, OSError, JavaNotFoundError) as error:
        if os.environ.get("MNIST_SPARK_DEBUG"):
            logger.exception("%s failed", job)
        # One line, as the docstring promises, even for a message written over several.
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        print(f"{job}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
