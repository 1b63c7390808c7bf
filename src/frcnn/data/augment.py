"""Training augmentation: ``data.augment``'s steps as a torchvision.transforms.v2 pipeline on a
float image with its boxes, before the model's own resize (``DetectionTransform``).

Every draw comes from torch's global generator (torchvision's v2 transforms and ``MultiScale``
alike; none uses Python's ``random``), which the trainer seeds per item from (seed, iteration,
slot), so an item is a function of its seed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torchvision.transforms.v2 as v2
from torch import Tensor
from torchvision import tv_tensors

from ..config import PreprocessConfig
from ..config.augment import MULTI_SCALE, multi_scale, recipe_steps, step_name, v2_transform
from .dataset import Target

# A box (or crowd region) left by the steps with a side under this many pixels of the augmented
# image is dropped, with its label and difficult flag (torchvision's SanitizeBoundingBoxes rule).
MIN_BOX_SIDE = 1.0


def per_box_fields(sample: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The tensors that SanitizeBoundingBoxes drops rows of with their boxes: labels, difficult
    flags and the crowd-region flags of the sample ``Augmentation`` makes."""
    return sample["labels"], sample["difficult"], sample["ignored"]


@dataclass(frozen=True, eq=False)
class Augmentation:
    """What ``data.augment`` does to a training image before the model's resize.

    ``steps``: a v2 pipeline ending with ClampBoundingBoxes and SanitizeBoundingBoxes
    (``MIN_BOX_SIDE``), or None. Boxes and crowd regions go through it as one set of boxes, so
    they follow the image alike (a crop keeps those whose centre it holds, and chooses itself
    with both). ``scales``: (low, high), the model's ``min_size`` times a factor drawn uniformly
    in it (rounded to whole pixels) for this image; ``max_size`` still caps. None: unchanged.
    """

    steps: v2.Compose | None
    scales: tuple[float, float] | None

    def __call__(self, pixels: Tensor, target: Target, preprocess: PreprocessConfig
                 ) -> tuple[Tensor, Target, PreprocessConfig]:
        """(3, H, W) float image in [0, 1] and its target -> (3, H', W') augmented image, its
        target (``orig_size`` the augmented size) and the preprocessing to resize it with."""
        if self.steps is not None:
            pixels, target = self.apply_steps(pixels, target)
        if self.scales is not None:
            preprocess = replace(preprocess, min_size=drawn_min_size(preprocess.min_size, self.scales))
        return pixels, target, preprocess

    def apply_steps(self, pixels: Tensor, target: Target) -> tuple[Tensor, Target]:
        """The steps on the image, its boxes (n) and crowd regions (m) with their per-box fields."""
        count, crowd = len(target["boxes"]), len(target["ignore_boxes"])
        boxes = torch.cat([target["boxes"], target["ignore_boxes"]]).reshape(-1, 4)
        sample = {
            "image": tv_tensors.Image(pixels),
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(pixels.shape[-2:])),
            "labels": torch.cat([target["labels"], target["ignore_labels"]]),
            "difficult": torch.cat([target["difficult"], torch.zeros(crowd, dtype=torch.bool)]),
            "ignored": torch.cat([torch.zeros(count, dtype=torch.bool), torch.ones(crowd, dtype=torch.bool)]),
        }
        out = self.steps(sample)
        image = out["image"].as_subclass(Tensor)
        boxes, ignored, kept = out["boxes"].as_subclass(Tensor), out["ignored"], ~out["ignored"]
        return image, {**target, "boxes": boxes[kept], "labels": out["labels"][kept],
                       "difficult": out["difficult"][kept], "ignore_boxes": boxes[ignored],
                       "ignore_labels": out["labels"][ignored], "orig_size": tuple(image.shape[-2:])}


def drawn_min_size(min_size: int, scales: tuple[float, float]) -> int:
    """An integer drawn uniformly in [round(min_size * low), round(min_size * high)] (at least 1),
    from torch's global generator."""
    low, high = (max(1, round(min_size * factor)) for factor in scales)
    return int(torch.randint(low, high + 1, ()))


def augmentation(augment: str | tuple, preprocess: PreprocessConfig) -> Augmentation | None:
    """The ``Augmentation`` of a checked ``data.augment`` (None when it has no steps: "none",
    "flip"). Fills (RandomZoomOut's canvas, a rotation's corners) default to the model's mean
    pixel, which the normalisation makes 0."""
    steps = recipe_steps(augment)
    if not steps:
        return None
    transforms = [v2_transform(step, preprocess.mean) for step in steps if step_name(step) != MULTI_SCALE]
    pipeline = v2.Compose([*transforms, v2.ClampBoundingBoxes(),
                           v2.SanitizeBoundingBoxes(min_size=MIN_BOX_SIDE, labels_getter=per_box_fields)])
    return Augmentation(pipeline if transforms else None, multi_scale(steps))
