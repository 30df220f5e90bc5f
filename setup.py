"""Packaging for mnist_spark: a distributed deep-learning pipeline on Apache Spark."""
from setuptools import find_packages, setup

setup(
    name="mnist_spark",
    version="0.1.0",
    description="MNIST-style IDX datasets on Spark: ingest, PNG sets, distributed Keras training, transfer learning",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mnist_spark", "mnist_spark.*"]),
    python_requires=">=3.10,<3.14",
    # Lower bounds are the versions the test suite has run against; upper bounds
    # stop at the next major release, whose API changes we have not tested.
    install_requires=[
        "pyspark>=4.0,<5",
        "numpy>=1.26,<3",
        "pandas>=2.2,<3",  # pyspark 4.3 warns that pandas 3 is not fully supported
        "pyarrow>=15,<27",
        "pillow>=10,<14",
        "matplotlib>=3.8,<4",
        "scipy>=1.11,<2",
        "tensorflow-cpu>=2.16,<3",  # 2.16 is the first release on Keras 3
    ],
    # mlflow: experiment tracking (--mlflow, MLFLOW_TRACKING_URI); the skinny client is enough.
    # moto[server]: a local S3 endpoint for the shared-storage tests.
    extras_require={"mlflow": ["mlflow-skinny>=3.17,<4"],
                    "test": ["pytest>=8,<10", "moto[server]>=5,<6", "mlflow-skinny>=3.17,<4"]},
)
