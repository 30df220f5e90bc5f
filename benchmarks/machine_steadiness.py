"""Benchmark: how steady this machine's cores are, with a fixed amount of work per window.

The training benchmarks report the spread of per-round images per second
((max - min) / median, :func:`mnist_spark.training.spread`). A spread can
only be as small as the machine's own: on a shared virtual machine the
cores a process gets change speed with the host's load. This script runs
one single-threaded process per core (``os.cpu_count()``), each multiplying
the same two float32 matrices in a loop, and counts the products each
finishes per window of ``--window`` seconds (about a training round). The
work never changes, so any spread is the machine's. ``--work compute``
multiplies 256 x 256 matrices, which stay in the core's cache; ``--work
memory`` adds two arrays of 64 MiB into a third, as a training step
streams its activations through memory, which the host's other machines
share.

Run it alone, with nothing else busy, right before or after a training
benchmark. Writes ``benchmarks/results/machine_steadiness_<work>.json`` and prints it::

    .venv/bin/python benchmarks/machine_steadiness.py                 # 4 minutes
    .venv/bin/python benchmarks/machine_steadiness.py --work memory
    .venv/bin/python benchmarks/machine_steadiness.py --seconds 60 --window 5
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


#: Elements of each array: 256 x 256 for ``compute``, 64 MiB of float32 for ``memory``.
SIZES = {"compute": 256 * 256, "memory": 16 * 2**20}


def _count_products(work: str, seconds: float, window: float, queue) -> None:
    """Repeat ``work`` on one thread for ``seconds``; put the repetitions per second of each window."""
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.random(SIZES[work], np.float32) for _ in range(2))
    if work == "compute":
        a, b = a.reshape(256, 256), b.reshape(256, 256)
    out = np.empty_like(a)
    step = (lambda: np.dot(a, b, out=out)) if work == "compute" else (lambda: np.add(a, b, out=out))
    counts, done = [], 0
    start = time.perf_counter()
    edge = start + window
    while True:
        step()
        done += 1
        now = time.perf_counter()
        if now >= edge:
            counts.append(done / (now - (edge - window)))
            done, edge = 0, now + window
            if now - start >= seconds:
                break
    queue.put(counts)


def measure(work: str, seconds: float, window: float, processes: int) -> dict:
    """Repetitions per second of all processes in each window, and their spreads."""
    from mnist_spark.training import spread

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: numpy's threads set before import
    queue = context.Queue()
    workers = [context.Process(target=_count_products, args=(work, seconds, window, queue)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    per_process = [queue.get() for _ in workers]
    for worker in workers:
        worker.join()
    windows = min(len(counts) for counts in per_process)
    total = [round(sum(counts[i] for counts in per_process), 1) for i in range(windows)]
    return {
        "work": work,
        "processes": processes,
        "window_seconds": window,
        "per_second": total,
        "spread": spread(total),
        "spread_per_process": [spread(counts) for counts in per_process],
        "median": round(statistics.median(total), 1),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", choices=sorted(SIZES), default="compute", help="default: compute")
    parser.add_argument("--seconds", type=float, default=240.0, help="how long to measure (default 240)")
    parser.add_argument("--window", type=float, default=15.0, help="seconds per window, about a round (default 15)")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="default: one per core")
    args = parser.parse_args(argv)
    result = measure(args.work, args.seconds, args.window, args.processes)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"machine_steadiness_{args.work}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
