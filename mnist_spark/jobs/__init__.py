"""The jobs: ``ingest``, ``export_png``, ``train_cnn``, ``predict`` and ``transfer``.

Each module is its flags, ``run(spark, **options)`` and ``main(argv)``. Run one with
``spark-submit jobs/<job>.py`` from a checkout, with its console command
(``mnist-spark-train``, ...) once the package is installed, or with
``spark-submit`` on the module's own file. ``run`` is the library call: it
takes a SparkSession and returns the metrics that the job writes.
"""

#: Job module -> console command (pyproject.toml's [project.scripts] lists the same).
COMMANDS = {
    "ingest": "mnist-spark-ingest",
    "export_png": "mnist-spark-export-png",
    "train_cnn": "mnist-spark-train",
    "predict": "mnist-spark-predict",
    "transfer": "mnist-spark-transfer",
}
