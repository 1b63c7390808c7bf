"""Region Proposal Network: the head, its losses and the proposal layer, batched.

Per-anchor tensors are (B, N, ...) with anchors level-major and, within a level of H x W cells
and A anchors per cell, anchor n = (y * W + x) * A + a: the order of ``AnchorGrid.boxes``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .anchor_targets import AnchorTargets
from .boxes import box_size, clip_boxes, decode_boxes
from .config import ProposalConfig, ProposalLimits
from .selection import grouped_nms, top_rows


class RPNHead(nn.Module):
    """``conv_depth`` 3x3 conv + ReLU layers, then a 1x1 objectness classifier (2A outputs for the
    two-way softmax, A for the sigmoid) and a 1x1 regressor (4A outputs); shared by all levels.
    Weights from N(0, 0.01)."""

    def __init__(self, in_channels: int, conv_channels: int, num_anchors: int, objectness: str = "softmax",
                 conv_depth: int = 1) -> None:
        super().__init__()
        self.num_anchors = num_anchors
        self.logits_per_anchor = 2 if objectness == "softmax" else 1
        widths = [in_channels] + [conv_channels] * conv_depth
        self.conv = nn.Sequential(*(nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(inplace=True))
                                    for a, b in zip(widths, widths[1:])))
        self.cls_score = nn.Conv2d(conv_channels, self.logits_per_anchor * num_anchors, 1)
        self.bbox_pred = nn.Conv2d(conv_channels, 4 * num_anchors, 1)
        for conv in (*(layer[0] for layer in self.conv), self.cls_score, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Feature maps (B, C, H_l, W_l) -> objectness logits (B, N, K) with K = 2 (background,
        object) or 1, and box deltas (B, N, 4)."""
        logits, deltas = [], []
        for feature in features:
            hidden = self.conv(feature)
            logits.append(per_anchor(self.cls_score(hidden), self.logits_per_anchor))
            deltas.append(per_anchor(self.bbox_pred(hidden), 4, anchor_major=True))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


def per_anchor(scores: Tensor, values: int, anchor_major: bool = False) -> Tensor:
    """A map (B, values * A, H, W) -> (B, H * W * A, values) in anchor order.

    Channel layout: value-major (channel v * A + a, py-faster-rcnn's (B, 2, A * H, W) softmax reshape)
    for objectness, anchor-major (channel a * values + v) for box deltas.
    """
    batch, channels, height, width = scores.shape
    anchors = channels // values
    if anchor_major:
        grouped = scores.view(batch, anchors, values, height, width).permute(0, 3, 4, 1, 2)
    else:
        grouped = scores.view(batch, values, anchors, height, width).permute(0, 3, 4, 2, 1)
    return grouped.reshape(batch, height * width * anchors, values)


def objectness_logit(logits: Tensor) -> Tensor:
    """Per-anchor logits (B, N, K) -> the log-odds of "object" (B, N): the softmax's object minus
    background logit, or the sigmoid's logit. Ranking by it ranks by probability, without the
    ties that saturated probabilities make."""
    return logits[..., 1] - logits[..., 0] if logits.shape[-1] == 2 else logits[..., 0]


def smooth_l1(diff: Tensor, sigma: float) -> Tensor:
    """Elementwise smooth L1: 0.5 (sigma x)^2 where |x| < 1 / sigma^2, else |x| - 0.5 / sigma^2."""
    beta = 1.0 / sigma**2
    magnitude = diff.abs()
    return torch.where(magnitude < beta, 0.5 * sigma**2 * diff * diff, magnitude - 0.5 * beta)


def rpn_losses(logits: Tensor, deltas: Tensor, targets: AnchorTargets, sigma: float) -> tuple[Tensor, Tensor]:
    """faster-rcnn.pytorch's RPN losses.

    Classification: cross-entropy (two-way softmax, or binary for a sigmoid) averaged over the
    sampled anchors (labels >= 0) of the whole batch. Regression: smooth L1 with ``sigma`` of
    inside_weights * (deltas - targets), times the outside weights, summed over anchors and
    coordinates and averaged over the images.
    """
    labels = targets.labels
    sampled = labels >= 0
    classes = labels.clamp(min=0)
    if logits.shape[-1] == 2:
        losses = F.cross_entropy(logits.flatten(0, 1), classes.flatten(), reduction="none").view_as(labels)
    else:
        losses = F.binary_cross_entropy_with_logits(logits[..., 0], classes.to(logits.dtype), reduction="none")
    cls_loss = torch.where(sampled, losses, 0.0).sum() / sampled.sum().clamp(min=1)
    diff = targets.bbox_inside_weights * (deltas - targets.bbox_targets)
    box_loss = (targets.bbox_outside_weights * smooth_l1(diff, sigma)).sum() / labels.shape[0]
    return cls_loss, box_loss


class Proposals(NamedTuple):
    """Proposals of a batch, best first: rois (B, P, 5) rows (batch_index, x1, y1, x2, y2),
    scores (B, P) object probabilities, both zero past counts[b]; counts (B,) int64."""

    rois: Tensor
    scores: Tensor
    counts: Tensor

    @property
    def boxes(self) -> Tensor:
        """(B, P, 4)."""
        return self.rois[..., 1:]

    @property
    def valid(self) -> Tensor:
        """(B, P) bool: the first counts[b] rows of image b."""
        return torch.arange(self.rois.shape[1], device=self.rois.device)[None, :] < self.counts[:, None]


def _top_per_level(scores: Tensor, level_sizes: Sequence[int | Tensor], k: int) -> tuple[Tensor, Tensor]:
    """Indices (B, T) of the k best scores (B, N) of each level (``top_rows``: best first, equal
    scores in anchor order), and the level of each column (T,)."""
    indices, levels = [], []
    start = 0
    for level, size in enumerate(level_sizes):
        columns = top_rows(scores[:, start:start + size], k)[1]
        indices.append(columns + start)
        levels.append(torch.zeros_like(columns[0]) + level)
        start = start + size
    return torch.cat(indices, dim=1), torch.cat(levels)


def gather_rows(values: Tensor, index: Tensor) -> Tensor:
    """values (B, N, ...) gathered along N at index (B, T) -> (B, T, ...)."""
    view = index.view(*index.shape, *([1] * (values.dim() - 2)))
    return values.gather(1, view.expand(*index.shape, *values.shape[2:]))


@torch.no_grad()
def generate_proposals(objectness: Tensor, deltas: Tensor, anchors: Tensor, level_sizes: Sequence[int | Tensor],
                       im_info: Tensor, config: ProposalConfig, limits: ProposalLimits,
                       trim: bool = False) -> Proposals:
    """The proposal layer (traceable with ``trim``).

    objectness (B, N) log-odds, deltas (B, N, 4), anchors (N, 4) of levels of ``level_sizes``
    anchors, im_info (B, 3). Every anchor is decoded (dw, dh clamped) and clipped to its image;
    each level keeps its ``pre_nms_top_n`` best (equal scores in anchor order), among the boxes
    with both sides at least the min size (``config.min_size``, times im_scale if
    ``scale_min_size``) if ``min_size_before_top_n``, else among all, dropping the small ones
    after; so are those with an object probability below ``score_threshold``; NMS runs for all
    images and levels at once (one group per image and level); each image keeps its
    ``post_nms_top_n`` best (equal scores in the order above).

    P is ``post_nms_top_n`` (rows past counts[b] zero), or with ``trim`` the largest count of the
    batch (at least 1, at most ``post_nms_top_n``: one host synchronisation eagerly), so that the
    RoI head does not pool empty rows.
    """
    boxes = clip_boxes(decode_boxes(deltas, anchors[None]), im_info[:, :2])
    widths, heights = box_size(boxes)
    min_side = config.min_size * im_info[:, 2:3] if config.scale_min_size else config.min_size
    big_enough = (widths >= min_side) & (heights >= min_side)
    ranked = torch.where(big_enough, objectness, -math.inf) if config.min_size_before_top_n else objectness
    top, level = _top_per_level(ranked, level_sizes, limits.pre_nms_top_n)
    scores = objectness.gather(1, top)
    valid = big_enough.gather(1, top) & (torch.sigmoid(scores) >= config.score_threshold)
    boxes, scores = gather_rows(boxes, top), torch.where(valid, scores, -math.inf)
    levels = torch.arange(len(level_sizes), device=top.device)
    by_level = torch.where(level[:, None] == levels, scores[..., None], -math.inf)
    kept = grouped_nms(boxes, by_level, config.nms_threshold).any(dim=2) & valid

    most = torch.clamp(kept.sum(dim=1).max(), min=1, max=limits.post_nms_top_n) if trim else limits.post_nms_top_n
    best_scores, best = top_rows(torch.where(kept, scores, -math.inf), most)
    valid = kept.gather(1, best)
    image = torch.arange(boxes.shape[0], device=top.device)[:, None]
    batch_index = torch.zeros_like(best_scores, dtype=boxes.dtype) + image
    rois = torch.cat((batch_index[..., None], gather_rows(boxes, best)), dim=2) * valid[..., None]
    proposals = Proposals(rois, torch.sigmoid(best_scores) * valid, valid.sum(dim=1))
    if trim:
        return proposals
    pad = limits.post_nms_top_n - best.shape[1]
    return Proposals(F.pad(proposals.rois, (0, 0, 0, pad)), F.pad(proposals.scores, (0, pad)), proposals.counts)
