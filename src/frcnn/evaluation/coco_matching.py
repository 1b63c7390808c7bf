"""COCOeval's evaluate and accumulate for boxes, vectorised in numpy: its matching and its
precision/recall arrays, equal to pycocotools' (the summary is left to pycocotools)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from pycocotools.cocoeval import Params

from ..data.coco import corners_to_xywh
from ..data.dataset import DetectionDataset
from .detections import ImageDetections, evaluated_ground_truth


class _CocoBoxes(NamedTuple):
    """One side of the evaluation, flat: pair (n,) = image * C + label - 1, label (n,), xywh
    (n, 4), area (n,) (annotated area for ground truth, w * h for detections), and crowd (n,) bool
    (ground truth) or score (n,) (detections)."""

    pair: np.ndarray
    label: np.ndarray
    xywh: np.ndarray
    area: np.ndarray
    extra: np.ndarray


def _coco_sides(dataset: DetectionDataset,
                detections: Sequence[ImageDetections]) -> tuple[_CocoBoxes, _CocoBoxes]:
    """Ground truth (``evaluated_ground_truth``: crowds and difficult objects as crowds) and
    detections, each in image order."""
    ground_truth, found = [], []
    for image, (annotation, dets) in enumerate(zip(dataset.annotations, detections)):
        boxes, labels, crowd, areas = evaluated_ground_truth(annotation)
        ground_truth.append((np.full(len(labels), image), labels, corners_to_xywh(boxes), areas, crowd))
        xywh = corners_to_xywh(dets.boxes)
        found.append((np.full(len(dets.labels), image), dets.labels, xywh, xywh[:, 2:].prod(axis=1),
                      dets.scores))

    def side(parts: list[tuple]) -> _CocoBoxes:
        image, label, xywh, area, extra = (np.concatenate(column) for column in zip(*parts))
        return _CocoBoxes(image.astype(np.int64) * dataset.num_classes + label - 1, label, xywh, area, extra)

    return side(ground_truth), side(found)


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For keys sorted ascending: the distinct keys, where each starts, and how many."""
    distinct, starts, counts = np.unique(keys, return_index=True, return_counts=True)
    return distinct, starts, counts


def fast_accumulation(dataset: DetectionDataset,
                      detections: Sequence[ImageDetections]) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's evaluate + accumulate: precision (T, R, K, A, M) and recall (T, K, A, M).

    As COCOeval: per (image, class) pair its best ``maxDets[-1]`` detections, matched greedily
    (``_greedy_match``) for every IoU threshold and area range; then per class, area range and
    detection limit, the precision envelope sampled at the recall thresholds.
    """
    params = Params(iouType="bbox")
    gt, dt = _coco_sides(dataset, detections)
    gt = _CocoBoxes(*(column[np.argsort(gt.pair, kind="stable")] for column in gt))
    by_score = np.argsort(-dt.extra, kind="stable")
    dt = _CocoBoxes(*(column[by_score[np.argsort(dt.pair[by_score], kind="stable")]] for column in dt))
    rank = np.arange(len(dt.pair)) - np.searchsorted(dt.pair, dt.pair, side="left")
    dt = _CocoBoxes(*(column[rank < params.maxDets[-1]] for column in dt))
    rank = rank[rank < params.maxDets[-1]]

    areas = np.array(params.areaRng)
    gt_ignore = gt.extra[None, :] | (gt.area[None, :] < areas[:, :1]) | (gt.area[None, :] > areas[:, 1:])
    dt_outside = (dt.area[None, :] < areas[:, :1]) | (dt.area[None, :] > areas[:, 1:])
    matched, to_ignored = _match_pairs(gt, dt, gt_ignore, params.iouThrs)
    dt_ignore = to_ignored | (~matched & dt_outside[:, None, :])

    T, R, K, A, M = (len(params.iouThrs), len(params.recThrs), dataset.num_classes,
                     len(params.areaRng), len(params.maxDets))
    precision, recall = -np.ones((T, R, K, A, M)), -np.ones((T, K, A, M))
    for k in range(K):
        mine = np.flatnonzero(dt.label == k + 1)
        # Sorted once: keeping the first ``limit`` of each pair afterwards keeps the order.
        mine = mine[np.argsort(-dt.extra[mine], kind="mergesort")]
        for a in range(A):
            positives = np.count_nonzero((gt.label == k + 1) & ~gt_ignore[a])
            if not positives:
                continue
            for m, limit in enumerate(params.maxDets):
                chosen = mine[rank[mine] < limit]
                precision[:, :, k, a, m], recall[:, k, a, m] = _precision_at_recalls(
                    matched[a][:, chosen], dt_ignore[a][:, chosen], positives, params.recThrs)
    return precision, recall


def _match_pairs(gt: _CocoBoxes, dt: _CocoBoxes, gt_ignore: np.ndarray,
                 thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every area range, threshold and detection: matched (A, T, n) and matched to an
    ignored object (A, T, n). Both sides sorted by pair; detections best first within a pair.

    Pairs are processed in batches of equal object count, padded to their most detections.
    """
    matched = np.zeros((len(gt_ignore), len(thresholds), len(dt.pair)), dtype=bool)
    to_ignored = np.zeros_like(matched)
    gt_pairs, gt_starts, gt_counts = _groups(gt.pair)
    dt_pairs, dt_starts, dt_counts = _groups(dt.pair)
    _, in_gt, in_dt = np.intersect1d(gt_pairs, dt_pairs, assume_unique=True, return_indices=True)
    for size in np.unique(gt_counts[in_gt]):
        batch = np.flatnonzero(gt_counts[in_gt] == size)
        batch = batch[np.argsort(-dt_counts[in_dt[batch]], kind="stable")]
        counts = dt_counts[in_dt[batch]]
        slots = np.arange(counts[0])
        valid = slots[None, :] < counts[:, None]
        dets = np.where(valid, dt_starts[in_dt[batch], None] + slots, 0)
        objects = gt_starts[in_gt[batch], None] + np.arange(size)
        iou = _coco_iou(dt.xywh[dets], gt.xywh[objects], gt.extra[objects])
        for a, ignore in enumerate(gt_ignore):
            found, via_ignored = _greedy_match(iou, gt.extra[objects], ignore[objects], counts, thresholds)
            matched[a][:, dets[valid]] = found.transpose(1, 0, 2)[:, valid]
            to_ignored[a][:, dets[valid]] = via_ignored.transpose(1, 0, 2)[:, valid]
    return matched, to_ignored


def _coco_iou(dt_xywh: np.ndarray, gt_xywh: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """pycocotools' box IoU (P, D, G) of detections (P, D, 4) and objects (P, G, 4), [x, y, w, h];
    against a crowd object it is the intersection over the detection's area."""
    d, g = dt_xywh[:, :, None, :], gt_xywh[:, None, :, :]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    dt_area, gt_area = d[..., 2] * d[..., 3], g[..., 2] * g[..., 3]
    union = np.where(crowd[:, None, :], dt_area, dt_area + gt_area - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def _greedy_match(iou: np.ndarray, crowd: np.ndarray, ignore: np.ndarray, counts: np.ndarray,
                  thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.evaluateImg's matching for P pairs at once: found (P, T, D) and matched to an
    ignored object (P, T, D), from iou (P, D, G), crowd and ignore (P, G), the pairs' detection
    counts (P,) in descending order, and IoU thresholds (T,).

    Detection d takes, among objects with IoU >= t that are free (or crowds), the best regular
    one, or failing that the best ignored one; ties go to the later object, regular objects
    coming first in their annotation order.
    """
    regular_first = np.argsort(ignore, axis=1, kind="stable")
    iou = np.take_along_axis(iou, regular_first[:, None, :], axis=2)
    crowd = np.take_along_axis(crowd, regular_first, axis=1)[:, None, :]
    ignore = np.take_along_axis(ignore, regular_first, axis=1)[:, None, :]
    pairs, slots, size = iou.shape
    taken = np.zeros((pairs, len(thresholds), size), dtype=bool)
    found = np.zeros((pairs, len(thresholds), slots), dtype=bool)
    via_ignored = np.zeros_like(found)
    for d in range(slots):
        n = int(np.count_nonzero(counts > d))
        overlap = iou[:n, d, None, :]
        candidate = (overlap >= thresholds[None, :, None]) & (~taken[:n] | crowd[:n])
        regular = candidate & ~ignore[:n]
        use_regular = regular.any(axis=2)
        pool = np.where(use_regular[..., None], regular, candidate)
        best = size - 1 - np.argmax(np.where(pool, overlap, -np.inf)[..., ::-1], axis=2)
        hit = pool.any(axis=2)
        rows, columns = np.nonzero(hit)
        taken[rows, columns, best[rows, columns]] = True
        found[:n, :, d] = hit
        via_ignored[:n, :, d] = hit & ~use_regular
    return found, via_ignored


def _precision_at_recalls(matched: np.ndarray, ignored: np.ndarray, positives: int,
                          recall_thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate for one class, area range and limit: precision (T, R) of the envelope
    at each recall threshold (0 beyond the last recall) and the final recall (T,), from matched
    and ignored (T, n), detections best first."""
    tp = np.cumsum(matched & ~ignored, axis=1)
    fp = np.cumsum(~matched & ~ignored, axis=1)
    recall = tp / positives
    precision = tp / (fp + tp + np.spacing(1))
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    sampled = np.zeros((len(tp), len(recall_thresholds)))
    for t in range(len(tp)):
        index = np.searchsorted(recall[t], recall_thresholds, side="left")
        reached = index < tp.shape[1]
        sampled[t, reached] = envelope[t, index[reached]]
    final = recall[:, -1] if tp.shape[1] else np.zeros(len(tp))
    return sampled, final
