"""``spark-submit jobs/predict.py [flags]``: runs mnist_spark.jobs.predict (``--help`` lists the flags)."""

import sys

from mnist_spark.jobs.predict import main

if __name__ == "__main__":
    sys.exit(main())
