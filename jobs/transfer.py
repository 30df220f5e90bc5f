"""``spark-submit jobs/transfer.py [flags]``: runs mnist_spark.jobs.transfer (``--help`` lists the flags)."""

import sys

from mnist_spark.jobs.transfer import main

if __name__ == "__main__":
    sys.exit(main())
