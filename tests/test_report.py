"""Pictures of image sets: contact sheet, augmentation grid, index.html."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnist_spark import report


def _digits(count, seed=0):
    rng = np.random.default_rng(seed)
    out = np.zeros((count, 28, 28), np.uint8)
    out[:, 6:22, 10:18] = rng.integers(100, 256, size=(count, 16, 8))
    return out


def _png(path):
    with Image.open(path) as image:
        return image.format, image.size, np.asarray(image.convert("L"))


def test_contact_sheet_is_a_grid_of_labelled_cells(tmp_path):
    out = tmp_path / "sheet.png"
    assert report.contact_sheet(
        list(_digits(24)), [str(i % 10) for i in range(24)], str(out), columns=6, title="sample"
    ) == str(out)
    kind, (width, height), pixels = _png(out)
    assert kind == "PNG"
    assert (width, height) == (660, 568)  # 6 x 4 cells of 1.1 inch at 100 dpi, plus titles
    # gray_r: background white, the bars dark.
    assert pixels.max() == 255 and pixels.min() < 60
    assert (pixels < 128).mean() > 0.03


def test_contact_sheet_of_colour_and_a_partial_last_row(tmp_path):
    colour = np.zeros((5, 8, 8, 3), np.uint8)
    colour[..., 0] = 255  # blue in Spark's BGR order
    out = tmp_path / "colour.png"
    report.contact_sheet(list(colour), list("abcde"), str(out), columns=3)
    with Image.open(out) as image:
        rgb = np.asarray(image.convert("RGB")).reshape(-1, 3)
    blue = (rgb[:, 2] > 200) & (rgb[:, 0] < 50) & (rgb[:, 1] < 50)
    assert blue.sum() > 1000 and not ((rgb[:, 0] > 200) & (rgb[:, 2] < 50)).any()


def test_contact_sheet_checks_its_input(tmp_path):
    with pytest.raises(ValueError, match="3 images but 2 titles"):
        report.contact_sheet(list(_digits(3)), ["a", "b"], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no images"):
        report.contact_sheet([], [], str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_variant_grid(tmp_path):
    originals = _digits(3)
    variants = [[np.roll(o, k, axis=1) for k in (1, 2, 3, 4)] for o in originals]
    texts = [["7"] + ["shift=1.00,0.00;rotate=3.00", "", "zoom=1.100", "elastic=8,3"]] * 3
    out = tmp_path / "grid.png"
    report.variant_grid(list(originals), variants, texts, f"file://{out}", title="variants")
    kind, (width, height), _ = _png(out)
    assert kind == "PNG" and width == 700 and height > 3 * 140
    with pytest.raises(ValueError, match="same number of variants"):
        report.variant_grid(list(originals), [[originals[0]], [], []], texts, str(tmp_path / "bad.png"))


def test_set_index_counts_and_relative_links(tmp_path):
    counts = {"train": {0: [5, 10], 1: [3, 6]}, "test": {0: [2, 4], 1: [1, 2]}}
    location = report.write_set_index(
        str(tmp_path),
        title="PNG set of <MNIST>",
        counts=counts,
        figures=[("contact_sheet.png", "sample")],
        links=[("train/", "train/"), ("manifest.parquet/", "manifest")],
    )
    html = (tmp_path / "index.html").read_text()
    assert location == str(tmp_path / "index.html")
    assert "<title>PNG set of &lt;MNIST&gt;</title>" in html
    assert "<tr><th>split</th><th>0</th><th>1</th><th>total</th></tr>" in html
    assert "<tr><th>train</th><td>5 + 10</td><td>3 + 6</td><td><b>8 + 16</b></td></tr>" in html
    assert "<tr><th>test</th><td>2 + 4</td><td>1 + 2</td><td><b>3 + 6</b></td></tr>" in html
    targets = re.findall(r'(?:href|src)="([^"]+)"', html)
    assert sorted(set(targets)) == ["contact_sheet.png", "manifest.parquet/", "train/"]
    plain = report.write_set_index(str(tmp_path / "plain"), title="t", counts={"test": {3: [4, 0]}}, labels=range(5))
    assert (
        "<tr><th>test</th><td>0</td><td>0</td><td>0</td><td>4</td><td>0</td><td><b>4</b></td></tr>"
        in Path(plain).read_text()
    )


def test_the_exported_set_links_its_pictures(spark, tiny_idx, tmp_path):
    from conftest import load_job

    out = tmp_path / "set"
    load_job("export_png").run(
        spark, data_dir=str(tiny_idx), output=str(out), augment_variants=1, splits=("test",), sample=5
    )
    html = (out / "index.html").read_text()
    for target in re.findall(r'(?:href|src)="([^"]+)"', html):
        assert not target.startswith(("/", "file:")) and (out / target).exists(), target
    assert 'src="contact_sheet.png"' in html and 'src="augmentations.png"' in html
    assert _png(out / "contact_sheet.png")[1] == (550, 172)  # 5 cells in one row
    assert "<b>5 + 5</b>" in html
