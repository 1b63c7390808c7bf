"""COCO: an instances JSON file and an image folder.

COCO boxes [x, y, w, h] become corners (x, y, x + w, y + h); category ids, sorted, map to the
contiguous labels 1..C (``DetectionDataset.category_ids`` maps back), or ``data.class_names``
picks categories by name; ``iscrowd`` annotations become ignore regions; images without
annotations are kept.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .annotations import ImageAnnotation, Problem, ProblemLog, ReadOptions, check_boxes, dataset_error
from .dataset import DetectionDataset, finished_dataset
from .images import checked_image_size
from .textfiles import read_text


def read_json(path: Path) -> Any:
    """Parsed JSON; DatasetError naming the file (and line) if it is missing or malformed."""
    try:
        return json.loads(read_text(path))
    except FileNotFoundError as error:
        raise dataset_error(path, "file is missing") from error
    except json.JSONDecodeError as error:
        raise dataset_error(path, f"malformed JSON: {error.msg} (column {error.colno})", line=error.lineno) from error
    except (UnicodeDecodeError, OSError) as error:
        raise dataset_error(path, f"cannot read the JSON file: {error}") from error


def xywh_to_corners(boxes: np.ndarray) -> np.ndarray:
    """[x, y, w, h] (n, 4) -> (x1, y1, x2, y2) (n, 4) float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def corners_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) (n, 4) -> [x, y, w, h] (n, 4) float64."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def load_coco(annotation_file: str | Path, image_dir: str | Path,
              options: ReadOptions = ReadOptions()) -> DetectionDataset:
    """Every image of a COCO instances file, ordered by image id.

    Bad fields, duplicate image ids, annotations of unknown images or categories, bad boxes, and
    missing, unreadable or mis-sized image files go to ``options``' policies (``ReadOptions``),
    each named by the file and the image or annotation.
    """
    path = Path(annotation_file).expanduser()
    content = read_json(path)
    if not isinstance(content, dict):
        raise dataset_error(path, "is not a COCO instances file (a JSON object)")
    log = ProblemLog(options)
    categories = _categories(content, path)
    category_ids, class_names, label_of = _labels(categories, options.class_names)
    images, dropped_ids = _images(content, path, Path(image_dir).expanduser(), log)
    columns = _annotation_columns(content, path, {image["id"]: n for n, image in enumerate(images)},
                                  dropped_ids, categories, label_of, log)
    sizes = np.array([(images[n]["height"], images[n]["width"]) for n in columns.image_index],
                     dtype=np.float64).reshape(-1, 2)

    def describe(i: int, message: str) -> Problem:
        return Problem(str(path), message, item=f"annotation {columns.annotation_ids[i]!r} of image "
                                                f"{images[columns.image_index[i]]['file_name']!r}")

    kept = np.flatnonzero(check_boxes(columns.boxes, sizes, log, describe))
    by_image = kept[np.argsort(columns.image_index[kept], kind="stable")]
    bounds = np.searchsorted(columns.image_index[by_image], np.arange(len(images) + 1))
    annotations = [_image_annotation(image, columns, by_image[bounds[n]:bounds[n + 1]])
                   for n, image in enumerate(images)]
    log.warn(f"coco:{path}")
    return finished_dataset(annotations, class_names, "coco", path, log.problems, category_ids)


class _Columns(NamedTuple):
    """Every kept annotation of the file, row i: boxes (N, 4) corners, image_index (N,) into the
    sorted images, labels (N,), crowd (N,) bool, areas (N,), annotation_ids (N,)."""

    boxes: np.ndarray
    image_index: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray
    areas: np.ndarray
    annotation_ids: list[Any]


def _categories(content: dict, path: Path) -> dict[int, str]:
    """Category id -> name, sorted by id."""
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
    return dict(sorted(categories.items()))


def _labels(categories: dict[int, str], class_names: tuple[str, ...] | None
            ) -> tuple[tuple[int, ...], tuple[str, ...], dict[int, int]]:
    """(category id of each label, class names, category id -> label). With ``class_names``,
    categories are picked by name; a name the file lacks gets an id above the file's."""
    if class_names is None:
        return tuple(categories), tuple(categories.values()), {cat: n for n, cat in enumerate(categories, start=1)}
    id_of = {name: cat for cat, name in reversed(categories.items())}
    spare = iter(range(max(categories) + 1, max(categories) + 1 + len(class_names)))
    ids = tuple(id_of[name] if name in id_of else next(spare) for name in class_names)
    label_of = {cat: n for n, cat in enumerate(ids, start=1) if cat in categories}
    return ids, tuple(class_names), label_of


def _images(content: dict, path: Path, image_dir: Path,
            log: ProblemLog) -> tuple[list[dict[str, Any]], set[Any]]:
    """The usable images, sorted by id, each {"id", "file_name", "path", "width", "height"}, and
    the ids of the images dropped."""
    raw = content.get("images")
    if not isinstance(raw, list) or not raw:
        raise dataset_error(path, "has no images")
    images: dict[int, dict[str, Any]] = {}
    dropped: set[Any] = set()
    for index, image in enumerate(raw):
        item = f"image #{index}"
        try:
            entry = {"id": image["id"], "file_name": str(image["file_name"]),
                     "width": int(image["width"]), "height": int(image["height"])}
        except (KeyError, TypeError, ValueError) as error:
            log.bad(Problem(str(path), f"bad or missing field {error}", item=item), dropped="image")
            dropped.add(image.get("id") if isinstance(image, dict) else None)
            continue
        if not isinstance(entry["id"], int) or entry["id"] in images:
            log.bad(Problem(str(path), f"image id {entry['id']!r} is not a unique integer", item=item), dropped="image")
            continue
        if entry["width"] <= 0 or entry["height"] <= 0:
            log.bad(Problem(str(path), f"size {entry['width']}x{entry['height']} (width x height) is not positive",
                            item=f"image {entry['file_name']!r}"), dropped="image")
            dropped.add(entry["id"])
            continue
        entry["path"] = image_dir / entry["file_name"]
        if checked_image_size(entry["path"], log, (entry["width"], entry["height"]), path) is None:
            dropped.add(entry["id"])
            continue
        images[entry["id"]] = entry
    return [images[i] for i in sorted(images)], dropped - set(images)


def _annotation_columns(content: dict, path: Path, image_of: dict[int, int], dropped_images: set[Any],
                        categories: dict[int, str], label_of: dict[int, int], log: ProblemLog) -> _Columns:
    raw = content.get("annotations", [])
    if not isinstance(raw, list):
        raise dataset_error(path, "'annotations' is not a list")
    rows: list[tuple[list[float], int, int, bool, float | None, Any]] = []
    for row, annotation in enumerate(raw):
        annotation_id = annotation.get("id", f"#{row}") if isinstance(annotation, dict) else f"#{row}"
        item = f"annotation {annotation_id!r}"
        try:
            image_id, category_id = annotation["image_id"], annotation["category_id"]
            xywh = [float(v) for v in annotation["bbox"]]
            if len(xywh) != 4:
                raise ValueError(f"'bbox' has {len(xywh)} numbers, not 4")
            crowd = bool(annotation.get("iscrowd", 0))
            area = annotation.get("area")
            area = None if area is None else float(area)
        except (KeyError, TypeError, ValueError) as error:
            log.bad(Problem(str(path), f"bad or missing field {error}", item=item))
            continue
        if image_id in dropped_images:
            continue
        if image_id not in image_of:
            log.bad(Problem(str(path), f"image_id {image_id!r} is not an image of the file", item=item))
        elif category_id not in categories:
            log.bad(Problem(str(path), f"category_id {category_id!r} is not a category of the file", item=item))
        elif category_id not in label_of:
            log.unknown_class(Problem(str(path), f"class {categories[category_id]!r} (category_id {category_id}) "
                                                 "is not one of data.class_names", item=item))
        else:
            rows.append((xywh, image_of[image_id], label_of[category_id], crowd, area, annotation_id))
    xywh = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
    areas = np.array([xywh[n, 2] * xywh[n, 3] if r[4] is None else r[4] for n, r in enumerate(rows)], dtype=np.float64)
    return _Columns(xywh_to_corners(xywh), np.array([r[1] for r in rows], dtype=np.int64),
                    np.array([r[2] for r in rows], dtype=np.int64), np.array([r[3] for r in rows], dtype=bool),
                    areas, [r[5] for r in rows])


def _image_annotation(image: dict[str, Any], columns: _Columns, rows: np.ndarray) -> ImageAnnotation:
    objects = rows[~columns.crowd[rows]]
    crowds = rows[columns.crowd[rows]]
    return ImageAnnotation(
        image_path=image["path"],
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
