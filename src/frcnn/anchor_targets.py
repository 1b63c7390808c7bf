"""The RPN anchor target layer: a label, a regression target and loss weights for every anchor.

``assign_anchor_targets`` is the batched, loop-free implementation of ``SPEC.md``;
``AnchorTargetLayer`` wraps it with the Caffe layer's inputs and output layout.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, fields
from typing import Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .anchors import AnchorGrid, generate_anchors, grid_anchors
from . import native
from .boxes import box_codes, encode_codes
from .sampling import random_keys, sample_balanced

Anchors = Tensor | AnchorGrid | Sequence[AnchorGrid]

_PRESETS: dict[str, dict] = {
    "py-faster-rcnn": dict(allowed_border=0, legacy_plus_one=True, min_positive_overlap=0.0,
                           low_quality_reassign=False),
    "faster-rcnn.pytorch": dict(allowed_border=0, legacy_plus_one=True, min_positive_overlap=0.0,
                                low_quality_reassign=False),
    "torchvision": dict(allowed_border=None, legacy_plus_one=False, min_positive_overlap=0.0,
                        low_quality_reassign=False),
    "detectron2": dict(allowed_border=None, legacy_plus_one=False, min_positive_overlap=0.0,
                       low_quality_reassign=False),
    "mmdetection": dict(allowed_border=None, legacy_plus_one=False, min_positive_overlap=0.3,
                        low_quality_reassign=True),
}


@dataclass(frozen=True)
class AnchorTargetConfig:
    """RPN target semantics (SPEC "Configuration"); validated when made."""

    positive_overlap: float = 0.7
    negative_overlap: float = 0.3
    clobber_positives: bool = False
    fg_fraction: float = 0.5
    batch_size: int | None = 256
    bbox_inside_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    positive_weight: float = -1.0
    allowed_border: float | None = 0
    legacy_plus_one: bool = True
    low_quality_matches: bool = True
    bbox_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    min_positive_overlap: float = 0.0
    low_quality_reassign: bool = False
    ignore_overlap: float = 0.5
    # Above this many bytes of (image, anchor, gt) intermediates, anchors are processed in chunks.
    working_set_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        for name in ("positive_overlap", "negative_overlap", "fg_fraction", "min_positive_overlap",
                     "ignore_overlap"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"AnchorTargetConfig.{name} must be in [0, 1], got {value!r}")
        if self.negative_overlap > self.positive_overlap:
            raise ValueError(
                f"AnchorTargetConfig.negative_overlap ({self.negative_overlap!r}) must not exceed "
                f"positive_overlap ({self.positive_overlap!r})")
        if self.batch_size is not None and (
                isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"AnchorTargetConfig.batch_size must be an integer >= 1 or None, "
                             f"got {self.batch_size!r}")
        p = self.positive_weight
        if not (isinstance(p, (int, float)) and (p < 0 or 0 < p < 1)):
            raise ValueError(f"AnchorTargetConfig.positive_weight must be negative or strictly "
                             f"between 0 and 1, got {p!r}")
        for name in ("bbox_inside_weights", "bbox_weights"):
            value = getattr(self, name)
            if not (isinstance(value, Sequence) and len(value) == 4
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
                raise ValueError(f"AnchorTargetConfig.{name} must be 4 finite numbers, got {value!r}")
            if name == "bbox_weights" and 0 in value:
                raise ValueError(f"AnchorTargetConfig.bbox_weights must be non-zero, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.allowed_border is not None and not (
                isinstance(self.allowed_border, (int, float)) and math.isfinite(self.allowed_border)):
            raise ValueError(f"AnchorTargetConfig.allowed_border must be a finite number or None, "
                             f"got {self.allowed_border!r}")
        if not (isinstance(self.working_set_bytes, int) and self.working_set_bytes >= 1):
            raise ValueError(f"AnchorTargetConfig.working_set_bytes must be a positive integer, "
                             f"got {self.working_set_bytes!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "AnchorTargetConfig":
        """The RPN target semantics of a known system (SPEC "Presets"), with overrides."""
        if name not in _PRESETS:
            raise ValueError(f"unknown AnchorTargetConfig preset {name!r}; known: {', '.join(_PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown AnchorTargetConfig field(s) {unknown} for preset {name!r}")
        return cls(**{**_PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> tuple[str, ...]:
        return tuple(_PRESETS)


class AnchorTargets(NamedTuple):
    """Per-anchor outputs, anchors in order: labels (B, N) in {-1, 0, 1}, bbox_targets,
    bbox_inside_weights and bbox_outside_weights (B, N, 4), matched_gt (B, N) (-1 unless positive).

    A weight tensor whose four coordinates are equal is an expanded view of a (B, N) one.
    """

    labels: Tensor
    bbox_targets: Tensor
    bbox_inside_weights: Tensor
    bbox_outside_weights: Tensor
    matched_gt: Tensor


class _Level(NamedTuple):
    """Anchors as base shapes shifted over rows and columns: anchor (a, y, x) spans x[a, x] by y[a, y].

    A grid level has A base shapes over H rows and W columns. A plain (N, 4) tensor is the
    degenerate grid A = N, H = W = 1. Intermediates are laid out (B, A, K, H, W), K the boxes.
    """

    y: Tensor     # (A, H, 2) extents (y1, y2)
    x: Tensor     # (A, W, 2) extents (x1, x2)
    area: Tensor  # (A,)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.y.shape[0], self.y.shape[1], self.x.shape[1]


def _grids(anchors: Anchors) -> list[AnchorGrid] | None:
    if isinstance(anchors, Tensor):
        return None
    return [anchors] if isinstance(anchors, AnchorGrid) else list(anchors)


def _levels(anchors: Anchors, dtype: torch.dtype, offset: float) -> list[_Level]:
    grids = _grids(anchors)
    if grids is None:
        boxes = anchors.to(dtype)[:, None, :]
        extents = [(boxes[..., 1::2], boxes[..., 0::2], boxes[:, 0])]
    else:
        extents = [(grid.y_intervals().to(dtype).transpose(0, 1), grid.x_intervals().to(dtype).transpose(0, 1),
                    grid.base.to(dtype)) for grid in grids]
    return [_Level(y, x, (base[:, 2] - base[:, 0] + offset) * (base[:, 3] - base[:, 1] + offset))
            for y, x, base in extents]


def _num_anchors(anchors: Anchors) -> int:
    grids = _grids(anchors)
    return anchors.shape[0] if grids is None else sum(grid.num_anchors for grid in grids)


def _axis_overlap(extents: Tensor, lo: Tensor, hi: Tensor, offset: float) -> Tensor:
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


def _axis_inside(extents: Tensor, limit: Tensor, border: float) -> Tensor:
    """Whether anchor extents (A, L, 2) lie in [-border, limit + border) per image -> (B, A, 1, L)."""
    ends = extents[None, :, None]  # (1, A, 1, L, 2)
    return (ends[..., 0] >= -border) & (ends[..., 1] < limit[:, None, None, None] + border)


class _AxisOverlaps(NamedTuple):
    """Intersections of anchors (a, y, x) with boxes k, which factor as heights[y] * widths[x]."""

    heights: Tensor  # (B, A, K, H), zero for rows outside the image
    widths: Tensor   # (B, A, K, W), zero for columns outside the image and for invalid boxes
    inside: Tensor   # (B, A, H, W), possibly an expanded view


def _axis_overlaps(level: _Level, boxes: Tensor, valid: Tensor, im_info: Tensor, border: float | None,
                   offset: float) -> _AxisOverlaps:
    heights = _axis_overlap(level.y, boxes[..., 1], boxes[..., 3], offset)
    widths = _axis_overlap(level.x, boxes[..., 0], boxes[..., 2], offset)
    batch, (num_base, height, width) = valid.shape[0], level.shape
    if border is None:  # every anchor takes part
        return _AxisOverlaps(heights, widths.mul_(valid[:, None, :, None]),
                             valid.new_ones(()).expand(batch, num_base, height, width))
    inside_y = _axis_inside(level.y, im_info[:, 0], border)
    inside_x = _axis_inside(level.x, im_info[:, 1], border)
    # Zeroed outside the image, the factors make outside anchors meet no gt.
    return _AxisOverlaps(heights.mul_(inside_y), widths.mul_(inside_x & valid[:, None, :, None]),
                         inside_y[:, :, 0, :, None] & inside_x[:, :, 0, None, :])


def _sub_level(level: _Level, start: int, stop: int) -> _Level:
    return _Level(level.y[start:stop], level.x[start:stop], level.area[start:stop])


def _iou(inter: Tensor, area_sum: Tensor) -> Tensor:
    # The one IoU formula of every path, so that equal IoUs compare equal wherever computed.
    return inter / (area_sum - inter)


def _split(total: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def _axis_bytes(level: _Level, batch: int, num_boxes: int, element_bytes: int) -> int:
    num_base, height, width = level.shape
    return 2 * batch * num_base * num_boxes * (height + width) * element_bytes


def _plan(level: _Level, batch: int, num_boxes: int, element_bytes: int,
          budget: int) -> list[tuple[tuple[int, int], list[tuple[int, int]]]]:
    """Base-shape ranges, each with the row ranges whose intermediates fit in ``budget`` bytes."""
    num_base, height, width = level.shape
    # About two live (B, a, K, h, W) tensors per element: the ratios, plus the smaller tie codes.
    row_bytes = 2 * batch * num_boxes * width * element_bytes
    axis_bytes = _axis_bytes(level, batch, num_boxes, element_bytes) // num_base
    base_step = max(1, min(num_base, budget // max(row_bytes * height, axis_bytes, 1)))
    row_step = height if base_step > 1 else max(1, min(height, budget // row_bytes))
    return [(shapes, _split(height, row_step)) for shapes in _split(num_base, base_step)]


def _best_per_shape(overlaps: _AxisOverlaps, area_sum: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The largest row and column overlaps (B, A, K) and the best IoU of each (image, shape, box).

    Along a base shape the intersection is height[y] * width[x] and IoU grows with it, so the best
    anchor of each shape needs only the two axis maxima.
    """
    max_height = overlaps.heights.amax(dim=3)
    max_width = overlaps.widths.amax(dim=3)
    return max_height, max_width, _iou(max_height * max_width, area_sum)


def _smallest_int_dtype(largest: int) -> torch.dtype:
    return torch.uint8 if largest < 2**8 else torch.int16 if largest < 2**15 else torch.int32


_scratch_buffers = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor | None:
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


def _first_argmax(values: Tensor, dim: int) -> Tensor:
    """The lowest index reaching the maximum along ``dim`` (kept as size 1)."""
    size = values.shape[dim]
    # Integer max-reductions are fast where index-returning ones are not: code index k as size - k.
    view = [1] * values.dim()
    view[dim] = size
    code_dtype = _smallest_int_dtype(size)
    descending = torch.arange(size, 0, -1, device=values.device).to(code_dtype).view(view)
    ties = torch.ge(values, values.amax(dim=dim, keepdim=True),
                    out=_scratch("ties", values.shape, torch.bool, values.device))
    if code_dtype == torch.uint8:
        ties = ties.view(torch.uint8)  # a free reinterpretation; a bool operand would be converted first
    codes = torch.mul(ties, descending, out=_scratch("codes", values.shape, code_dtype, values.device))
    return size - codes.amax(dim=dim, keepdim=True).long()


def _rank_gts(heights: Tensor, widths: Tensor, area_sum: Tensor) -> tuple[Tensor, Tensor]:
    """Per anchor (B, a, h, W): the lowest gt reaching the largest I / (area_a + area_g), and
    that gt's IoU. heights (B, a, K, h), widths (B, a, K, W), area_sum (B, a, K).

    IoU = I / (S - I) grows with I / S, which takes one division fewer to rank; the IoU itself is
    recomputed for the chosen gt with the one formula of every path. On the CPU a compiled kernel
    does it in one sweep that skips zero overlaps (same values, bit for bit).
    """
    kernels = native.kernels_for(heights)
    if kernels is not None:
        batch, num_base, num_gt, height = heights.shape
        best_gt, max_iou = kernels.rank_gts(heights.reshape(-1, num_gt, height),
                                            widths.reshape(-1, num_gt, widths.shape[-1]), area_sum.reshape(-1, num_gt))
        return best_gt.view(batch, num_base, height, -1), max_iou.view(batch, num_base, height, -1)
    shape = (*heights.shape, widths.shape[-1])  # (B, a, K, h, W)
    ratio = torch.mul(heights[..., :, None], widths[..., None, :], out=_scratch("ratio", shape, heights.dtype,
                                                                                heights.device))
    best_gt = _first_argmax(ratio.div_(area_sum[..., None, None]), dim=2)
    inter = (torch.gather(heights[..., None].expand(shape), 2, best_gt)
             * torch.gather(widths[..., None, :].expand(shape), 2, best_gt))
    best_area_sum = torch.gather(area_sum[..., None, None].expand(shape), 2, best_gt)
    return best_gt[:, :, 0], _iou(inter, best_area_sum)[:, :, 0]


def _low_quality(heights: Tensor, widths: Tensor, max_height: Tensor, max_width: Tensor, eligible: Tensor,
                 highest_gt: bool) -> tuple[Tensor, Tensor | None]:
    """Per anchor (B, a, h, W): whether it is a best anchor of some eligible gt, and (when
    ``highest_gt``) the highest such gt, or -1.

    heights (B, a, K, h), widths (B, a, K, W); max_height, max_width, eligible (B, a, K). Anchor
    (a, y, x) is one of gt k's best when shape a reaches k's best IoU (``eligible``) and both its
    row and its column overlaps with k are shape a's largest (equal to the IoU-equality rule).
    """
    kernels = native.kernels_for(heights)
    if kernels is not None:
        batch, num_base, num_gt, height = heights.shape
        flat = [t.reshape(batch * num_base, num_gt, -1) for t in (heights, widths)]
        hit_gt = kernels.low_quality_gt(*flat, *(t.reshape(-1, num_gt) for t in (max_height, max_width, eligible)))
        hit_gt = hit_gt.view(batch, num_base, height, -1)
        return hit_gt >= 0, hit_gt if highest_gt else None
    row_hits = heights == max_height[..., None]
    column_hits = (widths == max_width[..., None]) & eligible[..., None]
    if not highest_gt:
        # Any (row hit and column hit) over k: a 0/1 matrix product, exact in floating point.
        return torch.matmul(row_hits.transpose(-1, -2).to(heights.dtype), column_hits.to(heights.dtype)) > 0, None
    num_gt = heights.shape[2]
    gt_code = torch.arange(1, num_gt + 1, device=heights.device).to(_smallest_int_dtype(num_gt + 1))
    codes = row_hits[..., :, None] * torch.where(column_hits, gt_code[:, None], 0)[..., None, :]
    hit_gt = codes.amax(dim=2).long() - 1
    return hit_gt >= 0, hit_gt


class _ShapeChunk(NamedTuple):
    start: int
    stop: int
    row_ranges: list[tuple[int, int]]
    overlaps: _AxisOverlaps
    area_sum: Tensor                            # (B, a, K) anchor area + box area
    best: tuple[Tensor, Tensor, Tensor] | None  # ``_best_per_shape``, when low-quality matches are on


class _Match(NamedTuple):
    max_iou: Tensor      # (B, N)
    target_gt: Tensor    # (B, N) the lowest gt reaching max_iou, or with low_quality_reassign the
                         # highest gt whose best anchor this is
    low_quality: Tensor  # (B, N) bool: the best anchor of some eligible gt
    inside: Tensor       # (B, N)


def _match(levels: list[_Level], gt: Tensor, valid: Tensor, im_info: Tensor,
           config: AnchorTargetConfig, offset: float) -> _Match:
    """Per-anchor best gt, IoU and low-quality match, chunked to the working-set budget."""
    batch, num_gt = valid.shape
    gt_area = (gt[..., 2] - gt[..., 0] + offset) * (gt[..., 3] - gt[..., 1] + offset)
    plans = [_plan(level, batch, num_gt, gt.element_size(), config.working_set_bytes) for level in levels]

    def shape_chunks(level: _Level, plan: list) -> Iterator[_ShapeChunk]:
        for (start, stop), row_ranges in plan:
            part = _sub_level(level, start, stop)
            overlaps = _axis_overlaps(part, gt, valid, im_info, config.allowed_border, offset)
            area_sum = part.area[None, :, None] + gt_area[:, None, :]
            best = _best_per_shape(overlaps, area_sum) if config.low_quality_matches else None
            yield _ShapeChunk(start, stop, row_ranges, overlaps, area_sum, best)

    # Axis overlaps are small on a grid: keep them for both sweeps when they fit the budget.
    chunk_lists = [list(shape_chunks(level, plan))
                   if _axis_bytes(level, batch, num_gt, gt.element_size()) <= config.working_set_bytes // 2
                   else None for level, plan in zip(levels, plans)]

    def chunks(index: int) -> Iterable[_ShapeChunk]:
        return chunk_lists[index] or shape_chunks(levels[index], plans[index])

    # Each gt's best IoU over all taking-part anchors (B, K); NaN where it makes no low-quality match.
    gt_best = torch.zeros_like(gt_area)
    if config.low_quality_matches:
        for index in range(len(levels)):
            for chunk in chunks(index):
                gt_best = torch.maximum(gt_best, chunk.best[2].amax(dim=1))
        eligible = valid & (gt_best > 0) & (gt_best >= config.min_positive_overlap)
        gt_best = torch.where(eligible, gt_best, torch.full_like(gt_best, math.nan))

    outputs = []
    for index, level in enumerate(levels):
        num_base, height, width = level.shape
        # (B, H, W, A) buffers, written through (B, A, H, W) views: anchor order without a copy.
        buffers = (gt.new_empty(batch, height, width, num_base),
                   torch.empty((batch, height, width, num_base), dtype=torch.int32, device=gt.device),
                   torch.zeros((batch, height, width, num_base), dtype=torch.bool, device=gt.device),
                   torch.empty((batch, height, width, num_base), dtype=torch.bool, device=gt.device))
        outputs.append([t.view(batch, -1) for t in buffers])
        max_iou, target_gt, low_quality, inside = (t.permute(0, 3, 1, 2) for t in buffers)
        for chunk in chunks(index):
            shapes = slice(chunk.start, chunk.stop)
            heights_all, widths = chunk.overlaps.heights, chunk.overlaps.widths
            inside[:, shapes] = chunk.overlaps.inside
            if config.low_quality_matches:
                max_height, max_width, shape_best = chunk.best
                eligible = shape_best == gt_best[:, None, :]
            for top, bottom in chunk.row_ranges:
                rows = slice(top, bottom)
                heights = heights_all[..., rows]                                   # (B, a, K, h)
                best_gt, best_iou = _rank_gts(heights, widths, chunk.area_sum)    # (B, a, h, W)
                max_iou[:, shapes, rows] = best_iou
                if config.low_quality_matches:
                    hits, hit_gt = _low_quality(heights, widths, max_height, max_width, eligible,
                                                config.low_quality_reassign)
                    low_quality[:, shapes, rows] = hits
                    if config.low_quality_reassign:
                        best_gt = torch.where(hits, hit_gt, best_gt)
                target_gt[:, shapes, rows] = best_gt
    return _Match(*(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1) for parts in zip(*outputs)))


def _max_ioa(levels: list[_Level], boxes: Tensor, valid: Tensor, im_info: Tensor,
             config: AnchorTargetConfig, offset: float) -> Tensor:
    """Per anchor, the largest fraction of its area covered by one valid box: (B, N)."""
    batch, num_boxes = valid.shape
    outputs = []
    for level in levels:
        num_base, height, width = level.shape
        ioa = boxes.new_empty(batch, num_base, height, width)
        for (start, stop), row_ranges in _plan(level, batch, num_boxes, boxes.element_size(),
                                               config.working_set_bytes):
            overlaps = _axis_overlaps(_sub_level(level, start, stop), boxes, valid, im_info,
                                      config.allowed_border, offset)
            for top, bottom in row_ranges:
                inter = overlaps.heights[..., top:bottom, None] * overlaps.widths[..., None, :]
                ioa[:, start:stop, top:bottom] = (inter / level.area[start:stop, None, None, None]).amax(dim=2)
        outputs.append(ioa.permute(0, 2, 3, 1).reshape(batch, -1))
    return torch.cat(outputs, dim=1)


def _classify(match: _Match, has_gt: Tensor, config: AnchorTargetConfig) -> tuple[Tensor, Tensor]:
    """Positive and negative anchors (B, N) by SPEC step 5; the rest are ignored."""
    # An image without gt has max IoU 0 and no low-quality match: infinite thresholds make every
    # anchor of it negative and none positive, whatever negative_overlap is.
    no_gt = torch.where(has_gt, 0.0, math.inf)[:, None].to(match.max_iou.dtype)
    below = match.max_iou < no_gt + config.negative_overlap
    positive = (match.max_iou >= no_gt + config.positive_overlap) | match.low_quality
    if config.clobber_positives:
        positive = positive & ~below
        negative = below
    else:
        negative = below & ~positive
    return positive & match.inside, negative & match.inside


def _labels(positive: Tensor, negative: Tensor) -> Tensor:
    """1 for positive, 0 for negative, -1 for neither: 2p + n - 1 for disjoint masks (B, N)."""
    # In int8, then widened once: int64 arithmetic on the (B, N) masks costs several times more.
    return (positive.to(torch.int8) * 2 + negative.to(torch.int8) - 1).long()


def _outside_weights(positive: Tensor, negative: Tensor, positive_weight: float, dtype: torch.dtype) -> Tensor:
    """Per-anchor loss normalisers (B, N) by SPEC step 9; a zero count gives weight 0."""

    def per_image(mask: Tensor, weight: float) -> Tensor:
        count = mask.sum(dim=1, keepdim=True)
        return (count > 0) * (weight / count.clamp(min=1).to(dtype))

    if positive_weight < 0:
        weight = per_image(positive | negative, 1.0)
        return (positive | negative) * weight
    return positive * per_image(positive, positive_weight) + negative * per_image(negative, 1.0 - positive_weight)


def _per_coordinate(per_anchor: Tensor, coordinate_weights: tuple[float, float, float, float]) -> Tensor:
    """per_anchor (B, N) times four coordinate weights -> (B, N, 4); an expanded view when the
    four are equal (a broadcast product into a size-4 inner dimension is slow on the CPU)."""
    first = coordinate_weights[0]
    if all(weight == first for weight in coordinate_weights):
        return (per_anchor * first)[..., None].expand(*per_anchor.shape, 4)
    return per_anchor[..., None] * per_anchor.new_tensor(coordinate_weights)


def _anchor_codes(anchors: Anchors, plus_one: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``box_codes`` of all anchors (N, 4) each; a grid keeps its own."""
    grids = _grids(anchors)
    if grids is None:
        return box_codes(anchors.to(dtype), plus_one)
    per_level = [grid.codes(plus_one, dtype) for grid in grids]
    if len(per_level) == 1:
        return per_level[0]
    codes, scales = zip(*per_level)
    return torch.cat(codes), torch.cat(scales)


def _regression_targets(anchor_codes: Tensor, anchor_scales: Tensor, gt: Tensor, target_gt: Tensor,
                        has_target: Tensor, config: AnchorTargetConfig) -> Tensor:
    """Deltas from anchor n to gt target_gt[b, n] where has_target[b, n], zeros elsewhere: (B, N, 4).

    anchor_codes and anchor_scales (N, 4) from ``box_codes``, gt (B, K, 4), target_gt and
    has_target (B, N). Each gt's code is computed once and gathered, and the per-anchor work runs
    on contiguous (B, N, 4) tensors.
    """
    batch, num_gt = gt.shape[:2]
    num_anchors = anchor_codes.shape[0]
    # Anchors without a target gather their own code: their deltas come out exactly zero with no
    # masking pass (and no -inf * 0 from a degenerate gt's log width).
    table = torch.cat((box_codes(gt, config.legacy_plus_one)[0].reshape(-1, 4), anchor_codes))
    image_rows = torch.arange(0, batch * num_gt, num_gt, device=gt.device, dtype=target_gt.dtype)
    own_rows = torch.arange(batch * num_gt, batch * num_gt + num_anchors, device=gt.device, dtype=target_gt.dtype)
    rows = torch.where(has_target, target_gt + image_rows[:, None], own_rows)
    matched = table.index_select(0, rows.view(-1)).view(batch, num_anchors, 4)
    return encode_codes(matched, anchor_codes, anchor_scales, config.bbox_weights, out=matched)


def compute_anchor_targets(
    anchors: Anchors,
    gt_boxes: Tensor,
    num_boxes: Tensor,
    im_info: Tensor,
    config: AnchorTargetConfig,
    ignore_boxes: Tensor | None = None,
    num_ignore: Tensor | None = None,
    sample_keys: Tensor | None = None,
) -> AnchorTargets:
    """The assignment itself, on checked inputs: no validation, no host synchronisation.

    ``sample_keys`` (B, N) from ``frcnn.sampling.random_keys`` drive the subsampling; when None
    and subsampling is on they are drawn from the global generator. This is the function to ``torch.compile``.
    """
    dtype = gt_boxes.dtype
    offset = 1.0 if config.legacy_plus_one else 0.0
    batch = gt_boxes.shape[0]
    if gt_boxes.shape[1] == 0:
        gt_boxes = gt_boxes.new_zeros(batch, 1, 5)
    rank = torch.arange(gt_boxes.shape[1], device=gt_boxes.device)
    valid = rank[None, :] < num_boxes[:, None]
    # Padded rows may hold anything; replace them so that no NaN or inf can leak through.
    gt = torch.where(valid[..., None], gt_boxes[..., :4], 0.0)
    im_info = im_info.to(dtype)
    levels = _levels(anchors, dtype, offset)

    match = _match(levels, gt, valid, im_info, config, offset)
    has_gt = num_boxes > 0
    positive, negative = _classify(match, has_gt, config)

    if ignore_boxes is not None and ignore_boxes.shape[1] > 0:
        ignore_valid = torch.arange(ignore_boxes.shape[1], device=gt.device)[None, :] < num_ignore[:, None]
        ignore = torch.where(ignore_valid[..., None], ignore_boxes.to(dtype), 0.0)
        covered = _max_ioa(levels, ignore, ignore_valid, im_info, config, offset) >= config.ignore_overlap
        negative = negative & ~covered

    if config.batch_size is not None:
        if sample_keys is None:
            sample_keys = random_keys(positive.shape, positive.device)
        positive, negative = sample_balanced(positive, negative, config.batch_size, config.fg_fraction, sample_keys)

    # Every taking-part anchor of an image with gt gets a target (SPEC step 7), sampled or not.
    has_target = match.inside & has_gt[:, None]
    targets = _regression_targets(*_anchor_codes(anchors, config.legacy_plus_one, dtype), gt, match.target_gt,
                                  has_target, config)
    inside_weights = _per_coordinate(positive.to(dtype), config.bbox_inside_weights)
    outside_weights = _per_coordinate(_outside_weights(positive, negative, config.positive_weight, dtype),
                                      (1.0, 1.0, 1.0, 1.0))
    matched_gt = match.target_gt.long().masked_fill_(~positive, -1)
    return AnchorTargets(_labels(positive, negative), targets, inside_weights, outside_weights, matched_gt)


def _first_bad(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _check_inputs(anchors: Anchors, gt_boxes: Tensor, num_boxes: Tensor, im_info: Tensor,
                  ignore_boxes: Tensor | None, num_ignore: Tensor | None) -> None:
    """Raise ValueError naming the argument, image and value of the first bad input.

    Shapes are checked for free; values cost one host synchronisation.
    """
    if isinstance(anchors, Tensor):
        if anchors.dim() != 2 or anchors.shape[1] != 4:
            raise ValueError(f"anchors must have shape (N, 4), got {tuple(anchors.shape)}")
    else:
        grids = [anchors] if isinstance(anchors, AnchorGrid) else list(anchors)
        if not grids or not all(isinstance(g, AnchorGrid) for g in grids):
            raise ValueError("anchors must be an (N, 4) tensor, an AnchorGrid or a non-empty sequence of them")
    if not isinstance(gt_boxes, Tensor) or gt_boxes.dim() != 3 or gt_boxes.shape[2] != 5:
        raise ValueError(f"gt_boxes must have shape (B, K, 5), got {_shape(gt_boxes)}")
    if not gt_boxes.is_floating_point():
        raise ValueError(f"gt_boxes must be floating point, got {gt_boxes.dtype}")
    batch, num_gt = gt_boxes.shape[:2]
    if not isinstance(num_boxes, Tensor) or tuple(num_boxes.shape) != (batch,):
        raise ValueError(f"num_boxes must have shape ({batch},), got {_shape(num_boxes)}")
    if num_boxes.is_floating_point() or num_boxes.dtype == torch.bool:
        raise ValueError(f"num_boxes must be an integer tensor, got {num_boxes.dtype}")
    if not isinstance(im_info, Tensor) or tuple(im_info.shape) != (batch, 3):
        raise ValueError(f"im_info must have shape ({batch}, 3), got {_shape(im_info)}")
    if (ignore_boxes is None) != (num_ignore is None):
        raise ValueError("ignore_boxes and num_ignore must be given together")
    if ignore_boxes is not None:
        if ignore_boxes.dim() != 3 or ignore_boxes.shape[0] != batch or ignore_boxes.shape[2] != 4:
            raise ValueError(f"ignore_boxes must have shape ({batch}, J, 4), got {_shape(ignore_boxes)}")
        if tuple(num_ignore.shape) != (batch,) or num_ignore.is_floating_point():
            raise ValueError(f"num_ignore must be an integer tensor of shape ({batch},), got "
                             f"{_shape(num_ignore)} {num_ignore.dtype}")

    checks = [("num_boxes", (num_boxes < 0) | (num_boxes > num_gt), num_boxes),
              ("im_info", ~(im_info[:, :2] > 0).all(dim=1) | ~torch.isfinite(im_info[:, :2]).all(dim=1), im_info)]
    for name, boxes, counts in (("gt_boxes", gt_boxes[..., :4], num_boxes), ("ignore_boxes", ignore_boxes, num_ignore)):
        if boxes is None:
            continue
        valid = torch.arange(boxes.shape[1], device=boxes.device)[None, :] < counts[:, None]
        checks.append((name, valid & ~torch.isfinite(boxes).all(dim=2), boxes))
        checks.append((name, valid & ((boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])), boxes))
    if not bool(torch.stack([bad.any() for _, bad, _ in checks]).any()):
        return
    for (name, bad, value), problem in zip(checks, ("is outside [0, K={}]".format(num_gt),
                                                    "must have a finite, positive height and width",
                                                    "has a non-finite coordinate", "has x2 < x1 or y2 < y1",
                                                    "has a non-finite coordinate", "has x2 < x1 or y2 < y1")):
        if bad.any():
            where = _first_bad(bad)
            shown = value[where].tolist()
            place = f"image {where[0]}" + (f", row {where[1]}" if len(where) > 1 else "")
            raise ValueError(f"{name}: {place} {problem}: {shown}")


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def assign_anchor_targets(
    anchors: Anchors,
    gt_boxes: Tensor,
    num_boxes: Tensor,
    im_info: Tensor,
    config: AnchorTargetConfig | None = None,
    generator: torch.Generator | None = None,
    ignore_boxes: Tensor | None = None,
    num_ignore: Tensor | None = None,
    *,
    validate: bool = True,
) -> AnchorTargets:
    """RPN targets for every anchor of every image (SPEC steps 3-10).

    anchors: (N, 4) boxes, or an ``AnchorGrid`` / a sequence of them (level-major order; the
    fast path). gt_boxes (B, K, 5) rows (x1, y1, x2, y2, class), rows >= num_boxes[b] ignored;
    num_boxes (B,); im_info (B, 3) rows (height, width, scale); ignore_boxes (B, J, 4) with
    num_ignore (B,) mark crowd regions. ``generator`` drives the subsampling.
    ``validate=False`` skips the input checks and their one host synchronisation.
    """
    config = config or AnchorTargetConfig()
    if validate:
        _check_inputs(anchors, gt_boxes, num_boxes, im_info, ignore_boxes, num_ignore)
    sample_keys = None
    if config.batch_size is not None and generator is not None:
        num_anchors = _num_anchors(anchors)
        sample_keys = random_keys((gt_boxes.shape[0], num_anchors), gt_boxes.device, generator)
    return compute_anchor_targets(anchors, gt_boxes, num_boxes, im_info, config, ignore_boxes,
                                  num_ignore, sample_keys)


def to_legacy_layout(targets: AnchorTargets, height: int, width: int) -> list[Tensor]:
    """The Caffe layer's outputs: labels (B, 1, A*H, W), then targets and inside and outside
    weights (B, 4A, H, W), from per-anchor outputs ordered n = (y*W + x)*A + a."""
    batch = targets.labels.shape[0]
    labels = targets.labels.view(batch, height, width, -1).permute(0, 3, 1, 2).reshape(batch, 1, -1, width)
    per_coordinate = [t.reshape(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
                      for t in targets[1:4]]
    return [labels, *per_coordinate]


class AnchorTargetLayer(nn.Module):
    """The classic layer: targets for the anchors of an RPN score map, in the Caffe layout."""

    def __init__(self, feat_stride: int = 16, scales: Sequence[float] = (8, 16, 32),
                 ratios: Sequence[float] = (0.5, 1, 2), config: AnchorTargetConfig | None = None) -> None:
        super().__init__()
        self.feat_stride = int(feat_stride)
        self.base_anchors = generate_anchors(16, ratios, scales)
        self.config = config or AnchorTargetConfig()

    @property
    def num_anchors(self) -> int:
        return self.base_anchors.shape[0]

    def forward(self, inputs: Sequence[Tensor], generator: torch.Generator | None = None) -> list[Tensor]:
        """inputs = (rpn_cls_score (B, 2A, H, W), gt_boxes (B, K, 5), im_info (B, 3), num_boxes (B,))."""
        rpn_cls_score, gt_boxes, im_info, num_boxes = inputs
        if rpn_cls_score.dim() != 4 or rpn_cls_score.shape[0] != gt_boxes.shape[0]:
            raise ValueError(f"rpn_cls_score must have shape (B, 2A, H, W) with B = {gt_boxes.shape[0]}, "
                             f"got {tuple(rpn_cls_score.shape)}")
        height, width = rpn_cls_score.shape[-2:]
        grid = grid_anchors(self.base_anchors, height, width, self.feat_stride, gt_boxes.device, gt_boxes.dtype)
        targets = assign_anchor_targets(grid, gt_boxes, num_boxes, im_info, self.config, generator)
        return to_legacy_layout(targets, height, width)
