"""PNG image sets: encode/decode, the export job's layout, reading sets back, bad files, outputs."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import load_job
from mnist_spark import datasets, idx, images, ingest, pngset

export_job = load_job("export_png")


def _files(root: Path) -> set:
    """Paths of the PNG set's image files, relative to the set."""
    found = set()
    for split in ("train", "test"):
        for folder, _, names in os.walk(root / split):
            found |= {str(Path(folder, n).relative_to(root)) for n in names}
    return found


def _idx_labels(folder: Path, split: str) -> np.ndarray:
    prefix = "train" if split == "train" else "t10k"
    return idx.read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def tiny_set(spark, tiny_idx, tmp_path_factory) -> Path:
    """The tiny dataset (30 train / 5 test) exported with 2 augmented variants each."""
    out = tmp_path_factory.mktemp("sets") / "tiny"
    export_job.run(spark, data_dir=str(tiny_idx), output=str(out), augment_variants=2, seed=5, partitions=3)
    return out


# --------------------------------------------------------------------------- one image


@pytest.mark.parametrize("shape", [(28, 28), (5, 7, 3), (4, 6, 4)])
def test_encode_decode_round_trip(shape):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    png = pngset.encode_png(pixels)
    expected = pixels[..., None] if pixels.ndim == 2 else pixels
    np.testing.assert_array_equal(pngset.decode_png(png), expected)
    # The file holds RGB(A): Spark's BGR(A) order is swapped on the way out.
    with Image.open(io.BytesIO(png)) as image:
        stored = np.asarray(image)
    if len(shape) == 3:
        np.testing.assert_array_equal(stored[..., 0], pixels[..., 2])


def test_decode_refuses_what_is_not_an_image():
    with pytest.raises(ValueError, match=r"train/3/1\.png: not a readable image"):
        pngset.decode_png(b"hello", "train/3/1.png")
    with pytest.raises(TypeError, match="uint8"):
        pngset.encode_png(np.zeros((3, 3), np.float32))


def test_paths_in_a_set():
    assert pngset.png_path("train", 3, 12) == "train/3/12.png"
    assert pngset.png_path("test", 7, 5, variant=2, label_width=2) == "test/07/5_2.png"
    assert pngset.parse_png_path("test/07/5_2.png") == ("test", 7, 5, 2)
    assert pngset.parse_png_path("train/3/12.png") == ("train", 3, 12, 0)
    for outside in ("train/3/notes.txt", "train/x/1.png", "train/3/sub/1.png", "train/3/1_.png"):
        assert pngset.parse_png_path(outside) is None


def test_a_retried_write_overwrites_the_same_files(tmp_path):
    """A task attempt that died halfway leaves files; the retry writes the same names over them."""
    from pyarrow import fs as pafs

    pixels = np.random.default_rng(1).integers(0, 256, size=(3, 4, 4), dtype=np.uint8)
    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(["train"] * 3),
            pa.array([0, 1, 2], pa.int64()),
            pa.array([5, 5, 2], pa.int32()),
            images.image_struct_array(pixels, ["a", "b", "c"]),
        ],
        names=["split", "index", "label", "image"],
    )
    (tmp_path / "train" / "5").mkdir(parents=True)
    (tmp_path / "train" / "5" / "1.png").write_bytes(b"half-written")
    for _ in range(2):
        manifest = pngset._write_png_batch(batch, pafs.LocalFileSystem(), str(tmp_path), set(), 1, 1)
    assert _files(tmp_path) == {"train/5/0.png", "train/5/1.png", "train/2/2.png"}
    assert manifest.column("path").to_pylist() == ["train/5/0.png", "train/5/1.png", "train/2/2.png"]
    for row, path in enumerate(manifest.column("path").to_pylist()):
        np.testing.assert_array_equal(pngset.decode_png((tmp_path / path).read_bytes())[..., 0], pixels[row])


# --------------------------------------------------------------------------- the export job


def test_export_layout_file_count_and_manifest(spark, tiny_set, tiny_idx):
    assert sorted(os.listdir(tiny_set)) == [
        "_MNIST_SPARK",
        "_SUCCESS",
        "augmentations.png",
        "contact_sheet.png",
        "index.html",
        "manifest.parquet",
        "metrics.json",
        "test",
        "train",
    ]
    expected = set()
    for split, count in (("train", 30), ("test", 5)):
        labels = _idx_labels(tiny_idx, split)
        assert len(labels) == count
        for index, label in enumerate(labels):
            expected |= {
                f"{split}/{label}/{index}.png",
                f"{split}/{label}/{index}_1.png",
                f"{split}/{label}/{index}_2.png",
            }
    assert len(expected) == 105
    assert _files(tiny_set) == expected

    manifest = spark.read.parquet(str(tiny_set / "manifest.parquet")).collect()
    assert {r.path for r in manifest} == expected
    for row in manifest:
        assert pngset.parse_png_path(row.path) == (row.split, row.label, row["index"], row.variant)
        assert row.bytes == (tiny_set / row.path).stat().st_size
        if row.variant == 0:
            assert row.augmentation == ""
    # A variant whose every transform missed its probability is unchanged and says so with "".
    assert sum(r.augmentation != "" for r in manifest if r.variant) >= 65
    metrics = json.loads((tiny_set / "metrics.json").read_text())
    assert metrics["files"] == 105 and metrics["rows"] == {"train": 30, "test": 5}
    train_labels = np.bincount(_idx_labels(tiny_idx, "train"), minlength=10)
    assert [metrics["counts"]["train"][str(c)] for c in range(10)] == [[n, 2 * n] for n in train_labels]


def test_round_trip_idx_png_dataframe_is_byte_exact(spark, small_idx, tmp_path):
    out = tmp_path / "set"
    export_job.run(spark, data_dir=str(small_idx), output=str(out), partitions=3, sample=0)
    assert len(_files(out)) == 700
    back, bad = pngset.read_png_set(spark, str(out))
    assert bad == []
    assert back.schema == ingest.dataset_schema()
    fresh, _ = ingest.idx_dataframe(spark, datasets.locate(small_idx))
    key = lambda r: (r.split, r["index"])  # noqa: E731
    got = sorted(back.collect(), key=key)
    want = sorted(fresh.collect(), key=key)
    assert [(r.split, r["index"], r.label) for r in got] == [(r.split, r["index"], r.label) for r in want]
    assert [r.image.data for r in got] == [r.image.data for r in want]
    assert {(r.image.height, r.image.width, r.image.nChannels, r.image.mode) for r in got} == {(28, 28, 1, 0)}
    first = got[0]
    assert first.image.origin.startswith("file:")
    assert first.image.origin.endswith(f"/set/{first.split}/{first.label}/{first['index']}.png")


def test_variants_read_back_equal_the_augmentation_step(spark, tiny_set, tiny_idx):
    from mnist_spark import augment

    back, bad = pngset.read_png_set(spark, str(tiny_set), variants=True)
    assert bad == [] and back.count() == 105
    assert back.columns == ["split", "index", "label", "image", "variant"]
    df, _ = ingest.idx_dataframe(spark, datasets.locate(tiny_idx))
    made = augment.add_variants(df, 2, augment.AugmentParams.mnist(), seed=5)
    key = lambda r: (r.split, r["index"], r.variant)  # noqa: E731
    got, want = sorted(back.collect(), key=key), sorted(made.collect(), key=key)
    assert [key(r) for r in got] == [key(r) for r in want]
    assert [r.image.data for r in got] == [r.image.data for r in want]
    originals, _ = pngset.read_png_set(spark, str(tiny_set), splits=["test"])
    assert originals.count() == 5


def test_refuses_an_existing_set_and_overwrites_on_request(spark, tiny_idx, tmp_path):
    out = tmp_path / "set"
    export_job.run(spark, data_dir=str(tiny_idx), output=str(out), sample=0)
    before = {p: (out / p).stat().st_mtime_ns for p in _files(out)}
    assert len(before) == 35
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_job.run(spark, data_dir=str(tiny_idx), output=str(out), sample=0)
    assert {p: (out / p).stat().st_mtime_ns for p in _files(out)} == before
    export_job.run(spark, data_dir=str(tiny_idx), output=str(out), overwrite=True, limit=3, sample=0)
    assert len(_files(out)) == 6
    assert json.loads((out / "metrics.json").read_text())["files"] == 6
    assert sorted(os.listdir(tmp_path)) == ["set"]


def test_a_file_uri_destination(spark, tiny_idx, tmp_path):
    uri = f"file://{tmp_path}/uri-set"
    metrics = export_job.run(spark, data_dir=str(tiny_idx), output=uri, splits=("test",), sample=4)
    assert metrics["files"] == 5
    assert len(_files(tmp_path / "uri-set")) == 5
    assert (tmp_path / "uri-set" / "_SUCCESS").exists()
    assert (tmp_path / "uri-set" / "contact_sheet.png").stat().st_size > 1000
    back, _ = pngset.read_png_set(spark, uri)
    assert sorted(r["index"] for r in back.collect()) == [0, 1, 2, 3, 4]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


# --------------------------------------------------------------------------- bad files


def _spoil(root: Path) -> list[str]:
    """Spoil four files of a copied set; return their relative paths, sorted."""
    truncated = sorted((root / "train").glob("*/*_1.png"))[0]
    truncated.write_bytes(truncated.read_bytes()[:40])
    garbage = sorted((root / "train").glob("*/*_2.png"))[0]
    garbage.write_bytes(b"this is not a PNG file")
    empty = sorted((root / "test").glob("*/*.png"))[0]
    empty.write_bytes(b"")
    stray = next(iter((root / "train").iterdir())) / "notes.txt"
    stray.write_text("a stray file")
    return sorted(str(p.relative_to(root)) for p in (truncated, garbage, empty, stray))


def test_a_persisted_set_is_decoded_once(spark, tiny_set, tmp_path):
    """With persist, the check's pass keeps the decoded files: later passes no longer read them."""
    for persist in (False, True):
        root = tmp_path / f"persist-{persist}"
        shutil.copytree(tiny_set, root)
        df, _ = pngset.read_png_set(spark, str(root), variants=True, persist=persist)
        for png in root.rglob("*.png"):
            png.write_bytes(b"")  # every file spoiled after the read: only a kept copy still has them
        if persist:
            rows = df.select("index", "variant", "image.data").collect()
            assert len(rows) == 35 * 3 and all(len(r["data"]) == 28 * 28 for r in rows)
        else:
            assert len(df.select("index", "image.data").collect()) < 35 * 3  # Spark skips empty files
    spark.catalog.clearCache()


def test_bad_files_fail_by_name(spark, tiny_set, tmp_path):
    root = tmp_path / "spoiled"
    shutil.copytree(tiny_set, root)
    spoiled = _spoil(root)
    with pytest.raises(ValueError) as error:
        pngset.read_png_set(spark, str(root), variants=True)
    message = str(error.value)
    # The driver's listing finds the empty and the stray file before any Spark job.
    assert message.startswith("2 bad file(s) in PNG set")
    assert "notes.txt: not in the set's layout" in message and "empty file" in message
    # Only undecodable files left: found by decoding, reported with their names.
    for path in spoiled:
        if path.endswith(".txt") or (root / path).stat().st_size == 0:
            (root / path).unlink()
    with pytest.raises(ValueError, match=r"2 bad file\(s\)") as error:
        pngset.read_png_set(spark, str(root), variants=True)
    for path in spoiled[:4]:
        if (root / path).exists():
            assert f"{path}: not a readable image" in str(error.value)


def test_bad_files_skipped_are_reported(spark, tiny_set, tmp_path, caplog):
    root = tmp_path / "spoiled"
    shutil.copytree(tiny_set, root)
    spoiled = _spoil(root)
    with caplog.at_level(logging.WARNING, logger="mnist_spark.pngset"):
        df, bad = pngset.read_png_set(spark, str(root), variants=True, on_bad="skip")
    assert sorted(b.path for b in bad) == spoiled
    assert "4 bad file(s)" in caplog.text and all(path in caplog.text for path in spoiled)
    # 105 images, 3 of them spoiled; the stray file was never one of them.
    rows = df.collect()
    assert len(rows) == 102
    read = {f"{r.split}/{r.label}/{r['index']}" + (f"_{r.variant}" if r.variant else "") + ".png" for r in rows}
    assert not read & set(spoiled)
    with pytest.raises(ValueError, match="'ignore' is not a supported on_bad; choose one of: fail, skip"):
        pngset.read_png_set(spark, str(root), on_bad="ignore")


def test_reading_what_is_not_a_set(spark, tmp_path):
    with pytest.raises(ValueError, match="no PNG set at .*does not exist"):
        pngset.read_png_set(spark, str(tmp_path / "nothing"))
    (tmp_path / "set" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no split validation; it holds: train"):
        pngset.read_png_set(spark, str(tmp_path / "set"), splits=["validation"])


def test_write_checks_columns_on_the_driver(spark, tmp_path):
    df = spark.createDataFrame([("train", 1)], "split string, index long")
    with pytest.raises(ValueError, match="no column 'label'"):
        pngset.write_png_set(df, str(tmp_path / "set"))
    assert not (tmp_path / "set").exists()


# --------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "argv",
    [
        ["--augment-variants", "-1"],
        ["--rotate", "2,10,10"],
        ["--rotate", "0.5,10"],
        ["--zoom", "0.5,1.2,0.9"],
        ["--compress-level", "12"],
        ["--limit", "0"],
        ["--shift", "x,y"],
    ],
)
def test_job_rejects_bad_flags(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_job.main(argv)
    assert exit_info.value.code == 2
    assert "error: argument" in capsys.readouterr().err


def test_job_with_a_missing_data_dir_is_one_line_and_no_output(spark, tmp_path, capsys):
    out = tmp_path / "set"
    status = export_job.main(["--data-dir", str(tmp_path / "missing"), "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("export_png: error: --data-dir ")
    assert str(tmp_path / "missing") in errors[0]
    assert os.listdir(tmp_path) == []
