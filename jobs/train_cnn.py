"""``spark-submit jobs/train_cnn.py [flags]``: runs mnist_spark.jobs.train_cnn (``--help`` lists the flags)."""

import sys

from mnist_spark.jobs.train_cnn import main

if __name__ == "__main__":
    sys.exit(main())
