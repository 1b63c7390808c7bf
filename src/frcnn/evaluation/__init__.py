"""Detection evaluation: Pascal VOC AP (``voc``), COCO AP (``coco``, pycocotools' rules), proposal
recall (``proposals``), and COCO-style results files (``results``).

Detections are given per image of a ``DetectionDataset``, in the dataset's order (a sequence)
or keyed by image id (a mapping; images left out have no detections): dicts with ``boxes``
(n, 4) in the original image's internal coordinates, ``scores`` (n,) and ``labels`` (n,) in
1..C, as tensors or arrays.
"""
from __future__ import annotations

from typing import Literal

from ..data.dataset import DetectionDataset
from .coco import COCO_STAT_NAMES, coco_ground_truth, coco_metrics
from .detections import Detections, ImageDetections, detections_per_image
from .proposals import PROPOSAL_LIMITS, proposal_recall
from .results import detections_to_results, read_results_json, results_to_detections, write_results_json
from .voc import VocCurve, voc_ap, voc_metrics, voc_pr_curves

__all__ = [
    "COCO_STAT_NAMES", "PROPOSAL_LIMITS", "Detections", "ImageDetections", "VocCurve", "coco_ground_truth",
    "coco_metrics", "detections_per_image", "detections_to_results", "evaluate_detections", "proposal_recall",
    "read_results_json", "results_to_detections", "voc_ap", "voc_metrics", "voc_pr_curves", "write_results_json",
]


def evaluate_detections(dataset: DetectionDataset, detections: Detections,
                        coco_engine: Literal["fast", "pycocotools"] = "fast") -> dict[str, float]:
    """VOC AP (``voc07_map``, ``voc_map``, ``voc07_ap/<class>``, ``voc_ap/<class>``) and COCO
    AP/AR (``COCO_STAT_NAMES``, ``coco_ap/<class>``); NaN where a class or area has no ground
    truth. ``coco_engine``: see ``coco_metrics``."""
    per_image = detections_per_image(dataset, detections)
    return {**voc_metrics(dataset, per_image), **coco_metrics(dataset, per_image, coco_engine)}
