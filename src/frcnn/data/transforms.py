"""The image transform: resize by the shorter side, optional horizontal flip, normalisation."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from .dataset import Target

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor that makes the shorter side ``min_size``, unless the longer side would then
    exceed ``max_size``, in which case the longer side becomes ``max_size``."""
    return min(min_size / min(height, width), max_size / max(height, width))


@dataclass(frozen=True)
class DetectionTransform:
    """Resize (shorter side ``min_size``, longer at most ``max_size``), flip horizontally with
    probability ``flip_prob`` (draws from ``generator``, or the global generator when None, which
    DataLoader workers seed per worker), convert to float in [0, 1] and normalise by mean/std.

    Boxes and ignore boxes follow the image and are clipped to it; the target gains ``scale``
    (the resize factor) and ``flipped``. The resized sides are rounded by ``size_rounding``
    ("round" or "floor") and resampled with ``interpolation`` (bilinear, bicubic) and ``antialias``
    (the model's ``PreprocessConfig``, docs/model.md).
    """

    min_size: int = 600
    max_size: int = 1000
    flip_prob: float = 0.0
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    generator: torch.Generator | None = None
    size_rounding: str = "round"
    interpolation: str = "bilinear"
    antialias: bool = True

    def __call__(self, image: Tensor, target: Target) -> tuple[Tensor, Target]:
        height, width = image.shape[-2:]
        scale = resize_scale(height, width, self.min_size, self.max_size)
        rounding = math.floor if self.size_rounding == "floor" else round
        size = [int(rounding(height * scale)), int(rounding(width * scale))]
        flipped = self.flip_prob > 0 and bool(torch.rand((), generator=self.generator) < self.flip_prob)

        def geometric(x: Tensor) -> Tensor:
            x = F.resize(x, size, interpolation=F.InterpolationMode[self.interpolation.upper()],
                         antialias=self.antialias)
            return F.horizontal_flip(x) if flipped else x

        boxes = {key: F.clamp_bounding_boxes(geometric(tv_tensors.BoundingBoxes(
                    target[key], format="XYXY", canvas_size=(height, width)))).as_subclass(Tensor)
                 for key in ("boxes", "ignore_boxes")}
        image = F.to_dtype(geometric(image), torch.float32, scale=True)
        image = F.normalize(image, list(self.mean), list(self.std))
        return image, {**target, **boxes, "scale": scale, "flipped": flipped}
