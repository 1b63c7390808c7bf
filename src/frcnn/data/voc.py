"""Pascal VOC: the VOCdevkit folder layout, its XML annotations and its 1-based pixel boxes.

VOC writes boxes as 1-based inclusive pixel indices (xmin, ymin, xmax, ymax); internally they are
(xmin - 1, ymin - 1, xmax, ymax). ``voc_to_internal`` and ``internal_to_voc`` are the only places
that convert.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .annotations import ImageAnnotation, box_areas, check_boxes, dataset_error
from .dataset import DetectionDataset, check_images_exist

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
_VOC_OFFSET = np.array([1.0, 1.0, 0.0, 0.0])


def voc_to_internal(boxes: np.ndarray) -> np.ndarray:
    """VOC 1-based inclusive (xmin, ymin, xmax, ymax) (n, 4) -> internal corners (n, 4) float64."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - _VOC_OFFSET


def internal_to_voc(boxes: np.ndarray) -> np.ndarray:
    """Internal corners (n, 4) -> VOC 1-based inclusive (xmin, ymin, xmax, ymax) (n, 4) float64."""
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + _VOC_OFFSET


@dataclass(frozen=True)
class VocObject:
    """One <object>: its class name, VOC box (xmin, ymin, xmax, ymax) and flags."""

    name: str
    box: tuple[float, float, float, float]
    difficult: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class VocFile:
    """One annotation XML: the image size and its objects."""

    width: int
    height: int
    objects: tuple[VocObject, ...]


def parse_voc_xml(path: Path) -> VocFile:
    """Read a VOC annotation XML; DatasetError naming the file (and object) if it is bad."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as error:
        raise dataset_error(path, "annotation file is missing") from error
    except (ET.ParseError, OSError) as error:
        raise dataset_error(path, f"malformed XML: {error}") from error
    width = _number(root, "size/width", path, None, int)
    height = _number(root, "size/height", path, None, int)
    if width <= 0 or height <= 0:
        raise dataset_error(path, f"image size {width}x{height} (width x height) is not positive")
    objects = []
    for index, node in enumerate(root.findall("object")):
        item = f"object {index}"
        name = (node.findtext("name") or "").strip()
        if not name:
            raise dataset_error(path, "has no <name>", item)
        item = f"object {index} ({name!r})"
        box = tuple(_number(node, f"bndbox/{key}", path, item, float)
                    for key in ("xmin", "ymin", "xmax", "ymax"))
        objects.append(VocObject(name, box, _flag(node, "difficult", path, item),
                                 _flag(node, "truncated", path, item)))
    return VocFile(width, height, tuple(objects))


def _number(node: ET.Element, tag: str, path: Path, item: str | None, kind: type) -> int | float:
    text = node.findtext(tag)
    if text is None:
        raise dataset_error(path, f"has no <{tag}>", item)
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError as error:
        raise dataset_error(path, f"<{tag}> is not a number: {text!r}", item) from error


def _flag(node: ET.Element, tag: str, path: Path, item: str) -> bool:
    """An optional 0/1 tag; absent or empty means 0."""
    return bool((node.findtext(tag) or "").strip()) and bool(_number(node, tag, path, item, int))


def write_voc_xml(path: Path, image_name: str, width: int, height: int,
                  objects: Sequence[VocObject]) -> None:
    """Write a VOC annotation XML (boxes already in VOC coordinates)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = image_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.name
        ET.SubElement(node, "truncated").text = str(int(obj.truncated))
        ET.SubElement(node, "difficult").text = str(int(obj.difficult))
        bndbox = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box):
            ET.SubElement(bndbox, tag).text = f"{value:g}"
    ET.ElementTree(root).write(path, encoding="utf-8")


def voc_year_dir(root: str | Path) -> Path:
    """The folder holding Annotations/: ROOT itself, or its single VOC* subfolder."""
    root = Path(root).expanduser()
    if (root / "Annotations").is_dir():
        return root
    years = sorted(p for p in root.glob("VOC*") if (p / "Annotations").is_dir())
    if len(years) == 1:
        return years[0]
    if not years:
        raise dataset_error(root, "not a VOC folder: no Annotations/ in it or in a VOC*/ subfolder")
    names = ", ".join(p.name for p in years)
    raise dataset_error(root, f"holds several VOC years ({names}); name one, e.g. voc:{years[0]}")


def split_ids(year_dir: Path, split: str) -> list[str]:
    """Image ids listed in ImageSets/Main/<split>.txt; DatasetError if missing or empty."""
    path = year_dir / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise dataset_error(path, f"no split {split!r}: the split file is missing")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise dataset_error(path, f"split {split!r} is empty")
    return ids


def found_class_names(year_dir: Path) -> tuple[str, ...]:
    """Sorted class names used anywhere in Annotations/ (the same for every split)."""
    return tuple(sorted({obj.name for path in sorted((year_dir / "Annotations").glob("*.xml"))
                         for obj in parse_voc_xml(path).objects}))


def load_voc(
    root: str | Path,
    split: str,
    class_names: Sequence[str] | Literal["found"] = VOC_CLASSES,
    drop_degenerate: bool = False,
) -> DetectionDataset:
    """The VOC split ``split`` of ``root`` (a VOCdevkit folder or a year folder).

    ``class_names``: label i + 1 is class_names[i]; "found" takes the sorted names in
    Annotations/. Difficult objects are kept and flagged. Any bad file, box or class name raises
    DatasetError naming the file and object.
    """
    year_dir = voc_year_dir(root)
    ids = split_ids(year_dir, split)
    names = found_class_names(year_dir) if class_names == "found" else tuple(class_names)
    labels = {name: label for label, name in enumerate(names, start=1)}
    annotations = tuple(_annotation(year_dir, image_id, labels, drop_degenerate) for image_id in ids)
    check_images_exist(annotations)
    return DetectionDataset(annotations, names, "voc")


def _annotation(year_dir: Path, image_id: str, labels: dict[str, int],
                drop_degenerate: bool) -> ImageAnnotation:
    path = year_dir / "Annotations" / f"{image_id}.xml"
    parsed = parse_voc_xml(path)
    objects = parsed.objects
    for index, obj in enumerate(objects):
        if obj.name not in labels:
            raise dataset_error(path, f"unknown class {obj.name!r} (known: {', '.join(labels)})",
                                f"object {index}")
    boxes = voc_to_internal([obj.box for obj in objects])
    sizes = np.tile([parsed.height, parsed.width], (len(objects), 1))
    keep = check_boxes(boxes, sizes, lambda i: (path, f"object {i} ({objects[i].name!r})"),
                       drop_degenerate)
    boxes = boxes[keep]
    kept = [obj for obj, k in zip(objects, keep) if k]
    return ImageAnnotation(
        image_path=year_dir / "JPEGImages" / f"{image_id}.jpg",
        image_id=image_id,
        height=parsed.height,
        width=parsed.width,
        boxes=boxes,
        labels=np.array([labels[obj.name] for obj in kept], dtype=np.int64),
        difficult=np.array([obj.difficult for obj in kept], dtype=bool),
        areas=box_areas(boxes),
        ignore_boxes=np.zeros((0, 4), dtype=np.float64),
        ignore_labels=np.zeros(0, dtype=np.int64),
    )
