"""COCO bbox AP and AR with pycocotools' rules, on a dataset built as an in-memory COCO object."""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..data.dataset import DetectionDataset
from .coco_matching import fast_accumulation
from .detections import ImageDetections, evaluated_ground_truth
from .results import evaluation_naming, result_rows

COCO_STAT_NAMES = ("coco_ap", "coco_ap50", "coco_ap75", "coco_ap_small", "coco_ap_medium",
                   "coco_ap_large", "coco_ar1", "coco_ar10", "coco_ar100", "coco_ar_small",
                   "coco_ar_medium", "coco_ar_large")


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
    """The dataset as an in-memory pycocotools COCO object (images 1..N in dataset order,
    categories = labels).

    Difficult objects are ``iscrowd`` like crowd regions: pycocotools has no other way to ignore
    an object, so detections they match are ignored (with crowd IoU, the intersection over the
    detection's area).
    """
    images, rows = [], []
    naming = evaluation_naming(dataset)
    for image_key, annotation in zip(naming.image_keys, dataset.annotations):
        images.append({"id": image_key, "height": annotation.height, "width": annotation.width})
        boxes, labels, crowd, areas = evaluated_ground_truth(annotation)
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
        precision, recall = fast_accumulation(dataset, detections)
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
    rows = result_rows(detections, evaluation_naming(dataset))
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


def _nan_if_absent(value: float) -> float:
    return math.nan if value == -1 else float(value)
