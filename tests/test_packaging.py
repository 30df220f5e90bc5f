"""Packaging: TensorFlow through extras, and one clear line when no TensorFlow is installed."""

from __future__ import annotations

import importlib.util
import re
import sys

import pytest

from conftest import PROJECT
from mnist_spark import cli, evaluation, featurizer, models, session


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
        lambda: featurizer.resolve_weights("none", "InceptionV3"),
        lambda: session.configure_tensorflow_threads(1),
    ):
        with pytest.raises(session.TensorFlowNotFoundError) as error:
            use()
        status, line = cli.classify(error.value)
        assert status == cli.EXIT_BAD_INPUT
        assert "pip install 'mnist_spark[cpu]' (tensorflow-cpu) or 'mnist_spark[gpu]' (tensorflow)" in line
