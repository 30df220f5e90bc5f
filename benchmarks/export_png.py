"""Benchmark: the PNG export of full MNIST against a plain Pillow loop scaled to the same cores.

Measures, in one run and on the same machine:

* ``export``: ``jobs/export_png.py``'s ``run()`` on all 70,000 MNIST images,
  timed inside one Python process after the SparkSession has started and
  been warmed by a tiny export (10 images per split), so Spark's start-up
  is left out. It includes everything ``run()`` does: finding and checking
  the IDX files, writing the PNG files and the manifest, counting the
  manifest, the contact sheet and ``index.html``.
* ``pillow``: a single-process loop over the same 70,000 images, each
  ``Image.fromarray(pixels).save(path, compress_level=...)`` into the same
  ``<split>/<label>/<index>.png`` layout (folders made beforehand, reading the
  IDX files not timed), at the export's zlib level; and once more at Pillow's
  default level, for reference;
* ``augment``: :func:`mnist_spark.augment.augment_batch` on the 10,000 test
  images in one process, for a few settings.

The target is ``export_rate / (pillow_rate * task_slots) >= 0.7``: Spark's
export reaches at least 70% of a perfectly parallel Pillow loop. Both are
measured on disk (the system's temporary folder, judged against the target)
and in memory (``/dev/shm``, where creating files costs little, so Spark's
own overhead shows). Creating files on disk is the larger part of both and
its speed varies a lot on a shared machine, so the two alternate
``--repeats`` times, each after ``os.sync()``, and the best of each counts. Writes
``benchmarks/results/export_png.json`` and prints it.

Run it with::

    .venv/bin/python benchmarks/export_png.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
sys.path.insert(0, str(PROJECT))


def load_job(name: str):
    import importlib

    return importlib.import_module(f"mnist_spark.jobs.{name}")


def pillow_loop(data_dir: Path, out: Path, compress_level: int | None, limit: int | None = None) -> dict:
    """Encode and write the images one by one with Pillow; time only the loop."""
    from PIL import Image

    from mnist_spark import idx

    work = []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        pixels = idx.read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz")[:limit]
        labels = idx.read_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz")[:limit]
        for label in np.unique(labels):
            (out / split / str(label)).mkdir(parents=True, exist_ok=True)
        work.append((split, pixels, labels))
    options = {} if compress_level is None else {"compress_level": compress_level}
    count = 0
    started = time.perf_counter()
    for split, pixels, labels in work:
        folder = str(out / split)
        for index in range(len(pixels)):
            Image.fromarray(pixels[index]).save(f"{folder}/{labels[index]}/{index}.png", **options)
        count += len(pixels)
    seconds = time.perf_counter() - started
    sizes = [f.stat().st_size for f in out.rglob("*.png")]
    return {
        "images": count,
        "seconds": round(seconds, 3),
        "images_per_second": round(count / seconds, 1),
        "mean_png_bytes": round(float(np.mean(sizes)), 1),
    }


def augment_speed(data_dir: Path) -> dict:
    """Images per second of :func:`mnist_spark.augment.augment_batch` on one core, per setting."""
    from mnist_spark import augment, idx

    pixels = idx.read_idx(data_dir / "t10k-images-idx3-ubyte.gz")
    keys = [("test", i, 1) for i in range(len(pixels))]
    settings = {
        "mnist_defaults": augment.AugmentParams.mnist(),
        "rotate_only": augment.AugmentParams().rotate(1.0, 15, 15),
        "rotate_shear_zoom_shift": augment.AugmentParams()
        .rotate(1.0, 15, 15)
        .shear(1.0, 10)
        .zoom(1.0, 0.9, 1.1)
        .shift(1.0, 0.1),
        "elastic_only": augment.AugmentParams().elastic(1.0, 8, 3),
    }
    rates = {}
    for name, params in settings.items():
        started = time.perf_counter()
        augment.augment_batch(pixels, keys, params, seed=0)
        rates[name] = round(len(pixels) / (time.perf_counter() - started), 1)
    return rates


def measure(spark, export_job, data_dir: Path, workdir: str, repeats: int) -> dict:
    """Export and Pillow loop, alternating, in one scratch folder; the best of each."""
    from mnist_spark import pngset
    from mnist_spark.session import task_slots

    tmp = Path(tempfile.mkdtemp(prefix="bench-export-png-", dir=workdir))
    exports, loops = [], []
    try:
        for _ in range(repeats):
            os.sync()
            started = time.perf_counter()
            metrics = export_job.run(spark, data_dir=str(data_dir), output=str(tmp / "export"))
            exports.append((time.perf_counter() - started, metrics))
            shutil.rmtree(tmp / "export")
            os.sync()
            loops.append(pillow_loop(data_dir, tmp / "pillow", pngset.PNG_COMPRESS_LEVEL))
            shutil.rmtree(tmp / "pillow")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    export_seconds, metrics = min(exports, key=lambda item: item[0])
    baseline = max(loops, key=lambda item: item["images_per_second"])
    slots = task_slots(spark)
    export_rate = metrics["files"] / export_seconds
    scaled = baseline["images_per_second"] * slots
    return {
        "workdir": workdir,
        "filesystem": filesystem_type(workdir),
        "export_run_seconds": round(export_seconds, 2),
        "export_images_per_second": round(export_rate, 1),
        "export_write_phase_seconds": metrics["write_seconds"],
        "export_write_phase_images_per_second": metrics["images_per_second"],
        "pillow_loop": baseline,
        "pillow_loop_scaled_images_per_second": round(scaled, 1),
        "export_over_scaled_pillow": round(export_rate / scaled, 3),
        "all_export_run_seconds": [round(seconds, 2) for seconds, _ in exports],
        "all_pillow_loop_images_per_second": [loop["images_per_second"] for loop in loops],
    }


def filesystem_type(folder: str) -> str:
    """The type of the file system ``folder`` is on (from /proc/mounts), or "unknown"."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    real = os.path.realpath(folder)
    best = max(
        (m for m in mounts if real == m[1] or real.startswith(m[1].rstrip("/") + "/")),
        key=lambda m: len(m[1]),
        default=None,
    )
    return best[2] if best else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(PROJECT / "data" / "mnist"))
    default_dirs = [tempfile.gettempdir()] + (["/dev/shm"] if os.path.isdir("/dev/shm") else [])
    parser.add_argument(
        "--workdirs",
        default=",".join(default_dirs),
        help="comma-separated scratch folders to measure in; the first one is judged against the target",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of the export and of the Pillow loop, alternating; the best of each counts",
    )
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_CONF_DIR", str(PROJECT / "conf"))

    from mnist_spark import cli, pngset
    from mnist_spark.session import get_spark, task_slots

    cli.configure_logging()
    export_job = load_job("export_png")
    workdirs = [d for d in args.workdirs.split(",") if d]
    start = time.perf_counter()
    spark = get_spark("bench-export-png", conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    spark_start = time.perf_counter() - start
    warm_dir = Path(tempfile.mkdtemp(prefix="bench-export-png-warm-"))
    warm = time.perf_counter()
    export_job.run(spark, data_dir=str(data_dir), output=str(warm_dir / "warm"), limit=10)
    warm_seconds = time.perf_counter() - warm
    shutil.rmtree(warm_dir)
    runs = {}
    for workdir in workdirs:
        runs[workdir] = measure(spark, export_job, data_dir, workdir, args.repeats)
    slots = task_slots(spark)
    spark.stop()
    os.sync()
    with tempfile.TemporaryDirectory(dir=workdirs[0]) as tmp:
        default = pillow_loop(data_dir, Path(tmp), None, limit=5000)
    augmentation = augment_speed(data_dir)

    primary = runs[workdirs[0]]
    result = {
        "benchmark": "export_png",
        "images": 70000,
        "cores": os.cpu_count(),
        "task_slots": slots,
        "compress_level": pngset.PNG_COMPRESS_LEVEL,
        "spark_start_seconds": round(spark_start, 2),
        "warm_up_seconds": round(warm_seconds, 2),
        "export_images_per_second": primary["export_images_per_second"],
        "pillow_loop_scaled_images_per_second": primary["pillow_loop_scaled_images_per_second"],
        "export_over_scaled_pillow": primary["export_over_scaled_pillow"],
        "target_export_over_scaled_pillow": 0.7,
        "runs": runs,
        "pillow_loop_at_pillow_default_level": default,
        "augment_batch_images_per_second_one_core": augmentation,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "export_png.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
