"""Export an IDX dataset (MNIST by default) as a PNG image set, optionally augmented.

Reads the four IDX files into a Spark DataFrame and writes one PNG file per
image, in the folder-per-class layout ``keras.utils.image_dataset_from_directory``
reads::

    <output>/<split>/<label>/<index>.png              the originals
    <output>/<split>/<label>/<index>_<variant>.png    --augment-variants N variants each
    <output>/manifest.parquet/                        path, split, index, label, variant, augmentation
    <output>/contact_sheet.png, augmentations.png     pictures of the set
    <output>/index.html, metrics.json, _SUCCESS

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

from mnist_spark import augment, cli, datasets, images, ingest, report, storage
from mnist_spark.session import task_slots

logger = logging.getLogger("export_png")

#: Write tasks per task slot when --partitions is not given.
TASKS_PER_SLOT = 3


def _arg_parser():
    parser = cli.job_parser(__doc__, "export_png")
    parser.add_argument("--splits", type=cli.split_list, default="train,test", help="comma-separated splits to export")
    parser.add_argument(
        "--limit", type=cli.positive_int, default=None, help="export only the first N images of each split"
    )
    parser.add_argument(
        "--partitions",
        type=cli.positive_int,
        default=None,
        help="write tasks in all; default: 3 per task slot, so that the slots finish together",
    )
    parser.add_argument(
        "--num-classes",
        type=cli.positive_int,
        default=None,
        help="labels must lie in [0, N); default: the dataset's (10 for MNIST)",
    )
    parser.add_argument(
        "--compress-level",
        type=cli.compress_level,
        default=images.PNG_COMPRESS_LEVEL,
        help="zlib level of the PNG files, 0 (none) to 9 (smallest)",
    )
    parser.add_argument(
        "--sample", type=cli.non_negative_int, default=24, help="images in the contact sheet; 0 leaves out the pictures"
    )
    group = parser.add_argument_group(
        "augmentation",
        "--augment-variants N adds N variants of every image; each transform is applied "
        "with its probability P (0 turns it off)",
    )
    group.add_argument("--augment-variants", type=cli.non_negative_int, default=0, help="augmented variants per image")
    cli.deprecated_flag(group, "--augment", "--augment-variants", type=cli.non_negative_int)
    cli.add_transform_flags(group)
    return parser


def run(
    spark,
    *,
    data_dir=None,
    output=None,
    overwrite=False,
    seed=0,
    splits=("train", "test"),
    limit=None,
    partitions=None,
    num_classes=None,
    augment_variants=0,
    params=None,
    compress_level=images.PNG_COMPRESS_LEVEL,
    sample=24,
):
    """Export the dataset as a PNG set into ``output``; return the metrics written to ``metrics.json``.


    Parameters
    ----------
    augment_variants : int
        Augmented variants per image (``--augment-variants``).
    params : mnist_spark.augment.AugmentParams, optional
        The transforms; default :meth:`AugmentParams.mnist`.
    compress_level : int
        zlib level of the PNG files.
    sample : int
        Images in the contact sheet; 0 writes no pictures.
    partitions : int, optional
        Write tasks in all; default :data:`TASKS_PER_SLOT` per task slot.

    The other parameters are those of ``jobs/ingest.py``.
    """
    params_given, started = cli.run_params(locals()), time.perf_counter()
    splits = tuple(splits)
    if not splits:
        raise ValueError("no splits to export; give --splits train,test or a part of it")
    if params is None:
        params = augment.AugmentParams.mnist()
    output = output or storage.default_output("export_png")
    target = storage.AtomicOutput(output, overwrite=overwrite, job="export_png")
    files = datasets.locate(data_dir)
    # Several tasks per slot: a split's slices are equal in size but splits differ,
    # and with one task per slot the slot that gets the small split idles at the end.
    df, infos = ingest.idx_dataframe(
        spark,
        files,
        splits=splits,
        partitions=partitions or TASKS_PER_SLOT * task_slots(spark),
        limit=limit,
        num_classes=num_classes,
    )
    classes = num_classes or files.dataset.num_classes
    full = augment.add_variants(df, augment_variants, params, seed) if augment_variants else df
    expected = sum(info.count for info in infos) * (1 + augment_variants)
    with target as staging, ThreadPoolExecutor(max_workers=1) as pool:
        # The driver draws the pictures while the executors write the set; leaving
        # the pool waits for it, so nothing writes into a staging folder being removed.
        pictures = (
            pool.submit(
                report.set_pictures,
                ingest.first_images(infos[0], sample),
                staging,
                split=infos[0].split,
                variants=augment_variants,
                params=params,
                seed=seed,
            )
            if sample
            else None
        )
        write_started = time.perf_counter()
        images.write_png_set(full, staging, compress_level=compress_level, label_width=len(str(max(classes - 1, 0))))
        write_seconds = time.perf_counter() - write_started
        counts = images.manifest_counts(staging)
        written = sum(o + v for per_label in counts.values() for o, v in per_label.values())
        if written != expected:
            raise RuntimeError(
                f"the manifest lists {written} files, expected {expected}; the set is "
                "incomplete and was not moved into place"
            )
        logger.info(
            "wrote %d PNGs in %.1f s (%.0f img/s) to %s",
            written,
            write_seconds,
            ingest.rate(written, write_seconds),
            output,
        )
        figures = pictures.result() if pictures else []
        links = [(f"{split}/", f"{split}/: one folder per label") for split in splits]
        links += [
            (f"{images.MANIFEST_NAME}/", "manifest (Parquet): path, split, index, label, variant, augmentation, bytes"),
            ("metrics.json", "metrics.json"),
        ]
        report.write_set_index(
            staging,
            title=f"PNG set of {files.dataset.title}",
            counts=counts,
            figures=figures,
            links=links,
            labels=range(classes),
        )
        metrics = {
            "job": "export_png",
            "dataset": files.dataset.name,
            "source": {"directory": files.directory, "found_by": files.source},
            "rows": {info.split: info.count for info in infos},
            "files": written,
            "counts": {
                split: {str(label): pair for label, pair in per_label.items()} for split, per_label in counts.items()
            },
            "image_shape": {info.split: list(info.image_shape) for info in infos},
            "seconds": round(time.perf_counter() - started, 3),
            "write_seconds": round(write_seconds, 3),
            "images_per_second": round(ingest.rate(written, write_seconds), 1),
            "params": {
                **params_given,
                "output": output,
                "params": None,
                "augmentation": dataclasses.asdict(params) if augment_variants else None,
            },
            "environment": report.environment(spark),
        }
        report.write_metrics(staging, metrics)
    logger.info("export done in %.1f s: %s", metrics["seconds"], output)
    return metrics


def main(argv=None) -> int:
    args = _arg_parser().parse_args(argv)
    return cli.run_job(
        "export_png",
        lambda spark: run(spark, **cli.run_options(run, args), params=cli.augment_params(args)),
        before=lambda: cli.prepare_output("export_png", args, cli.default_data_inputs(args.data_dir)),
    )


if __name__ == "__main__":
    sys.exit(main())
