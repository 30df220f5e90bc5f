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

from mnist_spark import cli, datasets, flags, ingest, report, storage

logger = logging.getLogger("ingest")


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
    params, started = flags.run_params(locals()), time.perf_counter()
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
            **ingest.dataset_metrics(files, infos),
            "seconds": round(time.perf_counter() - started, 3),
            "write_seconds": round(write_seconds, 3),
            "params": params,
            "environment": report.environment(spark),
        }
        report.write_metrics(staging, metrics)
    logger.info("ingest done in %.1f s: %s", metrics["seconds"], output)
    return metrics


def arg_parser():
    return flags.job_parser(
        "ingest",
        __doc__,
        run,
        "splits limit partitions num_classes",
        help={"partitions": "read tasks in all; default: the cluster's task slots"},
        seed=False,
    )


def main(argv=None) -> int:
    args = arg_parser().parse_args(argv)
    return cli.run_job(
        "ingest",
        lambda spark: run(spark, **flags.run_options(run, args)),
        before=lambda: cli.prepare_output("ingest", args, cli.default_data_inputs(args.data_dir)),
    )


if __name__ == "__main__":
    sys.exit(main())
