"""From matches to the layer's outputs: labels, subsampling, loss weights and regression targets
(docs/anchor_targets.md, Labels, Sampling, Targets and Weights).

On the CPU a compiled kernel (``frcnn.native``) does all of it in one pass per image; the
PyTorch-op twins here compute the same values bit for bit.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import native
from ..boxes import box_codes, encode_codes
from ..sampling import positive_quota, sample_balanced
from .config import AnchorTargetConfig
from .outputs import AnchorTargets, Match


def classify(match: Match, has_gt: Tensor, config: AnchorTargetConfig) -> tuple[Tensor, Tensor]:
    """Positive and negative anchors (B, N) in the label order of docs/anchor_targets.md, Labels;
    the rest are ignored."""
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


def labels_of(positive: Tensor, negative: Tensor) -> Tensor:
    """1 for positive, 0 for negative, -1 for neither: 2p + n - 1 for disjoint masks (B, N)."""
    # In int8, then widened once: int64 arithmetic on the (B, N) masks costs several times more.
    return (positive.to(torch.int8) * 2 + negative.to(torch.int8) - 1).long()


def outside_weights(positive: Tensor, negative: Tensor, positive_weight: float, dtype: torch.dtype) -> Tensor:
    """Per-anchor loss normalisers (B, N) by docs/anchor_targets.md, Weights; a zero count gives weight 0."""

    def per_image(mask: Tensor, weight: float) -> Tensor:
        count = mask.sum(dim=1, keepdim=True)
        return (count > 0) * (weight / count.clamp(min=1).to(dtype))

    if positive_weight < 0:
        weight = per_image(positive | negative, 1.0)
        return (positive | negative) * weight
    return positive * per_image(positive, positive_weight) + negative * per_image(negative, 1.0 - positive_weight)


def per_coordinate(per_anchor: Tensor, coordinate_weights: tuple[float, float, float, float]) -> Tensor:
    """per_anchor (B, N) times four coordinate weights -> (B, N, 4); an expanded view when the
    four are equal (a broadcast product into a size-4 inner dimension is slow on the CPU)."""
    first = coordinate_weights[0]
    if all(weight == first for weight in coordinate_weights):
        scaled = per_anchor if first == 1.0 else per_anchor * first  # x * 1.0 is x: no pass needed
        return scaled[..., None].expand(*per_anchor.shape, 4)
    return per_anchor[..., None] * per_anchor.new_tensor(coordinate_weights)


def regression_targets(anchor_codes: Tensor, anchor_scales: Tensor, gt: Tensor, target_gt: Tensor,
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


def finish_targets(match: Match, has_gt: Tensor, gt: Tensor, anchor_codes: Tensor, anchor_scales: Tensor,
                   config: AnchorTargetConfig, excluded: Tensor | None = None,
                   sample_keys: Tensor | None = None) -> AnchorTargets:
    """The layer's outputs from the match: labels (``classify``, less the ``excluded`` (B, N)
    negatives), balanced subsampling driven by ``sample_keys`` (B, N) when ``config.batch_size``
    is set, targets for every taking-part anchor of an image with gt, weights and matched gt.

    has_gt (B,), gt (B, K, 4) with padded rows zeroed, anchor codes and scales (N, 4) from
    ``box_codes``.
    """
    dtype = match.max_iou.dtype
    keys = sample_keys if config.batch_size is not None else None
    kernels = native.kernels_for(match.max_iou)
    if kernels is not None and dtype in (torch.float32, torch.float64) and anchor_codes.dtype == dtype:
        num_fg = positive_quota(config.batch_size, config.fg_fraction) if keys is not None else 0
        labels, targets, inside, outside, matched_gt = kernels.finish_targets(
            match.max_iou, match.target_gt, match.low_quality, match.inside, has_gt, excluded, keys,
            box_codes(gt, config.legacy_plus_one)[0], anchor_codes, anchor_scales, config.negative_overlap,
            config.positive_overlap, config.clobber_positives, num_fg, config.batch_size or 0,
            config.positive_weight, list(config.bbox_weights))
    else:
        positive, negative = classify(match, has_gt, config)
        if excluded is not None:
            negative = negative & ~excluded
        if keys is not None:
            positive, negative = sample_balanced(positive, negative, config.batch_size, config.fg_fraction, keys)
        targets = regression_targets(anchor_codes, anchor_scales, gt, match.target_gt, match.inside & has_gt[:, None],
                                     config)
        labels, inside = labels_of(positive, negative), positive.to(dtype)
        outside = outside_weights(positive, negative, config.positive_weight, dtype)
        matched_gt = match.target_gt.long().masked_fill_(~positive, -1)
    return AnchorTargets(labels, targets, per_coordinate(inside, config.bbox_inside_weights),
                         per_coordinate(outside, (1.0, 1.0, 1.0, 1.0)), matched_gt)
