"""mnist_spark: MNIST-style IDX datasets on Apache Spark.

Ingest IDX files into DataFrames of Spark's image struct, write PNG image sets,
train Keras models data-parallel, and build transfer-learning pipelines.
TensorFlow is imported only by the modules that need it, so ``import mnist_spark``
stays fast.
"""

__version__ = "0.1.0"
