"""What the VOC precision/recall points (``voc_pr_curves``) show when drawn: the precision
envelope whose area is the all-point VOC AP, the mean curve over classes, and F1 against the
score threshold with its best threshold."""
from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .voc import VocCurve

# Score thresholds of the F1 curves, and recall levels of the mean precision/recall curve.
THRESHOLDS = np.linspace(0.0, 1.0, 1001)
RECALL_LEVELS = np.linspace(0.0, 1.0, 101)


def precision_envelope(curve: VocCurve) -> tuple[np.ndarray, np.ndarray]:
    """The step curve the all-point VOC AP integrates: recall (n + 2,) from 0 to 1 and, at each,
    the best precision at that recall or above (n + 2,). On (recall[i], recall[i + 1]] the curve
    is precision[i + 1] (matplotlib's ``steps-pre``), so its area is ``voc_ap(..., False)``."""
    recall = np.concatenate([[0.0], curve.recall, [1.0]])
    precision = np.concatenate([[0.0], curve.precision, [0.0]])
    return recall, np.maximum.accumulate(precision[::-1])[::-1]


def mean_precision(curves: Mapping[int, VocCurve], levels: np.ndarray = RECALL_LEVELS) -> np.ndarray:
    """The classes' envelope precision at each recall level (L,), averaged over the classes."""
    values = []
    for curve in curves.values():
        recall, precision = precision_envelope(curve)
        values.append(precision[np.minimum(np.searchsorted(recall, levels, side="left"), len(recall) - 1)])
    return np.mean(values, axis=0) if values else np.zeros(len(levels))


class F1Curves(NamedTuple):
    """F1 of each class's detections scoring at least each threshold: thresholds (T,),
    per_class {label: (T,)}, their mean (T,), and the threshold where the mean is highest
    (the lowest of equals) with that mean."""

    thresholds: np.ndarray
    per_class: dict[int, np.ndarray]
    mean: np.ndarray
    best_threshold: float
    best_f1: float


def f1_at_thresholds(curve: VocCurve, thresholds: np.ndarray) -> np.ndarray:
    """F1 = 2PR / (P + R) of the detections scoring >= each threshold (T,); 0 where none do."""
    kept = np.searchsorted(-curve.scores, -thresholds, side="right")
    last = np.maximum(kept - 1, 0)
    precision = curve.precision[last] if len(curve.scores) else np.zeros(len(thresholds))
    recall = curve.recall[last] if len(curve.scores) else np.zeros(len(thresholds))
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(len(thresholds)), where=total > 0)
    return np.where(kept > 0, f1, 0.0)


def f1_curves(curves: Mapping[int, VocCurve], thresholds: np.ndarray = THRESHOLDS) -> F1Curves:
    """F1 against the score threshold for each class with objects, and their mean."""
    per_class = {label: f1_at_thresholds(curve, thresholds) for label, curve in curves.items()}
    mean = np.mean(list(per_class.values()), axis=0) if per_class else np.zeros(len(thresholds))
    best = int(np.argmax(mean))
    return F1Curves(thresholds, per_class, mean, float(thresholds[best]), float(mean[best]))
