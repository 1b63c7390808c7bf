"""Matching arbitrary anchors, a plain (N, 4) tensor with no grid structure, with gt boxes: per
anchor its best gt, that gt's IoU and whether it is some gt's best anchor, by the rules of
docs/anchor_targets.md, Overlaps and Labels.

On the CPU a compiled kernel (``frcnn.native``, csrc/box_matching.cpp) visits only the pairs that
can meet; the PyTorch-op twin here (GPU, ``torch.compile``, no compiler) computes the same values
bit for bit over dense (B, n, K) chunks that fit the working-set budget.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import native
from .config import AnchorTargetConfig
from .geometry import split
from .grid_matching import first_argmax
from .outputs import Match

# Live (B, n, K) tensors of the twin per chunk element: overlaps, intersections, area sums,
# ratios, tie masks and codes.
_TWIN_TENSORS = 6


def box_areas(boxes: Tensor, offset: float) -> Tensor:
    """Areas (...,) of boxes (..., 4) by the "+offset" pixel convention."""
    return (boxes[..., 2] - boxes[..., 0] + offset) * (boxes[..., 3] - boxes[..., 1] + offset)


def inside_border(anchors: Tensor, im_info: Tensor, border: float | None) -> Tensor:
    """Whether each anchor (N, 4) takes part in each image by the inside rule: (B, N) bool."""
    batch = im_info.shape[0]
    if border is None:
        return anchors.new_ones((), dtype=torch.bool).expand(batch, anchors.shape[0])
    height, width = im_info[:, 0, None], im_info[:, 1, None]
    return ((anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
            & (anchors[:, 2] < width + border) & (anchors[:, 3] < height + border))


def _chunk_size(batch: int, num_gt: int, element_bytes: int, budget: int) -> int:
    return max(1, budget // (_TWIN_TENSORS * batch * max(num_gt, 1) * element_bytes))


def intersections(anchors: Tensor, boxes: Tensor, offset: float) -> Tensor:
    """Intersections of anchors (n, 4) with boxes (B, K, 4): (B, n, K), heights times widths."""
    a, g = anchors[None, :, None, :], boxes[:, None, :, :]
    heights = torch.minimum(a[..., 3], g[..., 3]) - torch.maximum(a[..., 1], g[..., 1])
    widths = torch.minimum(a[..., 2], g[..., 2]) - torch.maximum(a[..., 0], g[..., 0])
    if offset:
        heights += offset
        widths += offset
    return heights.clamp_(min=0).mul_(widths.clamp_(min=0))


def _chunk_overlaps(anchors: Tensor, area: Tensor, gt: Tensor, gt_area: Tensor, valid: Tensor, part: Tensor,
                    offset: float) -> tuple[Tensor, Tensor]:
    """Intersections (B, n, K), zero for anchors not taking part and invalid gts, and the area
    sums (B, n, K), 1 where both areas are 0 (which only pairs without intersection have)."""
    inter = intersections(anchors, gt, offset).mul_(part[:, :, None]).mul_(valid[:, None, :])
    area_sum = area[None, :, None] + gt_area[:, None, :]
    return inter, torch.where(area_sum > 0, area_sum, torch.ones_like(area_sum))


def _rank_chunk(inter: Tensor, area_sum: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per anchor the lowest gt reaching the largest I / S and its IoU (B, n); per gt the largest
    IoU over the chunk's anchors (B, K)."""
    best_gt = first_argmax(inter / area_sum, dim=2)
    best_iou = (torch.gather(inter, 2, best_gt) / (torch.gather(area_sum, 2, best_gt)
                                                   - torch.gather(inter, 2, best_gt)))[..., 0]
    return best_gt[..., 0].int(), best_iou, (inter / (area_sum - inter)).amax(dim=1)


def _low_quality_chunk(inter: Tensor, area_sum: Tensor, gt_best: Tensor) -> Tensor:
    """Per anchor (B, n) the highest gt k whose best IoU gt_best[b, k] (NaN: not eligible) the
    anchor reaches, or -1."""
    hits = (inter / (area_sum - inter)) == gt_best[:, None, :]
    codes = torch.arange(1, hits.shape[2] + 1, device=hits.device, dtype=torch.int32)
    return (hits * codes).amax(dim=2) - 1


def _eligible_best(gt_best: Tensor, valid: Tensor, min_positive_overlap: float) -> Tensor:
    """gt_best (B, K) where the gt makes low-quality matches (valid, > 0, >= the minimum), else NaN."""
    eligible = valid & (gt_best > 0) & (gt_best >= min_positive_overlap)
    return torch.where(eligible, gt_best, torch.full_like(gt_best, math.nan))


def _match_compiled(kernels, anchors: Tensor, area: Tensor, gt: Tensor, gt_area: Tensor, valid: Tensor,
                    part: Tensor, config: AnchorTargetConfig, offset: float) -> tuple[Tensor, Tensor, Tensor | None]:
    inputs = (*kernels.bin_anchors(anchors, area), gt.contiguous(), gt_area.contiguous(), valid.contiguous(),
              part.contiguous(), offset)
    best_gt, max_iou, column_best = kernels.rank_boxes(*inputs)
    if not config.low_quality_matches:
        return best_gt, max_iou, None
    gt_best = _eligible_best(column_best.amax(dim=1), valid, config.min_positive_overlap)
    return best_gt, max_iou, kernels.low_quality_boxes(*inputs, column_best, gt_best)


def _match_twin(anchors: Tensor, area: Tensor, gt: Tensor, gt_area: Tensor, valid: Tensor, part: Tensor,
                config: AnchorTargetConfig, offset: float) -> tuple[Tensor, Tensor, Tensor | None]:
    batch, num_gt = valid.shape
    step = _chunk_size(batch, num_gt, gt.element_size(), config.working_set_bytes)
    ranges = split(anchors.shape[0], step)

    def overlaps(start: int, stop: int) -> tuple[Tensor, Tensor]:
        return _chunk_overlaps(anchors[start:stop], area[start:stop], gt, gt_area, valid, part[:, start:stop], offset)

    # The outputs exist before the first chunk and each chunk's results are copied in and freed at
    # once: results kept alive between chunks pin glibc's heap above each chunk's freed
    # temporaries, which then add up (3 GB of peak RSS on the FPN case of benchmarks/anchor_targets.py).
    num_anchors = anchors.shape[0]
    best_gt = valid.new_zeros(batch, num_anchors, dtype=torch.int32)
    max_iou = gt.new_zeros(batch, num_anchors)
    gt_best = gt_area.new_zeros(batch, num_gt)
    for start, stop in ranges:
        chunk_gt, chunk_iou, chunk_best = _rank_chunk(*overlaps(start, stop))
        best_gt[:, start:stop] = chunk_gt
        max_iou[:, start:stop] = chunk_iou
        gt_best = torch.maximum(gt_best, chunk_best)
        del chunk_gt, chunk_iou, chunk_best
    if not config.low_quality_matches:
        return best_gt, max_iou, None
    gt_best = _eligible_best(gt_best, valid, config.min_positive_overlap)
    low_quality = best_gt.new_empty(batch, num_anchors)
    for start, stop in ranges:
        low_quality[:, start:stop] = _low_quality_chunk(*overlaps(start, stop), gt_best)
    return best_gt, max_iou, low_quality


def match_boxes(anchors: Tensor, gt: Tensor, valid: Tensor, im_info: Tensor, config: AnchorTargetConfig,
                offset: float, takes_part: Tensor | None = None) -> Match:
    """Per-anchor best gt, IoU and low-quality match for plain anchors (N, 4) in gt's dtype.

    gt (B, K, 4) with padded rows zeroed, valid (B, K), im_info (B, 3); ``takes_part`` (B, N)
    removes more anchors from matching than the inside rule does (mmdetection's ignore regions).
    """
    area = box_areas(anchors, offset)
    gt_area = box_areas(gt, offset)
    inside = inside_border(anchors, im_info, config.allowed_border)
    part = inside if takes_part is None else inside & takes_part
    kernels = native.kernels_for(gt)
    if kernels is not None:
        best_gt, max_iou, hit_gt = _match_compiled(kernels, anchors, area, gt, gt_area, valid, part, config, offset)
    else:
        best_gt, max_iou, hit_gt = _match_twin(anchors, area, gt, gt_area, valid, part, config, offset)
    if hit_gt is None:
        return Match(max_iou, best_gt, torch.zeros_like(part), part)
    low_quality = hit_gt >= 0
    target_gt = torch.where(low_quality, hit_gt, best_gt) if config.low_quality_reassign else best_gt
    return Match(max_iou, target_gt, low_quality, part)


def max_ioa_boxes(anchors: Tensor, boxes: Tensor, valid: Tensor, config: AnchorTargetConfig,
                  offset: float) -> Tensor:
    """Per anchor (N, 4), the largest fraction of its area covered by one valid box of boxes
    (B, J, 4): (B, N), chunked to the working-set budget."""
    batch, num_boxes = valid.shape
    area = box_areas(anchors, offset)
    step = _chunk_size(batch, num_boxes, boxes.element_size(), config.working_set_bytes)
    parts = [(intersections(anchors[start:stop], boxes, offset).mul_(valid[:, None, :])
              / area[start:stop, None]).amax(dim=2) for start, stop in split(anchors.shape[0], step)]
    return torch.cat(parts, dim=1) if parts else boxes.new_zeros(batch, 0)
