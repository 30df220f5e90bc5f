"""Every job's entry point on bad input: one clear error line, a non-zero exit, no partial output.

Each case runs ``main(argv)`` of a job (reusing the session-scoped SparkSession)
and checks that the last line on stderr is ``<job>: error: ...`` naming the
thing, that it is the only error line, that the exit status is not 0, and
that neither the output folder nor a temporary sibling of it exists.
Argparse's own errors (``<job>.py: error: argument ...``, exit 2 through
``SystemExit``) count as the same one clear line.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import pytest

import conftest
from conftest import load_job, write_idx_dataset
from mnist_spark import idx

JOBS = {name: load_job(name) for name in ("ingest", "export_png", "train_cnn", "predict", "transfer")}

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"

#: Small, fast settings per job, so that a case that wrongly succeeds still ends quickly.
FAST = {
    "ingest": ["--limit", "10"],
    "export_png": ["--limit", "5", "--sample", "0"],
    "train_cnn": [
        "--arch",
        "simple_cnn",
        "--epochs",
        "1",
        "--limit",
        "20",
        "--validation-size",
        "0",
        "--checkpoint-every",
        "0",
    ],
    "transfer": ["--weights", "none", "--image-size", "75", "--train-limit", "20", "--test-limit", "10"],
}


def run_main(job: str, argv: list, capsys) -> tuple[int, list]:
    """Run ``jobs/<job>.py``'s main; return its exit status and its stderr lines."""
    return conftest.run_main(JOBS[job], argv, capsys)


def assert_one_error(job: str, status, lines: list, *names: str) -> str:
    """Exactly one error line, last on stderr, naming each of ``names``; exit status not 0."""
    assert status not in (0, None), f"{job} exited 0 on bad input; stderr: {lines[-5:]}"
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1, f"expected one error line, found {errors}"
    last = lines[-1]
    assert last.startswith((f"{job}: error:", f"{job}.py: error:")), f"last stderr line: {last!r}"
    assert "Traceback" not in "\n".join(lines)
    for name in names:
        assert name in last, f"{name!r} is not named in {last!r}"
    return last


def assert_no_output(output: Path) -> None:
    """Neither the output nor a temporary or partial sibling of it is left."""
    assert not output.exists(), f"{output} was left behind"
    siblings = (
        [p.name for p in output.parent.glob(f"{output.name}.*") if ".tmp-" in p.name or p.name.endswith(".partial")]
        if output.parent.is_dir()
        else []
    )
    assert not siblings, f"partial output left: {siblings}"


def check_case(job: str, argv: list, output: Path, capsys, *names: str) -> str:
    status, lines = run_main(job, [*argv, "--output", output], capsys)
    message = assert_one_error(job, status, lines, *names)
    assert_no_output(output)
    return message


# --------------------------------------------------------------------------- IDX defects


def _gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def _raw(path: Path) -> bytes:
    return gzip.decompress(path.read_bytes())


def _missing(folder: Path) -> str:
    (folder / TRAIN_LABELS).unlink()
    return "train-labels"


def _not_gzip(folder: Path) -> str:
    (folder / TRAIN_IMAGES).write_bytes(b"this is not a gzip file, nor an IDX file\n" * 4)
    return TRAIN_IMAGES


def _truncated(folder: Path) -> str:
    raw = _raw(folder / TRAIN_IMAGES)
    (folder / TRAIN_IMAGES).write_bytes(_gz(raw[: len(raw) - 1000]))
    return TRAIN_IMAGES


def _wrong_magic(folder: Path) -> str:
    raw = _raw(folder / TRAIN_IMAGES)
    (folder / TRAIN_IMAGES).write_bytes(_gz(b"\x12\x34" + raw[2:]))
    return TRAIN_IMAGES


def _huge_header(folder: Path) -> str:
    raw = _raw(folder / TRAIN_IMAGES)
    (folder / TRAIN_IMAGES).write_bytes(_gz(raw[:4] + struct.pack(">I", 10**9) + raw[8:]))
    return TRAIN_IMAGES


def _trailing_garbage(folder: Path) -> str:
    raw = _raw(folder / TRAIN_IMAGES)
    (folder / TRAIN_IMAGES).write_bytes(_gz(raw + b"garbage at the end"))
    return TRAIN_IMAGES


def _count_mismatch(folder: Path) -> str:
    labels = idx.read_idx(folder / TRAIN_LABELS)
    (folder / TRAIN_LABELS).unlink()
    idx.write_idx(folder / TRAIN_LABELS, labels[:-3])
    return "train-"


def _label_out_of_range(folder: Path) -> str:
    labels = idx.read_idx(folder / TRAIN_LABELS).copy()
    labels[4] = 12
    (folder / TRAIN_LABELS).unlink()
    idx.write_idx(folder / TRAIN_LABELS, labels)
    return TRAIN_LABELS


def _empty(folder: Path) -> str:
    (folder / TRAIN_IMAGES).write_bytes(b"")
    return TRAIN_IMAGES


IDX_DEFECTS = {
    "missing file": _missing,
    "not gzip": _not_gzip,
    "truncated": _truncated,
    "wrong magic": _wrong_magic,
    "header promises 10**9 images": _huge_header,
    "trailing garbage": _trailing_garbage,
    "image/label count mismatch": _count_mismatch,
    "label outside the classes": _label_out_of_range,
    "empty file": _empty,
}

IDX_CASES = [pytest.param("ingest", defect, id=f"ingest-{defect}") for defect in IDX_DEFECTS]
IDX_CASES += [
    pytest.param(job, defect, id=f"{job}-{defect}")
    for job, defect in (
        ("train_cnn", "truncated"),
        ("train_cnn", "label outside the classes"),
        ("train_cnn", "missing file"),
        ("export_png", "wrong magic"),
        ("export_png", "header promises 10**9 images"),
        ("export_png", "image/label count mismatch"),
    )
]


@pytest.mark.parametrize("job, defect", IDX_CASES)
def test_idx_defect(spark, tmp_path, capsys, job, defect):
    data = write_idx_dataset(tmp_path / "idx", 30, 5, seed=4)
    name = IDX_DEFECTS[defect](data)
    # ingest and export_png read every split; --limit does not hide a defect at the end of a file.
    argv = ["--data-dir", data, *(FAST[job] if job != "ingest" else [])]
    check_case(job, argv, tmp_path / "out", capsys, name)


# --------------------------------------------------------------------------- corrupt PNG in a set


@pytest.fixture(scope="module")
def png_set(spark, tmp_path_factory, tiny_idx):
    """A tiny exported PNG set (30 train / 5 test) with one test PNG overwritten by garbage."""
    folder = tmp_path_factory.mktemp("pngs") / "set"
    JOBS["export_png"].run(spark, data_dir=str(tiny_idx), output=str(folder), sample=0)
    victim = sorted((folder / "test").rglob("*.png"))[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    return folder, victim


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """An untrained simple_cnn saved as model.keras (predict only needs its input shape)."""
    from mnist_spark import models

    path = tmp_path_factory.mktemp("model") / "model.keras"
    models.build_model("simple_cnn", seed=0).save(path)
    return path


def test_corrupt_png_transfer(spark, tmp_path, capsys, png_set):
    folder, victim = png_set
    check_case("transfer", ["--images", folder, *FAST["transfer"]], tmp_path / "out", capsys, victim.name)


def test_corrupt_png_predict(spark, tmp_path, capsys, png_set, saved_model):
    folder, victim = png_set
    check_case("predict", ["--model-file", saved_model, "--images", folder], tmp_path / "out", capsys, victim.name)


# --------------------------------------------------------------------------- outputs


def _unwritable_parent(tmp_path: Path) -> Path:
    """An output whose parent cannot be written: a read-only folder, or under a file for root."""
    parent = tmp_path / "locked"
    parent.mkdir()
    os.chmod(parent, 0o555)
    probe = parent / "probe"
    try:
        probe.mkdir()
    except OSError:
        return parent / "out"
    probe.rmdir()  # root writes anyway: a path under a regular file fails for everyone
    os.chmod(parent, 0o755)
    (tmp_path / "afile").write_text("a file, not a folder\n")
    return tmp_path / "afile" / "out"


@pytest.mark.parametrize("job", ["ingest", "export_png", "train_cnn", "transfer"])
def test_unwritable_output(spark, tmp_path, capsys, tiny_idx, job):
    output = _unwritable_parent(tmp_path)
    try:
        message = check_case(job, ["--data-dir", tiny_idx, *FAST.get(job, [])], output, capsys, str(output))
    finally:
        os.chmod(tmp_path / "locked", 0o755)
    assert "not" in message and ("writable" in message or "folder" in message)


def test_unwritable_output_predict(spark, tmp_path, capsys, tiny_idx, saved_model):
    output = _unwritable_parent(tmp_path)
    try:
        check_case("predict", ["--model-file", saved_model, "--data-dir", tiny_idx], output, capsys, str(output))
    finally:
        os.chmod(tmp_path / "locked", 0o755)


@pytest.mark.parametrize("job", ["ingest", "export_png", "train_cnn", "transfer", "predict"])
def test_existing_output(spark, tmp_path, capsys, tiny_idx, saved_model, job):
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("an earlier run\n")
    argv = ["--data-dir", tiny_idx, *FAST.get(job, []), "--output", output]
    if job == "predict":
        argv += ["--model-file", saved_model]
    status, lines = run_main(job, argv, capsys)
    message = assert_one_error(job, status, lines, str(output), "already exists")
    assert "--overwrite" in message
    assert sorted(p.name for p in output.iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# --------------------------------------------------------------------------- flags


FLAG_CASES = [
    ("train_cnn", ["--arch", "nope"], "--arch"),
    ("transfer", ["--base-model", "Incepshun"], "--base-model"),
    ("train_cnn", ["--epochs", "0"], "--epochs"),
    ("train_cnn", ["--batch-size", "-1"], "--batch-size"),
    ("train_cnn", ["--limit", "0"], "--limit"),
    ("ingest", ["--limit", "0"], "--limit"),
    ("export_png", ["--limit", "-5"], "--limit"),
    ("transfer", ["--train-limit", "0"], "--train-limit"),
    ("transfer", ["--batch-size", "0"], "--batch-size"),
    ("predict", ["--batch-size", "0"], "--batch-size"),
]


@pytest.mark.parametrize("job, flags, name", FLAG_CASES, ids=[f"{j}{' '.join(f)}" for j, f, _ in FLAG_CASES])
def test_bad_flag(spark, tmp_path, capsys, tiny_idx, job, flags, name):
    base = ["--data-dir", tiny_idx, *FAST.get(job, [])] + (["--model-file", "m.keras"] if job == "predict" else [])
    status, lines = run_main(job, [*base, *flags, "--output", tmp_path / "out"], capsys)
    assert status == 2
    assert_one_error(job, status, lines, name)
    assert_no_output(tmp_path / "out")


def test_transfer_image_size_below_the_minimum(spark, tmp_path, capsys, tiny_idx):
    argv = ["--data-dir", tiny_idx, *FAST["transfer"], "--image-size", "10"]
    message = check_case("transfer", argv, tmp_path / "out", capsys, "--image-size", "75")
    assert "InceptionV3" in message


@pytest.mark.parametrize("job", ["ingest", "export_png", "train_cnn", "transfer", "predict"])
def test_data_dir_missing(spark, tmp_path, capsys, saved_model, job):
    missing = tmp_path / "no-such-folder"
    argv = ["--data-dir", missing, *FAST.get(job, [])] + (["--model-file", saved_model] if job == "predict" else [])
    check_case(job, argv, tmp_path / "out", capsys, str(missing))


# --------------------------------------------------------------------------- weights


def test_transfer_weights_missing(spark, tmp_path, capsys, tiny_idx):
    argv = ["--data-dir", tiny_idx, *FAST["transfer"], "--weights", "/nope.h5"]
    check_case("transfer", argv, tmp_path / "out", capsys, "/nope.h5")


def test_transfer_weights_truncated(spark, tmp_path, capsys, tiny_idx):
    weights = tmp_path / "inception.weights.h5"
    weights.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 4)
    argv = ["--data-dir", tiny_idx, *FAST["transfer"], "--weights", weights]
    check_case("transfer", argv, tmp_path / "out", capsys, str(weights))


def test_predict_model_missing(spark, tmp_path, capsys, tiny_idx):
    missing = tmp_path / "nope.keras"
    check_case("predict", ["--data-dir", tiny_idx, "--model-file", missing], tmp_path / "out", capsys, str(missing))


def test_predict_model_truncated(spark, tmp_path, capsys, tiny_idx, saved_model):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(saved_model.read_bytes()[:2000])
    check_case("predict", ["--data-dir", tiny_idx, "--model-file", broken], tmp_path / "out", capsys, str(broken))


DEPRECATED = [
    ("train_cnn", ["--model", "convnet"], "arch", "convnet", "--arch"),
    ("train_cnn", ["--augment"], "augment_on_the_fly", True, "--augment-on-the-fly"),
    ("export_png", ["--augment", "3"], "augment_variants", 3, "--augment-variants"),
    ("predict", ["--model", "runs/cnn"], "model_file", "runs/cnn", "--model-file"),
    ("transfer", ["--model", "ResNet50"], "base_model", "ResNet50", "--base-model"),
]


@pytest.mark.parametrize("job, argv, dest, value, new", DEPRECATED, ids=[f"{d[0]}{d[1][0]}" for d in DEPRECATED])
def test_old_flag_spellings_still_work_with_a_warning(job, argv, dest, value, new, caplog):
    args = load_job(job).arg_parser().parse_args(argv)
    assert getattr(args, dest) == value
    assert f"{argv[0]} is deprecated and will be removed in the next release; use {new}" in caplog.text


def test_old_flag_spellings_keep_their_checks(capsys):
    with pytest.raises(SystemExit):
        load_job("train_cnn").arg_parser().parse_args(["--model", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
