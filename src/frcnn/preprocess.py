"""The model's own preprocessing of plain images, as tensor ops: ``PreprocessConfig``'s rules.

``as_image_tensor`` turns a PIL image, a file path, an HWC uint8 array or a CHW tensor into a
(3, H, W) float tensor in [0, 1]; ``preprocess_images`` normalises, resizes and pads a list of them
into the batch the detector takes; ``box_scale`` gives the factors that take boxes in the resized
image back to the original pixels.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from .config import PreprocessConfig
from .data.images import read_rgb, to_rgb


class PreprocessedBatch(NamedTuple):
    """images (B, 3, H, W) normalised and zero-padded at the bottom and right; im_info (B, 3) rows
    (height, width, scale) of each image's resized region; orig_sizes (B, 2) int64 rows (height,
    width) of the images given."""

    images: Tensor
    im_info: Tensor
    orig_sizes: Tensor


def as_image_tensor(image: Any) -> Tensor:
    """One image -> (3, H, W) float32 in [0, 1] (on the tensor's device for a tensor).

    Accepted: a file path (str or Path), a PIL image (converted to RGB), an (H, W, 3) uint8 numpy
    array, a (3, H, W) tensor, uint8 (divided by 255) or floating point (taken as in [0, 1]).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image {path} does not exist")
        return as_image_tensor(read_rgb(path))
    if isinstance(image, Image.Image):
        return as_image_tensor(to_rgb(image))
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a numpy image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        return as_image_tensor(torch.from_numpy(image.copy()).permute(2, 0, 1))
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must be (3, H, W), got {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            return image.float() / 255
        if not image.is_floating_point():
            raise ValueError(f"a tensor image must be uint8 or floating point in [0, 1], got {image.dtype}")
        return image.float()
    raise ValueError(f"an image must be a path, a PIL image, a numpy array or a tensor, got {type(image).__name__}")


def resize_factor(height: int, width: int, config: PreprocessConfig) -> float:
    """s = min(min_size / shorter side, max_size / longer side)."""
    return min(config.min_size / min(height, width), config.max_size / max(height, width))


def resized_size(height: int, width: int, config: PreprocessConfig) -> tuple[int, int]:
    """(h, w) of an image of (height, width) after the resize: each side times the factor, then
    rounded ("round", half to even) or floored ("floor", as ``F.interpolate`` with a scale factor)."""
    scale = resize_factor(height, width, config)
    rounding = math.floor if config.resize_rounding == "floor" else round
    return int(rounding(height * scale)), int(rounding(width * scale))


def resize_normalized(image: Tensor, size: Sequence[int], config: PreprocessConfig) -> Tensor:
    """(3, H, W) float in [0, 1] -> normalised by mean / std, then resized to ``size`` (h, w)
    with ``config.interpolation`` (align_corners False, ``config.antialias``). Normalising first
    is torchvision's order; both are affine per channel, so the order changes rounding only."""
    mean = torch.tensor(config.mean, dtype=image.dtype, device=image.device)[:, None, None]
    std = torch.tensor(config.std, dtype=image.dtype, device=image.device)[:, None, None]
    normalized = (image - mean) / std
    return F.interpolate(normalized[None], size=tuple(int(s) for s in size), mode=config.interpolation,
                         align_corners=False, antialias=config.antialias)[0]


def padded_size(sizes: Sequence[Sequence[int]], multiple: int) -> tuple[int, int]:
    """The batch's largest height and width, each rounded up to a multiple of ``multiple``."""
    return (multiple * math.ceil(max(s[0] for s in sizes) / multiple),
            multiple * math.ceil(max(s[1] for s in sizes) / multiple))


def preprocess_images(images: Sequence[Tensor], config: PreprocessConfig) -> PreprocessedBatch:
    """(3, H_i, W_i) float images in [0, 1] (one device) -> the detector's batch: each normalised
    and resized by ``config``'s rules, zero-padded to a common size divisible by
    ``config.size_divisible``."""
    if not images:
        raise ValueError("no images to preprocess")
    device = images[0].device
    originals = [tuple(image.shape[-2:]) for image in images]
    sizes = [resized_size(h, w, config) for h, w in originals]
    height, width = padded_size(sizes, config.size_divisible)
    batch = torch.zeros(len(images), 3, height, width, device=device)
    for slot, image, size in zip(batch, images, sizes):
        slot[:, :size[0], :size[1]] = resize_normalized(image, size, config)
    im_info = torch.tensor([(h, w, resize_factor(*original, config)) for (h, w), original in zip(sizes, originals)],
                           dtype=torch.float32, device=device)
    return PreprocessedBatch(batch, im_info, torch.tensor(originals, dtype=torch.int64, device=device))


def box_scale(im_info: Tensor, orig_sizes: Tensor | None, config: PreprocessConfig) -> Tensor:
    """(B, 4) factors per coordinate (x1, y1, x2, y2) from the resized image to the original one:
    "scale", 1 / the resize factor; "per_axis", original / resized width for x and height for y
    (in float32, as torchvision's ``resize_boxes``), which needs ``orig_sizes`` (B, 2)."""
    if config.box_rescale == "scale":
        return (1.0 / im_info[:, 2:3]).expand(-1, 4)
    if orig_sizes is None:
        raise ValueError("orig_sizes (B, 2) is needed: the model's preprocess.box_rescale is 'per_axis'")
    ratios = orig_sizes.to(torch.float32) / im_info[:, :2].to(torch.float32)
    return ratios[:, [1, 0, 1, 0]].to(im_info.dtype)
