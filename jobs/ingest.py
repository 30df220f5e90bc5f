"""``spark-submit jobs/ingest.py [flags]``: runs mnist_spark.jobs.ingest (``--help`` lists the flags)."""

import sys

from mnist_spark.jobs.ingest import main

if __name__ == "__main__":
    sys.exit(main())
