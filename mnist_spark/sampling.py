"""Samples of image DataFrames balanced over the labels, the same for the same seed.

Examples
--------
>>> balanced_quotas({0: 100, 1: 100, 2: 3}, 25)
{2: 3, 0: 11, 1: 11}
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def balanced_quotas(counts: dict, limit: int) -> dict:
    """Rows to take per label so that ``limit`` rows are spread as evenly as the labels allow.

    Labels with fewer rows than an even share give all they have and the
    rest is shared among the others.
    """
    quotas, remaining = {}, limit
    ordered = sorted(counts, key=lambda label: (counts[label], label))
    for position, label in enumerate(ordered):
        quotas[label] = min(counts[label], remaining // (len(ordered) - position))
        remaining -= quotas[label]
    return quotas


def train_test_samples(df, train_limit: int | None, test_limit: int | None, seed: int) -> tuple:
    """The ``train`` and ``test`` splits of ``df``, each sampled by :func:`stratified_sample`.

    Returns ``(train, test, counts)``, ``counts`` mapping each split to its rows per label. The
    Spark jobs that count the labels are in the phase ``sample``.
    """
    from pyspark.sql import functions as F

    from mnist_spark.session import phase

    with phase(df.sparkSession, "sample"):
        train, train_counts = stratified_sample(df.where(F.col("split") == "train"), train_limit, seed, "train split")
        test, test_counts = stratified_sample(df.where(F.col("split") == "test"), test_limit, seed, "test split")
    logger.info(
        "sampled %d training and %d test images (seed %d)", sum(train_counts.values()), sum(test_counts.values()), seed
    )
    return train, test, {"train": train_counts, "test": test_counts}


def stratified_sample(df, limit: int | None, seed: int, where: str):
    """Up to ``limit`` rows of ``df``, balanced over ``label``, chosen by a hash of ``(seed, split, index)``.

    The same seed always picks the same rows, whatever the partitioning.

    Returns
    -------
    (DataFrame, dict)
        The sample and its rows per label.

    Raises
    ------
    ValueError
        When ``df`` has no rows.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    counts = {int(r["label"]): int(r["count"]) for r in df.groupBy("label").count().collect()}
    total = sum(counts.values())
    if total == 0:
        raise ValueError(f"the {where} has no images; check --data-dir or --images")
    if limit is None or limit >= total:
        if limit is not None and limit > total:
            logger.warning("the %s has %d images, fewer than the %d asked for; using them all", where, total, limit)
        return df, dict(sorted(counts.items()))
    quotas = balanced_quotas(counts, limit)
    order = Window.partitionBy("label").orderBy(F.xxhash64(F.lit(seed), "split", "index"), "index")
    wanted = F.create_map(*[F.lit(value) for pair in sorted(quotas.items()) for value in pair])
    sample = (
        df.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= wanted[F.col("label")]).drop("_rank")
    )
    return sample, dict(sorted(quotas.items()))
