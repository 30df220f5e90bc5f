"""Benchmark: transfer learning from your own network, against two baselines, in one run.

The classic Keras transfer experiment, offline:

1. ``train_cnn --labels 0,1,2,3,4`` trains the default CNN (``bn_cnn``) on
   the digits 0 to 4 (data-parallel on Spark, as a user runs it);
2. for 100, 300 and 1,000 training images of the digits 5 to 9 (the sample
   ``transfer`` draws: balanced over the labels, by a hash of the seed),
   scored on all 4,861 test images of 5 to 9:

   * ``own network``: ``transfer --base-model <that run> --output-layer
     flatten --labels 5,6,7,8,9``: the 0-4 network's convolutional
     features (its ``flatten`` layer, 1,024 values), then LogisticRegression;
   * ``own network, default layer``: the same with the featurizer's default
     layer, the last before the classifier (128 values);
   * ``random InceptionV3``: ``transfer --weights none --labels 5,6,7,8,9``:
     random-weight InceptionV3 features at 75 px, then LogisticRegression
     (what this machine can show without ImageNet weights);
   * ``from scratch``: the same CNN trained by plain Keras on the same
     images alone, for at least 40 epochs and 300 steps of 32 images, its
     BatchNorm statistics then re-estimated on those images
     (``models.reestimate_batchnorm``; without it the moving averages of so
     few steps cost up to 30 points at 100 images).

   Every LogisticRegression runs with ``--reg-param 0.01
   --elastic-net-param 0 --max-iter 100`` (the job's defaults suit 60,000
   images; on 100 they cost 1 to 7 points). Each size is repeated for
   ``--seeds`` samples (default 3); the table gives the mean and the range.

Writes ``benchmarks/results/transfer_own_network.json`` and prints a
Markdown table. About 10 minutes on 2 cores::

    .venv/bin/python benchmarks/transfer_own_network.py
    .venv/bin/python benchmarks/transfer_own_network.py --sizes 100 --base-epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
RESULTS = PROJECT / "benchmarks" / "results"
sys.path.insert(0, str(PROJECT))

BASE_LABELS, NEW_LABELS = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)


def _load_job(name: str):
    import importlib

    return importlib.import_module(f"mnist_spark.jobs.{name}")


def from_scratch(spark, transfer, size: int, seed: int, model_name: str) -> dict:
    """Plain Keras on the same sample the transfer job trains on; scored on all test images of 5-9."""
    import numpy as np
    import pandas as pd
    from pyspark.sql import functions as F

    from mnist_spark import datasets, images, ingest, labels, models, sampling

    files = datasets.locate(PROJECT / "data" / "mnist")
    df, _ = ingest.idx_dataframe(spark, files)
    df = labels.select_labels(df, NEW_LABELS)
    train, _ = sampling.stratified_sample(df.where(F.col("split") == "train"), size, seed, "train split")

    def arrays(frame):
        table = labels.select_labels(frame, NEW_LABELS, index=True).orderBy("index").toPandas()
        return images.struct_frame_to_numpy(table["image"].apply(pd.Series)), table["label"].to_numpy(np.int32)

    x, y = arrays(train)
    xt, yt = arrays(df.where(F.col("split") == "test"))
    started = time.perf_counter()
    model = models.build_model(model_name, num_classes=len(NEW_LABELS), seed=seed)
    batch = 32
    epochs = max(40, -(-300 * batch // len(x)))
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, shuffle=True)
    models.reestimate_batchnorm(model, x.astype(np.float32))
    _, accuracy = model.evaluate(xt, yt, batch_size=512, verbose=0)
    return {
        "accuracy": round(float(accuracy), 4),
        "seconds": round(time.perf_counter() - started, 1),
        "epochs": epochs,
        "train_rows": len(x),
        "test_rows": len(xt),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,300,1000", help="training images of the new classes")
    parser.add_argument("--model", default="bn_cnn", help="the CNN of the base network and of from-scratch")
    parser.add_argument("--base-epochs", type=int, default=4, help="epochs of the 0-4 network")
    parser.add_argument("--seeds", type=int, default=3, help="samples per size (seeds 0 .. N-1)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    regression = {"reg_param": 0.01, "elastic_net_param": 0.0, "max_iter": 100}

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_CONF_DIR", str(PROJECT / "conf"))
    from mnist_spark.session import get_spark

    spark = get_spark("benchmark-transfer-own-network", master="local[2]")
    train_cnn, transfer = _load_job("train_cnn"), _load_job("transfer")
    results: dict = {"sizes": sizes, "model": args.model, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        base = os.path.join(folder, "base")
        started = time.perf_counter()
        trained = train_cnn.run(
            spark, output=base, arch=args.model, epochs=args.base_epochs, labels=list(BASE_LABELS), seed=0
        )
        results["base"] = {
            "test_accuracy_0_4": round(trained["test_accuracy"], 4),
            "train_rows": trained["train_rows"],
            "epochs": args.base_epochs,
            "seconds": round(time.perf_counter() - started, 1),
        }
        print(json.dumps(results["base"]), flush=True)
        methods = (
            ("own_network", {"base_model": base, "output_layer": "flatten"}),
            ("own_network_default_layer", {"base_model": base}),
            ("random_inceptionv3", {"weights": "none"}),
        )
        for size in sizes:
            for seed in range(args.seeds):
                row = {"size": size, "seed": seed}
                for name, options in methods:
                    started = time.perf_counter()
                    metrics = transfer.run(
                        spark,
                        output=os.path.join(folder, f"{name}-{size}-{seed}"),
                        labels=list(NEW_LABELS),
                        train_limit=size,
                        test_limit=None,
                        seed=seed,
                        **regression,
                        **options,
                    )
                    row[name] = {
                        "accuracy": round(metrics["accuracy"], 4),
                        "train_rows": metrics["train_rows"],
                        "test_rows": metrics["test_rows"],
                        "feature_size": metrics["feature_size"],
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                row["from_scratch"] = from_scratch(spark, transfer, size, seed, args.model)
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
    spark.stop()

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "transfer_own_network.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"\nbase network ({args.model}, digits 0-4, {args.base_epochs} epochs): "
        f"{results['base']['test_accuracy_0_4']:.2%} on the test digits 0-4\n"
    )
    names = ("own_network", "own_network_default_layer", "random_inceptionv3", "from_scratch")
    print(
        "| training images of 5-9 | own 0-4 network, `flatten` + LR | own 0-4 network, default layer + LR | "
        "random InceptionV3 + LR | from scratch |"
    )
    print("| --- | --- | --- | --- | --- |")
    for size in sizes:
        rows = [row for row in results["runs"] if row["size"] == size]
        cells = []
        for name in names:
            values = [row[name]["accuracy"] for row in rows]
            spread = f" ({min(values):.2%}-{max(values):.2%})" if len(values) > 1 else ""
            cells.append(f"{sum(values) / len(values):.2%}{spread}")
        print(f"| {size:,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
