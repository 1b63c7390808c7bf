"""The confusion matrix of a detector: which class each object was detected as, if any."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.dataset import DetectionDataset
from ..data.voc import internal_to_voc
from .detections import ImageDetections, evaluated_ground_truth, pairwise_iou


def match_one_to_one(iou: np.ndarray, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one pairs of an (n, m) overlap matrix, highest overlap first, among those
    above ``iou_threshold``: row indices (k,) and column indices (k,). Ties keep the row-major
    order."""
    rows, columns = np.nonzero(iou > iou_threshold)
    order = np.argsort(-iou[rows, columns], kind="stable")
    row_taken, column_taken = np.zeros(iou.shape[0], bool), np.zeros(iou.shape[1], bool)
    kept = []
    for index in order:
        row, column = rows[index], columns[index]
        if not (row_taken[row] or column_taken[column]):
            row_taken[row] = column_taken[column] = True
            kept.append(index)
    kept = np.asarray(kept, dtype=np.int64)
    return rows[kept], columns[kept]


def confusion_matrix(dataset: DetectionDataset, detections: Sequence[ImageDetections], score_threshold: float,
                     iou_threshold: float = 0.5) -> np.ndarray:
    """Counts (C + 1, C + 1): rows the ground-truth class, columns the predicted class, labels
    1..C at indices 0..C-1 and background last. ``detections``: ``detections_per_image``.

    In each image the detections scoring >= ``score_threshold`` and the objects are paired one
    to one, highest IoU first, among pairs above ``iou_threshold`` whatever their classes (the
    devkit's IoU, as VOC AP). A pair counts at (object class, detection class), an object left
    alone at (its class, background), a detection left alone at (background, its class).
    Difficult objects and crowd regions count nowhere, nor do the detections paired with them.
    """
    size = dataset.num_classes + 1
    background = size - 1
    matrix = np.zeros((size, size), dtype=np.int64)
    for annotation, dets in zip(dataset.annotations, detections):
        boxes, labels, ignored, _ = evaluated_ground_truth(annotation)
        keep = dets.scores >= score_threshold
        det_boxes, det_labels = dets.boxes[keep], dets.labels[keep]
        iou = pairwise_iou(internal_to_voc(boxes), internal_to_voc(det_boxes), plus_one=True)
        gt_index, det_index = match_one_to_one(iou, iou_threshold)
        counted = ~ignored[gt_index]
        np.add.at(matrix, (labels[gt_index[counted]] - 1, det_labels[det_index[counted]] - 1), 1)
        alone_gt = np.ones(len(boxes), bool)
        alone_gt[gt_index] = False
        np.add.at(matrix, (labels[alone_gt & ~ignored] - 1, background), 1)
        alone_det = np.ones(len(det_boxes), bool)
        alone_det[det_index] = False
        np.add.at(matrix, (background, det_labels[alone_det] - 1), 1)
    return matrix


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (a row without counts stays zero)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
