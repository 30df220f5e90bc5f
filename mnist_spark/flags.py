"""Every flag of every job, defined once: one name, one meaning, one type.

A job lists the flags it takes by name (:func:`job_parser`); their defaults
are its ``run()``'s keyword defaults, so ``--help`` shows what ``run`` does,
and :func:`run_options` hands the parsed flags to ``run`` by the same names.
To add a flag, add it to :data:`FLAGS` (or to a job's ``extra``), then give
``run`` a keyword of the same name.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import sys
from dataclasses import dataclass, field

logger = logging.getLogger("mnist_spark.cli")


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


def image_size(text: str):
    """argparse type: a side in pixels (``75``), or ``height,width`` (``64,48``).

    Examples
    --------
    >>> image_size("75"), image_size("64,48")
    (75, (64, 48))
    """
    sides = tuple(positive_int(part.strip()) for part in text.split(","))
    if len(sides) > 2:
        raise argparse.ArgumentTypeError(f"expected a side or height,width in pixels, found {text!r}")
    return sides[0] if len(sides) == 1 else sides


def compress_level(text: str) -> int:
    """argparse type: a zlib level, 0 (none) to 9 (smallest)."""
    value = non_negative_int(text)
    if value > 9:
        raise argparse.ArgumentTypeError(f"expected a zlib level from 0 to 9, found {value}")
    return value


def float_list(text: str) -> tuple:
    """argparse type: comma-separated finite numbers (``--tune-reg-params 0.01,0.1``)."""
    return tuple(finite_float(part) for part in split_list(text))


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


@dataclass(frozen=True)
class Flag:
    """One flag: its argparse keywords, and an old spelling that still works for one release."""

    kwargs: dict = field(default_factory=dict)
    deprecated: str | None = None

    def add(self, parser, name: str, help: str | None = None) -> None:
        option = "--" + name.replace("_", "-")
        kwargs = dict(self.kwargs, **({"help": help} if help else {}))
        parser.add_argument(option, dest=name, **kwargs)
        # A job with two flags of one old spelling (train_cnn: --arch and --model-file) keeps the first.
        if self.deprecated and self.deprecated not in parser._option_string_actions:
            switch = kwargs.get("action") == "store_true"
            extra = (
                {"nargs": 0, "const": True}
                if switch
                else {"type": kwargs.get("type"), "choices": kwargs.get("choices")}
            )
            parser.add_argument(
                self.deprecated,
                dest=name,
                action=_DeprecatedFlag,
                advice=f"use {option}",
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
                **extra,
            )


def _architectures():
    from mnist_spark.models import ARCHITECTURES

    return sorted(ARCHITECTURES)


def _lr_scaling():
    from mnist_spark.training import LR_SCALING

    return sorted(LR_SCALING)


def _pooling():
    from mnist_spark.featurizer import POOLING_CHOICES

    return POOLING_CHOICES


#: The flags of the jobs by ``run()`` keyword; the option is ``--`` + the name with dashes.
#: A job may word a flag's help for itself, never change what it means.
FLAGS: dict[str, Flag] = {
    # What to read: the IDX files of --data-dir, or any image data (mnist_spark.sources)
    "input": Flag(
        {
            "metavar": "PATH",
            "help": "read the images from an ingest output, a PNG set, a Parquet dataset or a folder of "
            "images (<class>/<file> or <split>/<class>/<file>) instead of the IDX files",
        },
        deprecated="--images",
    ),
    "input_table": Flag({"metavar": "TABLE", "help": "read the images from this table (db.name), as --input"}),
    "image_col": Flag({"help": "with a Parquet --input or --input-table: the column of Spark's image struct"}),
    "label_col": Flag({"help": "with a Parquet --input or --input-table: the label column (strings are indexed)"}),
    "split_col": Flag({"help": "with a Parquet --input or --input-table: the split column (train/test), if any"}),
    "test_fraction": Flag(
        {"type": finite_float, "help": "where the input has no split: the share of images, by seeded hash, for test"}
    ),
    "splits": Flag({"type": split_list, "help": "comma-separated splits to read"}),
    "limit": Flag({"type": positive_int, "help": "use only the first N images of each split"}),
    "num_classes": Flag(
        {"type": positive_int, "help": "labels must lie in [0, N); default: the dataset's (10 for MNIST)"}
    ),
    "labels": Flag(
        {
            "type": label_list,
            "metavar": "L1,L2,...",
            "help": "use only the images of these labels (e.g. 5,6,7,8,9)",
        }
    ),
    "partitions": Flag({"type": positive_int, "help": "Spark tasks; default: the cluster's task slots"}),
    "batch_size": Flag({"type": positive_int, "help": "images per call of the network"}),
    # Models
    "arch": Flag({"choices": _architectures(), "help": "built-in architecture"}, deprecated="--model"),
    "model_file": Flag(
        {"metavar": "FILE", "help": "a model.keras file, or a train_cnn run folder holding one"},
        deprecated="--model",
    ),
    "base_model": Flag({"metavar": "NAME_OR_FILE"}, deprecated="--model"),
    # Training
    "epochs": Flag({"type": positive_int}),
    "learning_rate": Flag({"type": finite_float}),
    "lr_decay": Flag({"type": finite_float, "help": "learning rate factor per epoch"}),
    "steps_per_round": Flag(
        {
            "type": positive_int,
            "help": "steps between averagings; default: one local epoch up to 8 replicas, (8 / replicas) ** 2.5 "
            "of one beyond, after a shorter first round",
        }
    ),
    "first_round_steps": Flag(
        {
            "type": positive_int,
            "help": "steps of the first round; each next round doubles up to a full round "
            "(default: a quarter of a local epoch, at least 32 steps)",
        }
    ),
    "lr_scaling": Flag(
        {
            "choices": _lr_scaling(),
            "help": "peak learning rate against the averaged batch: x partitions*batch/64 (at least x1), "
            "its square root, or unchanged",
        }
    ),
    "warmup_epochs": Flag(
        {"type": finite_float, "help": "epochs of linear warm-up from --learning-rate to the scaled peak"}
    ),
    "batchnorm_sample": Flag(
        {
            "type": non_negative_int,
            "help": "training images on which BatchNorm statistics are re-estimated after averaging (0: off)",
        }
    ),
    "barrier": Flag({"action": "store_true", "help": "schedule all replicas of a round together (rdd.barrier())"}),
    "validation_size": Flag(
        {
            "type": non_negative_int,
            "help": "test images the driver scores after the first round, each epoch and the last (0: none)",
        }
    ),
    "checkpoint_every": Flag(
        {
            "type": non_negative_int,
            "help": "save the averaged model and optimizer every K rounds (0: never)",
        }
    ),
    "resume": Flag(
        {
            "metavar": "RUN",
            "help": "continue the stopped run RUN (its --output) from its last checkpoint; "
            "'auto': continue the run at --output if it left a checkpoint, else start it",
        }
    ),
    # Augmentation
    "augment_variants": Flag(
        {"type": non_negative_int, "help": "augmented variants per image"}, deprecated="--augment"
    ),
    "augment_on_the_fly": Flag(
        {"action": "store_true", "default": False, "help": "augment the training images on the fly"},
        deprecated="--augment",
    ),
    # PNG sets
    "compress_level": Flag({"type": compress_level, "help": "zlib level of the PNG files, 0 (none) to 9 (smallest)"}),
    "sample": Flag({"type": non_negative_int, "help": "images in the contact sheet; 0 leaves out the pictures"}),
    # Transfer learning
    "output_layer": Flag(
        {
            "help": "with your own --base-model: the layer whose output is the feature vector; default: the "
            "last layer before the classifier",
        }
    ),
    "image_size": Flag(
        {"type": image_size, "metavar": "SIDE|H,W", "help": "size in pixels the images are resized to: a side or H,W"}
    ),
    "channels": Flag({"type": int, "choices": (1, 3), "help": "channels the network sees: 1 (grey) or 3 (colour)"}),
    "pooling": Flag({"choices": _pooling(), "help": "avg or max: one value per channel; none: sparkdl's flat output"}),
    "weights": Flag(
        {
            "help": "imagenet (Keras' cache or $MNIST_SPARK_WEIGHTS), none (random, offline "
            "smoke runs) or the path of a weights file"
        }
    ),
    "offline": Flag(
        {
            "action": "store_true",
            "default": False,
            "help": "never download ImageNet weights (also $MNIST_SPARK_OFFLINE=1)",
        }
    ),
    "train_limit": Flag({"type": positive_int, "help": "training images, balanced over the labels"}),
    "test_limit": Flag({"type": positive_int, "help": "test images, balanced over the labels"}),
    "max_iter": Flag({"type": positive_int, "help": "LogisticRegression maxIter"}),
    "reg_param": Flag({"type": finite_float, "help": "LogisticRegression regParam"}),
    "elastic_net_param": Flag({"type": finite_float, "help": "LogisticRegression elasticNetParam (0: L2, 1: L1)"}),
    "tune": Flag({"action": "store_true", "help": "pick regParam and elasticNetParam by cross-validation"}),
    "tune_reg_params": Flag({"type": float_list, "help": "regParam values of the grid"}),
    "tune_elastic_net_params": Flag({"type": float_list, "help": "elasticNetParam values of the grid"}),
    "tune_folds": Flag({"type": positive_int, "help": "cross-validation folds"}),
}


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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The job's docstring as written (its examples keep their lines), and each flag's default."""


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


def _shared_flags(parser, job: str, seed: bool) -> None:
    """``--data-dir``, ``--output``, ``--if-exists``/``--overwrite``, ``--seed``, ``--remote``, ``--mlflow``."""
    from mnist_spark.storage import IF_EXISTS

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


def _flag_default(value):
    """A ``run()`` default as argparse shows and parses it: sequences as comma-separated text."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return value


def job_parser(
    job: str,
    doc: str | None,
    run,
    names=(),
    *,
    groups: dict | None = None,
    help: dict | None = None,
    seed: bool = True,
) -> JobArgumentParser:
    """The command line of ``job``: the shared flags, the :data:`FLAGS` in ``names``, and ``groups``.

    ``names`` is a list of names, or one string of them separated by spaces.
    ``groups`` maps a group's title to ``(description, names)``; the name
    ``"transforms"`` stands for the augmentation transforms' flags. ``help``
    words a flag's help for this job. Every flag's default is ``run``'s
    default for the keyword of the same name. ``seed=False`` for a job that
    draws no random numbers: ``--seed`` then only warns.
    """
    from mnist_spark.jobs import COMMANDS

    command = os.path.basename(sys.argv[0]) if sys.argv else ""
    parser = JobArgumentParser(
        prog=command if command == COMMANDS.get(job) else f"{job}.py",  # mnist-spark-train or train_cnn.py
        description=doc,
        formatter_class=_HelpFormatter,
    )
    _shared_flags(parser, job, seed)
    help = help or {}
    sections = [(parser, names)] + [
        (parser.add_argument_group(title, description), members)
        for title, (description, members) in (groups or {}).items()
    ]
    for target, members in sections:
        for name in members.split() if isinstance(members, str) else members:
            if name == "transforms":
                add_transform_flags(target)
            else:
                FLAGS[name].add(target, name, help.get(name))
    dests = {action.dest for action in parser._actions}
    parser.set_defaults(**{name: _flag_default(value) for name, value in run_defaults(run).items() if name in dests})
    return parser


def run_defaults(run) -> dict:
    """The defaults of ``run``'s keyword arguments."""
    return {
        name: p.default
        for name, p in inspect.signature(run).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def run_options(run, args) -> dict:
    """The parsed flags that ``run(spark, **options)`` takes, by its keyword names.

    Each flag's ``dest`` is the keyword of ``run``, so ``main`` is one call
    and ``metrics.json``'s ``params`` (:func:`run_params`) holds the same
    names in every job.
    """
    names = [name for name, p in inspect.signature(run).parameters.items() if p.kind == p.KEYWORD_ONLY]
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def run_params(values: dict) -> dict:
    """A job's ``run`` arguments (its ``locals()`` on entry) as JSON values, for ``metrics.json``."""
    return {
        name: list(value) if isinstance(value, tuple) else value for name, value in values.items() if name != "spark"
    }
