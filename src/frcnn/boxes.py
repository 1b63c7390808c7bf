"""Box operations on (x1, y1, x2, y2) corners.

Two pixel conventions are supported through ``plus_one``:

* continuous (``plus_one=False``, torchvision / detectron2): width = x2 - x1;
* legacy (``plus_one=True``, Caffe Faster R-CNN): boxes hold inclusive pixel indices,
  width = x2 - x1 + 1.
"""
from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

# Decoded widths and heights are clamped at exp(this) times the reference's size, so a wild
# dw/dh prediction early in training cannot overflow exp().
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def box_size(boxes: Tensor, plus_one: bool = False) -> tuple[Tensor, Tensor]:
    """Widths and heights of boxes (..., 4): two tensors (...)."""
    offset = 1.0 if plus_one else 0.0
    return boxes[..., 2] - boxes[..., 0] + offset, boxes[..., 3] - boxes[..., 1] + offset


def box_area(boxes: Tensor, plus_one: bool = False) -> Tensor:
    """Areas of boxes (..., 4) -> (...)."""
    widths, heights = box_size(boxes, plus_one)
    return widths * heights


def box_iou(boxes1: Tensor, boxes2: Tensor, plus_one: bool = False) -> Tensor:
    """Pairwise IoU of boxes1 (..., N, 4) and boxes2 (..., M, 4) -> (..., N, M).

    Leading dimensions broadcast, so (B, N, 4) against (B, M, 4) gives one (N, M) matrix per
    image. The continuous 2-D case is torchvision's ``box_iou``.
    """
    if not plus_one and boxes1.dim() == 2 and boxes2.dim() == 2:
        return torchvision.ops.box_iou(boxes1, boxes2)
    offset = 1.0 if plus_one else 0.0
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    widths = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + offset).clamp(min=0)
    heights = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + offset).clamp(min=0)
    inter = widths * heights
    union = box_area(boxes1, plus_one)[..., :, None] + box_area(boxes2, plus_one)[..., None, :] - inter
    return inter / union


def _centers_and_sizes(boxes: Tensor, plus_one: bool) -> tuple[Tensor, Tensor]:
    """Centres (..., 2) and sizes (..., 2) of boxes (..., 4): x1 + w / 2 and w, y likewise."""
    sizes = boxes[..., 2:] - boxes[..., :2]
    if plus_one:
        sizes = sizes + 1.0
    return boxes[..., :2] + 0.5 * sizes, sizes


def box_codes(boxes: Tensor, plus_one: bool = False) -> tuple[Tensor, Tensor]:
    """Codes (cx, cy, log w, log h) and scales (w, h, 1, 1) of boxes (..., 4): two (..., 4).

    A regression delta is (target code - reference code) / reference scale, so a box's code can
    be computed once and gathered for every reference it is matched to.
    """
    centers, sizes = _centers_and_sizes(boxes, plus_one)
    codes = torch.empty(boxes.shape, dtype=sizes.dtype, device=boxes.device)
    scales = torch.ones_like(codes)
    # Written into the halves of one buffer: a cat of (..., 2) halves is a slow interleaving copy.
    codes[..., :2] = centers
    # The log is taken in double precision and rounded once: eager and compiled single-precision
    # logs differ in the last bit.
    codes[..., 2:] = torch.log(sizes.double())
    scales[..., :2] = sizes
    return codes, scales


def encode_codes(
    target_codes: Tensor,
    reference_codes: Tensor,
    reference_scales: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    out: Tensor | None = None,
) -> Tensor:
    """Regression deltas (..., 4) from ``box_codes`` of targets and references (broadcasting),
    written into ``out`` when given (which may be ``target_codes``)."""
    deltas = torch.sub(target_codes, reference_codes, out=out).div_(reference_scales)
    if weights != (1.0, 1.0, 1.0, 1.0):
        deltas.mul_(deltas.new_tensor(weights))
    return deltas


def encode_boxes(
    reference: Tensor,
    target: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    plus_one: bool = False,
) -> Tensor:
    """Regression deltas (..., 4) that move reference boxes (..., 4) onto target boxes (..., 4).

    dx = wx (tx - rx) / rw, dy = wy (ty - ry) / rh, dw = ww (log tw - log rw),
    dh = wh (log th - log rh), with centres x1 + w / 2 and sizes by the chosen pixel convention.
    """
    return encode_codes(box_codes(target, plus_one)[0], *box_codes(reference, plus_one), weights)


def decode_boxes(
    deltas: Tensor,
    reference: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    plus_one: bool = False,
) -> Tensor:
    """Boxes (..., 4) obtained by applying deltas (..., 4) to reference boxes (..., 4).

    The inverse of ``encode_boxes``; dw and dh are clamped at log(1000 / 16).
    """
    reference_centers, reference_sizes = _centers_and_sizes(reference, plus_one)
    if weights != (1.0, 1.0, 1.0, 1.0):
        deltas = deltas / deltas.new_tensor(weights)
    centers = deltas[..., :2] * reference_sizes + reference_centers
    sizes = torch.exp(deltas[..., 2:].clamp(max=BBOX_XFORM_CLIP)) * reference_sizes
    top_left = centers - 0.5 * sizes
    bottom_right = top_left + sizes
    if plus_one:
        bottom_right = bottom_right - 1.0
    return torch.cat((top_left, bottom_right), dim=-1)


def clip_boxes(boxes: Tensor, image_sizes: Tensor, plus_one: bool = False) -> Tensor:
    """Clip boxes (B, N, 4) to per-image sizes (B, 2) given as (height, width).

    Legacy boxes are clipped to pixel indices [0, size - 1], continuous ones to [0, size].
    """
    offset = 1.0 if plus_one else 0.0
    heights = (image_sizes[:, 0] - offset)[:, None]
    widths = (image_sizes[:, 1] - offset)[:, None]
    zero = torch.zeros_like(widths)
    x1 = boxes[..., 0].clamp(min=zero, max=widths)
    y1 = boxes[..., 1].clamp(min=zero, max=heights)
    x2 = boxes[..., 2].clamp(min=zero, max=widths)
    y2 = boxes[..., 3].clamp(min=zero, max=heights)
    return torch.stack((x1, y1, x2, y2), dim=-1)
