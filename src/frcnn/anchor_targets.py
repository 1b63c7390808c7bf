"""The RPN anchor target layer: a label, a regression target and loss weights for every anchor.

``assign_anchor_targets`` is the batched, loop-free implementation of ``SPEC.md``;
``AnchorTargetLayer`` wraps it with the Caffe layer's inputs and output layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import NamedTuple, Sequence

import torch
from torch import Tensor, nn

from .anchors import AnchorGrid, generate_anchors, grid_anchors
from .boxes import encode_boxes
from .sampling import sample_balanced

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
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if 0.0 in self.bbox_weights:
            raise ValueError(f"AnchorTargetConfig.bbox_weights must be non-zero, got {self.bbox_weights!r}")
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
    bbox_inside_weights and bbox_outside_weights (B, N, 4), matched_gt (B, N) (-1 unless positive)."""

    labels: Tensor
    bbox_targets: Tensor
    bbox_inside_weights: Tensor
    bbox_outside_weights: Tensor
    matched_gt: Tensor


class _Level(NamedTuple):
    """A set of anchors whose x and y extents broadcast against each other.

    A grid level has x (1, W, A, 2), y (H, 1, A, 2) and area (1, 1, A); a plain (N, 4) tensor
    has x (N, 2), y (N, 2) and area (N,). Chunks are taken along the first dimension.
    """

    x: Tensor
    y: Tensor
    area: Tensor
    separable: bool

    @property
    def rows(self) -> int:
        return max(self.x.shape[0], self.y.shape[0])

    @property
    def row_size(self) -> int:
        return self.area.shape[1:].numel() if self.separable else 1

    def chunk(self, start: int, stop: int) -> "_Level":
        def rows(t: Tensor) -> Tensor:
            return t if t.shape[0] == 1 else t[start:stop]
        return _Level(rows(self.x), rows(self.y), rows(self.area), self.separable)


def _levels(anchors: Anchors, dtype: torch.dtype, offset: float) -> list[_Level]:
    if isinstance(anchors, Tensor):
        boxes = anchors.to(dtype)
        x, y = boxes[:, 0::2], boxes[:, 1::2]
        area = (x[:, 1] - x[:, 0] + offset) * (y[:, 1] - y[:, 0] + offset)
        return [_Level(x, y, area, separable=False)]
    grids = [anchors] if isinstance(anchors, AnchorGrid) else list(anchors)
    levels = []
    for grid in grids:
        base = grid.base.to(dtype)
        area = (base[:, 2] - base[:, 0] + offset) * (base[:, 3] - base[:, 1] + offset)
        levels.append(_Level(grid.x_intervals().to(dtype)[None], grid.y_intervals().to(dtype)[:, None],
                             area[None, None], separable=True))
    return levels


def _anchor_boxes(anchors: Anchors) -> Tensor:
    if isinstance(anchors, Tensor):
        return anchors
    grids = [anchors] if isinstance(anchors, AnchorGrid) else list(anchors)
    return torch.cat([grid.boxes for grid in grids])


def _overlap(intervals: Tensor, box_lo: Tensor, box_hi: Tensor, offset: float) -> Tensor:
    """Overlap length of anchor intervals (*S, 2) with box intervals (B, K) -> (B, K, *S)."""
    view = (*box_lo.shape, *([1] * (intervals.dim() - 1)))
    hi = torch.minimum(intervals[..., 1], box_hi.view(view))
    lo = torch.maximum(intervals[..., 0], box_lo.view(view))
    return (hi - lo + offset).clamp_(min=0)


def _inside(intervals: Tensor, limit: Tensor, border: float | None) -> Tensor:
    """Whether anchor intervals (*S, 2) lie within [-border, limit + border) per image: (B, *S)."""
    if border is None:
        return torch.ones((limit.shape[0], *intervals.shape[:-1]), dtype=torch.bool, device=limit.device)
    view = (limit.shape[0], *([1] * (intervals.dim() - 1)))
    return (intervals[..., 0] >= -border) & (intervals[..., 1] < limit.view(view) + border)


class _Overlaps(NamedTuple):
    """Intersections of one chunk of anchors with a set of boxes, factored by axis."""

    widths: Tensor   # (B, K, *x shape), zero for invalid boxes and outside anchors
    heights: Tensor  # (B, K, *y shape)
    inside: Tensor   # (B, *chunk shape)


def _chunk_overlaps(level: _Level, boxes: Tensor, valid: Tensor, im_info: Tensor,
                    border: float | None, offset: float) -> _Overlaps:
    inside_x = _inside(level.x, im_info[:, 1], border)
    inside_y = _inside(level.y, im_info[:, 0], border)
    widths = _overlap(level.x, boxes[..., 0], boxes[..., 2], offset)
    heights = _overlap(level.y, boxes[..., 1], boxes[..., 3], offset)
    mask_view = (*valid.shape, *([1] * (level.x.dim() - 1)))
    widths = widths * (valid.view(mask_view) & inside_x[:, None])
    heights = heights * inside_y[:, None]
    return _Overlaps(widths, heights, inside_x & inside_y)


def _area_sum(anchor_area: Tensor, box_area: Tensor) -> Tensor:
    """Anchor areas (*S) plus box areas (B, K) -> (B, K, *S)."""
    return anchor_area + box_area.view(*box_area.shape, *([1] * anchor_area.dim()))


def _iou(inter: Tensor, union_plus_inter: Tensor) -> Tensor:
    # One formula for the one-shot, chunked and separable paths, so that equal IoUs stay equal.
    return inter / (union_plus_inter - inter)


def _chunks(level: _Level, batch: int, num_boxes: int, element_bytes: int, budget: int):
    """Row ranges of ``level`` whose (B, K, chunk) intermediates fit in ``budget`` bytes."""
    # About three live (B, K, chunk) tensors: intersections, IoUs and the tie mask.
    per_row = 3 * batch * num_boxes * level.row_size * element_bytes
    step = max(1, budget // max(per_row, 1))
    return [(start, min(start + step, level.rows)) for start in range(0, level.rows, step)]


def _gt_max_iou(levels: list[_Level], gt: Tensor, valid: Tensor, im_info: Tensor,
                config: AnchorTargetConfig, offset: float) -> Tensor:
    """Each gt's best IoU over the taking-part anchors: (B, K)."""
    gt_area = ((gt[..., 2] - gt[..., 0] + offset) * (gt[..., 3] - gt[..., 1] + offset))
    best = torch.zeros_like(gt_area)
    batch, num_gt = gt_area.shape
    for level in levels:
        if level.separable:
            # On a grid the intersection is width(x, a) * height(y, a), and IoU grows with it for a
            # fixed (gt, a), so the best anchor of each base shape needs only the two axis maxima.
            ov = _chunk_overlaps(level, gt, valid, im_info, config.allowed_border, offset)
            inter = ov.widths.flatten(2, 3).amax(2) * ov.heights.flatten(2, 3).amax(2)  # (B, K, A)
            level_best = _iou(inter, level.area[0, 0] + gt_area[..., None]).amax(2)
            best = torch.maximum(best, level_best)
            continue
        for start, stop in _chunks(level, batch, num_gt, gt.element_size(), config.working_set_bytes):
            part = level.chunk(start, stop)
            ov = _chunk_overlaps(part, gt, valid, im_info, config.allowed_border, offset)
            iou = _iou(ov.widths * ov.heights, _area_sum(part.area, gt_area))
            best = torch.maximum(best, iou.amax(2))
    return best


class _Match(NamedTuple):
    max_iou: Tensor         # (B, N)
    argmax_gt: Tensor       # (B, N) lowest gt index reaching max_iou
    low_quality_gt: Tensor  # (B, N) highest eligible gt whose best anchor this is, else -1
    inside: Tensor          # (B, N)


def _match(levels: list[_Level], gt: Tensor, valid: Tensor, im_info: Tensor,
           config: AnchorTargetConfig, offset: float) -> _Match:
    batch, num_gt = valid.shape
    gt_area = ((gt[..., 2] - gt[..., 0] + offset) * (gt[..., 3] - gt[..., 1] + offset))
    if config.low_quality_matches:
        gt_best = _gt_max_iou(levels, gt, valid, im_info, config, offset)
        eligible = valid & (gt_best > 0) & (gt_best >= config.min_positive_overlap)
        # NaN never compares equal, so ineligible gts make no low-quality match.
        gt_best = torch.where(eligible, gt_best, torch.full_like(gt_best, math.nan))
        gt_rank = torch.arange(1, num_gt + 1, device=gt.device, dtype=torch.int32)
    results: list[tuple[Tensor, ...]] = []
    for level in levels:
        for start, stop in _chunks(level, batch, num_gt, gt.element_size(), config.working_set_bytes):
            part = level.chunk(start, stop)
            ov = _chunk_overlaps(part, gt, valid, im_info, config.allowed_border, offset)
            iou = _iou(ov.widths * ov.heights, _area_sum(part.area, gt_area)).flatten(2)
            max_iou, argmax_gt = iou.max(dim=1)
            if config.low_quality_matches:
                hits = iou == gt_best[:, :, None]
                hit_rank = torch.where(hits, gt_rank[None, :, None], 0).amax(dim=1)
                low_quality_gt = hit_rank.long() - 1
            else:
                low_quality_gt = torch.full_like(argmax_gt, -1)
            results.append((max_iou, argmax_gt, low_quality_gt, ov.inside.reshape(batch, -1)))
    return _Match(*(torch.cat(parts, dim=1) for parts in zip(*results)))


def _max_ioa(levels: list[_Level], boxes: Tensor, valid: Tensor, im_info: Tensor,
             config: AnchorTargetConfig, offset: float) -> Tensor:
    """Per anchor, the largest fraction of its area covered by one valid box: (B, N)."""
    batch, num_boxes = valid.shape
    parts = []
    for level in levels:
        for start, stop in _chunks(level, batch, num_boxes, boxes.element_size(), config.working_set_bytes):
            part = level.chunk(start, stop)
            ov = _chunk_overlaps(part, boxes, valid, im_info, config.allowed_border, offset)
            parts.append(((ov.widths * ov.heights) / part.area).flatten(2).amax(dim=1))
    return torch.cat(parts, dim=1)


def _label(match: _Match, has_gt: Tensor, config: AnchorTargetConfig) -> Tensor:
    """Labels (B, N) by SPEC step 5: 1 positive, 0 negative, -1 ignored."""
    # An image without gt has every taking-part anchor negative, whatever negative_overlap is.
    max_iou = torch.where(has_gt[:, None], match.max_iou, torch.full_like(match.max_iou, -1.0))
    below = max_iou < config.negative_overlap
    positive = (max_iou >= config.positive_overlap) | (match.low_quality_gt >= 0)
    if config.clobber_positives:
        labels = torch.where(below, 0, torch.where(positive, 1, -1))
    else:
        labels = torch.where(positive, 1, torch.where(below, 0, -1))
    return torch.where(match.inside, labels, -1)


def _outside_weights(labels: Tensor, positive_weight: float, dtype: torch.dtype) -> Tensor:
    """Per-anchor loss normalisers (B, N) by SPEC step 9; a zero count gives weight 0."""
    positive = labels == 1
    negative = labels == 0

    def per_image(count: Tensor, weight: float) -> Tensor:
        return torch.where(count > 0, weight / count.clamp(min=1).to(dtype), 0.0)[:, None]

    if positive_weight < 0:
        weight = per_image((labels >= 0).sum(dim=1), 1.0)
        pos_weight = neg_weight = weight
    else:
        pos_weight = per_image(positive.sum(dim=1), positive_weight)
        neg_weight = per_image(negative.sum(dim=1), 1.0 - positive_weight)
    zero = torch.zeros((), dtype=pos_weight.dtype, device=labels.device)
    return torch.where(positive, pos_weight, torch.where(negative, neg_weight, zero))


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

    ``sample_keys`` (B, N) uniform in [0, 1) drive the subsampling; when None and subsampling is
    on they are drawn from the global generator. This is the function to ``torch.compile``.
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
    labels = _label(match, has_gt, config)

    if ignore_boxes is not None and ignore_boxes.shape[1] > 0:
        ignore_valid = torch.arange(ignore_boxes.shape[1], device=gt.device)[None, :] < num_ignore[:, None]
        ignore = torch.where(ignore_valid[..., None], ignore_boxes.to(dtype), 0.0)
        covered = _max_ioa(levels, ignore, ignore_valid, im_info, config, offset) >= config.ignore_overlap
        labels = torch.where(covered & (labels == 0), -1, labels)

    if config.batch_size is not None:
        if sample_keys is None:
            sample_keys = torch.rand(labels.shape, device=labels.device)
        keep_pos, keep_neg = sample_balanced(labels == 1, labels == 0, config.batch_size,
                                             config.fg_fraction, sample_keys)
        labels = torch.where(keep_pos, 1, torch.where(keep_neg, 0, -1))

    target_gt = match.argmax_gt
    if config.low_quality_reassign:
        target_gt = torch.where(match.low_quality_gt >= 0, match.low_quality_gt, target_gt)
    boxes = _anchor_boxes(anchors).to(dtype)
    matched_boxes = torch.gather(gt, 1, target_gt[..., None].expand(-1, -1, 4))
    targets = encode_boxes(boxes[None], matched_boxes, config.bbox_weights, config.legacy_plus_one)
    regress = (match.inside & has_gt[:, None])[..., None]
    targets = torch.where(regress, targets, 0.0)

    positive = labels == 1
    inside_weights = torch.tensor(config.bbox_inside_weights, dtype=dtype, device=gt.device)
    inside_weights = torch.where(positive[..., None], inside_weights, 0.0)
    outside_weights = _outside_weights(labels, config.positive_weight, dtype)[..., None].expand(-1, -1, 4)
    matched_gt = torch.where(positive, target_gt, -1)
    return AnchorTargets(labels, targets, inside_weights, outside_weights, matched_gt)


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
        num_anchors = _anchor_boxes(anchors).shape[0]
        sample_keys = torch.rand((gt_boxes.shape[0], num_anchors), generator=generator,
                                 device=gt_boxes.device)
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
