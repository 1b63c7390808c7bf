"""The best IoU any anchor shape could reach with each gt, given where the anchors are centred.

Anchors of a level with stride s sit at centres c + s * k. Whatever the shapes, a gt whose centre
is (dx, dy) from the nearest anchor centre can reach no more than

    max over a in {w - 2dx, w + 2dx}, b in {h - 2dy, h + 2dy} of IoU(gt w x h, anchor a x b offset by (dx, dy)),

because along each axis the intersection is linear in the anchor's side between those two break
points, so for a fixed other side the IoU (a ratio of linear functions) is monotone there and the
optimum sits on a break point. The border rule is not applied, so this is an upper bound on the
IoU and, above ``positive_overlap``, on the coverage any anchor set of those centres gives.
"""
from __future__ import annotations

import torch
from torch import Tensor


def axis_offsets(centres: Tensor, origins: Tensor, stride: float) -> Tensor:
    """Distance (M,) from each centre (M,) to the nearest of origins (C,) + stride * k."""
    phase = torch.remainder(centres[:, None] - origins[None, :], stride)
    return torch.minimum(phase, stride - phase).amin(dim=1)


def best_possible_iou(boxes: Tensor, strides: tuple[int, ...], origins: list[Tensor]) -> Tensor:
    """Each box's (M, 4) highest IoU over every anchor shape at every level's centres (M,).

    ``origins[l]`` (C, 2) are level l's distinct base-anchor centres (x, y); the level's anchors
    sit at those plus ``strides[l]`` * (i, j).
    """
    boxes = boxes.double()
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    best = torch.zeros(len(boxes), dtype=torch.float64)
    for stride, origin in zip(strides, origins):
        origin = origin.double()
        dx = axis_offsets(centre_x, origin[:, 0], float(stride))
        dy = axis_offsets(centre_y, origin[:, 1], float(stride))
        best = torch.maximum(best, _offset_iou_bound(widths, heights, dx, dy))
    return best


def _offset_iou_bound(widths: Tensor, heights: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """The best IoU (M,) of a w x h box with any anchor whose centre is (dx, dy) away."""
    sides_x = torch.stack(((widths - 2 * dx).clamp(min=0), widths + 2 * dx), dim=1)   # (M, 2)
    sides_y = torch.stack(((heights - 2 * dy).clamp(min=0), heights + 2 * dy), dim=1)
    overlap_x = _overlap(widths[:, None], sides_x, dx[:, None])[:, :, None]          # (M, 2, 1)
    overlap_y = _overlap(heights[:, None], sides_y, dy[:, None])[:, None, :]         # (M, 1, 2)
    inter = overlap_x * overlap_y
    union = (widths * heights)[:, None, None] + sides_x[:, :, None] * sides_y[:, None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)
    return iou.flatten(1).amax(dim=1)


def _overlap(side: Tensor, anchor_side: Tensor, offset: Tensor) -> Tensor:
    """1-D overlap of [-side/2, side/2] with [offset - anchor_side/2, offset + anchor_side/2]."""
    return (torch.minimum(side / 2, offset + anchor_side / 2)
            - torch.maximum(-side / 2, offset - anchor_side / 2)).clamp(min=0)


def level_origins(bases: list[Tensor]) -> list[Tensor]:
    """The distinct centres (C, 2) of each level's base anchors (A, 4)."""
    return [torch.unique(torch.stack(((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2), dim=1), dim=0)
            for b in bases]
