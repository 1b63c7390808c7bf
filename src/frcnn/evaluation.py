"""Detection evaluation: Pascal VOC AP, COCO AP (pycocotools), proposal recall, and COCO-style
results files.

Detections are given per image of a ``DetectionDataset``, in the dataset's order (a sequence)
or keyed by image id (a mapping; images left out have no detections): dicts with ``boxes``
(n, 4) in the original image's internal coordinates, ``scores`` (n,) and ``labels`` (n,) in
1..C, as tensors or arrays.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval, Params

from .boxes import box_iou
from .data.annotations import ImageAnnotation, dataset_error
from .data.coco import corners_to_xywh, read_json, xywh_to_corners
from .data.dataset import DetectionDataset
from .data.voc import internal_to_voc, voc_to_internal

Detections = Sequence[Mapping[str, Any]] | Mapping[str | int, Mapping[str, Any]]
COCO_STAT_NAMES = ("coco_ap", "coco_ap50", "coco_ap75", "coco_ap_small", "coco_ap_medium",
                   "coco_ap_large", "coco_ar1", "coco_ar10", "coco_ar100", "coco_ar_small",
                   "coco_ar_medium", "coco_ar_large")
PROPOSAL_LIMITS = (100, 300, 1000)


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections as arrays: boxes (n, 4) float64, scores (n,), labels (n,) int64."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def evaluate_detections(dataset: DetectionDataset, detections: Detections,
                        coco_engine: Literal["fast", "pycocotools"] = "fast") -> dict[str, float]:
    """VOC AP (``voc07_map``, ``voc_map``, ``voc07_ap/<class>``, ``voc_ap/<class>``) and COCO
    AP/AR (``COCO_STAT_NAMES``, ``coco_ap/<class>``); NaN where a class or area has no ground
    truth. ``coco_engine``: see ``coco_metrics``."""
    per_image = detections_per_image(dataset, detections)
    return {**voc_metrics(dataset, per_image), **coco_metrics(dataset, per_image, coco_engine)}


def detections_per_image(dataset: DetectionDataset, detections: Detections) -> list[ImageDetections]:
    """Detections as ImageDetections in the dataset's order; ValueError if they do not fit."""
    return [_as_arrays(entry, dataset.num_classes, annotation.image_id)
            for entry, annotation in zip(_in_dataset_order(dataset, detections), dataset.annotations)]


def _in_dataset_order(dataset: DetectionDataset, entries: Sequence[Any] | Mapping[str | int, Any]) -> list[Any]:
    """Per-image entries in the dataset's order (None where a mapping has no entry)."""
    if isinstance(entries, Mapping):
        index = {annotation.image_id: n for n, annotation in enumerate(dataset.annotations)}
        unknown = [key for key in entries if key not in index]
        if unknown:
            raise ValueError(f"entries for images not in the dataset: {unknown[:5]}")
        ordered: list[Any] = [None] * len(dataset)
        for key, value in entries.items():
            ordered[index[key]] = value
        return ordered
    ordered = list(entries)
    if len(ordered) != len(dataset):
        raise ValueError(f"{len(ordered)} entries for the {len(dataset)} images of the dataset")
    return ordered


def _as_arrays(entry: Mapping[str, Any] | None, num_classes: int, image_id: str | int) -> ImageDetections:
    if entry is None:
        return ImageDetections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    boxes, scores, labels = (_numpy(entry[key]) for key in ("boxes", "scores", "labels"))
    boxes = boxes.astype(np.float64).reshape(-1, 4)
    scores, labels = scores.astype(np.float64).reshape(-1), labels.astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"image {image_id!r}: {len(boxes)} boxes, {len(scores)} scores and "
                         f"{len(labels)} labels")
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"image {image_id!r}: labels must be in 1..{num_classes}, got "
                         f"{labels.min()}..{labels.max()}")
    return ImageDetections(boxes, scores, labels)


def _numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _iou(boxes1: np.ndarray, boxes2: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """Pairwise IoU (n, m) of float64 boxes (n, 4) and (m, 4)."""
    return box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2), plus_one).numpy()


def _ground_truth(annotation: ImageAnnotation) -> tuple[np.ndarray, ...]:
    """An image's objects, then its crowd regions, as evaluation sees them: corners (n, 4),
    labels (n,), ignored (n,) bool (difficult objects and crowds) and areas (n,) (the annotated
    area of objects: COCO's segment area, else the box area)."""
    crowds = len(annotation.ignore_boxes)
    return (np.concatenate([annotation.boxes, annotation.ignore_boxes]),
            np.concatenate([annotation.labels, annotation.ignore_labels]),
            np.concatenate([annotation.difficult, np.ones(crowds, dtype=bool)]),
            np.concatenate([annotation.areas, corners_to_xywh(annotation.ignore_boxes)[:, 2:].prod(axis=1)]))


# ---------------------------------------------------------------- Pascal VOC


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


def voc_metrics(dataset: DetectionDataset, detections: Sequence[ImageDetections],
                iou_threshold: float = 0.5) -> dict[str, float]:
    """VOC AP per class and mean, 2007 11-point (``voc07_*``) and 2010+ all-point (``voc_*``).

    As the devkit: IoU with its +1 pixel widths on the annotation's 1-based coordinates; each
    detection, highest score first, takes its best-overlapping same-class ground truth in the
    image; above ``iou_threshold`` it is a true positive if that object is not yet taken, not
    counted at all if the object is difficult (crowd regions count as difficult), else a false
    positive. Ties in score keep the dataset's order. Classes without non-difficult objects have
    AP NaN and are left out of the means.
    """
    matches = _voc_matches(dataset.annotations, detections)
    per_class: dict[str, float] = {}
    for label, name in enumerate(dataset.class_names, start=1):
        per_class[f"voc07_ap/{name}"], per_class[f"voc_ap/{name}"] = _voc_class_aps(matches, label,
                                                                                 iou_threshold)
    means = {}
    for prefix in ("voc07", "voc"):
        values = [per_class[f"{prefix}_ap/{name}"] for name in dataset.class_names]
        finite = [v for v in values if not math.isnan(v)]
        means[f"{prefix}_map"] = float(np.mean(finite)) if finite else math.nan
    return {**means, **per_class}


def _voc_class_aps(matches: _VocMatches, label: int, iou_threshold: float) -> tuple[float, float]:
    """(2007 AP, 2010+ AP) of one class; NaN without non-difficult objects."""
    positives = _num_positives(matches, label)
    if not positives:
        return math.nan, math.nan
    recall, precision = _voc_curve(matches, label, positives, iou_threshold)
    return voc_ap(recall, precision, True), voc_ap(recall, precision, False)


def _num_positives(matches: _VocMatches, label: int) -> int:
    return int(np.count_nonzero((matches.gt_labels == label) & ~matches.gt_difficult))


def _voc_matches(annotations: Sequence[ImageAnnotation],
                 detections: Sequence[ImageDetections]) -> _VocMatches:
    """Each detection's best same-class object in its image, by the devkit's IoU."""
    rows = []
    offset = 0
    for annotation, dets in zip(annotations, detections):
        boxes, labels, difficult, _ = _ground_truth(annotation)
        iou = _iou(internal_to_voc(dets.boxes), internal_to_voc(boxes), plus_one=True)
        iou = np.where(dets.labels[:, None] == labels[None, :], iou, -np.inf)
        if len(boxes):
            best_iou, best_gt = iou.max(axis=1), iou.argmax(axis=1) + offset
        else:
            best_iou, best_gt = np.full(len(dets.labels), -np.inf), np.zeros(len(dets.labels), np.int64)
        rows.append((dets.labels, dets.scores, best_iou, best_gt, labels, difficult))
        offset += len(boxes)
    return _VocMatches(*(np.concatenate(column) for column in zip(*rows)))


def _voc_curve(matches: _VocMatches, label: int, positives: int,
               iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision (n,) after each of the class's n detections, highest score first."""
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
    return recall, precision


# ---------------------------------------------------------------- COCO


@dataclass(frozen=True)
class _Naming:
    """How COCO-style rows name a dataset's images (per image) and classes (per label - 1), and
    write boxes as [x, y, w, h] (``to_xywh`` from internal corners, ``from_xywh`` back)."""

    image_keys: Sequence[str | int]
    category_keys: Sequence[str | int]
    to_xywh: Callable[[np.ndarray], np.ndarray]
    from_xywh: Callable[[np.ndarray], np.ndarray]


def _voc_xywh(boxes: np.ndarray) -> np.ndarray:
    """Internal corners -> [xmin, ymin, width, height] in VOC's 1-based inclusive pixels."""
    voc = internal_to_voc(boxes)
    return np.concatenate([voc[:, :2], voc[:, 2:] - voc[:, :2] + 1], axis=1)


def _voc_corners(xywh: np.ndarray) -> np.ndarray:
    """[xmin, ymin, width, height] in VOC's 1-based inclusive pixels -> internal corners."""
    xywh = np.asarray(xywh, dtype=np.float64).reshape(-1, 4)
    return voc_to_internal(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1], axis=1))


def _file_naming(dataset: DetectionDataset) -> _Naming:
    """Results files: COCO data by the annotation file's ids and boxes; VOC and synthetic data by
    file stem, class name and 1-based pixel boxes."""
    image_keys = [annotation.image_id for annotation in dataset.annotations]
    if dataset.source_format == "coco":
        return _Naming(image_keys, dataset.category_ids, corners_to_xywh, xywh_to_corners)
    return _Naming(image_keys, dataset.class_names, _voc_xywh, _voc_corners)


def _evaluation_naming(dataset: DetectionDataset) -> _Naming:
    """The in-memory COCO objects: images 1..N in dataset order, categories = labels."""
    return _Naming(range(1, len(dataset) + 1), range(1, dataset.num_classes + 1),
                   corners_to_xywh, xywh_to_corners)


def _result_rows(detections: Sequence[ImageDetections], naming: _Naming) -> list[dict[str, Any]]:
    """COCO results rows {"image_id", "category_id", "bbox", "score"}."""
    return [{"image_id": image_key, "category_id": naming.category_keys[label - 1], "bbox": box,
             "score": score}
            for image_key, dets in zip(naming.image_keys, detections)
            for box, score, label in zip(naming.to_xywh(dets.boxes).tolist(), dets.scores.tolist(),
                                         dets.labels.tolist())]


def _quiet() -> contextlib.AbstractContextManager:
    """pycocotools prints progress; keep it off stdout."""
    return contextlib.redirect_stdout(io.StringIO())


def _coco_object(content: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = content
    with _quiet():
        coco.createIndex()
    return coco


def coco_ground_truth(dataset: DetectionDataset) -> COCO:
    """The dataset as an in-memory pycocotools COCO object (``_evaluation_naming`` ids).

    Difficult objects are ``iscrowd`` like crowd regions: pycocotools has no other way to ignore
    an object, so detections they match are ignored (with crowd IoU, the intersection over the
    detection's area).
    """
    images, rows = [], []
    naming = _evaluation_naming(dataset)
    for image_key, annotation in zip(naming.image_keys, dataset.annotations):
        images.append({"id": image_key, "height": annotation.height, "width": annotation.width})
        boxes, labels, crowd, areas = _ground_truth(annotation)
        for box, label, is_crowd, area in zip(naming.to_xywh(boxes).tolist(), labels.tolist(),
                                              crowd.tolist(), areas.tolist()):
            rows.append({"id": len(rows) + 1, "image_id": image_key, "category_id": label,
                         "bbox": box, "area": area, "iscrowd": int(is_crowd)})
    categories = [{"id": label, "name": name}
                  for label, name in zip(naming.category_keys, dataset.class_names)]
    return _coco_object({"images": images, "annotations": rows, "categories": categories})


def coco_metrics(dataset: DetectionDataset, detections: Sequence[ImageDetections],
                 engine: Literal["fast", "pycocotools"] = "fast") -> dict[str, float]:
    """COCO bbox AP and AR (``COCO_STAT_NAMES``) and per-class AP (``coco_ap/<class>``: IoU
    0.5:0.95, all areas, 100 detections); -1 (nothing to measure) becomes NaN.

    Both engines give pycocotools' numbers on ``coco_ground_truth(dataset)`` and the detections
    in the COCO results format. "pycocotools" runs its COCOeval; "fast" does COCOeval's matching
    and accumulation in vectorised numpy (about 10x faster on 5,000 images) and leaves the summary
    to pycocotools.
    """
    if engine == "pycocotools":
        precision, recall = _pycocotools_accumulation(dataset, detections)
    elif engine == "fast":
        precision, recall = _fast_accumulation(dataset, detections)
    else:
        raise ValueError(f"unknown COCO evaluation engine {engine!r}")
    evaluator = COCOeval(iouType="bbox")
    evaluator.eval = {"precision": precision, "recall": recall}
    with _quiet():
        evaluator.summarize()
    metrics = {name: _nan_if_absent(value) for name, value in zip(COCO_STAT_NAMES, evaluator.stats)}
    all_areas = precision[:, :, :, 0, -1]
    for k, name in enumerate(dataset.class_names):
        measured = all_areas[:, :, k][all_areas[:, :, k] > -1]
        metrics[f"coco_ap/{name}"] = float(measured.mean()) if measured.size else math.nan
    return metrics


def _pycocotools_accumulation(dataset: DetectionDataset,
                              detections: Sequence[ImageDetections]) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's precision (T, R, K, A, M) and recall (T, K, A, M)."""
    ground_truth = coco_ground_truth(dataset)
    rows = _result_rows(detections, _evaluation_naming(dataset))
    if rows:
        with _quiet():
            results = ground_truth.loadRes(rows)
    else:  # loadRes cannot take an empty list
        results = _coco_object({**ground_truth.dataset, "annotations": []})
    evaluator = COCOeval(ground_truth, results, "bbox")
    with _quiet():
        evaluator.evaluate()
        evaluator.accumulate()
    return evaluator.eval["precision"], evaluator.eval["recall"]


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
    """Ground truth (``_ground_truth``, crowds and difficult objects as crowds) and detections,
    each in image order."""
    ground_truth, found = [], []
    for image, (annotation, dets) in enumerate(zip(dataset.annotations, detections)):
        boxes, labels, crowd, areas = _ground_truth(annotation)
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


def _fast_accumulation(dataset: DetectionDataset,
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


def _nan_if_absent(value: float) -> float:
    return math.nan if value == -1 else float(value)


# ---------------------------------------------------------------- results files


def detections_to_results(dataset: DetectionDataset, detections: Detections) -> list[dict[str, Any]]:
    """Detections as COCO results rows {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.

    COCO data: the annotation file's image and category ids, boxes as COCO writes them. VOC and
    synthetic data: the image's file stem, the class name, and the box in the annotation's
    1-based pixels, [xmin, ymin, xmax - xmin + 1, ymax - ymin + 1].
    """
    return _result_rows(detections_per_image(dataset, detections), _file_naming(dataset))


def results_to_detections(dataset: DetectionDataset, rows: Any,
                          source: str | Path = "<results>") -> list[dict[str, np.ndarray]]:
    """Results rows (as ``detections_to_results`` makes them) back to per-image detections in the
    dataset's order; DatasetError naming ``source`` and the row for anything that does not fit."""
    if not isinstance(rows, list):
        raise dataset_error(source, "is not a list of results")
    naming = _file_naming(dataset)
    image_of = {key: n for n, key in enumerate(naming.image_keys)}
    label_of = {key: label for label, key in enumerate(naming.category_keys, start=1)}
    images = np.zeros(len(rows), dtype=np.int64)
    labels = np.zeros(len(rows), dtype=np.int64)
    xywh = np.zeros((len(rows), 4))
    scores = np.zeros(len(rows))
    for n, row in enumerate(rows):
        item = f"result #{n}"
        try:
            image_key, category_key = row["image_id"], row["category_id"]
            xywh[n], scores[n] = [float(v) for v in row["bbox"]], float(row["score"])
        except (KeyError, TypeError, ValueError) as error:
            raise dataset_error(source, f"bad or missing field {error}", item) from error
        if image_key not in image_of:
            raise dataset_error(source, f"unknown image_id {image_key!r}", item)
        if category_key not in label_of:
            raise dataset_error(source, f"unknown category_id {category_key!r}", item)
        if not (np.isfinite(xywh[n]).all() and math.isfinite(scores[n])):
            raise dataset_error(source, "non-finite bbox or score", item)
        images[n], labels[n] = image_of[image_key], label_of[category_key]
    boxes = naming.from_xywh(xywh)
    return [{"boxes": boxes[images == n], "scores": scores[images == n], "labels": labels[images == n]}
            for n in range(len(dataset))]


def write_results_json(path: str | Path, dataset: DetectionDataset, detections: Detections) -> None:
    """Write ``detections_to_results`` as a JSON file."""
    Path(path).write_text(json.dumps(detections_to_results(dataset, detections)))


def read_results_json(path: str | Path, dataset: DetectionDataset) -> list[dict[str, np.ndarray]]:
    """Per-image detections from a COCO results JSON file (see ``detections_to_results``)."""
    return results_to_detections(dataset, read_json(Path(path)), path)


# ---------------------------------------------------------------- proposals


def proposal_recall(dataset: DetectionDataset, proposals: Sequence[Any] | Mapping[str | int, Any],
                    limits: Iterable[int] = PROPOSAL_LIMITS) -> dict[str, float]:
    """Recall of the non-difficult objects by each image's first ``limit`` proposals (n, 4)
    (best first, original image coordinates): ``recall@N_iou0.5``, ``recall@N_iou0.7`` and
    ``ar@N``, the recall averaged over IoU 0.5:0.05:0.95.

    Proposals and objects are paired one to one, greedily, best-covered object first (as
    py-faster-rcnn and detectron2 do); NaN without objects.
    """
    per_image = [np.zeros((0, 4)) if entry is None else _numpy(entry).astype(np.float64).reshape(-1, 4)
                 for entry in _in_dataset_order(dataset, proposals)]
    objects = [annotation.boxes[~annotation.difficult] for annotation in dataset.annotations]
    thresholds = np.linspace(0.5, 0.95, 10)
    metrics = {}
    for limit in limits:
        overlaps = np.concatenate([np.zeros(0)] + [_greedy_overlaps(boxes[:limit], gt)
                                                   for boxes, gt in zip(per_image, objects)])
        for threshold in (0.5, 0.7):
            metrics[f"recall@{limit}_iou{threshold}"] = _mean_or_nan(overlaps >= threshold)
        metrics[f"ar@{limit}"] = _mean_or_nan(overlaps[:, None] >= thresholds[None, :])
    return metrics


def _greedy_overlaps(proposals: np.ndarray, objects: np.ndarray) -> np.ndarray:
    """Each object's IoU (m,) with the proposal it is paired with (0 if none): repeatedly pair
    the object best covered by a free proposal with that proposal."""
    iou = _iou(proposals, objects)
    overlaps = np.zeros(len(objects))
    for _ in range(min(iou.shape)):
        best = iou.argmax(axis=0)
        covered = iou[best, np.arange(len(objects))]
        obj = int(covered.argmax())
        overlaps[obj] = covered[obj]
        iou[best[obj], :] = -1
        iou[:, obj] = -1
    return overlaps


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan
