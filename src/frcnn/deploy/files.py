"""Detection on image files: finding them (files, folders, glob patterns), running a detector over
them in batches, and the COCO results format of what it found (``frcnn detect``)."""
from __future__ import annotations

import glob
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ..data.images import IMAGE_SUFFIXES, read_rgb
from ..preprocess import as_image_tensor

# A detector as ``detect_files`` calls it: images (3, H, W) float in [0, 1] -> one dict per image
# with ``boxes`` (n, 4) in its pixels, ``scores`` (n,), ``labels`` (n,) (``FasterRCNN.predict``).
Predict = Callable[[list[Tensor]], list[dict[str, Any]]]


def find_images(specs: Sequence[str]) -> list[Path]:
    """Image files named by ``specs``, in order, each once: a file as it is, a folder's image files
    (by suffix, ``IMAGE_SUFFIXES``, sorted, not recursive), a glob pattern's matches (sorted;
    ``**`` recurses). A ValueError names a spec that is missing or matches no image."""
    found: dict[Path, None] = {}
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(spec):
            matches = [Path(p) for p in sorted(glob.glob(spec, recursive=True))
                       if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES]
        else:
            raise ValueError(f"{spec}: no such file or folder")
        if not matches:
            raise ValueError(f"{spec}: no image files there (looked for {', '.join(IMAGE_SUFFIXES)})")
        found.update(dict.fromkeys(matches))
    return list(found)


def load_rgb(path: Path) -> Tensor:
    """An image file as (3, H, W) float32 RGB in [0, 1]; DatasetError naming the file if it cannot
    be read."""
    return as_image_tensor(read_rgb(path))


@dataclass(frozen=True)
class FileDetections:
    """One image file's detections: ``boxes`` (n, 4) x1, y1, x2, y2 in its pixels, ``scores``
    (n,), ``labels`` (n,) in 1..C, best first; ``size`` (height, width)."""

    path: Path
    size: tuple[int, int]
    boxes: Tensor
    scores: Tensor
    labels: Tensor


def detect_files(predict: Predict, paths: Sequence[Path], batch_size: int, score_threshold: float = 0.0,
                 progress_bar: bool = False) -> Iterator[FileDetections]:
    """Run ``predict`` on the image files in batches of ``batch_size``, in order, keeping the
    detections scoring at least ``score_threshold``."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    bar = tqdm(total=len(paths), desc="detect", unit="image", disable=not progress_bar, file=sys.stderr,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    with bar, torch.no_grad():
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            images = [load_rgb(path) for path in chunk]
            for path, image, found in zip(chunk, images, predict(images)):
                keep = found["scores"] >= score_threshold
                yield FileDetections(path, tuple(image.shape[-2:]), found["boxes"][keep].cpu(),
                                     found["scores"][keep].cpu(), found["labels"][keep].cpu())
            bar.update(len(chunk))


def coco_results(detections: Sequence[FileDetections], class_names: Sequence[str]) -> tuple[list, dict]:
    """The COCO results file of ``detections`` (a list of {image_id, category_id, bbox [x, y, w, h],
    score}) and the COCO image and category lists it refers to: image ids 1.. in order with
    ``file_name``, ``height`` and ``width``; category id = label (1..C) with the class name."""
    results, images = [], []
    for image_id, found in enumerate(detections, start=1):
        images.append({"id": image_id, "file_name": str(found.path), "height": found.size[0], "width": found.size[1]})
        for box, score, label in zip(found.boxes.tolist(), found.scores.tolist(), found.labels.tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": image_id, "category_id": int(label), "score": round(float(score), 5),
                            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]})
    categories = [{"id": label, "name": name} for label, name in enumerate(class_names, start=1)]
    return results, {"images": images, "categories": categories}
