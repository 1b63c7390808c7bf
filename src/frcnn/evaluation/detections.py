"""Detections as the evaluation reads them, and the ground truth it compares them with.

Detections are given per image of a ``DetectionDataset``, in the dataset's order (a sequence)
or keyed by image id (a mapping; images left out have no detections): dicts with ``boxes``
(n, 4) in the original image's internal coordinates, ``scores`` (n,) and ``labels`` (n,) in
1..C, as tensors or arrays.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..boxes import box_iou
from ..data.annotations import ImageAnnotation
from ..data.coco import corners_to_xywh
from ..data.dataset import DetectionDataset

Detections = Sequence[Mapping[str, Any]] | Mapping[str | int, Mapping[str, Any]]


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections as arrays: boxes (n, 4) float64, scores (n,), labels (n,) int64."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def detections_per_image(dataset: DetectionDataset, detections: Detections) -> list[ImageDetections]:
    """Detections as ImageDetections in the dataset's order; ValueError if they do not fit."""
    return [_as_arrays(entry, dataset.num_classes, annotation.image_id)
            for entry, annotation in zip(in_dataset_order(dataset, detections), dataset.annotations)]


def in_dataset_order(dataset: DetectionDataset, entries: Sequence[Any] | Mapping[str | int, Any]) -> list[Any]:
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
    boxes, scores, labels = (to_numpy(entry[key]) for key in ("boxes", "scores", "labels"))
    boxes = boxes.astype(np.float64).reshape(-1, 4)
    scores, labels = scores.astype(np.float64).reshape(-1), labels.astype(np.int64).reshape(-1)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(f"image {image_id!r}: {len(boxes)} boxes, {len(scores)} scores and "
                         f"{len(labels)} labels")
    if len(labels) and (labels.min() < 1 or labels.max() > num_classes):
        raise ValueError(f"image {image_id!r}: labels must be in 1..{num_classes}, got "
                         f"{labels.min()}..{labels.max()}")
    return ImageDetections(boxes, scores, labels)


def to_numpy(value: Any) -> np.ndarray:
    """A tensor (moved to the host) or array-like as a numpy array."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def pairwise_iou(boxes1: np.ndarray, boxes2: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """Pairwise IoU (n, m) of float64 boxes (n, 4) and (m, 4)."""
    return box_iou(torch.from_numpy(boxes1), torch.from_numpy(boxes2), plus_one).numpy()


def evaluated_ground_truth(annotation: ImageAnnotation) -> tuple[np.ndarray, ...]:
    """An image's objects, then its crowd regions, as evaluation sees them: corners (n, 4),
    labels (n,), ignored (n,) bool (difficult objects and crowds) and areas (n,) (the annotated
    area of objects: COCO's segment area, else the box area)."""
    crowds = len(annotation.ignore_boxes)
    return (np.concatenate([annotation.boxes, annotation.ignore_boxes]),
            np.concatenate([annotation.labels, annotation.ignore_labels]),
            np.concatenate([annotation.difficult, np.ones(crowds, dtype=bool)]),
            np.concatenate([annotation.areas, corners_to_xywh(annotation.ignore_boxes)[:, 2:].prod(axis=1)]))
