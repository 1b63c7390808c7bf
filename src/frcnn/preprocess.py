"""The model's own preprocessing of plain images, as tensor ops: ``PreprocessConfig``'s rules.

``as_image_tensor`` turns a PIL image, a file path, an HWC uint8 array or a CHW tensor into a
(3, H, W) float tensor in [0, 1]; ``preprocess_images`` normalises, resizes and pads a list of them
into the batch the detector takes; ``box_scale`` gives the factors that take boxes in the resized
image back to the original pixels.

Each rule has one home here, shared by training (``data.transforms``), ``FasterRCNN.predict`` and
the ONNX export, and written with tensor ops so that a trace keeps sizes as graph values: the
resized size (``resized_sizes``, ``resized_size`` for one image), the resize itself
(``resize_normalized``), the padded size (``padded_size``) and the box scale (``box_scale``).
"""
from __future__ import annotations

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


def resize_factors(sizes: Tensor, config: PreprocessConfig) -> Tensor:
    """sizes (..., 2) rows (height, width) -> the resize factor (...,) float64 of each:
    s = min(min_size / shorter side, max_size / longer side), in float64 as Python computes it."""
    sizes = sizes.to(torch.float64)
    return torch.minimum(config.min_size / sizes.amin(dim=-1), config.max_size / sizes.amax(dim=-1))


def resized_sizes(sizes: Tensor, config: PreprocessConfig) -> Tensor:
    """sizes (..., 2) rows (height, width) -> (..., 2) int64, the sizes after the resize: each side
    times the factor, then rounded ("round", half to even) or floored ("floor", as
    ``F.interpolate`` with a scale factor)."""
    scaled = sizes.to(torch.float64) * resize_factors(sizes, config)[..., None]
    return (torch.floor(scaled) if config.resize_rounding == "floor" else torch.round(scaled)).long()


def resize_factor(height: int, width: int, config: PreprocessConfig) -> float:
    """``resize_factors`` of one size."""
    return float(resize_factors(torch.tensor([height, width]), config))


def resized_size(height: int, width: int, config: PreprocessConfig) -> tuple[int, int]:
    """``resized_sizes`` of one size, as (h, w)."""
    new_height, new_width = resized_sizes(torch.tensor([height, width]), config).tolist()
    return new_height, new_width


def padded_size(sizes: Tensor, multiple: int) -> Tensor:
    """sizes (B, 2) rows (height, width) -> (2,) int64: the largest height and width, each rounded
    up to a multiple of ``multiple``, the size of the zero-padded batch."""
    return torch.div(sizes.amax(dim=0) + multiple - 1, multiple, rounding_mode="floor") * multiple


def resize_matrix(in_size: Tensor, out_size: Tensor, padded: Tensor, antialias: bool) -> Tensor:
    """(padded, in_size) float32 weights of PyTorch's bilinear resize (align_corners False) from
    ``in_size`` to ``out_size`` samples along one axis (0-dim tensors); rows past ``out_size`` are
    zero (the padding).

    Antialiased: output i is centred at c = scale (i + 0.5), scale = in / out; input a weighs
    max(0, 1 - |(a + 0.5 - c) / support|) within [floor(c - support + 0.5), floor(c + support + 0.5)),
    support = max(scale, 1), normalised to sum 1. Plain: the two neighbours of
    max(scale (i + 0.5) - 0.5, 0), the upper clamped to the last sample.
    """
    scale = in_size.float() / out_size.float()
    rows = torch.arange(padded, dtype=torch.float32, device=in_size.device)[:, None]
    columns = torch.arange(in_size, dtype=torch.float32, device=in_size.device)[None, :]
    if antialias:
        support = torch.clamp(scale, min=1.0)
        center = scale * (rows + 0.5)
        low = torch.clamp(torch.floor(center - support + 0.5), min=0.0)
        high = torch.minimum(torch.floor(center + support + 0.5), in_size.float())
        weights = torch.clamp(1.0 - ((columns - center + 0.5) / support).abs(), min=0.0)
        weights = weights * ((columns >= low) & (columns < high))
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-30)
    else:
        source = torch.clamp(scale * (rows + 0.5) - 0.5, min=0.0)
        low = torch.floor(source)
        fraction = source - low
        high = torch.minimum(low + 1, in_size.float() - 1)
        weights = (1.0 - fraction) * (columns == low) + fraction * (columns == high)
    return weights * (rows < out_size.float())


def resize_normalized(image: Tensor, size: Sequence[int] | Tensor, config: PreprocessConfig,
                      padded: Sequence[int] | Tensor | None = None) -> Tensor:
    """(..., 3, H, W) float in [0, 1] -> normalised by mean / std, then resized to ``size`` (h, w)
    with ``config.interpolation`` (align_corners False, ``config.antialias``) and zero-padded at
    the bottom and right to ``padded`` (h', w'; default none). Normalising first is torchvision's
    order; both are affine per channel, so the order changes rounding only.

    Eagerly ``F.interpolate`` resizes; a trace (the ONNX export, which has no antialiased resize at
    its opsets) takes the resize and the padding as one ``resize_matrix`` product per axis, equal
    within 2e-6, bilinear only.
    """
    mean = torch.tensor(config.mean, dtype=image.dtype, device=image.device)[:, None, None]
    std = torch.tensor(config.std, dtype=image.dtype, device=image.device)[:, None, None]
    normalized = (image - mean) / std
    if torch.jit.is_tracing():
        size = torch.as_tensor(size)
        padded = size if padded is None else torch.as_tensor(padded)
        in_size = torch._shape_as_tensor(image)[-2:]
        rows = resize_matrix(in_size[0], size[0], padded[0], config.antialias)
        columns = resize_matrix(in_size[1], size[1], padded[1], config.antialias)
        return torch.matmul(torch.matmul(rows, normalized), columns.t())
    height, width = (int(s) for s in size)
    batched = normalized.reshape(-1, *normalized.shape[-3:])
    resized = F.interpolate(batched, size=(height, width), mode=config.interpolation, align_corners=False,
                            antialias=config.antialias).view(*image.shape[:-2], height, width)
    if padded is None:
        return resized
    return F.pad(resized, (0, int(padded[1]) - width, 0, int(padded[0]) - height))


def preprocess_images(images: Sequence[Tensor] | Tensor, config: PreprocessConfig) -> PreprocessedBatch:
    """(3, H_i, W_i) float images in [0, 1] (one device), or a (B, 3, H, W) tensor of them (one
    size: the form a trace takes) -> the detector's batch: each normalised and resized by
    ``config``'s rules (``resize_normalized``), zero-padded to a common size divisible by
    ``config.size_divisible`` (``padded_size``). Images of one size are resized in one call."""
    if not isinstance(images, Tensor):
        if not images:
            raise ValueError("no images to preprocess")
        if len({tuple(image.shape) for image in images}) == 1:
            images = torch.stack(list(images))
    if isinstance(images, Tensor):
        sizes = torch._shape_as_tensor(images)[2:][None].expand(images.shape[0], 2)
    else:
        sizes = torch.tensor([tuple(image.shape[-2:]) for image in images])
    new_sizes = resized_sizes(sizes, config)
    padded = padded_size(new_sizes, config.size_divisible)
    if isinstance(images, Tensor):
        batch = resize_normalized(images, new_sizes[0], config, padded)
    else:
        batch = torch.stack([resize_normalized(image, size, config, padded.tolist())
                             for image, size in zip(images, new_sizes.tolist())])
    im_info = torch.cat((new_sizes.to(torch.float32), resize_factors(sizes, config).to(torch.float32)[:, None]), dim=1)
    return PreprocessedBatch(batch, im_info.to(batch.device), sizes.to(batch.device))


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
