"""Anchor geometry for the layer: anchors as base shapes over rows and columns, their axis
overlaps with boxes, and the chunk plan that keeps the intermediates within the working-set budget.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .. import native
from ..anchors import AnchorGrid
from ..boxes import box_codes

Anchors = Tensor | AnchorGrid | Sequence[AnchorGrid]


class Level(NamedTuple):
    """Anchors as base shapes shifted over rows and columns: anchor (a, y, x) spans x[a, x] by y[a, y].

    A grid level has A base shapes over H rows and W columns. Intermediates are laid out
    (B, A, K, H, W), K the boxes.
    """

    y: Tensor     # (A, H, 2) extents (y1, y2)
    x: Tensor     # (A, W, 2) extents (x1, x2)
    area: Tensor  # (A,)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.y.shape[0], self.y.shape[1], self.x.shape[1]


def as_grids(anchors: Anchors) -> list[AnchorGrid] | None:
    """The grids of ``anchors`` (level-major), or None for a plain tensor."""
    if isinstance(anchors, Tensor):
        return None
    return [anchors] if isinstance(anchors, AnchorGrid) else list(anchors)


_levels: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def grid_level(grid: AnchorGrid, dtype: torch.dtype, offset: float) -> Level:
    """The ``Level`` of a grid, extents and areas in ``dtype`` (areas by the "+offset" convention)."""
    base = grid.base.to(dtype)
    area = (base[:, 2] - base[:, 0] + offset) * (base[:, 3] - base[:, 1] + offset)
    return Level(grid.y_intervals().to(dtype).transpose(0, 1), grid.x_intervals().to(dtype).transpose(0, 1), area)


def grid_levels(grids: Sequence[AnchorGrid], dtype: torch.dtype, offset: float) -> list[Level]:
    """One ``grid_level`` per grid, kept with the grid (which is immutable) so that a training
    loop, which passes the same cached grids every step, builds each once."""
    if torch.compiler.is_compiling():
        return [grid_level(grid, dtype, offset) for grid in grids]
    levels = []
    for grid in grids:
        per_grid = _levels.setdefault(grid, {})
        if (dtype, offset) not in per_grid:
            per_grid[(dtype, offset)] = grid_level(grid, dtype, offset)
        levels.append(per_grid[(dtype, offset)])
    return levels


def num_anchors(anchors: Anchors) -> int:
    grids = as_grids(anchors)
    return anchors.shape[0] if grids is None else sum(grid.num_anchors for grid in grids)


def anchor_codes(anchors: Anchors, plus_one: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``box_codes`` of all anchors (N, 4) each; a grid keeps its own."""
    grids = as_grids(anchors)
    if grids is None:
        return box_codes(anchors.to(dtype), plus_one)
    per_level = [grid.codes(plus_one, dtype) for grid in grids]
    if len(per_level) == 1:
        return per_level[0]
    codes, scales = zip(*per_level)
    return torch.cat(codes), torch.cat(scales)


def axis_overlap(extents: Tensor, lo: Tensor, hi: Tensor, offset: float) -> Tensor:
    """Overlap lengths of anchor extents (A, L, 2) with box extents lo, hi (B, K) -> (B, A, K, L)."""
    ends = extents[:, None]  # (A, 1, L, 2)
    box_lo, box_hi = lo[:, None, :, None], hi[:, None, :, None]
    overlap = torch.minimum(ends[..., 1], box_hi) - torch.maximum(ends[..., 0], box_lo)
    # Broadcasting leaves (B, L, K, A) strides; contiguous factors make the kernels' reads and
    # every dense (B, A, K, H, W) product contiguous.
    overlap = overlap.contiguous()
    if offset:
        overlap += offset
    return overlap.clamp_(min=0)


def axis_inside(extents: Tensor, limit: Tensor, border: float) -> Tensor:
    """Whether anchor extents (A, L, 2) lie in [-border, limit + border) per image -> (B, A, 1, L)."""
    ends = extents[None, :, None]  # (1, A, 1, L, 2)
    return (ends[..., 0] >= -border) & (ends[..., 1] < limit[:, None, None, None] + border)


class AxisOverlaps(NamedTuple):
    """Intersections of anchors (a, y, x) with boxes k, which factor as heights[y] * widths[x]."""

    heights: Tensor  # (B, A, K, H), zero for rows outside the image
    widths: Tensor   # (B, A, K, W), zero for columns outside the image and for invalid boxes
    inside: Tensor   # (B, A, H, W), possibly an expanded view


def axis_overlaps(level: Level, boxes: Tensor, valid: Tensor, im_info: Tensor, border: float | None,
                  offset: float) -> AxisOverlaps:
    """Row and column overlaps of a level with boxes (B, K, 4) whose ``valid`` (B, K) rows count;
    the anchors outside the border of each image meet no box. Finite inputs (checked by the
    layer); on the CPU a compiled kernel computes the same values bit for bit."""
    batch, (num_base, height, width) = valid.shape[0], level.shape
    kernels = native.kernels_for(boxes)
    if kernels is not None and boxes.dtype in (torch.float32, torch.float64):
        heights, widths, inside_y, inside_x = kernels.axis_overlaps(level.y, level.x, boxes, valid, im_info, border,
                                                                    offset)
        inside = (valid.new_ones(()).expand(batch, num_base, height, width) if border is None
                  else inside_y[..., None] & inside_x[:, :, None, :])
        return AxisOverlaps(heights, widths, inside)
    heights = axis_overlap(level.y, boxes[..., 1], boxes[..., 3], offset)
    widths = axis_overlap(level.x, boxes[..., 0], boxes[..., 2], offset)
    if border is None:  # every anchor takes part
        return AxisOverlaps(heights, widths.mul_(valid[:, None, :, None]),
                            valid.new_ones(()).expand(batch, num_base, height, width))
    inside_y = axis_inside(level.y, im_info[:, 0], border)
    inside_x = axis_inside(level.x, im_info[:, 1], border)
    return AxisOverlaps(heights.mul_(inside_y), widths.mul_(inside_x & valid[:, None, :, None]),
                        inside_y[:, :, 0, :, None] & inside_x[:, :, 0, None, :])


def sub_level(level: Level, start: int, stop: int) -> Level:
    """Base shapes [start, stop) of a level."""
    return Level(level.y[start:stop], level.x[start:stop], level.area[start:stop])


def iou(inter: Tensor, area_sum: Tensor) -> Tensor:
    """IoU from the intersection and the sum of the two areas.

    The one IoU formula of every path, so that equal IoUs compare equal wherever computed.
    """
    return inter / (area_sum - inter)


def split(total: int, step: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of at most ``step`` covering range(total)."""
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def axis_bytes(level: Level, batch: int, num_boxes: int, element_bytes: int) -> int:
    """Bytes of a level's row and column overlaps (and their inside masks) with the boxes."""
    num_base, height, width = level.shape
    return 2 * batch * num_base * num_boxes * (height + width) * element_bytes


ChunkPlan = list[tuple[tuple[int, int], list[tuple[int, int]]]]


def plan_chunks(level: Level, batch: int, num_boxes: int, element_bytes: int, budget: int) -> ChunkPlan:
    """Base-shape ranges, each with the row ranges whose intermediates fit in ``budget`` bytes."""
    num_base, height, width = level.shape
    if num_base == 0:
        return []
    # About two live (B, a, K, h, W) tensors per element: the ratios, plus the smaller tie codes.
    row_bytes = 2 * batch * num_boxes * width * element_bytes
    shape_bytes = axis_bytes(level, batch, num_boxes, element_bytes) // num_base
    base_step = max(1, min(num_base, budget // max(row_bytes * height, shape_bytes, 1)))
    row_step = height if base_step > 1 else max(1, min(height, budget // max(row_bytes, 1)))
    return [(shapes, split(height, row_step)) for shapes in split(num_base, base_step)]
