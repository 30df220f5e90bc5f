"""Packaging: TensorFlow through extras, and one clear line when no TensorFlow is installed."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest
from standalone_cluster import venv_without_checkout

from conftest import PROJECT
from mnist_spark import cli, evaluation, models, session, weights


def _pyproject() -> dict:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is new in Python 3.11")
    import tomllib

    return tomllib.loads((PROJECT / "pyproject.toml").read_text())


def test_tensorflow_comes_from_an_extra_of_either_build():
    project = _pyproject()["project"]
    assert not [d for d in project["dependencies"] if d.startswith(("tensorflow", "keras"))]
    extras = project["optional-dependencies"]
    assert [re.split(r"[<>=]", d)[0] for d in extras["cpu"]] == ["tensorflow-cpu"]
    assert [re.split(r"[<>=]", d)[0] for d in extras["gpu"]] == ["tensorflow"]
    # Every constraint names a package the project or its extras bring in, with an exact version.
    pins = [
        line for line in (PROJECT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][\w.]*", pin) for pin in pins)
    assert "tensorflow-cpu" in {pin.split("==")[0] for pin in pins}
    # make install reinstalls when the packaging changes.
    assert re.search(r"^\$\(VENV\)/\.installed: pyproject\.toml$", (PROJECT / "Makefile").read_text(), re.M)


def test_no_tensorflow_is_one_line_naming_the_extras(monkeypatch, tmp_path):
    for var in session.TF_THREAD_VARS:  # configure_tensorflow_threads sets them; restored after
        monkeypatch.setenv(var, "0")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    for use in (
        lambda: models.build_model("mlp"),
        lambda: evaluation.load_model(str(tmp_path / "m.keras")),
        lambda: weights.resolve_weights("none", "InceptionV3"),
        lambda: session.configure_tensorflow_threads(1),
    ):
        with pytest.raises(session.TensorFlowNotFoundError) as error:
            use()
        status, line = cli.classify(error.value)
        assert status == cli.EXIT_BAD_INPUT
        assert "pip install 'mnist_spark[cpu]' (tensorflow-cpu) or 'mnist_spark[gpu]' (tensorflow)" in line


@pytest.mark.slow
@pytest.mark.spark
def test_the_wheel_installs_without_the_checkout_and_its_jobs_run(tmp_path):
    """Build the wheel, install it in a new venv, run a console command and spark-submit an installed job.

    The new venv finds the third-party dependencies in this venv's site-packages
    (a ``.pth`` entry, which does not run this venv's own ``.pth`` files, so the
    checkout's editable install stays out of sight); mnist_spark comes from the wheel.
    """
    import json
    import os

    # Built from a copy, so that setuptools' build/ folder never lands in the checkout.
    import shutil
    import subprocess
    from pathlib import Path

    source = tmp_path / "source"
    shutil.copytree(PROJECT / "mnist_spark", source / "mnist_spark", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(PROJECT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(source)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("mnist_spark-*.whl")
    env_dir = tmp_path / "venv"
    python = venv_without_checkout(env_dir)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPARK_CONF_DIR")}
    env.update(PYSPARK_PYTHON=str(python), PYSPARK_DRIVER_PYTHON=str(python))
    # pip sees the dependencies already there, so this installs the wheel alone.
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", str(wheel)],
        check=True,
        cwd=tmp_path,
        env=env,
    )
    where = subprocess.run(
        [str(python), "-c", "import mnist_spark.jobs.ingest as job; print(job.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    ).stdout.strip()
    assert where.startswith(str(env_dir)), where  # from the wheel, not the checkout

    for command in (
        "mnist-spark-ingest",
        "mnist-spark-export-png",
        "mnist-spark-train",
        "mnist-spark-predict",
        "mnist-spark-transfer",
    ):
        shown = subprocess.run(
            [str(env_dir / "bin" / command), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env
        )
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"usage: {command} "), shown.stdout[:200]

    out = tmp_path / "ingested"
    spark_submit = Path(sys.executable).parent / "spark-submit"
    done = subprocess.run(
        [str(spark_submit), "--master", "local[1]", where, "--data-dir", str(PROJECT / "data" / "mnist")]
        + ["--splits", "test", "--limit", "50", "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["rows"] == {"test": 50}
