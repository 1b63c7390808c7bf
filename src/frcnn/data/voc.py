"""Pascal VOC: the VOCdevkit folder layout, its XML annotations and its 1-based pixel boxes.

VOC writes boxes as 1-based inclusive pixel indices (xmin, ymin, xmax, ymax); internally they are
(xmin - 1, ymin - 1, xmax, ymax). ``voc_to_internal`` and ``internal_to_voc`` are the only places
that convert.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .annotations import (
    DatasetError,
    ImageAnnotation,
    Problem,
    ProblemLog,
    ReadOptions,
    check_boxes,
    dataset_error,
    plain_annotation,
)
from .dataset import DetectionDataset, finished_dataset
from .images import IMAGE_SUFFIXES, checked_image_size
from .textfiles import text_lines

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
_VOC_OFFSET = np.array([1.0, 1.0, 0.0, 0.0])
# The last word of a line of VOC's classification lists ("ID FLAG"): present, absent, difficult.
_LIST_FLAGS = ("1", "-1", "0")
_LAYOUTS = ("a VOCdevkit folder holding one year (VOC2007/Annotations/, JPEGImages/, ImageSets/Main/) or a year "
            "folder itself (Annotations/, JPEGImages/, ImageSets/Main/, as CVAT exports)")


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
    """One annotation XML: the image's file name and size (None where the file gives none or 0),
    and its objects."""

    filename: str | None
    width: int | None
    height: int | None
    objects: tuple[VocObject, ...]


def parse_voc_xml(path: Path) -> VocFile:
    """Read a VOC annotation XML; DatasetError naming the file (and line or object) if it is bad."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError as error:
        raise dataset_error(path, "annotation file is missing") from error
    except ET.ParseError as error:
        raise dataset_error(path, f"malformed XML: {error}", line=error.position[0]) from error
    except OSError as error:
        raise dataset_error(path, f"cannot read the annotation file: {error}") from error
    sizes = [_number(root, f"size/{key}", path, None, int) if root.findtext(f"size/{key}") else None
             for key in ("width", "height")]
    if any(size is not None and size < 0 for size in sizes) or sizes.count(0) == 1:
        raise dataset_error(path, f"image size {sizes[0]}x{sizes[1]} (width x height) is not positive")
    width, height = (None, None) if None in sizes or 0 in sizes else sizes
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
    filename = (root.findtext("filename") or "").strip() or None
    return VocFile(filename, width, height, tuple(objects))


def _number(node: ET.Element, tag: str, path: Path, item: str | None, kind: type) -> int | float:
    text = node.findtext(tag)
    if text is None:
        raise dataset_error(path, f"has no <{tag}>", item)
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError as error:
        raise dataset_error(path, f"<{tag}> is not a number: {text!r}", item) from error
    except OverflowError as error:  # int(float("inf"))
        raise dataset_error(path, f"<{tag}> is not a finite number: {text!r}", item) from error


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
        what = "does not exist" if not root.exists() else f"not a VOC folder: no Annotations/; expected {_LAYOUTS}"
        raise dataset_error(root, what)
    names = ", ".join(p.name for p in years)
    raise dataset_error(root, f"holds several VOC years ({names}); name one, e.g. voc:{years[0]}")


def annotation_files(year_dir: Path) -> dict[str, Path]:
    """Every XML under Annotations/, sub-folders included (CVAT keeps an image's folders), by its
    path relative to Annotations/ without the suffix ("IMG 0001", "site_a/IMG 0001"), and also by
    its bare stem where no other file has that stem."""
    folder = year_dir / "Annotations"
    paths = sorted(folder.rglob("*.xml"))
    files = {path.relative_to(folder).with_suffix("").as_posix(): path for path in paths}
    stems = Counter(path.stem for path in paths)
    for path in paths:
        if stems[path.stem] == 1:
            files.setdefault(path.stem, path)
    return files


def split_line_id(line: str, annotation_ids: Container[str]) -> str:
    """The image id of a (stripped) line of a split file.

    A line is one id, spaces included (CVAT writes "IMG 0001"). VOC's classification lists write
    "ID FLAG" lines, FLAG 1, -1 or 0: a line of two or more words whose last word is such a flag
    is read so, unless the whole line is itself an id in ``annotation_ids``."""
    words = line.rsplit(maxsplit=1)
    if len(words) == 2 and words[1] in _LIST_FLAGS and line not in annotation_ids:
        return words[0]
    return line


def split_ids(year_dir: Path, split: str, annotation_ids: Container[str] = ()) -> list[str]:
    """Image ids listed in ImageSets/Main/<split>.txt (``split_line_id``; text as editors write
    it, ``text_lines``); DatasetError if missing (naming the splits there are) or empty."""
    folder = year_dir / "ImageSets" / "Main"
    path = folder / f"{split}.txt"
    if not path.is_file():
        there = sorted(p.stem for p in folder.glob("*.txt") if "_" not in p.stem) if folder.is_dir() else []
        hint = (f"this folder has {', '.join(there)}; choose one with --split or --set data.train_split=NAME"
                if there else "write it with the image ids (file stems) of the split, one a line")
        raise dataset_error(path, f"no split {split!r}: the split file is missing; {hint}")
    try:
        ids = [split_line_id(line, annotation_ids) for line in text_lines(path)]
    except (OSError, UnicodeDecodeError) as error:
        raise dataset_error(path, f"cannot read the split file: {error}") from error
    if not ids:
        raise dataset_error(path, f"split {split!r} is empty")
    return ids


def found_class_names(year_dir: Path) -> tuple[str, ...]:
    """Sorted class names used anywhere in Annotations/ (the same for every split); files that
    cannot be read are left out (the split that holds one reports it)."""
    return _names_in(list(_parse_all(annotation_files(year_dir)).values()))


def _parse_all(files: dict[str, Path]) -> dict[Path, VocFile | DatasetError]:
    """Every file of ``annotation_files`` by path, parsed, or the error that parsing raised."""
    parsed: dict[Path, VocFile | DatasetError] = {}
    for path in sorted(set(files.values())):
        try:
            parsed[path] = parse_voc_xml(path)
        except DatasetError as error:
            parsed[path] = error
    return parsed


def _names_in(files: Sequence[VocFile | DatasetError]) -> tuple[str, ...]:
    return tuple(sorted({obj.name for file in files if isinstance(file, VocFile) for obj in file.objects}))


def load_voc(root: str | Path, split: str, options: ReadOptions = ReadOptions()) -> DetectionDataset:
    """The VOC split ``split`` of ``root`` (a VOCdevkit folder or a year folder).

    Class names are ``options.class_names``, or (None) the sorted names found in Annotations/.
    An id's annotation is Annotations/<id>.xml, sub-folders included (``annotation_files``). Its
    image is JPEGImages/<id>.jpg, else the file the XML's <filename> names there (a path relative
    to JPEGImages/), else JPEGImages/<id> with another image suffix; its displayed size must match
    the XML's (taken from the header where the XML has none). Difficult objects are kept and
    flagged. Bad files, boxes and class names go to ``options``' policies (``ReadOptions``).
    """
    year_dir = voc_year_dir(root)
    files = annotation_files(year_dir)
    ids = split_ids(year_dir, split, files)
    parsed = _parse_all(files) if options.class_names is None else {}
    names = options.class_names or _names_in(list(parsed.values()))
    if not names:
        raise dataset_error(year_dir / "Annotations", "holds no objects to take class names from; "
                                                      "set data.class_names")
    log = ProblemLog(options)
    labels = {name: label for label, name in enumerate(names, start=1)}
    listing = _image_listing(year_dir / "JPEGImages")
    annotations = []
    for image_id in ids:
        path = files.get(image_id, year_dir / "Annotations" / f"{image_id}.xml")
        annotation = _annotation(year_dir, image_id, path, parsed.get(path), labels, log, listing)
        if annotation is not None:
            annotations.append(annotation)
    log.warn(f"voc:{year_dir} {split}")
    return finished_dataset(annotations, names, "voc", f"{year_dir} split {split!r}", log.problems)


def _image_listing(image_dir: Path) -> set[str]:
    """The files under ``image_dir``, sub-folders included, as relative POSIX paths."""
    return {(Path(folder) / name).relative_to(image_dir).as_posix()
            for folder, _, names in os.walk(image_dir) for name in names}


def _image_file(image_dir: Path, image_id: str, filename: str | None, listing: set[str]) -> Path:
    candidates = [f"{image_id}.jpg", filename] + [image_id + suffix for suffix in IMAGE_SUFFIXES]
    found = next((name for name in candidates if name and name in listing), f"{image_id}.jpg")
    return image_dir / found


def _annotation(year_dir: Path, image_id: str, path: Path, parsed: VocFile | DatasetError | None,
                labels: dict[str, int], log: ProblemLog, listing: set[str]) -> ImageAnnotation | None:
    """The annotation of ``image_id`` read from ``path`` (or ``parsed`` already), or None if it
    was dropped (``log`` says why)."""
    try:
        parsed = parse_voc_xml(path) if parsed is None else parsed
        if isinstance(parsed, DatasetError):
            raise parsed
    except DatasetError as error:
        log.bad(error.problem, dropped="image")
        return None
    image_path = _image_file(year_dir / "JPEGImages", image_id, parsed.filename, listing)
    annotated = None if parsed.width is None else (parsed.width, parsed.height)
    size = checked_image_size(image_path, log, annotated, path)
    if size is None:
        return None
    width, height = size
    known = []
    for index, obj in enumerate(parsed.objects):
        if obj.name in labels:
            known.append(index)
        else:
            log.unknown_class(Problem(str(path), f"unknown class {obj.name!r} (known: {', '.join(labels)})",
                                      item=f"object {index}"))
    objects = [parsed.objects[i] for i in known]
    boxes = voc_to_internal([obj.box for obj in objects])
    keep = check_boxes(boxes, np.tile([height, width], (len(objects), 1)), log,
                       lambda i, message: Problem(str(path), message, item=f"object {known[i]} ({objects[i].name!r})"))
    kept = [obj for obj, k in zip(objects, keep) if k]
    return plain_annotation(image_path, image_id, height, width, boxes[keep],
                            [labels[obj.name] for obj in kept], [obj.difficult for obj in kept])
