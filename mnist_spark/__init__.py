"""mnist_spark: MNIST-style IDX datasets on Apache Spark.

Ingest IDX files into DataFrames of Spark's image struct, write PNG image sets,
train Keras models data-parallel, and build transfer-learning pipelines.
TensorFlow is imported only by the modules that need it, so ``import mnist_spark``
stays fast; ``from mnist_spark import DeepImageFeaturizer`` (or ``KerasImageClassifier``,
``KerasImageTransformer``, ``DeepImagePredictor``, ``register_keras_udf``) loads its
module on first use.
"""

__version__ = "0.1.0"

#: Names importable from the package itself, loaded from their module on first use.
_LAZY = {
    "DeepImageFeaturizer": "mnist_spark.featurizer",
    **{
        name: "mnist_spark.ml"
        for name in (
            "KerasImageClassifier",
            "KerasImageClassificationModel",
            "KerasImageTransformer",
            "DeepImagePredictor",
            "register_keras_udf",
        )
    },
}

__all__ = [
    "DeepImageFeaturizer",
    "KerasImageClassifier",
    "KerasImageClassificationModel",
    "KerasImageTransformer",
    "DeepImagePredictor",
    "register_keras_udf",
    "__version__",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mnist_spark' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
