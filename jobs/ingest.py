"""Ingest an IDX dataset (MNIST by default) into Parquet.

Reads the four IDX files (``train``/``t10k`` images and labels, gzip or raw)
into a Spark DataFrame of ``split, index, label, image`` with Spark's image
struct, and writes it as Parquet partitioned by split, with a ``metrics.json``
(row and label counts, timings). Each Spark task reads its own slice of the
files; the output appears only when complete, with a ``_SUCCESS`` marker.

Run it with::

    spark-submit jobs/ingest.py --output runs/mnist
    python jobs/ingest.py --data-dir /data/fashion-mnist --output runs/fashion
"""

from __future__ import annotations

import logging
import sys
import time

from mnist_spark import cli, datasets, ingest, report, storage

logger = logging.getLogger("ingest")


def _arg_parser():
    parser = cli.job_parser(__doc__, "ingest", seed=False)
    parser.add_argument("--splits", type=cli.split_list, default="train,test", help="comma-separated splits to ingest")
    parser.add_argument(
        "--limit", type=cli.positive_int, default=None, help="ingest only the first N items of each split"
    )
    parser.add_argument(
        "--partitions", type=cli.positive_int, default=None, help="read tasks in all; default: the cluster's task slots"
    )
    parser.add_argument(
        "--num-classes",
        type=cli.positive_int,
        default=None,
        help="labels must lie in [0, N); default: the dataset's (10 for MNIST)",
    )
    return parser


def run(
    spark,
    *,
    data_dir=None,
    output=None,
    overwrite=False,
    splits=("train", "test"),
    limit=None,
    partitions=None,
    num_classes=None,
):
    """Ingest the dataset into ``output``; return the metrics written to ``metrics.json``."""
    started = time.perf_counter()
    output = output or storage.default_output("ingest")
    target = storage.AtomicOutput(output, overwrite=overwrite, job="ingest")
    files = datasets.locate(data_dir)
    df, infos = ingest.idx_dataframe(
        spark, files, splits=splits, partitions=partitions, limit=limit, num_classes=num_classes
    )
    with target as staging:
        write_started = time.perf_counter()
        ingest.write_dataset(df, storage.join(staging, ingest.PARQUET_NAME))
        write_seconds = time.perf_counter() - write_started
        rows = sum(info.count for info in infos)
        logger.info(
            "wrote %d rows in %.1f s (%.0f rows/s) to %s", rows, write_seconds, ingest.rate(rows, write_seconds), output
        )
        metrics = {
            "job": "ingest",
            "dataset": files.dataset.name,
            "source": {"directory": files.directory, "found_by": files.source},
            "rows": {info.split: info.count for info in infos},
            "label_counts": {info.split: list(info.label_counts) for info in infos},
            "image_shape": {info.split: list(info.image_shape) for info in infos},
            "seconds": round(time.perf_counter() - started, 3),
            "write_seconds": round(write_seconds, 3),
            "params": {
                "data_dir": data_dir,
                "output": output,
                "overwrite": overwrite,
                "splits": list(splits),
                "limit": limit,
                "partitions": partitions,
                "num_classes": num_classes,
            },
            "environment": report.environment(spark),
        }
        report.write_metrics(staging, metrics)
    logger.info("ingest done in %.1f s: %s", metrics["seconds"], output)
    return metrics


def main(argv=None) -> int:
    args = _arg_parser().parse_args(argv)
    return cli.run_job(
        "ingest",
        lambda spark: run(
            spark,
            data_dir=args.data_dir,
            output=args.output,
            overwrite=args.overwrite,
            splits=args.splits,
            limit=args.limit,
            partitions=args.partitions,
            num_classes=args.num_classes,
        ),
        before=lambda: cli.prepare_output("ingest", args, cli.default_data_inputs(args.data_dir)),
    )


if __name__ == "__main__":
    sys.exit(main())
