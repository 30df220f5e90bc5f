"""Benchmark: training on more data than the executors' memory, with bounded worker memory.

A synthetic set of 28x28 images (random pixels and labels; 1.6 million
images, 1.25 GB of pixels by default) is generated inside Spark, so no file
and no driver holds it, and trained for one epoch (``mlp``, batch 512) in
2 replicas on ``local[2]`` with a 1 GiB JVM heap: each shard (630 MB) is
larger than half the heap and is cached as 64 MiB rows.

Sampled every 0.2 s over the whole run: the JVM's resident memory, and each
Python worker's anonymous resident memory (``RssAnon``: what the worker
allocated itself) and file-backed resident memory (``RssFile``: pages of the
memory-mapped shard file, which the kernel can drop at any time). Writes
``benchmarks/results/large_shards.json`` and prints it::

    .venv/bin/python benchmarks/large_shards.py                  # about 3 minutes
    .venv/bin/python benchmarks/large_shards.py --images 400000  # smaller
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
sys.path.insert(0, str(PROJECT))


def _status(pid: int) -> dict:
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile"):
                values[name] = int(rest.split()[0]) * 1024
    return values


def _sample(stop: threading.Event, peaks: dict) -> None:
    me = os.getpid()
    while not stop.is_set():
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                command = Path(f"/proc/{entry}/cmdline").read_bytes()
                status = _status(int(entry))
            except OSError:
                continue
            if b"pyspark.daemon" in command or b"pyspark.worker" in command:
                kind = "python_worker"
            elif b"org.apache.spark" in command and b"java" in command:
                kind = "jvm"
            else:
                continue
            for name, value in status.items():
                key = f"{kind}_{name}"
                peaks[key] = max(peaks.get(key, 0), value)
        stop.wait(0.2)


def synthetic(spark, images: int, partitions: int = 64):
    """A DataFrame of ``images`` random 28x28 images: index, label, image struct; made in the tasks."""
    import numpy as np
    import pyarrow as pa

    from mnist_spark.images import image_struct_array, image_struct_type

    def generate(batches):
        for batch in batches:
            ids = batch.column("id").to_numpy()
            for start in range(0, len(ids), 8192):
                part = ids[start : start + 8192]
                rng = np.random.default_rng(int(part[0]))
                pixels = rng.integers(0, 256, size=(len(part), 28, 28, 1), dtype=np.uint8)
                yield pa.RecordBatch.from_arrays(
                    [
                        pa.array(part),
                        pa.array(rng.integers(0, 10, len(part)).astype(np.int32)),
                        image_struct_array(pixels, [f"synthetic:{i}" for i in part]),
                    ],
                    names=["index", "label", "image"],
                )

    from pyspark.sql.types import IntegerType, LongType, StructField, StructType

    schema = StructType(
        [
            StructField("index", LongType(), False),
            StructField("label", IntegerType(), False),
            StructField("image", image_struct_type(), False),
        ]
    )
    return spark.range(0, images, numPartitions=partitions).mapInArrow(generate, schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1_600_000)
    parser.add_argument("--heap", default="1g")
    args = parser.parse_args()
    from mnist_spark import training
    from mnist_spark.session import get_spark

    spark = get_spark(
        "large_shards", master="local[2]", conf={"spark.driver.memory": args.heap, "spark.ui.enabled": "false"}
    )
    stop, peaks = threading.Event(), {}
    sampler = threading.Thread(target=_sample, args=(stop, peaks), daemon=True)
    sampler.start()
    started = time.perf_counter()
    config = training.TrainConfig(model="mlp", epochs=1, batch_size=512, partitions=2, batchnorm_sample=0)
    _, state = training.train(spark, synthetic(spark, args.images), config)
    seconds = time.perf_counter() - started
    stop.set()
    sampler.join()
    spark.stop()
    pixels = args.images * 784
    result = {
        "benchmark": "large_shards",
        "images": args.images,
        "pixel_bytes": pixels,
        "shard_bytes": pixels // 2,
        "chunk_bytes": training.CHUNK_BYTES,
        "jvm_heap": args.heap,
        "seconds": round(seconds, 1),
        "rounds": state.round,
        "images_per_second": round(sum(h["images"] for h in state.history) / seconds, 1),
        "peak_gib": {key: round(value / 2**30, 3) for key, value in sorted(peaks.items())},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "large_shards.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
