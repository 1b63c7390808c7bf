"""Proposal recall: how many objects the proposals cover, paired one to one."""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..data.dataset import DetectionDataset
from .detections import in_dataset_order, pairwise_iou, to_numpy

PROPOSAL_LIMITS = (100, 300, 1000)


def proposal_recall(dataset: DetectionDataset, proposals: Sequence[Any] | Mapping[str | int, Any],
                    limits: Iterable[int] = PROPOSAL_LIMITS) -> dict[str, float]:
    """Recall of the non-difficult objects by each image's first ``limit`` proposals (n, 4)
    (best first, original image coordinates): ``recall@N_iou0.5``, ``recall@N_iou0.7`` and
    ``ar@N``, the recall averaged over IoU 0.5:0.05:0.95.

    Proposals and objects are paired one to one, greedily, best-covered object first (as
    py-faster-rcnn and detectron2 do); NaN without objects.
    """
    per_image = [np.zeros((0, 4)) if entry is None else to_numpy(entry).astype(np.float64).reshape(-1, 4)
                 for entry in in_dataset_order(dataset, proposals)]
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
    iou = pairwise_iou(proposals, objects)
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
