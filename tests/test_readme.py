"""Every Python block of the README runs, on small data, as a reader would paste it.

The blocks of "Spark ML API" run in tests/test_ml.py (test_readme_examples_run),
which needs that file's fixtures; this test runs every other block, and checks
that the two together cover all of them, so a new block cannot go untested.
"""

from __future__ import annotations

import re

import pytest

from conftest import PROJECT, load_job
from mnist_spark import models
from mnist_spark import weights as weight_files


def _blocks() -> list[tuple[str, str]]:
    """``(section, code)`` of every Python block, in order."""
    blocks, section = [], ""
    for part in re.split(r"(^## .*$)", (PROJECT / "README.md").read_text(), flags=re.M):
        if part.startswith("## "):
            section = part[3:].strip()
            continue
        blocks += [(section, code) for code in re.findall(r"```python\n(.*?)```", part, flags=re.S)]
    return blocks


def _inception_weights(folder) -> None:
    """Random InceptionV3 weights under Keras' file name, as $MNIST_SPARK_WEIGHTS finds them."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format

    keras.utils.set_random_seed(3)
    model = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(75, 75, 3), pooling="avg")
    with h5py.File(folder / weight_files.IMAGENET_WEIGHTS["InceptionV3"].weights_file, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(spark, tiny_idx, tmp_path, monkeypatch):
    blocks = _blocks()
    others = [code for section, code in blocks if section != "Spark ML API"]
    assert len(blocks) - len(others) == 4  # the ones tests/test_ml.py runs (it checks the same count)
    assert others, "no block outside the Spark ML API section"

    monkeypatch.chdir(tmp_path)
    weights = tmp_path / "weights"
    weights.mkdir()
    _inception_weights(weights)
    monkeypatch.setenv(weight_files.ENV_WEIGHTS, str(weights))
    models.build_model("simple_cnn", seed=1).save(tmp_path / "model.keras")
    (tmp_path / "runs" / "digits04").mkdir(parents=True)
    (tmp_path / "model.keras").rename(tmp_path / "runs" / "digits04" / "model.keras")
    export = load_job("export_png")
    export.run(spark, data_dir=str(tiny_idx), output="runs/mnist-png", limit=6, sample=0)
    export.run(spark, data_dir=str(tiny_idx), output="runs/mnist-aug", limit=6, sample=0, augment_variants=1)
    frame = load_job("ingest").run  # the README's train_df and test_df: ingested images
    frame(spark, data_dir=str(tiny_idx), output="runs/ingested")
    df = spark.read.parquet(str(tmp_path / "runs" / "ingested" / "data.parquet"))
    names = {"spark": spark, "train_df": df.where("split = 'train'"), "test_df": df.where("split = 'test'")}
    for code in others:
        # Spark's own writers resolve a relative path in the JVM's folder, not this test's.
        code = code.replace('"runs/', f'"{tmp_path}/runs/')
        exec(compile(code, "README.md", "exec"), names)
    # What the blocks made: a saved pipeline, a featurizer of the own network, PNG sets read back.
    assert (tmp_path / "runs" / "digits-model" / "stages").is_dir()
    assert names["featurizer"].getModelFile() == f"{tmp_path}/runs/digits04/model.keras"
    assert names["df"].count() == 6 + 5 and names["bad"] == []  # 6 train images, and the 5 test images there are
