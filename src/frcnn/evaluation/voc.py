"""Pascal VOC AP as the devkit computes it, and the precision/recall curves it is computed from."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..data.annotations import ImageAnnotation
from ..data.dataset import DetectionDataset
from ..data.voc import internal_to_voc
from .detections import ImageDetections, evaluated_ground_truth, pairwise_iou


class VocCurve(NamedTuple):
    """One class's precision/recall points, one per detection of the class, highest score first:
    recall (n,), precision (n,) after that detection, and its score (n,)."""

    recall: np.ndarray
    precision: np.ndarray
    scores: np.ndarray


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Area under the interpolated precision/recall curve of the VOC devkit.

    2007: precision at the 11 recalls 0, 0.1, ..., 1 (the best precision at that recall or
    above), averaged. 2010+: the exact area under the monotone precision envelope.
    """
    if use_07_metric:
        # np.arange, as in the devkit, so that its rounding of the recall levels is kept.
        levels = np.arange(0.0, 1.1, 0.1)
        return float(sum(precision[recall >= t].max() if (recall >= t).any() else 0.0
                         for t in levels) / 11.0)
    recall = np.concatenate([[0.0], recall, [1.0]])
    envelope = np.concatenate([[0.0], precision, [0.0]])
    envelope = np.maximum.accumulate(envelope[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * envelope[steps + 1]))


def voc_pr_curves(dataset: DetectionDataset, detections: Sequence[ImageDetections],
                  iou_threshold: float = 0.5) -> dict[int, VocCurve]:
    """Each class's precision/recall curve by the devkit's matching, keyed by label 1..C; a
    class without non-difficult objects has no curve. ``detections``: ``detections_per_image``.

    As the devkit: IoU with its +1 pixel widths on the annotation's 1-based coordinates; each
    detection, highest score first, takes its best-overlapping same-class ground truth in the
    image; above ``iou_threshold`` it is a true positive if that object is not yet taken, not
    counted at all if the object is difficult (crowd regions count as difficult), else a false
    positive. Ties in score keep the dataset's order. A detection not counted repeats the
    previous point.
    """
    matches = _voc_matches(dataset.annotations, detections)
    curves = {}
    for label in range(1, dataset.num_classes + 1):
        positives = int(np.count_nonzero((matches.gt_labels == label) & ~matches.gt_difficult))
        if positives:
            curves[label] = _voc_curve(matches, label, positives, iou_threshold)
    return curves


def voc_metrics(dataset: DetectionDataset, detections: Sequence[ImageDetections],
                iou_threshold: float = 0.5) -> dict[str, float]:
    """VOC AP per class and mean, 2007 11-point (``voc07_*``) and 2010+ all-point (``voc_*``),
    from ``voc_pr_curves``. Classes without non-difficult objects have AP NaN and are left out of
    the means."""
    curves = voc_pr_curves(dataset, detections, iou_threshold)
    per_class: dict[str, float] = {}
    for label, name in enumerate(dataset.class_names, start=1):
        curve = curves.get(label)
        for prefix, use_07 in (("voc07", True), ("voc", False)):
            per_class[f"{prefix}_ap/{name}"] = (math.nan if curve is None
                                                else voc_ap(curve.recall, curve.precision, use_07))
    means = {}
    for prefix in ("voc07", "voc"):
        values = [per_class[f"{prefix}_ap/{name}"] for name in dataset.class_names]
        finite = [v for v in values if not math.isnan(v)]
        means[f"{prefix}_map"] = float(np.mean(finite)) if finite else math.nan
    return {**means, **per_class}


@dataclass(frozen=True)
class _VocMatches:
    """Every detection's best same-class ground truth, dataset-wide: det_labels, det_scores,
    det_iou (n,) (-inf without one), det_gt (n,) index into gt_labels / gt_difficult (m,)."""

    det_labels: np.ndarray
    det_scores: np.ndarray
    det_iou: np.ndarray
    det_gt: np.ndarray
    gt_labels: np.ndarray
    gt_difficult: np.ndarray


def _voc_matches(annotations: Sequence[ImageAnnotation],
                 detections: Sequence[ImageDetections]) -> _VocMatches:
    """Each detection's best same-class object in its image, by the devkit's IoU."""
    rows = []
    offset = 0
    for annotation, dets in zip(annotations, detections):
        boxes, labels, difficult, _ = evaluated_ground_truth(annotation)
        iou = pairwise_iou(internal_to_voc(dets.boxes), internal_to_voc(boxes), plus_one=True)
        iou = np.where(dets.labels[:, None] == labels[None, :], iou, -np.inf)
        if len(boxes):
            best_iou, best_gt = iou.max(axis=1), iou.argmax(axis=1) + offset
        else:
            best_iou, best_gt = np.full(len(dets.labels), -np.inf), np.zeros(len(dets.labels), np.int64)
        rows.append((dets.labels, dets.scores, best_iou, best_gt, labels, difficult))
        offset += len(boxes)
    return _VocMatches(*(np.concatenate(column) for column in zip(*rows)))


def _voc_curve(matches: _VocMatches, label: int, positives: int, iou_threshold: float) -> VocCurve:
    """The class's curve over its n detections, highest score first."""
    mine = np.flatnonzero(matches.det_labels == label)
    mine = mine[np.argsort(-matches.det_scores[mine], kind="mergesort")]
    hit = matches.det_iou[mine] > iou_threshold
    gt = matches.det_gt[mine]
    counted = np.zeros(len(mine), dtype=bool)
    counted[hit] = ~matches.gt_difficult[gt[hit]]
    true_positive = np.zeros(len(mine), dtype=bool)
    candidates = np.flatnonzero(counted)
    _, first = np.unique(gt[candidates], return_index=True)
    true_positive[candidates[first]] = True
    false_positive = ~hit | (counted & ~true_positive)
    tp, fp = np.cumsum(true_positive), np.cumsum(false_positive)
    recall = tp / positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return VocCurve(recall, precision, matches.det_scores[mine])
