"""YOLO (ultralytics) layout: a data.yaml, image folders or lists, and one label file per image.

A label file holds one ``class cx cy w h`` line per object, the centre and size normalised by the
image's width and height; the box becomes the corners (cx - w / 2, cy - h / 2, cx + w / 2,
cy + h / 2) times (width, height). An image without a label file, or with an empty one, has no
objects. Image sizes come from the file headers.

The layouts read: a data.yaml (ultralytics; Roboflow's "../train/images" entries resolve as
ultralytics resolves them), a folder with images/<split>/ and labels/<split>/, and Label Studio's
export, a folder with images/ and labels/ holding one unsplit set (read as split "train"); the
folders name their classes in classes.txt. Text files may be as editors write them
(``textfiles``); a data.yaml's tabs, which YAML refuses, are read as spaces.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .annotations import ImageAnnotation, Problem, ProblemLog, ReadOptions, dataset_error, names_of, plain_annotation
from .dataset import DetectionDataset, finished_dataset
from .images import IMAGE_SUFFIXES, checked_image_size
from .textfiles import read_text, text_lines

# Normalised coordinates may leave [0, 1] by this much (rounding); they are clipped to it.
YOLO_SLACK = 1e-3
SPLITS = ("train", "val", "test")
DATA_YAML = "data.yaml"
CLASSES_TXT = "classes.txt"
# The split an unsplit folder (Label Studio's export: images/ and labels/ without split folders) is read as.
UNSPLIT = "train"
LAYOUTS = (f"a {DATA_YAML} (ultralytics, Roboflow), or a folder with images/<split>/ and labels/<split>/ "
           f"(or, as Label Studio exports, images/ and labels/ without split folders) and a {CLASSES_TXT}")
# YAML refuses tabs outside quotes; a data.yaml that does not parse is read again with them as spaces.
_TAB_WIDTH = 4


def load_yolo(source: str | Path, split: str, options: ReadOptions = ReadOptions()) -> DetectionDataset:
    """The split ``split`` ("train", "val" or "test") of a YOLO dataset.

    ``source`` is a data.yaml (``path``: the root, relative to the yaml's folder, default that
    folder; ``train`` / ``val`` / ``test``: each a folder of images, a .txt list of image paths, or a
    list of those, relative to the root (``entry_path``); ``names``: a list or an {index: name}
    mapping, or ``nc`` alone), or a folder with a data.yaml, or a folder with images/<split>/ and
    labels/<split>/ (or images/ and labels/ alone: one set, split "train") and a classes.txt
    beside them. ``options.class_names`` picks classes by name; bad lines, files and images go
    to ``options``' policies (``ReadOptions``), named by file and line.
    """
    source = Path(source).expanduser()
    if source.is_dir() and not (source / DATA_YAML).is_file():
        spec_file, root, entries, names = _folder_layout(source, split, options)
    else:
        spec_file = source / DATA_YAML if source.is_dir() else source
        root, entries, names = _data_yaml(spec_file, split)
    images = _image_paths(spec_file, root, entries, split)
    log = ProblemLog(options)
    class_names = options.class_names or names
    label_of = {index: class_names.index(name) + 1 for index, name in enumerate(names) if name in class_names}
    ids = _image_ids(images, root)
    annotations = []
    for image, image_id in zip(images, ids):
        annotation = _annotation(image, image_id, names, label_of, log)
        if annotation is not None:
            annotations.append(annotation)
    log.warn(f"yolo:{source} {split}")
    return finished_dataset(annotations, class_names, "yolo", f"{spec_file} split {split!r}", log.problems)


def label_path(image: Path) -> Path:
    """The label file of an image: the last ``images`` folder of its path replaced by ``labels``
    (beside the image where there is none), suffix .txt."""
    parts = list(image.parts)
    if "images" in parts[:-1]:
        index = len(parts) - 2 - parts[:-1][::-1].index("images")
        parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def _folder_layout(root: Path, split: str, options: ReadOptions
                   ) -> tuple[Path, Path, list[str], tuple[str, ...]]:
    """yolo:ROOT without a data.yaml: images/<split> (or images/ itself, unsplit), names from
    classes.txt or data.class_names."""
    images = root / "images"
    if not images.is_dir():
        raise dataset_error(root, f"not a YOLO folder: no {DATA_YAML} and no images/; expected {LAYOUTS}")
    split_folders = [name for name in SPLITS if (images / name).is_dir()]
    if split_folders:
        if split not in split_folders:
            raise dataset_error(root, f"no split {split!r}: this YOLO folder has "
                                      + ", ".join(f"images/{name}/" for name in split_folders))
        entry = f"images/{split}"
    elif any(path.suffix.lower() in IMAGE_SUFFIXES for path in images.iterdir()):
        if split != UNSPLIT:
            raise dataset_error(root, f"no split {split!r}: images/ holds one unsplit set (as Label Studio exports), "
                                      f"read as split {UNSPLIT!r}; evaluate on another dataset (data.val) or move "
                                      "the images into images/train/ and images/val/ (labels likewise)")
        entry = "images"
    else:
        raise dataset_error(images, f"holds neither split folders ({', '.join(SPLITS)}) nor images; expected {LAYOUTS}")
    classes = root / CLASSES_TXT
    if classes.is_file():
        names = names_of(classes)
    elif options.class_names is not None:
        names = options.class_names
    else:
        raise dataset_error(root, f"has neither {DATA_YAML} nor {CLASSES_TXT} to name the classes; "
                                  "write one, or set data.class_names")
    return root / entry, root, [entry], names


def _data_yaml(path: Path, split: str) -> tuple[Path, list[str], tuple[str, ...]]:
    """(root, the split's entries, class names) of a data.yaml."""
    content = _read_yaml(path)
    root = Path(str(content.get("path") or "")).expanduser()
    root = root if root.is_absolute() else path.parent / root
    names = _names(content, path)
    entries = content.get(split)
    if split not in SPLITS or not entries:
        there = [name for name in SPLITS if content.get(name)]
        raise dataset_error(path, f"has no {split!r} split (it has {', '.join(there) or 'none'})")
    entries = entries if isinstance(entries, list) else [entries]
    if not all(isinstance(entry, str) and entry for entry in entries):
        raise dataset_error(path, f"'{split}' must be a path or a list of paths, got {content.get(split)!r}")
    return root, entries, names


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        content = _parse_yaml(read_text(path))
    except FileNotFoundError as error:
        raise dataset_error(path, "file is missing") from error
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise dataset_error(path, f"malformed YAML: {problem}",
                            line=None if mark is None else mark.line + 1) from error
    except (OSError, UnicodeDecodeError) as error:
        raise dataset_error(path, f"cannot read the file: {error}") from error
    if not isinstance(content, dict):
        raise dataset_error(path, "is not a YOLO data.yaml (a mapping with path, train, val, names)")
    return content


def _parse_yaml(text: str) -> Any:
    """YAML text parsed; where it does not parse and holds tabs (which YAML allows only inside
    quotes, and editors write for indentation or after a colon), parsed again with each tab as
    spaces to the next multiple of _TAB_WIDTH columns; the first error if that fails too."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        if "\t" in text:
            try:
                return yaml.safe_load(text.expandtabs(_TAB_WIDTH))
            except yaml.YAMLError:
                pass
        raise


def _names(content: dict[str, Any], path: Path) -> tuple[str, ...]:
    """``names`` as a list or an {index: name} mapping with indices 0..n-1, or ``nc`` alone."""
    names, count = content.get("names"), content.get("nc")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise dataset_error(path, f"'nc' must be a positive integer, got {count!r}")
    if names is None:
        if count is None:
            raise dataset_error(path, "has neither 'names' nor 'nc'")
        return tuple(f"class_{i}" for i in range(count))
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise dataset_error(
                path, f"'names' keys must be the indices 0..{len(names) - 1}, got {sorted(names, key=str)}"
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
        raise dataset_error(path, f"'names' must be a list of names or an {{index: name}} mapping, got {names!r}")
    names = tuple(str(n) for n in names)
    if count is not None and count != len(names):
        raise dataset_error(path, f"'nc' is {count} but 'names' lists {len(names)} classes")
    if len(set(names)) != len(names):
        raise dataset_error(path, "'names' lists a class twice")
    return names


def entry_path(entry: str, root: Path) -> Path:
    """A split entry of a data.yaml as ultralytics resolves it: relative to ``root`` (unless
    absolute); where that does not exist and the entry starts with "../", relative to ``root``
    without that "../" (Roboflow writes "../train/images" in the data.yaml beside train/)."""
    path = Path(entry).expanduser()
    if path.is_absolute():
        return path
    if not (root / path).exists() and entry.startswith("../"):
        return root / entry[3:]
    return root / path


def _image_paths(spec_file: Path, root: Path, entries: list[str], split: str) -> list[Path]:
    """The images of a split's entries (``entry_path``), in order: a folder's images (recursively,
    sorted), a .txt file's lines (relative to its folder), or an image file."""
    images: list[Path] = []
    for entry in entries:
        path = entry_path(entry, root)
        if path.is_dir():
            images += sorted(Path(folder) / name for folder, _, files in os.walk(path) for name in files
                             if Path(name).suffix.lower() in IMAGE_SUFFIXES)
        elif path.suffix == ".txt" and path.is_file():
            images += [p if p.is_absolute() else path.parent / p for p in map(Path, _list_lines(path))]
        elif path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            images.append(path)
        elif not path.exists():
            raise dataset_error(spec_file, f"split {split!r}: {entry!r} is {path}, which does not exist (entries are "
                                           f"relative to {root}: the 'path' key, else the yaml's folder)")
        else:
            raise dataset_error(spec_file, f"split {split!r}: {path} is not a folder, an image list (.txt) or an image")
    if not images:
        raise dataset_error(spec_file, f"split {split!r} has no images (in {', '.join(entries)})")
    return [Path(os.path.normpath(p)) for p in images]


def _list_lines(path: Path) -> list[str]:
    """The lines of an image list; DatasetError naming it if it cannot be read."""
    try:
        return text_lines(path)
    except (OSError, UnicodeDecodeError) as error:
        raise dataset_error(path, f"cannot read the image list: {error}") from error


def _image_ids(images: list[Path], root: Path) -> list[str]:
    """File stems, or paths relative to the root without suffix where two images share a stem."""
    stems = [p.stem for p in images]
    if len(set(stems)) == len(set(images)):
        return stems
    return [Path(os.path.relpath(p, root)).with_suffix("").as_posix() for p in images]


def _annotation(image: Path, image_id: str, names: tuple[str, ...], label_of: dict[int, int],
                log: ProblemLog) -> ImageAnnotation | None:
    """The image's annotation, or None if it was dropped (``log`` says why)."""
    size = checked_image_size(image, log)
    if size is None:
        return None
    width, height = size
    path = label_path(image)
    try:
        text = read_text(path) if path.is_file() else ""
    except (OSError, UnicodeDecodeError) as error:
        log.bad(Problem(str(path), f"cannot read the label file: {error}"), dropped="image")
        return None
    boxes, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parsed = _label_line(line, names, Problem(str(path), "", line=number), label_of, log)
        if parsed is not None:
            label, corners = parsed
            labels.append(label)
            boxes.append(corners * [width, height, width, height])
    return plain_annotation(image, image_id, height, width, np.array(boxes).reshape(-1, 4), labels)


def _label_line(line: str, names: tuple[str, ...], where: Problem, label_of: dict[int, int],
                log: ProblemLog) -> tuple[int, np.ndarray] | None:
    """(label, normalised corners (4,) clipped to [0, 1]) of a ``class cx cy w h`` line, or None
    when the object is left out (``log`` says why)."""
    def bad(message: str) -> None:
        log.bad(Problem(where.file, message, where.line))

    fields = line.split()
    if len(fields) != 5:
        bad(f"{len(fields)} fields, expected 5 (class cx cy w h): {line.strip()!r}")
        return None
    try:
        values = [float(field) for field in fields]
    except ValueError:
        bad(f"not a number in {line.strip()!r}")
        return None
    index, (cx, cy, w, h) = values[0], values[1:]
    if not all(math.isfinite(v) for v in values):
        bad(f"non-finite value in {line.strip()!r}")
        return None
    if index != int(index) or not 0 <= index < len(names):
        bad(f"class index {fields[0]} is not one of 0..{len(names) - 1} ({len(names)} names)")
        return None
    if int(index) not in label_of:
        log.unknown_class(Problem(where.file, f"class {names[int(index)]!r} (index {int(index)}) is not one of "
                                              "data.class_names", where.line))
        return None
    corners = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    if w <= 0 or h <= 0:
        bad(f"box with width {w:g} and height {h:g} has x2 <= x1 or y2 <= y1")
        return None
    if (corners < -YOLO_SLACK).any() or (corners > 1 + YOLO_SLACK).any():
        bad(f"box corners {np.round(corners, 6).tolist()} (normalised x1, y1, x2, y2) leave [0, 1]")
        return None
    return label_of[int(index)], np.clip(corners, 0.0, 1.0)
