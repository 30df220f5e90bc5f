"""Export a dataset (MNIST's IDX files by default) as a PNG image set, optionally augmented.

Reads the four IDX files, or ``--input`` (an ingest output, Parquet, a table,
a folder of images), into a Spark DataFrame and writes one PNG file per
image, ``<output>/<split>/<label>/<index>.png`` (``<index>_<variant>.png`` for
the ``--augment-variants``), the folder-per-class layout that
``keras.utils.image_dataset_from_directory`` and ``--input`` read, with
``manifest.parquet``, pictures, ``index.html`` and ``metrics.json``.

Spark's executors write the files, each task its own images, through
``pyarrow.fs`` (local paths, ``file://``, ``hdfs://``, ``s3://``). The set is
written to a temporary folder and moved into place when complete; an
existing set is refused without ``--overwrite``. Augmentation is reproducible:
the same ``--seed`` gives the same images.

Run it with::

    spark-submit jobs/export_png.py --output runs/mnist-png
    spark-submit jobs/export_png.py --splits train --augment-variants 4 --rotate 0.9,25,25 --output runs/aug
    python jobs/export_png.py --limit 100 --output file:///tmp/mnist-sample
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from mnist_spark import augment, cli, flags, ingest, pngset, report, sources, storage
from mnist_spark.session import task_slots

logger = logging.getLogger("export_png")

#: Write tasks per task slot when --partitions is not given.
TASKS_PER_SLOT = 3


def run(
    spark,
    *,
    data_dir=None,
    input=None,
    input_table=None,
    image_col="image",
    label_col="label",
    split_col="split",
    output=None,
    overwrite=False,
    seed=0,
    splits=("train", "test"),
    limit=None,
    partitions=None,
    num_classes=None,
    augment_variants=0,
    params=None,
    compress_level=pngset.PNG_COMPRESS_LEVEL,
    sample=24,
):
    """Export the dataset as a PNG set into ``output``; return the metrics written to ``metrics.json``.

    ``params`` (:class:`mnist_spark.augment.AugmentParams`, default its
    ``mnist()``) are the transforms of the ``augment_variants``; the other
    keywords are the flags of the same names.
    """
    params_given, started = flags.run_params(locals()), time.perf_counter()
    splits = tuple(splits)
    if not splits:
        raise ValueError("no splits to export; give --splits train,test or a part of it")
    if params is None:
        params = augment.AugmentParams.mnist()
    output = output or storage.default_output("export_png")
    target = storage.AtomicOutput(output, overwrite=overwrite, job="export_png")
    # Several tasks per slot: a split's slices are equal in size but splits differ,
    # and with one task per slot the slot that gets the small split idles at the end.
    tasks = partitions or TASKS_PER_SLOT * task_slots(spark)
    data = sources.split_images(
        spark, params_given, splits=splits, partitions=tasks, limit=limit, num_classes=num_classes
    )
    full = augment.add_variants(data.frame, augment_variants, params, seed) if augment_variants else data.frame
    expected = sum(data.rows.values()) * (1 + augment_variants)
    with target as staging, ThreadPoolExecutor(max_workers=1) as pool:
        # The driver draws the pictures while the executors write the set; leaving
        # the pool waits for it, so nothing writes into a staging folder being removed.
        drawn = {"split": splits[0], "variants": augment_variants, "params": params, "seed": seed}
        pictures = pool.submit(report.set_pictures, data.first(sample), staging, **drawn) if sample else None
        counts, written, write_seconds = pngset.write_complete_set(
            full, staging, expected, num_classes=data.num_classes, compress_level=compress_level
        )
        figures = pictures.result() if pictures else []
        title, links, labels = f"PNG set of {data.title}", report.set_links(splits), range(data.num_classes)
        report.write_set_index(staging, title=title, counts=counts, figures=figures, links=links, labels=labels)
        metrics = {
            "job": "export_png",
            **data.metrics,
            "files": written,
            "num_classes": data.num_classes,
            "counts": {split: {str(k): v for k, v in per_label.items()} for split, per_label in counts.items()},
            "seconds": round(time.perf_counter() - started, 3),
            "write_seconds": round(write_seconds, 3),
            "images_per_second": round(ingest.rate(written, write_seconds), 1),
            "params": {
                **params_given,
                "params": None,
                "augmentation": dataclasses.asdict(params) if augment_variants else None,
            },
            "environment": report.environment(spark),
        }
        report.write_metrics(staging, metrics)
    logger.info("export done in %.1f s: %s", metrics["seconds"], output)
    return metrics


def arg_parser():
    return flags.job_parser(
        "export_png",
        __doc__,
        run,
        "input input_table image_col label_col split_col splits limit partitions num_classes compress_level sample",
        groups={
            "augmentation": (
                "--augment-variants N adds N variants of every image; each transform is applied "
                "with its probability P (0 turns it off)",
                "augment_variants transforms",
            )
        },
        help={"partitions": "write tasks in all; default: 3 per task slot, so that the slots finish together"},
    )


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    return cli.run_job(
        "export_png",
        lambda spark: run(spark, **flags.run_options(run, args), params=flags.augment_params(args)),
        before=lambda: cli.prepare_output("export_png", args, cli.data_inputs(args)),
    )


if __name__ == "__main__":
    sys.exit(main())
