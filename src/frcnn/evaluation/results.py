"""COCO-style results rows and files: how they name a dataset's images and classes, both ways."""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from ..data.annotations import dataset_error
from ..data.coco import corners_to_xywh, read_json, xywh_to_corners
from ..data.dataset import DetectionDataset
from ..data.voc import internal_to_voc, voc_to_internal
from .detections import Detections, ImageDetections, detections_per_image


@dataclass(frozen=True)
class Naming:
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


def file_naming(dataset: DetectionDataset) -> Naming:
    """Results files: COCO data by the annotation file's ids and boxes; VOC and synthetic data by
    file stem, class name and 1-based pixel boxes."""
    image_keys = [annotation.image_id for annotation in dataset.annotations]
    if dataset.source_format == "coco":
        return Naming(image_keys, dataset.category_ids, corners_to_xywh, xywh_to_corners)
    return Naming(image_keys, dataset.class_names, _voc_xywh, _voc_corners)


def evaluation_naming(dataset: DetectionDataset) -> Naming:
    """The in-memory COCO objects: images 1..N in dataset order, categories = labels."""
    return Naming(range(1, len(dataset) + 1), range(1, dataset.num_classes + 1),
                  corners_to_xywh, xywh_to_corners)


def result_rows(detections: Sequence[ImageDetections], naming: Naming) -> list[dict[str, Any]]:
    """COCO results rows {"image_id", "category_id", "bbox", "score"}."""
    return [{"image_id": image_key, "category_id": naming.category_keys[label - 1], "bbox": box,
             "score": score}
            for image_key, dets in zip(naming.image_keys, detections)
            for box, score, label in zip(naming.to_xywh(dets.boxes).tolist(), dets.scores.tolist(),
                                         dets.labels.tolist())]


def detections_to_results(dataset: DetectionDataset, detections: Detections) -> list[dict[str, Any]]:
    """Detections as COCO results rows {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.

    COCO data: the annotation file's image and category ids, boxes as COCO writes them. VOC and
    synthetic data: the image's file stem, the class name, and the box in the annotation's
    1-based pixels, [xmin, ymin, xmax - xmin + 1, ymax - ymin + 1].
    """
    return result_rows(detections_per_image(dataset, detections), file_naming(dataset))


def results_to_detections(dataset: DetectionDataset, rows: Any,
                          source: str | Path = "<results>") -> list[dict[str, np.ndarray]]:
    """Results rows (as ``detections_to_results`` makes them) back to per-image detections in the
    dataset's order; DatasetError naming ``source`` and the row for anything that does not fit."""
    if not isinstance(rows, list):
        raise dataset_error(source, "is not a list of results")
    naming = file_naming(dataset)
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
    write_text_atomic(path, json.dumps(detections_to_results(dataset, detections)))


def read_results_json(path: str | Path, dataset: DetectionDataset) -> list[dict[str, np.ndarray]]:
    """Per-image detections from a COCO results JSON file (see ``detections_to_results``)."""
    return results_to_detections(dataset, read_json(Path(path)), path)
