"""The training and evaluation transform: the model's resize and normalisation, optional horizontal flip."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

# The module rather than its names: frcnn.preprocess reads images through this package, so it
# may be part-way through its own import when this module loads.
from .. import preprocess as model_input
from ..config import PreprocessConfig
from .dataset import Target


@dataclass(frozen=True)
class DetectionTransform:
    """The model's preprocessing of one image (``preprocess``, ``frcnn.preprocess``'s rules:
    the resize factor and rounding, interpolation, normalisation by mean / std), then a
    horizontal flip with probability ``flip_prob`` (draws from ``generator``, or the global
    generator when None, which DataLoader workers seed per worker).

    (3, H, W) uint8 image -> (3, h, w) float32, normalised. Boxes and ignore boxes follow the
    image (each axis scaled by the resized over the original side) and are clipped to it; the
    target gains ``scale`` (the resize factor) and ``flipped``.
    """

    preprocess: PreprocessConfig
    flip_prob: float = 0.0
    generator: torch.Generator | None = None

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        size = model_input.resized_size(height, width, self.preprocess)
        flipped = self.flip_prob > 0 and bool(torch.rand((), generator=self.generator) < self.flip_prob)

        def flip(x: Tensor) -> Tensor:
            return F.horizontal_flip(x) if flipped else x

        boxes = {key: F.clamp_bounding_boxes(flip(F.resize(tv_tensors.BoundingBoxes(
                    target[key], format="XYXY", canvas_size=(height, width)), list(size)))).as_subclass(Tensor)
                 for key in ("boxes", "ignore_boxes")}
        pixels = F.to_dtype(image, torch.float32, scale=True)
        image = flip(model_input.resize_normalized(pixels, size, self.preprocess))
        scale = model_input.resize_factor(height, width, self.preprocess)
        return image, {**target, **boxes, "scale": scale, "flipped": flipped}
