"""A detection dataset over ImageAnnotation records: decodes images and yields (image, target)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .annotations import DatasetError, ImageAnnotation, Problem, dataset_error
from .images import read_rgb

Target = dict[str, Any]
Transform = Callable[[Tensor, Target], tuple[Tensor, Target]]


@dataclass(frozen=True, eq=False)
class DetectionDataset(torch.utils.data.Dataset):
    """Images with their annotations; item i is ``(image, target)``.

    image: (3, H, W) uint8, or whatever ``transform`` makes of it. target: ``boxes`` (n, 4)
    float32, ``labels`` (n,) int64 in 1..C, ``difficult`` (n,) bool, ``ignore_boxes`` (m, 4)
    float32, ``ignore_labels`` (m,) int64, ``image_id`` and ``orig_size`` (h, w).

    ``source_format`` is the layout it was read from, and says how results files name images and
    classes: "voc" and "yolo" by image id (the file stem), class name and 1-based pixel boxes;
    "coco" by the annotation file's ids (``category_ids[label - 1]``). ``problems`` are the bad
    data the reader dropped (``data.on_bad`` / ``data.unknown_classes`` "skip").
    """

    annotations: tuple[ImageAnnotation, ...]
    class_names: tuple[str, ...]
    source_format: Literal["voc", "coco", "yolo"]
    category_ids: tuple[int, ...] | None = None
    transform: Transform | None = None
    problems: tuple[Problem, ...] = ()

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

    def with_transform(self, transform: Transform | None) -> DetectionDataset:
        """The same images and annotations, transformed by ``transform``."""
        return replace(self, transform=transform)

    def aspect_ratios(self) -> np.ndarray:
        """Width / height of every image (N,), from the annotations (no decoding)."""
        return np.array([a.width / a.height for a in self.annotations], dtype=np.float64)


def read_image(annotation: ImageAnnotation) -> Tensor:
    """Decode the annotation's image as (3, H, W) uint8 RGB; DatasetError naming the file if it is
    missing, unreadable, or of another size than annotated."""
    path = annotation.image_path
    image = torch.from_numpy(read_rgb(path)).permute(2, 0, 1)
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


def finished_dataset(annotations: Sequence[ImageAnnotation], class_names: Sequence[str],
                     source_format: Literal["voc", "coco", "yolo"], source: str | Path,
                     problems: Sequence[Problem], category_ids: Sequence[int] | None = None) -> DetectionDataset:
    """A reader's dataset; DatasetError naming ``source`` if no image is left."""
    if not annotations:
        why = f" ({len(problems)} problems dropped data; the first: {problems[0]})" if problems else ""
        raise DatasetError(f"{source}: no usable images in this split{why}")
    return DetectionDataset(tuple(annotations), tuple(class_names), source_format,
                            None if category_ids is None else tuple(category_ids), problems=tuple(problems))
