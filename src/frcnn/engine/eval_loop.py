"""The evaluation loop: detections (and proposals) for every image of a dataset, and their metrics."""
from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..data import DetectionDataset, DetectionTransform, build_loader
from ..evaluation import PROPOSAL_LIMITS, evaluate_detections, proposal_recall

# The headline metrics, in the order the command line shows them.
HEADLINE = ("voc07_map", "voc_map", "coco_ap", "coco_ap50", "coco_ap75", "coco_ap_small", "coco_ap_medium",
            "coco_ap_large", "rpn_recall@300", "rpn_ar@300")


@dataclass(frozen=True)
class Predictions:
    """Per image of a dataset, in its order: detections (``boxes``, ``scores``, ``labels`` as
    numpy arrays, original image coordinates) and, if asked for, the RPN's proposals
    (``boxes``, ``scores``)."""

    detections: list[dict[str, np.ndarray]]
    proposals: list[dict[str, np.ndarray]] | None


def _numpy(outputs: list[Mapping[str, torch.Tensor]]) -> list[dict[str, np.ndarray]]:
    return [{key: value.detach().cpu().numpy() for key, value in output.items()} for output in outputs]


@torch.no_grad()
def predict(model: nn.Module, dataset: DetectionDataset, transform: DetectionTransform, device: torch.device,
            batch_size: int = 2, proposals: bool = False, progress_bar: bool = False) -> Predictions:
    """Run ``model`` (switched to eval mode) over every image of ``dataset``."""
    model.eval()
    loader = build_loader(dataset, transform, batch_size, shuffle=False, num_workers=0,
                          size_divisibility=model.config.preprocess.size_divisible)
    detections: list[dict[str, np.ndarray]] = []
    found: list[dict[str, np.ndarray]] = []
    for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress_bar, file=sys.stderr,
                      mininterval=0.5 if sys.stderr.isatty() else 30.0):
        batch = batch.to(device)
        detections += _numpy(model(batch.images, batch.im_info, orig_sizes=batch.orig_sizes))
        if proposals:
            found += _numpy(model.propose(batch.images, batch.im_info, batch.orig_sizes))
    return Predictions(detections, found if proposals else None)


def proposal_metrics(dataset: DetectionDataset, proposals: list[Mapping[str, Any]],
                     max_proposals: int) -> dict[str, float]:
    """RPN recall at IoU 0.5 (``rpn_recall@N``) and 0.7, and average recall (``rpn_ar@N``), for
    the proposal counts up to ``max_proposals`` (the model's test-time count)."""
    limits = [limit for limit in PROPOSAL_LIMITS if limit <= max_proposals] or [max_proposals]
    recall = proposal_recall(dataset, [p["boxes"] for p in proposals], limits)
    return {"rpn_" + key.replace("_iou0.5", ""): value for key, value in recall.items()}


def evaluate(model: nn.Module, dataset: DetectionDataset, transform: DetectionTransform, device: torch.device,
             batch_size: int = 2, progress_bar: bool = False) -> tuple[dict[str, float], Predictions]:
    """Detection metrics (``evaluate_detections``) and RPN recall of ``model`` on ``dataset``."""
    predictions = predict(model, dataset, transform, device, batch_size, proposals=True,
                          progress_bar=progress_bar)
    return prediction_metrics(model, dataset, predictions), predictions


def prediction_metrics(model: nn.Module, dataset: DetectionDataset, predictions: Predictions) -> dict[str, float]:
    """The metrics of ``evaluate`` from ``model``'s predictions (with proposals) on ``dataset``."""
    metrics = evaluate_detections(dataset, predictions.detections)
    metrics.update(proposal_metrics(dataset, predictions.proposals, model.config.proposals.test.post_nms_top_n))
    return metrics


def json_safe(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """Metrics with NaN (nothing to measure) as None, so that they are valid JSON."""
    return {key: None if isinstance(value, float) and math.isnan(value) else value
            for key, value in metrics.items()}
