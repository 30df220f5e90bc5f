"""Augmentation: exact geometry, ranges, reproducibility across partitions, and checks on the driver."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import partition_count
from mnist_spark import augment, datasets, ingest
from mnist_spark.augment import AugmentParams, Transform, apply_transform, augment_batch


def _dot(shape=(9, 9), at=(4, 6), value=200):
    image = np.zeros(shape, np.uint8)
    image[at] = value
    return image


def _digits(count=40, seed=0):
    """Images with structure (a thick bar), so every transform visibly moves pixels."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, 28, 28), np.uint8)
    out[:, 6:22, 12:16] = rng.integers(120, 256, size=(count, 16, 4))
    return out


# --------------------------------------------------------------------------- geometry


def test_exact_geometry_of_each_transform():
    dot = _dot()
    # Positive rotation turns counter-clockwise: right of the centre goes up.
    assert np.argwhere(apply_transform(dot, Transform(rotation=90.0))).tolist() == [[2, 4]]
    assert np.argwhere(apply_transform(dot, Transform(rotation=-90.0))).tolist() == [[6, 4]]
    assert np.argwhere(apply_transform(dot, Transform(zoom=2.0)) == 200).tolist() == [[4, 8]]
    assert np.argwhere(apply_transform(dot, Transform(shift=(-3.0, 2.0)))).tolist() == [[6, 3]]
    # Horizontal shear moves rows by their distance from the centre; the centre row stays.
    assert np.argwhere(apply_transform(dot, Transform(shear=45.0))).tolist() == [[4, 6]]
    low = _dot(at=(6, 4))
    assert np.argwhere(apply_transform(low, Transform(shear=45.0))).tolist() == [[6, 6]]
    # The identity changes nothing; colour channels move together.
    assert np.array_equal(apply_transform(dot, Transform()), dot)
    colour = np.stack([dot, dot // 2, dot // 4], axis=-1)
    turned = apply_transform(colour, Transform(rotation=90.0))
    assert turned.shape == (9, 9, 3) and turned[2, 4].tolist() == [200, 100, 50]


def test_elastic_needs_its_generator_and_moves_pixels():
    image = _digits(1)[0]
    with pytest.raises(ValueError, match="needs rng"):
        apply_transform(image, Transform(elastic=(8.0, 3.0)))
    out = apply_transform(image, Transform(elastic=(8.0, 3.0)), rng=np.random.default_rng(0))
    assert out.shape == image.shape and not np.array_equal(out, image)
    again = apply_transform(image, Transform(elastic=(8.0, 3.0)), rng=np.random.default_rng(0))
    assert np.array_equal(out, again)


def test_rotation_angles_stay_in_range_and_change_the_image():
    params = AugmentParams().rotate(1.0, max_left_rotation=10, max_right_rotation=25)
    images = _digits(200)
    keys = [("train", i, 1) for i in range(len(images))]
    out, done = augment_batch(images, keys, params, seed=3)
    angles = np.array([t.rotation for t in done])
    assert angles.min() >= -25 and angles.max() <= 10
    assert angles.min() < -20 and angles.max() > 5  # the whole range is used
    assert all(t.shear is None and t.zoom is None and t.elastic is None for t in done)
    changed = np.array([not np.array_equal(a, b) for a, b in zip(out, images, strict=True)])
    assert changed[np.abs(angles) > 2].all()
    assert augment.parse_augmentation(done[0].describe()) == {"rotate": round(angles[0], 2)}


def test_probabilities_and_ranges_of_all_transforms():
    params = AugmentParams.mnist()
    images = _digits(300)
    _, done = augment_batch(images, [("test", i, 2) for i in range(300)], params, seed=1)
    applied = {name: 0 for name in ("rotate", "shear", "zoom", "shift", "elastic")}
    for transform in done:
        found = augment.parse_augmentation(transform.describe())
        for name in found:
            applied[name] += 1
        if "rotate" in found:
            assert -15 <= found["rotate"] <= 15
        if "shear" in found:
            assert -10 <= found["shear"] <= 10
        if "zoom" in found:
            assert 0.9 <= found["zoom"] <= 1.1
        if "shift" in found:
            assert all(abs(v) <= 2.8 + 1e-9 for v in found["shift"])
        if "elastic" in found:
            assert found["elastic"] == (8.0, 3.0)
    # Expected 270, 150, 150, 150, 90 of 300; binomial spread is a few percent.
    assert 245 <= applied["rotate"] <= 295
    assert all(115 <= applied[name] <= 185 for name in ("shear", "zoom", "shift"))
    assert 60 <= applied["elastic"] <= 120


def test_same_key_same_variant_whatever_the_batch():
    params = AugmentParams.mnist()
    images = _digits(12)
    keys = [("train", 100 + i, 1 + i % 3) for i in range(12)]
    whole, done = augment_batch(images, keys, params, seed=9)
    for i in (0, 5, 11):
        alone, one = augment_batch(images[i : i + 1], keys[i : i + 1], params, seed=9)
        assert np.array_equal(alone[0], whole[i]) and one[0] == done[i]
    other, _ = augment_batch(images, keys, params, seed=10)
    assert not np.array_equal(other, whole)
    shifted, _ = augment_batch(images, [(s, i, v + 1) for s, i, v in keys], params, seed=9)
    assert not np.array_equal(shifted, whole)


# --------------------------------------------------------------------------- the Spark step


def test_variants_are_identical_for_1_and_3_partitions(spark, tiny_idx):
    files = datasets.locate(tiny_idx)
    params = AugmentParams.mnist()
    key = lambda r: (r.split, r["index"], r.variant)  # noqa: E731
    results = []
    for partitions in (1, 3):
        df, _ = ingest.idx_dataframe(spark, files, splits=("train",), partitions=partitions)
        more = augment.add_variants(df, 3, params, seed=42)
        assert partition_count(more) == partitions
        results.append(sorted(more.collect(), key=key))
    one, three = results
    assert len(one) == 30 * 4
    assert [key(r) for r in one] == [key(r) for r in three]
    assert [r.image.data for r in one] == [r.image.data for r in three]
    assert [r.augmentation for r in one] == [r.augmentation for r in three]
    # The Spark step gives exactly what augment_batch gives on the driver.
    originals = {(r.split, r["index"]): r for r in one if r.variant == 0}
    some = [r for r in one if r.variant][:10]
    stack = np.stack(
        [np.frombuffer(originals[(r.split, r["index"])].image.data, np.uint8).reshape(28, 28) for r in some]
    )
    out, done = augment_batch(stack, [(r.split, r["index"], r.variant) for r in some], params, seed=42)
    assert [o.tobytes() for o in out] == [r.image.data for r in some]
    assert [t.describe() for t in done] == [r.augmentation for r in some]


def test_variants_keep_labels_and_record_the_transform(spark, tiny_idx):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(tiny_idx), splits=("test",))
    params = AugmentParams().rotate(1.0, 25, 25)
    more = augment.add_variants(df, 2, params, seed=0)
    assert more.schema == augment.variant_schema()
    rows = more.collect()
    originals = {r["index"]: r for r in rows if r.variant == 0}
    assert len(originals) == 5 and len(rows) == 15
    for row in rows:
        source = originals[row["index"]]
        assert row.label == source.label and row.split == "test"
        if row.variant == 0:
            assert row.augmentation == "" and row.image.origin == f"idx:t10k-images-idx3-ubyte.gz#{row['index']}"
        else:
            angle = augment.parse_augmentation(row.augmentation)["rotate"]
            assert -25 <= angle <= 25
            assert row.image.data != source.image.data
            assert row.image.origin == f"{source.image.origin}|variant={row.variant}"
            assert (row.image.height, row.image.width, row.image.nChannels) == (28, 28, 1)


def test_checks_on_the_driver(spark, tiny_idx):
    df, _ = ingest.idx_dataframe(spark, datasets.locate(tiny_idx))
    with pytest.raises(ValueError, match="every transform has probability 0.*--rotate"):
        augment.add_variants(df, 2, AugmentParams(), seed=0)
    with pytest.raises(ValueError, match="n \\(variants per image\\) must be a whole number"):
        augment.add_variants(df, -1, AugmentParams.mnist())
    with pytest.raises(TypeError, match="params must be an AugmentParams"):
        augment.add_variants(df, 1, {"rotate": 1})
    with pytest.raises(ValueError, match="no column 'image'"):
        augment.add_variants(df.drop("image"), 1, AugmentParams.mnist())
    assert augment.add_variants(df, 0, AugmentParams()).count() == 35


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: AugmentParams().rotate(1.5, 10, 10), r"rotate_probability must lie in \[0, 1\], found 1.5"),
        (lambda: AugmentParams().rotate(0.5, -3, 10), "max_left_rotation must be 0 or more"),
        (lambda: AugmentParams().zoom(0.5, 1.2, 0.9), "0 < min_zoom <= max_zoom"),
        (lambda: AugmentParams().shift(0.5, 2), "max_shift is a fraction"),
        (lambda: AugmentParams().elastic(0.5, 8, 0), "elastic_sigma must be above 0"),
        (lambda: AugmentParams(rotate_probability="high"), "must be a number"),
    ],
)
def test_bad_params_name_the_param(build, message):
    with pytest.raises((ValueError, TypeError), match=message):
        build()


def test_batch_input_checks():
    with pytest.raises(ValueError, match="2 images but 1 keys"):
        augment_batch(_digits(2), [("train", 0, 1)], AugmentParams.mnist())
    with pytest.raises(TypeError, match="uint8"):
        augment_batch(np.zeros((1, 4, 4)), [("train", 0, 1)], AugmentParams.mnist())
