"""Matching anchors that sit on grids with gt boxes, in two sweeps over the factored overlaps:
per gt (its best IoU over all taking-part anchors), then per anchor (its best gt, its IoU and
whether it is some gt's best anchor). docs/anchor_targets.md, Overlaps and Labels, states the rules.

On the CPU a compiled kernel (``frcnn.native``) does the dense steps; the PyTorch-op twins here
compute the same values bit for bit.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from .. import native
from .config import AnchorTargetConfig
from .geometry import AxisOverlaps, Level, axis_bytes, axis_overlaps, iou, plan_chunks, sub_level
from .outputs import Match

_scratch_buffers = threading.local()


def scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """A reusable CPU buffer for one dense intermediate, or None where the allocator does better.

    The CPU allocator hands large blocks back to the system, and faulting a fresh 14 MB block in
    again costs several times the arithmetic done in it; the CUDA caching allocator (and a
    compiled graph) need no such help. Bounded by the working-set budget of the chunk plan.
    """
    if device.type != "cpu" or torch.compiler.is_compiling():
        return None
    buffers = _scratch_buffers.__dict__
    numel = math.prod(shape)
    buffer = buffers.get((name, dtype))
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
    return buffer[:numel].view(shape)


def smallest_int_dtype(largest: int) -> torch.dtype:
    return torch.uint8 if largest < 2**8 else torch.int16 if largest < 2**15 else torch.int32


def first_argmax(values: Tensor, dim: int) -> Tensor:
    """The lowest index reaching the maximum along ``dim`` (kept as size 1)."""
    size = values.shape[dim]
    # Integer max-reductions are fast where index-returning ones are not: code index k as size - k.
    view = [1] * values.dim()
    view[dim] = size
    code_dtype = smallest_int_dtype(size)
    descending = torch.arange(size, 0, -1, device=values.device).to(code_dtype).view(view)
    ties = torch.ge(values, values.amax(dim=dim, keepdim=True),
                    out=scratch("ties", values.shape, torch.bool, values.device))
    if code_dtype == torch.uint8:
        ties = ties.view(torch.uint8)  # a free reinterpretation; a bool operand would be converted first
    codes = torch.mul(ties, descending, out=scratch("codes", values.shape, code_dtype, values.device))
    return size - codes.amax(dim=dim, keepdim=True).long()


def best_per_shape(overlaps: AxisOverlaps, area_sum: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The largest row and column overlaps (B, A, K) and the best IoU of each (image, shape, box).

    Along a base shape the intersection is height[y] * width[x] and IoU grows with it, so the best
    anchor of each shape needs only the two axis maxima (on the CPU from a compiled kernel, whose
    maxima are amax's).
    """
    kernels = native.kernels_for(overlaps.heights)
    if kernels is not None:
        max_height, max_width = kernels.last_dim_max(overlaps.heights), kernels.last_dim_max(overlaps.widths)
    else:
        max_height, max_width = overlaps.heights.amax(dim=3), overlaps.widths.amax(dim=3)
    return max_height, max_width, iou(max_height * max_width, area_sum)


def rank_gts(heights: Tensor, widths: Tensor, area_sum: Tensor, out: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Per anchor (B, a, h, W): the lowest gt reaching the largest I / (area_a + area_g), and
    that gt's IoU, written into ``out`` (int32 best gt, IoU: views of any strides) and returned.
    heights (B, a, K, h), widths (B, a, K, W), area_sum (B, a, K).

    IoU = I / (S - I) grows with I / S, which takes one division fewer to rank; the IoU itself is
    recomputed for the chosen gt with the one formula of every path. On the CPU a compiled kernel
    does it in one sweep that skips zero overlaps and writes straight into ``out`` (same values,
    bit for bit).
    """
    best_out, iou_out = out
    kernels = native.kernels_for(heights)
    if kernels is not None:
        num_gt = heights.shape[2]
        kernels.rank_gts(heights.reshape(-1, num_gt, heights.shape[-1]), widths.reshape(-1, num_gt, widths.shape[-1]),
                         area_sum.reshape(-1, num_gt), best_out, iou_out)
        return out
    shape = (*heights.shape, widths.shape[-1])  # (B, a, K, h, W)
    ratio = torch.mul(heights[..., :, None], widths[..., None, :], out=scratch("ratio", shape, heights.dtype,
                                                                               heights.device))
    best_gt = first_argmax(ratio.div_(area_sum[..., None, None]), dim=2)
    inter = (torch.gather(heights[..., None].expand(shape), 2, best_gt)
             * torch.gather(widths[..., None, :].expand(shape), 2, best_gt))
    best_area_sum = torch.gather(area_sum[..., None, None].expand(shape), 2, best_gt)
    best_out.copy_(best_gt[:, :, 0])
    iou_out.copy_(iou(inter, best_area_sum)[:, :, 0])
    return out


def low_quality_gts(heights: Tensor, widths: Tensor, max_height: Tensor, max_width: Tensor, eligible: Tensor,
                    hits: Tensor, target_gt: Tensor | None = None) -> Tensor:
    """Per anchor (B, a, h, W): whether it is a best anchor of some eligible gt, written into
    ``hits`` (a bool view) and returned; with ``target_gt`` (an int32 view) the highest such gt
    replaces the anchor's target gt there.

    heights (B, a, K, h), widths (B, a, K, W); max_height, max_width, eligible (B, a, K). Anchor
    (a, y, x) is one of gt k's best when shape a reaches k's best IoU (``eligible``) and both its
    row and its column overlaps with k are shape a's largest (equal to the IoU-equality rule).
    """
    kernels = native.kernels_for(heights)
    if kernels is not None:
        batch, num_base, num_gt, height = heights.shape
        flat = [t.reshape(batch * num_base, num_gt, -1) for t in (heights, widths)]
        kernels.low_quality_gt(*flat, *(t.reshape(-1, num_gt) for t in (max_height, max_width, eligible)), hits,
                               target_gt)
        return hits
    row_hits = heights == max_height[..., None]
    column_hits = (widths == max_width[..., None]) & eligible[..., None]
    if target_gt is None:
        # Any (row hit and column hit) over k: a 0/1 matrix product, exact in floating point.
        return hits.copy_(torch.matmul(row_hits.transpose(-1, -2).to(heights.dtype), column_hits.to(heights.dtype)) > 0)
    num_gt = heights.shape[2]
    gt_code = torch.arange(1, num_gt + 1, device=heights.device).to(smallest_int_dtype(num_gt + 1))
    codes = row_hits[..., :, None] * torch.where(column_hits, gt_code[:, None], 0)[..., None, :]
    hit_gt = codes.amax(dim=2).long() - 1
    hits.copy_(hit_gt >= 0)
    target_gt.copy_(torch.where(hits, hit_gt, target_gt))
    return hits


class ShapeChunk(NamedTuple):
    """The overlaps of base shapes [start, stop) of a level, with the row ranges to sweep them in."""

    start: int
    stop: int
    row_ranges: list[tuple[int, int]]
    overlaps: AxisOverlaps
    area_sum: Tensor                            # (B, a, K) anchor area + box area
    best: tuple[Tensor, Tensor, Tensor] | None  # ``best_per_shape``, when low-quality matches are on


class LevelChunks:
    """The shape chunks of every level, kept for both sweeps when they fit half the budget and
    recomputed per sweep otherwise."""

    def __init__(self, levels: list[Level], gt: Tensor, gt_area: Tensor, valid: Tensor, im_info: Tensor,
                 config: AnchorTargetConfig, offset: float) -> None:
        self.levels, self.gt, self.gt_area, self.valid, self.im_info = levels, gt, gt_area, valid, im_info
        self.config, self.offset = config, offset
        batch, num_gt = valid.shape
        element_bytes = gt.element_size()
        self.plans = [plan_chunks(level, batch, num_gt, element_bytes, config.working_set_bytes) for level in levels]
        self.kept = [list(self._compute(index))
                     if axis_bytes(level, batch, num_gt, element_bytes) <= config.working_set_bytes // 2 else None
                     for index, level in enumerate(levels)]

    def _compute(self, index: int) -> Iterator[ShapeChunk]:
        config = self.config
        for (start, stop), row_ranges in self.plans[index]:
            part = sub_level(self.levels[index], start, stop)
            overlaps = axis_overlaps(part, self.gt, self.valid, self.im_info, config.allowed_border, self.offset)
            area_sum = part.area[None, :, None] + self.gt_area[:, None, :]
            best = best_per_shape(overlaps, area_sum) if config.low_quality_matches else None
            yield ShapeChunk(start, stop, row_ranges, overlaps, area_sum, best)

    def __call__(self, index: int) -> Iterable[ShapeChunk]:
        return self.kept[index] or self._compute(index)


def gt_best_ious(chunks: LevelChunks, valid: Tensor, min_positive_overlap: float) -> Tensor:
    """The per-gt sweep: each gt's best IoU over all taking-part anchors (B, K), NaN where the gt
    makes no low-quality match (invalid, best IoU 0, or below ``min_positive_overlap``)."""
    gt_best = torch.zeros_like(chunks.gt_area)
    for index in range(len(chunks.levels)):
        for chunk in chunks(index):
            gt_best = torch.maximum(gt_best, chunk.best[2].amax(dim=1))
    eligible = valid & (gt_best > 0) & (gt_best >= min_positive_overlap)
    return torch.where(eligible, gt_best, torch.full_like(gt_best, math.nan))


def match_level(chunks: LevelChunks, index: int, gt_best: Tensor | None) -> list[Tensor]:
    """The per-anchor sweep over one level: ``Match`` fields (B, N_level) in anchor order.

    ``gt_best`` (B, K) from ``gt_best_ious`` when low-quality matches are on, else None.
    """
    config, gt = chunks.config, chunks.gt
    batch = gt.shape[0]
    num_base, height, width = chunks.levels[index].shape
    # (B, H, W, A) buffers, written through (B, A, H, W) views: anchor order without a copy.
    buffers = (gt.new_empty(batch, height, width, num_base),
               torch.empty((batch, height, width, num_base), dtype=torch.int32, device=gt.device),
               torch.zeros((batch, height, width, num_base), dtype=torch.bool, device=gt.device),
               torch.empty((batch, height, width, num_base), dtype=torch.bool, device=gt.device))
    max_iou, target_gt, low_quality, inside = (t.permute(0, 3, 1, 2) for t in buffers)
    for chunk in chunks(index):
        shapes = slice(chunk.start, chunk.stop)
        heights_all, widths = chunk.overlaps.heights, chunk.overlaps.widths
        inside[:, shapes] = chunk.overlaps.inside
        if gt_best is not None:
            max_height, max_width, shape_best = chunk.best
            eligible = shape_best == gt_best[:, None, :]
        for top, bottom in chunk.row_ranges:
            rows = slice(top, bottom)
            heights = heights_all[..., rows]                                   # (B, a, K, h)
            targets = target_gt[:, shapes, rows]                               # (B, a, h, W) views
            rank_gts(heights, widths, chunk.area_sum, out=(targets, max_iou[:, shapes, rows]))
            if gt_best is not None:
                low_quality_gts(heights, widths, max_height, max_width, eligible, low_quality[:, shapes, rows],
                                targets if config.low_quality_reassign else None)
    return [t.view(batch, -1) for t in buffers]


def match_grids(levels: list[Level], gt: Tensor, valid: Tensor, im_info: Tensor,
                config: AnchorTargetConfig, offset: float) -> Match:
    """Per-anchor best gt, IoU and low-quality match over grid levels, chunked to the budget.

    gt (B, K, 4) with padded rows zeroed, valid (B, K), im_info (B, 3) in gt's dtype.
    """
    gt_area = (gt[..., 2] - gt[..., 0] + offset) * (gt[..., 3] - gt[..., 1] + offset)
    chunks = LevelChunks(levels, gt, gt_area, valid, im_info, config, offset)
    gt_best = gt_best_ious(chunks, valid, config.min_positive_overlap) if config.low_quality_matches else None
    outputs = [match_level(chunks, index, gt_best) for index in range(len(levels))]
    return Match(*(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1) for parts in zip(*outputs)))


def max_ioa_grids(levels: list[Level], boxes: Tensor, valid: Tensor, im_info: Tensor,
                  config: AnchorTargetConfig, offset: float) -> Tensor:
    """Per anchor, the largest fraction of its area covered by one valid box: (B, N)."""
    batch, num_boxes = valid.shape
    outputs = []
    for level in levels:
        num_base, height, width = level.shape
        ioa = boxes.new_empty(batch, num_base, height, width)
        for (start, stop), row_ranges in plan_chunks(level, batch, num_boxes, boxes.element_size(),
                                                     config.working_set_bytes):
            overlaps = axis_overlaps(sub_level(level, start, stop), boxes, valid, im_info,
                                     config.allowed_border, offset)
            for top, bottom in row_ranges:
                inter = overlaps.heights[..., top:bottom, None] * overlaps.widths[..., None, :]
                ioa[:, start:stop, top:bottom] = (inter / level.area[start:stop, None, None, None]).amax(dim=2)
        outputs.append(ioa.permute(0, 2, 3, 1).reshape(batch, -1))
    return torch.cat(outputs, dim=1)
