"""LogisticRegression on feature vectors, fitted as set or cross-validated over a grid.

``transfer --tune`` uses :func:`fit_logistic_regression` with Spark ML's own
``CrossValidator`` and ``ParamGridBuilder`` over ``regParam`` and
``elasticNetParam``; the features are computed once and kept by the caller,
so every fold and grid point reads the same cached vectors.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

#: The grid ``--tune`` searches by default.
DEFAULT_REG_PARAMS = (0.001, 0.01, 0.05, 0.1)
DEFAULT_ELASTIC_NET_PARAMS = (0.0, 0.3)
DEFAULT_FOLDS = 3


def fit_logistic_regression(
    features,
    *,
    features_col: str,
    label_col: str = "label",
    max_iter: int = 20,
    reg_param: float = 0.0,
    elastic_net_param: float = 0.0,
    tune: bool = False,
    reg_params=DEFAULT_REG_PARAMS,
    elastic_net_params=DEFAULT_ELASTIC_NET_PARAMS,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
):
    """Fit LogisticRegression on ``features``; with ``tune``, pick its regularisation by cross-validation.

    Parameters
    ----------
    features : DataFrame
        ``features_col`` (vectors) and ``label_col``; keep it cached, since
        cross-validation reads it once per fold and grid point.
    reg_param, elastic_net_param
        The settings without ``tune``.
    tune : bool
        Cross-validate every pair of ``reg_params`` x ``elastic_net_params``
        over ``folds`` folds (by accuracy), then refit the best on all of
        ``features``.

    Returns
    -------
    (LogisticRegressionModel, list of dict)
        The model, and the grid with each point's mean and standard
        deviation of accuracy over the folds (empty without ``tune``), the
        chosen point marked ``"best": True``.
    """
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    estimator = LogisticRegression(
        featuresCol=features_col,
        labelCol=label_col,
        maxIter=max_iter,
        regParam=reg_param,
        elasticNetParam=elastic_net_param,
    )
    if not tune:
        return estimator.fit(features), []
    if folds < 2:
        raise ValueError(f"cross-validation needs 2 or more folds, found {folds}")
    grid = (
        ParamGridBuilder()
        .addGrid(estimator.regParam, [float(v) for v in reg_params])
        .addGrid(estimator.elasticNetParam, [float(v) for v in elastic_net_params])
        .build()
    )
    evaluator = MulticlassClassificationEvaluator(labelCol=label_col, metricName="accuracy")
    started = time.perf_counter()
    search = CrossValidator(
        estimator=estimator, estimatorParamMaps=grid, evaluator=evaluator, numFolds=folds, seed=seed
    ).fit(features)
    best = max(range(len(grid)), key=lambda i: search.avgMetrics[i])
    results = [
        {
            "regParam": point[estimator.regParam],
            "elasticNetParam": point[estimator.elasticNetParam],
            "accuracy": round(float(mean), 6),
            "accuracy_std": round(float(std), 6),
            "best": i == best,
        }
        for i, (point, mean, std) in enumerate(zip(grid, search.avgMetrics, search.stdMetrics, strict=True))
    ]
    logger.info(
        "cross-validated %d settings over %d folds in %.1f s; best regParam %g, elasticNetParam %g (accuracy %.4f)",
        len(grid),
        folds,
        time.perf_counter() - started,
        results[best]["regParam"],
        results[best]["elasticNetParam"],
        results[best]["accuracy"],
    )
    return search.bestModel, results
