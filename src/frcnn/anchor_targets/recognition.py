"""Recognising grids in plain anchor tensors, so that the anchors of torchvision's, detectron2's
and mmdetection's generators (one feature level, or FPN levels concatenated level-major) take
the grid path with identical outputs.

A tensor is taken for grids only when the grids rebuild it exactly and every anchor's own area
equals its base shape's (so that the grid path computes the very IoUs the box path would);
anything else (shuffled anchors, one anchor moved) takes the box path.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import native
from ..anchors import AnchorGrid, grid_anchors
from .box_matching import box_areas

# Where to look for the first shifted copy of a level's first anchor: at most this many base shapes
# (csrc/recognition.cpp has the same bound).
_MAX_BASE_SHAPES = 1024
_MAX_LEVELS = 16


def _leading_true(mask: Tensor) -> int:
    """How many elements of a 1-D bool tensor are True before the first False."""
    falses = (~mask).nonzero()
    return int(falses[0]) if falses.numel() else mask.shape[0]


def _cell_shift(boxes: Tensor) -> tuple[int, float, bool] | None:
    """(A, stride, along x) from the first shifted copy of boxes[0] among the next boxes: A base
    shapes per cell, the cell stride, and whether the next cell is the next column (else the
    next row, for a level one column wide). None if there is no such copy."""
    delta = boxes[1:_MAX_BASE_SHAPES + 2] - boxes[0]
    along_x = (delta[:, 0] == delta[:, 2]) & (delta[:, 1] == 0) & (delta[:, 3] == 0) & (delta[:, 0] > 0)
    along_y = (delta[:, 1] == delta[:, 3]) & (delta[:, 0] == 0) & (delta[:, 2] == 0) & (delta[:, 1] > 0)
    hits = (along_x | along_y).nonzero()
    if hits.numel() == 0:
        return None
    index = int(hits[0])
    is_x = bool(along_x[index])
    return index + 1, float(delta[index, 0 if is_x else 1]), is_x


def _runs(firsts: Tensor, origin: Tensor, stride: int, axis: int) -> int:
    """How many leading cells ``firsts`` (M, 4) are ``origin`` shifted by 0, 1, ... strides along
    ``axis`` (0: x, 1: y), computed as ``AnchorGrid`` shifts them."""
    steps = torch.arange(firsts.shape[0], dtype=firsts.dtype) * stride
    expected = origin.expand_as(firsts).clone()
    expected[:, axis] += steps
    expected[:, axis + 2] += steps
    return _leading_true((firsts == expected).all(dim=1))


def _level_shape(boxes: Tensor) -> tuple[int, int, int, int] | None:
    """(A, stride, H, W) of the grid that the leading anchors of boxes (M, 4) suggest, or None."""
    kernels = native.kernels_for(boxes)
    if kernels is not None and boxes.dtype in (torch.float32, torch.float64):
        shape = tuple(kernels.level_shape(boxes))
        return shape if shape[0] > 0 else None
    shift = _cell_shift(boxes)
    if shift is None:
        return None
    num_base, stride, along_x = shift
    if stride != round(stride):
        return None
    stride = int(stride)
    first = boxes[0]
    width = _runs(boxes[::num_base], first, stride, 0) if along_x else 1
    height = _runs(boxes[::num_base * width], first, stride, 1)
    return num_base, stride, height, width


def _next_level(boxes: Tensor) -> AnchorGrid | None:
    """The grid that rebuilds the longest prefix of boxes (M, 4) it can, or None."""
    shape = _level_shape(boxes)
    if shape is None:
        return None
    num_base, stride, height, width = shape
    grid = grid_anchors(boxes[:num_base], height, width, stride, boxes.device, boxes.dtype)
    size = grid.num_anchors
    # The one check that decides, on either path: the grid's own anchors equal the given ones.
    return grid if size <= boxes.shape[0] and torch.equal(grid.boxes, boxes[:size]) else None


def _same_areas(anchors: Tensor, grid: AnchorGrid, offset: float) -> bool:
    """Whether every anchor of a grid's (M, 4) span of ``anchors`` has its base shape's area, both
    in ``anchors``' dtype by the "+offset" convention."""
    base = grid.base.to(anchors.dtype)
    kernels = native.kernels_for(anchors)
    if kernels is not None and anchors.dtype in (torch.float32, torch.float64):
        return kernels.same_areas(anchors, base, offset)
    return torch.equal(box_areas(anchors, offset).view(-1, grid.num_base),
                       box_areas(base, offset).expand(grid.height * grid.width, -1))


def recognise_grids(anchors: Tensor, dtype: torch.dtype, offset: float) -> list[AnchorGrid] | None:
    """Grids (level-major) whose anchors are exactly ``anchors`` (N, 4) and whose base-shape areas
    in ``dtype`` (by the "+offset" convention) are exactly each anchor's own, or None.

    CPU tensors only (the checks read values on the host), never under ``torch.compile``. On the
    CPU compiled kernels find the cell structure and compare the areas (same answers as the
    PyTorch ops here).
    """
    if anchors.device.type != "cpu" or torch.compiler.is_compiling() or anchors.shape[0] == 0:
        return None
    grids: list[AnchorGrid] = []
    start = 0
    while start < anchors.shape[0]:
        grid = _next_level(anchors[start:])
        if grid is None or len(grids) == _MAX_LEVELS:
            return None
        grids.append(grid)
        start += grid.num_anchors
    spans = anchors.to(dtype).split([grid.num_anchors for grid in grids])
    return grids if all(_same_areas(span, grid, offset) for span, grid in zip(spans, grids)) else None
