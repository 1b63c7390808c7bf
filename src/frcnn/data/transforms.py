"""The training and evaluation transform: the augmentation (training only), then the model's resize
and normalisation, then an optional horizontal flip."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

# The module rather than its names: frcnn.preprocess reads images through this package, so it
# may be part-way through its own import when this module loads.
from .. import preprocess as model_input
from ..config import DataConfig, PreprocessConfig
from .augment import Augmentation, augmentation
from .dataset import Target

# The recipes whose flip is data.flip_prob's; a list does only what it lists.
FLIPPING_RECIPES = ("flip", "default")


@dataclass(frozen=True)
class DetectionTransform:
    """The model's preprocessing of one image (``preprocess``, ``frcnn.preprocess``'s rules:
    the resize factor and rounding, interpolation, normalisation by mean / std), then a
    horizontal flip with probability ``flip_prob`` (draws from ``generator``, or the global
    generator when None, which DataLoader workers seed per worker). With an ``augment``
    (``frcnn.data.augment``, training only) the image is augmented first, in [0, 1] floats, and
    resized with the preprocessing the augmentation chose (``MultiScale``'s ``min_size``).

    (3, H, W) uint8 image -> (3, h, w) float32, normalised. Boxes and ignore boxes follow the
    image (each axis scaled by the resized over the original side) and are clipped to it; the
    target gains ``scale`` (the resize factor) and ``flipped`` (whether this flip mirrored it;
    a list's own flips are not recorded).
    """

    preprocess: PreprocessConfig
    flip_prob: float = 0.0
    generator: torch.Generator | None = None
    augment: Augmentation | None = None

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        flipped = self.flip_prob > 0 and bool(torch.rand((), generator=self.generator) < self.flip_prob)
        pixels = F.to_dtype(image, torch.float32, scale=True)
        preprocess = self.preprocess
        if self.augment is not None:
            pixels, target, preprocess = self.augment(pixels, target, preprocess)
        height, width = pixels.shape[-2:]
        size = model_input.resized_size(height, width, preprocess)

        def flip(x: Tensor) -> Tensor:
            return F.horizontal_flip(x) if flipped else x

        boxes = {key: F.clamp_bounding_boxes(flip(F.resize(tv_tensors.BoundingBoxes(
                    target[key], format="XYXY", canvas_size=(height, width)), list(size)))).as_subclass(Tensor)
                 for key in ("boxes", "ignore_boxes")}
        image = flip(model_input.resize_normalized(pixels, size, preprocess))
        scale = model_input.resize_factor(height, width, preprocess)
        return image, {**target, **boxes, "scale": scale, "flipped": flipped}


def training_transform(data: DataConfig, preprocess: PreprocessConfig) -> DetectionTransform:
    """The transform of a run's training images: ``data.augment``'s augmentation, the model's
    ``preprocess``, and for the "flip" and "default" recipes the flip with ``data.flip_prob``."""
    flip_prob = data.flip_prob if data.augment in FLIPPING_RECIPES else 0.0
    return DetectionTransform(preprocess, flip_prob, augment=augmentation(data.augment, preprocess))
