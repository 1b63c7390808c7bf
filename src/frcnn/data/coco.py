"""COCO: an instances JSON file and an image folder.

COCO boxes [x, y, w, h] become corners (x, y, x + w, y + h); category ids, sorted, map to the
contiguous labels 1..C (``DetectionDataset.category_ids`` maps back); ``iscrowd`` annotations
become ignore regions; images without annotations are kept.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .annotations import ImageAnnotation, check_boxes, dataset_error
from .dataset import DetectionDataset, check_images_exist


def read_json(path: Path) -> Any:
    """Parsed JSON; DatasetError naming the file if it is missing or malformed."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except FileNotFoundError as error:
        raise dataset_error(path, "file is missing") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise dataset_error(path, f"malformed JSON: {error}") from error


def xywh_to_corners(boxes: np.ndarray) -> np.ndarray:
    """[x, y, w, h] (n, 4) -> (x1, y1, x2, y2) (n, 4) float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def corners_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) (n, 4) -> [x, y, w, h] (n, 4) float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def load_coco(annotation_file: str | Path, image_dir: str | Path,
              drop_degenerate: bool = False) -> DetectionDataset:
    """Every image of a COCO instances file, ordered by image id.

    Any bad field, unknown image or category id, or bad box raises DatasetError naming the file
    and the image or annotation; a missing image file raises it naming the image.
    """
    path = Path(annotation_file).expanduser()
    content = read_json(path)
    if not isinstance(content, dict):
        raise dataset_error(path, "is not a COCO instances file (a JSON object)")
    category_ids, class_names = _categories(content, path)
    images = _images(content, path)
    columns = _annotation_columns(content, path, {image["id"]: n for n, image in enumerate(images)},
                                  {cat: label for label, cat in enumerate(category_ids, start=1)})
    sizes = np.array([(images[n]["height"], images[n]["width"]) for n in columns.image_index],
                     dtype=np.float64).reshape(-1, 2)

    def describe(i: int) -> tuple[Path, str]:
        return path, (f"annotation {columns.annotation_ids[i]!r} of image "
                      f"{images[columns.image_index[i]]['file_name']!r}")

    kept = np.flatnonzero(check_boxes(columns.boxes, sizes, describe, drop_degenerate))
    by_image = kept[np.argsort(columns.image_index[kept], kind="stable")]
    bounds = np.searchsorted(columns.image_index[by_image], np.arange(len(images) + 1))
    image_dir = Path(image_dir).expanduser()
    annotations = tuple(_image_annotation(image, image_dir, columns, by_image[bounds[n]:bounds[n + 1]])
                        for n, image in enumerate(images))
    check_images_exist(annotations)
    return DetectionDataset(annotations, class_names, "coco", category_ids)


class _Columns(NamedTuple):
    """Every annotation of the file, row i: boxes (N, 4) corners, image_index (N,) into the
    sorted images, labels (N,), crowd (N,) bool, areas (N,), annotation_ids (N,)."""

    boxes: np.ndarray
    image_index: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray
    areas: np.ndarray
    annotation_ids: list[Any]


def _categories(content: dict, path: Path) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Category ids, sorted, and their names."""
    raw = content.get("categories")
    if not isinstance(raw, list) or not raw:
        raise dataset_error(path, "has no categories")
    categories = {}
    for index, category in enumerate(raw):
        item = f"category #{index}"
        try:
            cat_id, name = category["id"], str(category["name"])
        except (KeyError, TypeError) as error:
            raise dataset_error(path, f"bad or missing field {error}", item) from error
        if not isinstance(cat_id, int) or cat_id in categories:
            raise dataset_error(path, f"category id {cat_id!r} is not a unique integer", item)
        categories[cat_id] = name
    ids = tuple(sorted(categories))
    return ids, tuple(categories[i] for i in ids)


def _images(content: dict, path: Path) -> list[dict[str, Any]]:
    """The images, sorted by id, each {"id", "file_name", "width", "height"}."""
    raw = content.get("images")
    if not isinstance(raw, list) or not raw:
        raise dataset_error(path, "has no images")
    images: dict[int, dict[str, Any]] = {}
    for index, image in enumerate(raw):
        item = f"image #{index}"
        try:
            entry = {"id": image["id"], "file_name": str(image["file_name"]),
                     "width": int(image["width"]), "height": int(image["height"])}
        except (KeyError, TypeError, ValueError) as error:
            raise dataset_error(path, f"bad or missing field {error}", item) from error
        if not isinstance(entry["id"], int) or entry["id"] in images:
            raise dataset_error(path, f"image id {entry['id']!r} is not a unique integer", item)
        if entry["width"] <= 0 or entry["height"] <= 0:
            raise dataset_error(path, f"size {entry['width']}x{entry['height']} (width x height) "
                                      "is not positive", f"image {entry['file_name']!r}")
        images[entry["id"]] = entry
    return [images[i] for i in sorted(images)]


def _annotation_columns(content: dict, path: Path, image_of: dict[int, int],
                        label_of: dict[int, int]) -> _Columns:
    raw = content.get("annotations", [])
    if not isinstance(raw, list):
        raise dataset_error(path, "'annotations' is not a list")
    count = len(raw)
    xywh = np.zeros((count, 4), dtype=np.float64)
    image_index = np.zeros(count, dtype=np.int64)
    labels = np.zeros(count, dtype=np.int64)
    crowd = np.zeros(count, dtype=bool)
    areas = np.zeros(count, dtype=np.float64)
    annotation_ids = []
    for row, annotation in enumerate(raw):
        annotation_id = annotation.get("id", f"#{row}") if isinstance(annotation, dict) else f"#{row}"
        item = f"annotation {annotation_id!r}"
        try:
            image_id, category_id = annotation["image_id"], annotation["category_id"]
            xywh[row] = [float(v) for v in annotation["bbox"]]
            crowd[row] = bool(annotation.get("iscrowd", 0))
            areas[row] = float(annotation.get("area", xywh[row, 2] * xywh[row, 3]))
        except (KeyError, TypeError, ValueError) as error:
            raise dataset_error(path, f"bad or missing field {error}", item) from error
        if image_id not in image_of:
            raise dataset_error(path, f"unknown image_id {image_id!r}", item)
        if category_id not in label_of:
            raise dataset_error(path, f"unknown category_id {category_id!r}", item)
        image_index[row] = image_of[image_id]
        labels[row] = label_of[category_id]
        annotation_ids.append(annotation_id)
    return _Columns(xywh_to_corners(xywh), image_index, labels, crowd, areas, annotation_ids)


def _image_annotation(image: dict[str, Any], image_dir: Path, columns: _Columns,
                      rows: np.ndarray) -> ImageAnnotation:
    objects = rows[~columns.crowd[rows]]
    crowds = rows[columns.crowd[rows]]
    return ImageAnnotation(
        image_path=image_dir / image["file_name"],
        image_id=image["id"],
        height=image["height"],
        width=image["width"],
        boxes=columns.boxes[objects],
        labels=columns.labels[objects],
        difficult=np.zeros(len(objects), dtype=bool),
        areas=columns.areas[objects],
        ignore_boxes=columns.boxes[crowds],
        ignore_labels=columns.labels[crowds],
    )
