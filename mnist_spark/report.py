"""What a run leaves behind for people: ``metrics.json`` and the environment it ran in."""

from __future__ import annotations

import json
import logging
import platform
import sys
from importlib import metadata

from mnist_spark import storage

logger = logging.getLogger(__name__)

#: Libraries whose versions every metrics.json records.
LIBRARIES = ("mnist_spark", "pyspark", "numpy", "pandas", "pyarrow", "pillow", "tensorflow-cpu", "keras")


def environment() -> dict:
    """Python, platform and library versions, for reproducing a run."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "libraries": versions}


def write_metrics(folder: str, metrics: dict) -> str:
    """Write ``metrics.json`` into a run folder (local path or URI); return its location."""
    location = storage.join(folder, "metrics.json")
    storage.write_bytes(location, (json.dumps(metrics, indent=2, sort_keys=False) + "\n").encode())
    return location


def read_metrics(folder: str) -> dict:
    """Read a run folder's ``metrics.json``."""
    with storage.open_input(storage.join(folder, "metrics.json")) as stream:
        return json.loads(stream.read())
