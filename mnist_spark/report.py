"""What a run leaves behind for people: ``metrics.json`` and the environment it ran in."""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
from importlib import metadata

from mnist_spark import storage

logger = logging.getLogger(__name__)


#: Libraries whose versions every metrics.json records.
LIBRARIES = ("mnist_spark", "pyspark", "numpy", "pandas", "pyarrow", "pillow", "tensorflow-cpu", "tensorflow", "keras")


def environment(spark=None) -> dict:
    """Python, platform and library versions, for reproducing a run.

    Given the run's session, also Spark's version (the server's, on Spark
    Connect) and ``spark_api``: ``"connect"`` for a Spark Connect session,
    ``"classic"`` for one with a SparkContext in the driver.
    """
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    found = {"python": sys.version.split()[0], "platform": platform.platform(), "libraries": versions}
    if spark is not None:
        from mnist_spark.session import is_connect

        found.update(spark=spark.version, spark_api="connect" if is_connect(spark) else "classic")
    return found


def _non_finite(value, where: str = ""):
    """``(path, value)`` of the first NaN or infinity in a JSON-like value (``history[2].loss``); or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (where or "value", value)
    if isinstance(value, dict):
        items = ((f"{where}.{key}" if where else str(key), item) for key, item in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for path, item in items:
        found = _non_finite(item, path)
        if found is not None:
            return found
    return None


def training_metrics(job: str, config, state, scores: dict, data) -> dict:
    """The metrics of a training run: test scores, rows, rounds, throughput, history, versions.

    ``data`` is the run's :class:`mnist_spark.ingest.TrainTest`.
    """
    from mnist_spark.training import images_per_second, round_spread

    return {
        "train_rows": data.train_count(),
        "test_rows": data.test_count(),
        "job": job,
        "model": config.model,
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "epochs": config.epochs,
        "rounds": state.round,
        "partitions": config.partitions,
        "batch_size": config.batch_size,
        "images_per_second": images_per_second(state.history),
        "round_spread": round_spread(state.history),
        "history": state.history,
        "evaluation": scores,
        "environment": environment(data.test.sparkSession),
    }


def write_metrics(folder: str, metrics: dict) -> str:
    """Write ``metrics.json`` into a run folder (local path or URI); return its location.

    The file is strict JSON. A NaN or infinite metric is an error, raised
    before anything is written: it means the run diverged or measured nothing.

    Raises
    ------
    ValueError
        Naming the first metric that is not a finite number.
    """
    found = _non_finite(metrics)
    if found is not None:
        raise ValueError(
            f"metric {found[0]} is {found[1]}, not a finite number; the run "
            "diverged or measured nothing, and metrics.json (strict JSON) was not written"
        )
    location = storage.join(folder, "metrics.json")
    text = json.dumps(metrics, indent=2, sort_keys=False, allow_nan=False)
    storage.write_bytes(location, (text + "\n").encode())
    return location


# --------------------------------------------------------------------------- pictures of image sets
#
# Figures of an image set for people to look at: a contact sheet of sample
# images with their labels, a grid of images beside their augmented variants,
# and an index.html that links them with the counts per split and label.
# Drawn with matplotlib's Agg canvas: no display, and no pyplot state shared
# with the caller. They need only a small sample on the driver.


def _figure(rows: int, columns: int, cell: float = 1.1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(columns * cell, rows * cell * 1.2 + 0.4), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, squeeze=False)


def _show(axis, pixels, title: str, fontsize: float = 8) -> None:
    """Draw one image given in Spark's channel order: gray as dark ink on white, colour as RGB."""
    import numpy as np

    pixels = np.asarray(pixels)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        axis.imshow(pixels, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    else:
        axis.imshow(pixels[..., [2, 1, 0, 3][: pixels.shape[2]]], interpolation="nearest")
    axis.set_title(title, fontsize=fontsize)
    axis.set_xticks([])
    axis.set_yticks([])


def _save_png(figure, location: str) -> str:
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    storage.write_bytes(location, buffer.getvalue())
    return location


def contact_sheet(images, titles, location: str, *, columns: int = 6, title: str | None = None) -> str:
    """Write a grid of images with a title each (e.g. their labels) as a PNG file.

    Like ``plt.subplots(4, 6)`` with ``imshow(cmap="gray_r")`` per cell.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        uint8 ``(height, width)`` or ``(height, width, channels)`` in Spark's
        channel order (gray, BGR, BGRA).
    titles : sequence of str
        One per image, e.g. ``"7"`` or ``"train #12: 7"``.
    location : str
        The PNG file to write (local path or URI).
    columns : int
        Images per row.
    title : str, optional
        Above the grid.

    Returns
    -------
    str
        ``location``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> out = os.path.join(tempfile.mkdtemp(), "sheet.png")
    >>> contact_sheet([np.zeros((28, 28), np.uint8)] * 3, ["0", "1", "2"], out) == out
    True
    """
    images, titles = list(images), [str(t) for t in titles]
    if not images:
        raise ValueError("contact_sheet: no images given; pass at least one")
    if len(titles) != len(images):
        raise ValueError(f"contact_sheet: {len(images)} images but {len(titles)} titles; give one title per image")
    if columns < 1:
        raise ValueError(f"contact_sheet: columns must be 1 or more, found {columns}")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    figure, axes = _figure(rows, columns)
    for position, axis in enumerate(axes.flat):
        if position < len(images):
            _show(axis, images[position], titles[position])
        else:
            axis.axis("off")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save_png(figure, location)


def variant_grid(originals, variants, descriptions, location: str, *, title: str | None = None) -> str:
    """Write a grid with one image per row: the original, then its augmented variants.

    Parameters
    ----------
    originals : sequence of numpy.ndarray
        The images (as for :func:`contact_sheet`).
    variants : sequence of sequences of numpy.ndarray
        For each original, its variants (the same number for each).
    descriptions : sequence of sequences of str
        For each original, a title for it and then one per variant (e.g. the
        ``augmentation`` text).
    location : str
        The PNG file to write.

    Returns
    -------
    str
        ``location``.
    """
    originals, variants = list(originals), [list(v) for v in variants]
    if not originals:
        raise ValueError("variant_grid: no images given; pass at least one")
    if len(variants) != len(originals) or len({len(v) for v in variants}) != 1:
        raise ValueError("variant_grid: give the same number of variants for every original")
    columns = 1 + len(variants[0])
    figure, axes = _figure(len(originals), columns, cell=1.4)
    for row, (original, copies) in enumerate(zip(originals, variants, strict=True)):
        texts = [str(t) for t in descriptions[row]]
        _show(axes[row, 0], original, texts[0], fontsize=7)
        for column, pixels in enumerate(copies, start=1):
            # One transform per line keeps long descriptions inside the cell.
            _show(axes[row, column], pixels, texts[column].replace(";", "\n") or "(unchanged)", fontsize=5)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save_png(figure, location)


#: Images in a set's contact sheet, and originals and variants in its augmentation grid.
SHEET_COLUMNS, GRID_ROWS, GRID_VARIANTS = 6, 6, 5


def set_pictures(rows, folder: str, *, split: str, variants: int, params, seed: int) -> list:
    """Contact sheet and augmentation grid of a PNG set's first images; returns ``(file, caption)`` pairs.

    ``rows`` are ``(index, label, pixels)`` (:func:`mnist_spark.ingest.first_images`); the variants
    come from the same function and seed as the set's files (:func:`mnist_spark.augment.augment_batch`).
    """
    import time

    import numpy as np

    from mnist_spark import augment

    started = time.perf_counter()
    if not rows:
        return []
    figures = []
    titles = [f"{label}  (#{index})" for index, label, _ in rows]
    contact_sheet(
        [pixels for _, _, pixels in rows],
        titles,
        storage.join(folder, "contact_sheet.png"),
        columns=SHEET_COLUMNS,
        title=f"{split}: the first {len(rows)} images, label (#index)",
    )
    figures.append(("contact_sheet.png", f"The first {len(rows)} {split} images with their labels"))
    if variants:
        shown = min(variants, GRID_VARIANTS)
        chosen = rows[:GRID_ROWS]
        originals = np.stack([pixels if pixels.shape[2] > 1 else pixels[..., 0] for _, _, pixels in chosen])
        copies, texts = [[] for _ in chosen], [[titles[i]] for i in range(len(chosen))]
        for variant in range(1, shown + 1):
            # The same function and seed as the Spark step: these are the files in the set.
            out, done = augment.augment_batch(
                originals, [(split, index, variant) for index, _, _ in chosen], params, seed=seed
            )
            for position, transform in enumerate(done):
                copies[position].append(out[position])
                texts[position].append(transform.describe())
        variant_grid(
            list(originals),
            copies,
            texts,
            storage.join(folder, "augmentations.png"),
            title=f"Originals and variants 1-{shown} (seed {seed})",
        )
        figures.append(("augmentations.png", f"Originals beside their variants 1-{shown}"))
    logger.info("drew %s in %.1f s", ", ".join(name for name, _ in figures), time.perf_counter() - started)
    return figures


def set_links(splits) -> list:
    """The links of a PNG set's ``index.html``: its split folders, its manifest and ``metrics.json``."""
    from mnist_spark.pngset import MANIFEST_NAME

    links = [(f"{split}/", f"{split}/: one folder per label") for split in splits]
    return links + [
        (f"{MANIFEST_NAME}/", "manifest (Parquet): path, split, index, label, variant, augmentation, bytes"),
        ("metrics.json", "metrics.json"),
    ]


def write_set_index(folder: str, *, title: str, counts: dict, figures=(), links=(), labels=None) -> str:
    """Write ``index.html`` for an image set: counts per split and label, figures and links.

    Every link is relative, so the page works wherever the set is copied.

    Parameters
    ----------
    folder : str
        The set's folder (local path or URI).
    title : str
        Heading of the page.
    counts : dict
        ``{split: {label: [originals, variants]}}`` as from
        :func:`mnist_spark.pngset.manifest_counts`.
    figures : sequence of (str, str)
        ``(file name in the folder, caption)`` of each picture to show.
    links : sequence of (str, str)
        ``(relative path, text)`` of other things to link (folders, manifest).
    labels : sequence of int, optional
        The columns of the table, so that classes without images show 0.
        Default: the labels found in ``counts``.

    Returns
    -------
    str
        The location of ``index.html``.
    """
    from html import escape

    found = {label for per_label in counts.values() for label in per_label}
    labels = sorted(found.union(labels or ()))
    with_variants = any(v for per_label in counts.values() for _, v in per_label.values())
    head = "".join(f"<th>{label}</th>" for label in labels)
    rows = []
    for split in sorted(counts):
        cells = []
        for label in labels:
            originals, variants = counts[split].get(label, [0, 0])
            cells.append(f"<td>{originals}" + (f" + {variants}" if with_variants else "") + "</td>")
        total_o = sum(o for o, _ in counts[split].values())
        total_v = sum(v for _, v in counts[split].values())
        total = f"{total_o}" + (f" + {total_v}" if with_variants else "")
        rows.append(f"<tr><th>{escape(split)}</th>{''.join(cells)}<td><b>{total}</b></td></tr>")
    note = "<p>Cells give originals + augmented variants.</p>" if with_variants else ""
    pictures = "".join(
        f'<figure><a href="{escape(name)}"><img src="{escape(name)}" alt="{escape(caption)}"></a>'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
        for name, caption in figures
    )
    others = "".join(f'<li><a href="{escape(path)}">{escape(text)}</a></li>' for path, text in links)
    body = (
        f"<h2>Images per split and label</h2>\n<table>\n<tr><th>split</th>{head}<th>total</th></tr>\n"
        f"{chr(10).join(rows)}\n</table>\n{note}\n{pictures}\n<ul>{others}</ul>"
    )
    page = html_page(title, body)
    location = storage.join(folder, "index.html")
    storage.write_bytes(location, page.encode("utf-8"))
    return location


# --------------------------------------------------------------------------- pictures of a run
#
# Figures of a training or evaluation run and the report.html that ties them
# to the headline metrics of metrics.json.

PAGE_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 72em; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
img { max-width: 100%; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""


def html_page(title: str, body: str) -> str:
    """A complete, self-contained HTML page."""
    from html import escape

    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{PAGE_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _line_figure(width: float = 6.0, height: float = 3.2, columns: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def learning_curves(history: list, location: str) -> str:
    """Loss and accuracy per round (train, and validation where present) as a PNG."""
    figure, (loss_axis, accuracy_axis) = _line_figure(9, 3.4, columns=2)
    epochs = [h["epoch"] for h in history]
    loss_axis.plot(epochs, [h["loss"] for h in history], marker="o", label="train")
    accuracy_axis.plot(epochs, [h["accuracy"] for h in history], marker="o", label="train")
    scored = [h for h in history if "val_accuracy" in h]  # rounds shorter than an epoch may not be
    if scored:
        scored_epochs = [h["epoch"] for h in scored]
        loss_axis.plot(scored_epochs, [h["val_loss"] for h in scored], marker="s", label="validation")
        accuracy_axis.plot(scored_epochs, [h["val_accuracy"] for h in scored], marker="s", label="validation")
    for axis, name in ((loss_axis, "loss"), (accuracy_axis, "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return _save_png(figure, location)


def confusion_matrix_figure(confusion, location: str, *, labels=None) -> str:
    """A confusion matrix (rows: expected, columns: predicted) with counts in the cells."""
    import numpy as np

    confusion = np.asarray(confusion)
    labels = labels if labels is not None else list(range(len(confusion)))
    figure, (axis,) = _line_figure(5.6, 5.0)
    axis.imshow(confusion, cmap="Blues")
    threshold = confusion.max() / 2 if confusion.size else 0
    for (row, column), value in np.ndenumerate(confusion):
        axis.text(
            column,
            row,
            str(value),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > threshold else "black",
        )
    axis.set_xticks(range(len(labels)), labels)
    axis.set_yticks(range(len(labels)), labels)
    axis.set_xlabel("predicted")
    axis.set_ylabel("expected")
    figure.tight_layout()
    return _save_png(figure, location)


def probability_bars(images, probabilities, titles, location: str) -> str:
    """Each image beside a bar chart of its predicted class probabilities."""
    count = len(images)
    if count == 0:
        raise ValueError("probability_bars: no images given; pass at least one")
    figure, _ = _line_figure(6.0, 1.6 * count)
    figure.clear()
    axes = figure.subplots(count, 2, squeeze=False, gridspec_kw={"width_ratios": [1, 3]})
    for row, (pixels, probs, title) in enumerate(zip(images, probabilities, titles, strict=True)):
        _show(axes[row, 0], pixels, title)
        axes[row, 1].bar(range(len(probs)), probs, color="#4c72b0")
        axes[row, 1].set_xticks(range(len(probs)))
        axes[row, 1].set_ylim(0, 1)
    figure.tight_layout()
    return _save_png(figure, location)


def metrics_table(rows) -> str:
    """An HTML table of ``(name, value)`` rows."""
    from html import escape

    cells = "".join(
        f'<tr><th>{escape(str(k))}</th><td class="metric" data-key="{escape(str(k))}">{escape(str(v))}</td></tr>'
        for k, v in rows
    )
    return f"<table>{cells}</table>"


def per_class_section(per_class) -> tuple[str, str]:
    """A report section: precision, recall, F1 and support per class."""
    rows = "".join(
        f"<tr><td>{c['class']}</td><td>{c['precision']:.4f}</td><td>{c['recall']:.4f}</td>"
        f"<td>{c['f1']:.4f}</td><td>{c['support']}</td></tr>"
        for c in per_class
    )
    return (
        "Per class",
        f"<table><tr><th>class</th><th>precision</th><th>recall</th><th>f1</th><th>support</th></tr>{rows}</table>",
    )


def tuning_section(grid) -> tuple[str, str]:
    """A report section: the cross-validated grid with each setting's accuracy, the chosen one in bold."""
    rows = "".join(
        (
            "<tr><td><b>{}</b></td><td><b>{}</b></td><td><b>{:.4f}</b></td><td><b>{:.4f}</b></td></tr>"
            if g["best"]
            else "<tr><td>{}</td><td>{}</td><td>{:.4f}</td><td>{:.4f}</td></tr>"
        ).format(g["regParam"], g["elasticNetParam"], g["accuracy"], g["accuracy_std"])
        for g in grid
    )
    return (
        "Tuning (cross-validated accuracy)",
        f"<table><tr><th>regParam</th><th>elasticNetParam</th><th>accuracy</th><th>std</th></tr>{rows}</table>",
    )


def files_section(files) -> tuple[str, str]:
    """A report section linking files of the run: ``(relative path, note)`` pairs."""
    from html import escape

    items = "".join(
        f'<li><a href="{escape(path)}">{escape(path)}</a>{" " + escape(note) if note else ""}</li>'
        for path, note in files
    )
    return ("Files", f"<ul>{items}</ul>")


#: Misclassified images drawn in the grid, and with their probabilities.
GRID_SIZE, PROBABILITY_ROWS = 24, 4


def write_training_report(folder: str, metrics: dict, test) -> None:
    """Figures and ``report.html`` of a ``train_cnn`` run folder.

    ``test`` is the DataFrame of test images that ``metrics["evaluation"]["misclassified"]``
    indexes; the pictures of the first :data:`GRID_SIZE` are collected in the phase ``figures``.
    """
    scores = metrics["evaluation"]
    learning_curves(metrics["history"], storage.join(folder, "learning_curves.png"))
    confusion_matrix_figure(scores["confusion_matrix"], storage.join(folder, "confusion_matrix.png"))
    figures = [
        ("learning_curves.png", "Loss and accuracy per round"),
        ("confusion_matrix.png", "Confusion matrix on the test split (rows: expected)"),
    ]
    wrong = scores["misclassified"][:GRID_SIZE]
    if wrong:
        from mnist_spark.images import images_by_index
        from mnist_spark.session import phase

        with phase(test.sparkSession, "figures"):
            pictures = images_by_index(test, [w["index"] for w in wrong])
        label_of = metrics["labels"] or range(len(scores["confusion_matrix"]))
        titles = [f"p: {label_of[w['predicted']]}; e: {label_of[w['expected']]}" for w in wrong]
        contact_sheet(
            pictures,
            titles,
            storage.join(folder, "misclassified.png"),
            title="Misclassified test digits (p: predicted; e: expected)",
        )
        probability_bars(
            pictures[:PROBABILITY_ROWS],
            [w["probabilities"] for w in wrong[:PROBABILITY_ROWS]],
            titles[:PROBABILITY_ROWS],
            storage.join(folder, "probabilities.png"),
        )
        figures += [
            ("misclassified.png", "Misclassified test digits"),
            ("probabilities.png", "Predicted probabilities of some misclassified digits"),
        ]
    files = [("metrics.json", ""), ("model.keras", ""), ("model_summary.txt", "")]
    write_run_report(
        folder,
        title=f"train_cnn: {metrics['model']}",
        headline=[
            (name, metrics[name])
            for name in ("test_accuracy", "test_loss", "epochs", "partitions", "images_per_second", "seconds")
        ],
        figures=figures,
        sections=[
            per_class_section(scores["per_class"]),
            files_section(files + ([("labels.json", "the label of each class")] if metrics["labels"] else [])),
        ],
    )


def write_run_report(folder: str, *, title: str, headline, figures=(), sections=()) -> str:
    """Write ``report.html`` for a run: headline metrics, figures and extra sections.

    Parameters
    ----------
    folder : str
        The run folder (local path or URI).
    headline : sequence of (str, object)
        The key numbers, shown first (each as in ``metrics.json``).
    figures : sequence of (str, str)
        ``(file name in the folder, caption)``.
    sections : sequence of (str, str)
        ``(heading, html)`` appended after the figures.
    """
    from html import escape

    pictures = "".join(
        f'<figure><img src="{escape(name)}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption></figure>'
        for name, caption in figures
    )
    extra = "".join(f"<h2>{escape(heading)}</h2>\n{html}\n" for heading, html in sections)
    body = f"<h2>Results</h2>\n{metrics_table(headline)}\n{pictures}\n{extra}"
    location = storage.join(folder, "report.html")
    storage.write_bytes(location, html_page(title, body).encode("utf-8"))
    return location
