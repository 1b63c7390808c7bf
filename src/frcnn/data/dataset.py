"""A detection dataset over ImageAnnotation records: decodes images and yields (image, target)."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch
from torch import Tensor
from PIL import Image

from .annotations import ImageAnnotation, dataset_error

Target = dict[str, Any]
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


@dataclass(frozen=True, eq=False)
class DetectionDataset(torch.utils.data.Dataset):
    """Images with their annotations; item i is ``(image, target)``.

    image: (3, H, W) uint8, or whatever ``transform`` makes of it. target: ``boxes`` (n, 4)
    float32, ``labels`` (n,) int64 in 1..C, ``difficult`` (n,) bool, ``ignore_boxes`` (m, 4)
    float32, ``ignore_labels`` (m,) int64, ``image_id`` and ``orig_size`` (h, w).

    ``source_format`` says how results files name images and classes: "voc" (file stem, class
    name, 1-based pixel boxes) or "coco" (the annotation file's ids; ``category_ids[label - 1]``).
    """

    annotations: tuple[ImageAnnotation, ...]
    class_names: tuple[str, ...]
    source_format: Literal["voc", "coco"]
    category_ids: tuple[int, ...] | None = None
    transform: Transform | None = None

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        annotation = self.annotations[index]
        image = read_image(annotation)
        target = target_of(annotation)
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def with_transform(self, transform: Transform | None) -> "DetectionDataset":
        """The same images and annotations, transformed by ``transform``."""
        return replace(self, transform=transform)

    def aspect_ratios(self) -> np.ndarray:
        """Width / height of every image (N,), from the annotations (no decoding)."""
        return np.array([a.width / a.height for a in self.annotations], dtype=np.float64)


def read_image(annotation: ImageAnnotation) -> Tensor:
    """Decode the annotation's image as (3, H, W) uint8 RGB; DatasetError if missing,
    unreadable, or of another size than annotated."""
    path = annotation.image_path
    try:
        with Image.open(path) as file:
            pixels = np.array(file.convert("RGB"))
    # PIL reports some corrupt files with SyntaxError or ValueError rather than OSError.
    except (OSError, SyntaxError, ValueError) as error:
        raise dataset_error(path, f"cannot read image of {annotation.image_id!r}: {error}") from error
    image = torch.from_numpy(pixels).permute(2, 0, 1)
    height, width = image.shape[-2:]
    if (height, width) != (annotation.height, annotation.width):
        raise dataset_error(path, f"image is {width}x{height} (width x height) but its annotation "
                                  f"says {annotation.width}x{annotation.height}")
    return image


def target_of(annotation: ImageAnnotation) -> Target:
    """The target dict of an annotation, as fresh tensors (the annotation stays untouched)."""
    return {
        "boxes": torch.tensor(annotation.boxes, dtype=torch.float32),
        "labels": torch.tensor(annotation.labels, dtype=torch.int64),
        "difficult": torch.tensor(annotation.difficult, dtype=torch.bool),
        "ignore_boxes": torch.tensor(annotation.ignore_boxes, dtype=torch.float32),
        "ignore_labels": torch.tensor(annotation.ignore_labels, dtype=torch.int64),
        "image_id": annotation.image_id,
        "orig_size": (annotation.height, annotation.width),
    }


def check_images_exist(annotations: Sequence[ImageAnnotation]) -> None:
    """DatasetError naming the first image file that does not exist (one listing per folder)."""
    listings: dict[Path, set[str]] = {}
    for annotation in annotations:
        folder = annotation.image_path.parent
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        if annotation.image_path.name not in listings[folder]:
            raise dataset_error(annotation.image_path, f"image of {annotation.image_id!r} is missing")
