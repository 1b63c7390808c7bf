"""Charts of a run and of an evaluation, drawn with matplotlib's Agg canvas (no global backend is
set): training curves, ``results.png``, precision/recall and F1 curves, confusion matrices.

Every ``plot_*`` function writes one PNG atomically and returns its path; the ``*_figure``
functions return the figure they draw, for a caller that wants to look at its data.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .atomic import save_figure_atomic
from .data.dataset import DetectionDataset
from .draw import PALETTE
from .evaluation.confusion import confusion_matrix, normalize_rows
from .evaluation.curves import RECALL_LEVELS, F1Curves, f1_curves, mean_precision, precision_envelope
from .evaluation.detections import Detections, detections_per_image
from .evaluation.voc import VocCurve, voc_metrics, voc_pr_curves

PR_CURVE_NAME = "PR_curve.png"
F1_CURVE_NAME = "F1_curve.png"
CONFUSION_NAME = "confusion_matrix.png"
CONFUSION_NORMALIZED_NAME = "confusion_matrix_normalized.png"
PLOT_NAMES = (PR_CURVE_NAME, F1_CURVE_NAME, CONFUSION_NAME, CONFUSION_NORMALIZED_NAME)
MEAN_COLOUR = "#1f1f8f"
DPI = 100


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches on its own Agg canvas."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG on white, atomically."""
    return save_figure_atomic(figure, path, dpi=DPI, facecolor="white")


def _finite(xs: Sequence[float], ys: Sequence[float]) -> tuple[list[float], list[float]]:
    kept = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _clip_early_spikes(axes, values: Sequence[float]) -> None:
    """Top the y axis at 1.5 times the largest value after the first tenth, so that the spikes
    of the first iterations do not flatten the rest."""
    late = [v for v in values[len(values) // 10:] if math.isfinite(v)]
    if late and max(late) > 0:
        axes.set_ylim(min(0.0, min(late)), 1.5 * max(late))


def plot_training_log(records: Sequence[Mapping[str, float]], keys: Sequence[str], path: str | Path) -> Path:
    """The curves of a training log (records with ``iter`` and each of ``keys``) on one axes."""
    figure = new_figure(9, 5.4)
    axes = figure.add_subplot()
    values: list[float] = []
    for index, key in enumerate(keys):
        xs, ys = _finite([r["iter"] for r in records if key in r], [r[key] for r in records if key in r])
        axes.plot(xs, ys, color=PALETTE[index % len(PALETTE)], label=key, linewidth=1.5)
        values += ys
    _clip_early_spikes(axes, values)
    axes.set(xlabel="iteration", title="training losses")
    axes.grid(alpha=0.3)
    if keys:
        axes.legend(loc="upper right")
    return save_figure(figure, path)


def results_figure(rows: Sequence[Mapping[str, float]], losses: Sequence[str],
                   metrics: Sequence[str]) -> Figure:
    """Two rows of panels against the iteration: each training loss with its validation twin
    (``val_<loss>``) and the learning rate, then each metric."""
    columns = max(len(losses) + 1, len(metrics))
    figure = new_figure(2.6 * columns, 5.6)
    grid = figure.subplots(2, columns, squeeze=False)
    iterations = [row["iter"] for row in rows]
    panels = [(name, [(name, "train"), (f"val_{name}", "val")]) for name in losses]
    panels.append(("lr", [("lr", None)]))
    for axes, (title, series) in zip(grid[0], panels):
        for key, label in series:
            xs, ys = _finite(iterations, [row.get(key, math.nan) for row in rows])
            axes.plot(xs, ys, marker=".", label=label, color=PALETTE[2] if label != "val" else PALETTE[3])
        axes.set_title(title)
        if len(series) > 1:
            axes.legend(fontsize="small")
    for axes, name in zip(grid[1], metrics):
        xs, ys = _finite(iterations, [row.get(name, math.nan) for row in rows])
        axes.plot(xs, ys, marker=".", color=PALETTE[1])
        axes.set_title(name)
    for axes in grid.flat:
        axes.grid(alpha=0.3)
        axes.tick_params(labelsize="small")
    for axes in grid[1]:
        axes.set_xlabel("iteration")
    for axes in list(grid[0][len(panels):]) + list(grid[1][len(metrics):]):
        axes.set_axis_off()
    return figure


def plot_results(rows: Sequence[Mapping[str, float]], path: str | Path, losses: Sequence[str],
                 metrics: Sequence[str]) -> Path:
    """``results_figure`` as a PNG."""
    return save_figure(results_figure(rows, losses, metrics), path)


def pr_figure(curves: Mapping[int, VocCurve], class_names: Sequence[str], average_precision: Mapping[int, float],
              mean_ap: float) -> Figure:
    """Precision against recall at IoU 0.5: each class's precision envelope (``precision_envelope``,
    whose area is its all-point VOC AP, ``average_precision[label]``, shown in the legend) and the
    mean of the classes' envelopes, labelled with ``mean_ap``."""
    figure = new_figure(7.5, 6)
    axes = figure.add_subplot()
    for label, curve in curves.items():
        recall, precision = precision_envelope(curve)
        axes.plot(recall, precision, drawstyle="steps-pre", linewidth=1.2,
                  color=PALETTE[(label - 1) % len(PALETTE)],
                  label=f"{class_names[label - 1]} {average_precision[label]:.3f}")
    axes.plot(RECALL_LEVELS, mean_precision(curves), color=MEAN_COLOUR, linewidth=3,
              label=f"all classes {mean_ap:.3f} mAP")
    axes.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
             title="precision-recall at IoU 0.5 (legend: VOC AP, all points)")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return figure


def f1_figure(f1: F1Curves, class_names: Sequence[str]) -> Figure:
    """F1 against the score threshold per class and their mean, the best threshold marked."""
    figure = new_figure(7.5, 6)
    axes = figure.add_subplot()
    for label, values in f1.per_class.items():
        axes.plot(f1.thresholds, values, linewidth=1.2, color=PALETTE[(label - 1) % len(PALETTE)],
                  label=class_names[label - 1])
    axes.plot(f1.thresholds, f1.mean, color=MEAN_COLOUR, linewidth=3,
              label=f"all classes {f1.best_f1:.3f} at {f1.best_threshold:.3f}")
    axes.axvline(f1.best_threshold, color=MEAN_COLOUR, linestyle="--", linewidth=1)
    axes.plot([f1.best_threshold], [f1.best_f1], "o", color=MEAN_COLOUR)
    axes.set(xlabel="score threshold", ylabel="F1", xlim=(0, 1), ylim=(0, 1.02),
             title="F1 against the score threshold (IoU 0.5)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    return figure


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], normalized: bool,
                     score_threshold: float) -> Figure:
    """The confusion matrix (rows ground truth, columns prediction, background last) as a heat
    map with the counts (or, ``normalized``, the row fractions) written in the cells."""
    names = [*class_names, "background"]
    shown = normalize_rows(matrix) if normalized else matrix
    side = max(5.0, 0.65 * len(names) + 2.5)
    figure = new_figure(side + 1.2, side)
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalized else max(1, int(shown.max())))
    figure.colorbar(image, ax=axes, shrink=0.8)
    threshold = 0.5 * (1 if normalized else max(1, shown.max()))
    for (row, column), value in np.ndenumerate(shown):
        if value:
            axes.text(column, row, f"{value:.2f}" if normalized else str(int(value)), ha="center", va="center",
                      fontsize="small", color="white" if value > threshold else "black")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set(xlabel="predicted", ylabel="ground truth",
             title=f"confusion matrix{' (rows normalised)' if normalized else ''}\n"
                   f"IoU 0.5, score >= {score_threshold:.3f} (the F1-best threshold)")
    return figure


def plot_evaluation(dataset: DetectionDataset, detections: Detections,
                    folder: str | Path) -> tuple[dict[str, Path], F1Curves]:
    """The curves and matrices of detections on ``dataset`` (as ``evaluate_detections`` takes
    them), in ``folder``: PR_curve.png, F1_curve.png, confusion_matrix.png and
    confusion_matrix_normalized.png (at the F1-best score threshold). The pictures and their F1
    curves."""
    folder = Path(folder)
    per_image = detections_per_image(dataset, detections)
    curves = voc_pr_curves(dataset, per_image)
    metrics = voc_metrics(dataset, per_image)
    average_precision = {label: metrics[f"voc_ap/{dataset.class_names[label - 1]}"] for label in curves}
    f1 = f1_curves(curves)
    matrix = confusion_matrix(dataset, per_image, f1.best_threshold)
    figures = {
        PR_CURVE_NAME: pr_figure(curves, dataset.class_names, average_precision, metrics["voc_map"]),
        F1_CURVE_NAME: f1_figure(f1, dataset.class_names),
        CONFUSION_NAME: confusion_figure(matrix, dataset.class_names, False, f1.best_threshold),
        CONFUSION_NORMALIZED_NAME: confusion_figure(matrix, dataset.class_names, True, f1.best_threshold),
    }
    return {name: save_figure(figure, folder / name) for name, figure in figures.items()}, f1
