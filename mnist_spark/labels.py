"""Training on a subset of the labels, and the mapping a network's classes keep to them.

A network trained on the digits 5 to 9 has five outputs; output ``k`` stands
for the ``k``-th label of the subset. :func:`select_labels` keeps the rows
of the chosen labels and, for training, replaces each label by its position
in the subset. The subset is written beside the model as ``labels.json``
(:func:`write_labels`), so that the classes of a saved model can be turned
back into the dataset's labels (:func:`read_labels`).

Examples
--------
>>> parse_labels("5, 6,7")
(5, 6, 7)
"""

from __future__ import annotations

import json

#: The file beside a model that lists the dataset label of each of its classes.
LABELS_FILE = "labels.json"


def parse_labels(text: str) -> tuple:
    """A comma-separated list of distinct labels (whole numbers of 0 or more), in the order given.

    Raises
    ------
    ValueError
        For an empty list, a label that is not a whole number of 0 or more, or a repeated label.
    """
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise ValueError(f"expected labels separated by commas, e.g. 0,1,2,3,4; found {text!r}")
    labels = []
    for part in parts:
        if not part.isascii() or not part.isdigit():
            raise ValueError(f"labels are whole numbers of 0 or more, found {part!r} in {text!r}")
        labels.append(int(part))
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"label {repeated[0]} is given twice in {text!r}; list each label once")
    return tuple(labels)


def check_labels(labels, num_classes: int, where: str = "--labels") -> tuple:
    """``labels`` when all lie in ``0 .. num_classes - 1``, else one clear error."""
    outside = [label for label in labels if label >= num_classes]
    if outside:
        raise ValueError(
            f"{where} {','.join(map(str, labels))}: label {outside[0]} is not in the dataset, "
            f"whose labels are 0 to {num_classes - 1}"
        )
    return tuple(labels)


def select_labels(df, labels, *, index: bool = False):
    """The rows of ``df`` whose ``label`` is one of ``labels``.

    With ``index=True`` each label becomes its position in ``labels``
    (the class a network trained on the subset predicts for it).
    """
    from pyspark.sql import functions as F

    labels = [int(label) for label in labels]
    kept = df.where(F.col("label").isin(labels))
    if not index:
        return kept
    position = F.create_map(*[F.lit(value) for pair in zip(labels, range(len(labels)), strict=True) for value in pair])
    return kept.withColumn("label", position[F.col("label")].cast(df.schema["label"].dataType))


def write_labels(folder: str, labels) -> str:
    """Write ``labels.json`` (``{"labels": [...]}``, class ``k`` is ``labels[k]``) into ``folder``.

    The labels are the dataset's: class numbers (a subset, ``--labels``) or
    the names that string labels were indexed from.
    """
    from mnist_spark import storage

    location = storage.join(folder, LABELS_FILE)
    values = [v if isinstance(v, str) else int(v) for v in labels]  # class numbers, or names such as "cat"
    storage.write_bytes(location, (json.dumps({"labels": values}) + "\n").encode())
    return location


def read_labels(folder: str) -> tuple | None:
    """The labels of a run folder's ``labels.json``, or ``None`` when it has none."""
    from mnist_spark import storage

    location = storage.join(folder, LABELS_FILE)
    if not storage.exists(location):
        return None
    try:
        labels = json.loads(storage.read_bytes(location))["labels"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f'{location} is not a label mapping ({error}); expected {{"labels": [...]}}, as train_cnn writes it'
        ) from None
    return tuple(v if isinstance(v, str) else int(v) for v in labels)
