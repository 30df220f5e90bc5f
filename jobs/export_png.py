"""``spark-submit jobs/export_png.py [flags]``: runs mnist_spark.jobs.export_png (``--help`` lists the flags)."""

import sys

from mnist_spark.jobs.export_png import main

if __name__ == "__main__":
    sys.exit(main())
