"""Box operations on (x1, y1, x2, y2) corners.

Two pixel conventions are supported through ``plus_one``:

* continuous (``plus_one=False``, torchvision / detectron2): width = x2 - x1;
* legacy (``plus_one=True``, Caffe Faster R-CNN): boxes hold inclusive pixel indices,
  width = x2 - x1 + 1.

Every op is right in float16 and bfloat16: it computes in float32 (areas overflow float16 past
65,504 px², centres near 1,000 px have half-pixel steps) and rounds once. Areas, overlaps and
``box_codes`` stay in float32 for such boxes, as torchvision's ``box_area`` and ``box_iou`` do;
boxes, sizes and deltas come back in their input's dtype.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Decoded widths and heights are clamped at exp(this) times the reference's size, so a wild
# dw/dh prediction early in training cannot overflow exp().
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _upcast(tensor: Tensor) -> Tensor:
    """float16 and bfloat16 as float32; other dtypes as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _sizes(boxes: Tensor, plus_one: bool) -> tuple[Tensor, Tensor]:
    """Widths and heights (...) of boxes (..., 4) in the boxes' own dtype."""
    offset = 1.0 if plus_one else 0.0
    return boxes[..., 2] - boxes[..., 0] + offset, boxes[..., 3] - boxes[..., 1] + offset


def box_size(boxes: Tensor, plus_one: bool = False) -> tuple[Tensor, Tensor]:
    """Widths and heights of boxes (..., 4): two tensors (...) in the boxes' dtype."""
    widths, heights = _sizes(_upcast(boxes), plus_one)
    return widths.to(boxes.dtype), heights.to(boxes.dtype)


def box_area(boxes: Tensor, plus_one: bool = False) -> Tensor:
    """Areas of boxes (..., 4) -> (...); float32 for float16 / bfloat16 boxes."""
    widths, heights = _sizes(_upcast(boxes), plus_one)
    return widths * heights


def _intersection(boxes1: Tensor, boxes2: Tensor, plus_one: bool) -> Tensor:
    """Pairwise intersection areas (..., N, M) of boxes1 (..., N, 4) and boxes2 (..., M, 4)."""
    offset = 1.0 if plus_one else 0.0
    a = boxes1[..., :, None, :]
    b = boxes2[..., None, :, :]
    widths = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]) + offset).clamp(min=0)
    heights = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]) + offset).clamp(min=0)
    return widths * heights


def box_iou(boxes1: Tensor, boxes2: Tensor, plus_one: bool = False) -> Tensor:
    """Pairwise IoU of boxes1 (..., N, 4) and boxes2 (..., M, 4) -> (..., N, M), intersection
    over union; float32 for float16 / bfloat16 boxes.

    Leading dimensions broadcast, so (B, N, 4) against (B, M, 4) gives one (N, M) matrix per
    image. Continuous boxes give torchvision's ``box_iou`` (NaN for two empty boxes, 0 / 0).
    """
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    inter = _intersection(boxes1, boxes2, plus_one)
    union = box_area(boxes1, plus_one)[..., :, None] + box_area(boxes2, plus_one)[..., None, :] - inter
    return inter / union


def box_ioa(boxes1: Tensor, boxes2: Tensor, plus_one: bool = False) -> Tensor:
    """Pairwise IoA of boxes1 (..., N, 4) and boxes2 (..., M, 4) -> (..., N, M): the
    intersection over the area of the box of ``boxes1`` (mmdetection's "iof"), 0 where the boxes
    do not meet; float32 for float16 / bfloat16 boxes. Leading dimensions broadcast."""
    boxes1, boxes2 = _upcast(boxes1), _upcast(boxes2)
    inter = _intersection(boxes1, boxes2, plus_one)
    return torch.where(inter > 0, inter / box_area(boxes1, plus_one)[..., :, None], 0.0)


def _centers_and_sizes(boxes: Tensor, plus_one: bool) -> tuple[Tensor, Tensor]:
    """Centres (..., 2) and sizes (..., 2) of boxes (..., 4): x1 + w / 2 and w, y likewise."""
    sizes = boxes[..., 2:] - boxes[..., :2]
    if plus_one:
        sizes = sizes + 1.0
    return boxes[..., :2] + 0.5 * sizes, sizes


def box_codes(boxes: Tensor, plus_one: bool = False) -> tuple[Tensor, Tensor]:
    """Codes (cx, cy, log w, log h) and scales (w, h, 1, 1) of boxes (..., 4): two (..., 4).

    A regression delta is (target code - reference code) / reference scale, so a box's code can
    be computed once and gathered for every reference it is matched to. Float32 for float16 /
    bfloat16 boxes, so that the differences keep their precision.
    """
    boxes = _upcast(boxes)
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
    In the promoted dtype of the two.
    """
    deltas = encode_codes(box_codes(target, plus_one)[0], *box_codes(reference, plus_one), weights)
    return deltas.to(torch.result_type(reference, target))


def decode_boxes(
    deltas: Tensor,
    reference: Tensor,
    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0),
    plus_one: bool = False,
) -> Tensor:
    """Boxes (..., 4) obtained by applying deltas (..., 4) to reference boxes (..., 4).

    The inverse of ``encode_boxes``; dw and dh are clamped at log(1000 / 16). In the promoted
    dtype of the two.
    """
    dtype = torch.result_type(deltas, reference)
    deltas, reference = _upcast(deltas), _upcast(reference)
    reference_centers, reference_sizes = _centers_and_sizes(reference, plus_one)
    if weights != (1.0, 1.0, 1.0, 1.0):
        deltas = deltas / deltas.new_tensor(weights)
    centers = deltas[..., :2] * reference_sizes + reference_centers
    sizes = torch.exp(deltas[..., 2:].clamp(max=BBOX_XFORM_CLIP)) * reference_sizes
    top_left = centers - 0.5 * sizes
    bottom_right = top_left + sizes
    if plus_one:
        bottom_right = bottom_right - 1.0
    return torch.cat((top_left, bottom_right), dim=-1).to(dtype)


def clip_boxes(boxes: Tensor, image_sizes: Tensor, plus_one: bool = False) -> Tensor:
    """Clip boxes (B, N, 4) to per-image sizes (B, 2) given as (height, width), in the boxes'
    dtype.

    Legacy boxes are clipped to pixel indices [0, size - 1], continuous ones to [0, size].
    """
    dtype = boxes.dtype
    boxes, image_sizes = _upcast(boxes), _upcast(image_sizes)
    offset = 1.0 if plus_one else 0.0
    heights = (image_sizes[:, 0] - offset)[:, None]
    widths = (image_sizes[:, 1] - offset)[:, None]
    zero = torch.zeros_like(widths)
    x1 = boxes[..., 0].clamp(min=zero, max=widths)
    y1 = boxes[..., 1].clamp(min=zero, max=heights)
    x2 = boxes[..., 2].clamp(min=zero, max=widths)
    y2 = boxes[..., 3].clamp(min=zero, max=heights)
    return torch.stack((x1, y1, x2, y2), dim=-1).to(dtype)
