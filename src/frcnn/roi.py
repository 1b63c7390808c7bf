"""The second stage: proposal target layer, RoI pooling, the box head and its losses, batched over
images with a fixed number of RoIs per image (detection post-processing: ``frcnn.detection``)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .backbones import BoxHead
from .boxes import box_area, box_iou, encode_boxes
from .config import HeadConfig, RoISamplingConfig
from .matcher import best_gt
from .roi_align import chunk_bounds, dense_roi_align, gather_roi_align
from .rpn import Proposals, gather_rows, smooth_l1
from .sampling import random_keys, sample_balanced
from .selection import first_true

# FPN level assignment (FPN paper, eq. 1): a 224 x 224 RoI goes to level 4 (stride 16).
CANONICAL_SIZE = 224.0
CANONICAL_LEVEL = 4


class RoISample(NamedTuple):
    """The RoIs of a batch, R per image: boxes (B, R, 4); labels (B, R): the class (1..C) of a
    foreground RoI, 0 for background, -1 for an empty slot (an image with too few candidates);
    bbox_targets (B, R, 4), zero unless foreground; matched_gt (B, R), the gt index of a foreground
    RoI, else -1."""

    boxes: Tensor
    labels: Tensor
    bbox_targets: Tensor
    matched_gt: Tensor


def sample_rois(proposals: Proposals, gt_boxes: Tensor, num_boxes: Tensor, config: RoISamplingConfig,
                generator: torch.Generator | None = None) -> RoISample:
    """The proposal target layer.

    The valid gt boxes are appended to the valid proposals; each candidate's class comes from its
    max-IoU gt: foreground if IoU >= fg_threshold, background if IoU in [bg_threshold_lo,
    bg_threshold_hi) (an image without gt: every candidate has IoU 0). Per image up to
    ``fg_fraction * batch_size_per_image`` foreground and then background RoIs are sampled without
    replacement (``sample_balanced``); missing RoIs leave empty slots (label -1).
    """
    batch, num_gt = gt_boxes.shape[:2]
    if num_gt == 0:
        gt_boxes = gt_boxes.new_zeros(batch, 1, 5)
    gt_valid = torch.arange(gt_boxes.shape[1], device=gt_boxes.device)[None, :] < num_boxes[:, None]
    gt = torch.where(gt_valid[..., None], gt_boxes[..., :4], 0.0)
    candidates = torch.cat((proposals.boxes, gt), dim=1)
    usable = torch.cat((proposals.valid, gt_valid), dim=1)

    # Padded gt rows at -inf take no part in the matching (``frcnn.matcher``).
    iou = box_iou(gt, candidates).nan_to_num(0.0).masked_fill(~gt_valid[..., None], -math.inf)
    max_iou, argmax_gt = best_gt(iou)
    max_iou = max_iou.clamp(min=0.0)
    foreground = usable & (max_iou >= config.fg_threshold)
    background = usable & (max_iou < config.bg_threshold_hi) & (max_iou >= config.bg_threshold_lo)
    keys = random_keys(foreground.shape, foreground.device, generator)
    keep_fg, keep_bg = sample_balanced(foreground, background, config.batch_size_per_image, config.fg_fraction,
                                       keys)
    index, filled = first_true(keep_fg | keep_bg, config.batch_size_per_image)

    boxes = gather_rows(candidates, index)
    matched_gt = argmax_gt.gather(1, index)
    is_fg = keep_fg.gather(1, index) & filled
    gt_class = gt_boxes[..., 4].long().gather(1, matched_gt)
    labels = torch.where(is_fg, gt_class, torch.where(filled, 0, -1))
    targets = encode_boxes(boxes, gather_rows(gt, matched_gt), config.bbox_weights)
    targets = torch.where(is_fg[..., None], targets, 0.0)
    return RoISample(boxes, labels, targets, torch.where(is_fg, matched_gt, -1))


def _with_batch_index(boxes: Tensor, image: Tensor | None = None) -> Tensor:
    """boxes (B, R, 4), or (K, 4) with the image (K,) of each -> rois (B * R or K, 5) rows
    (batch_index, x1, y1, x2, y2)."""
    if image is None:
        batch, rois = boxes.shape[:2]
        image = torch.arange(batch, device=boxes.device).repeat_interleave(rois)
    return torch.cat((image.to(boxes.dtype)[:, None], boxes.reshape(-1, 4)), dim=1)


def fpn_levels(boxes: Tensor, num_levels: int, finest_level: int) -> Tensor:
    """Pyramid level index (0 = finest) of each box (N, 4): floor(4 + log2(sqrt(area) / 224))
    as a level number, clamped to the levels there are."""
    size = box_area(boxes).clamp(min=1e-6).sqrt()
    level = torch.floor(CANONICAL_LEVEL + torch.log2(size / CANONICAL_SIZE) + 1e-6)
    return (level - finest_level).clamp(0, num_levels - 1).long()


class RoIPooler(nn.Module):
    """Pools features for boxes: (B, R, 4), R per image, -> (B * R, C, S, S), RoIs image-major;
    or (K, 4) with the image (K,) of each -> (K, C, S, S).

    One level: RoIAlign (dense or torchvision's) or RoIPool at the level's stride.
    Several (FPN): each box is pooled from its ``fpn_levels`` level; the levels span log2 of the
    first to the last stride (torchvision's LevelMapper), so maps of equal strides after the first
    are never pooled.
    """

    def __init__(self, config: HeadConfig, strides: Sequence[int]) -> None:
        super().__init__()
        self.config = config
        self.scales = tuple(1.0 / s for s in strides)
        self.finest_level = round(math.log2(strides[0]))
        self.num_levels = round(math.log2(strides[-1])) - self.finest_level + 1

    def forward(self, features: Sequence[Tensor], boxes: Tensor, image: Tensor | None = None) -> Tensor:
        if len(self.scales) == 1:
            return self._pool_level(features[0], boxes, self.scales[0], image)
        rois = _with_batch_index(boxes, image)
        levels = fpn_levels(rois[:, 1:], self.num_levels, self.finest_level)
        size = self.config.output_size
        pooled = features[0].new_zeros(rois.shape[0], features[0].shape[1], size, size)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            chosen = torch.nonzero(levels == level).squeeze(1)
            pooled[chosen] = self._pool_rois(feature, rois[chosen], scale)
        return pooled

    def inference_features(self, features: Sequence[Tensor]) -> list[Tensor]:
        """The feature maps as inference pools them best: channels last in memory for the gather
        RoIAlign (its (B H W, C) table is then a view, not a copy per call); as they are else."""
        config = self.config
        if len(self.scales) == 1 and config.pooler == "align" and config.align_impl == "dense":
            return [f.contiguous(memory_format=torch.channels_last) for f in features]
        return list(features)

    def _pool_level(self, feature: Tensor, boxes: Tensor, scale: float, image: Tensor | None) -> Tensor:
        config = self.config
        if config.pooler == "align" and torch.jit.is_tracing():
            # The export's RoIAlign: onnxruntime runs the products several times faster than its RoiAlign.
            return dense_roi_align(feature, boxes, config.output_size, scale, config.sampling_ratio, config.aligned)
        if config.pooler == "align" and config.align_impl == "dense":
            # Without a gradient to compute, gathering the cells each RoI reads is several times faster.
            if not (feature.requires_grad and torch.is_grad_enabled()):
                return gather_roi_align(feature, boxes, config.output_size, scale, config.sampling_ratio,
                                        config.aligned, image)
            if image is None:
                return dense_roi_align(feature, boxes, config.output_size, scale, config.sampling_ratio,
                                       config.aligned)
        return self._pool_rois(feature, _with_batch_index(boxes, image), scale)

    def _pool_rois(self, feature: Tensor, rois: Tensor, scale: float) -> Tensor:
        config = self.config
        if config.pooler == "pool":
            return torchvision.ops.roi_pool(feature, rois, config.output_size, scale)
        return torchvision.ops.roi_align(feature, rois, config.output_size, scale, config.sampling_ratio,
                                         aligned=config.aligned)


def box_head(in_channels: int, config: HeadConfig) -> BoxHead:
    """A fresh box head trunk: ``conv_layers`` 3x3 conv (+ BatchNorm) + ReLU blocks, flatten,
    ``fc_layers`` fully connected layers ``fc_dim`` wide with ReLU (torchvision's TwoMLPHead and
    FastRCNNConvFCHead layouts)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for _ in range(config.conv_layers):
        conv = nn.Conv2d(channels, config.conv_dim, 3, padding=1, bias=config.conv_norm == "none")
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        norm = [nn.BatchNorm2d(config.conv_dim)] if config.conv_norm == "batch" else []
        layers.append(nn.Sequential(conv, *norm, nn.ReLU(inplace=True)))
        channels = config.conv_dim
    layers.append(nn.Flatten())
    width = channels * config.output_size * config.output_size
    for _ in range(config.fc_layers):
        fc = nn.Linear(width, config.fc_dim)
        nn.init.kaiming_uniform_(fc.weight, a=1)
        nn.init.zeros_(fc.bias)
        layers += [fc, nn.ReLU(inplace=True)]
        width = config.fc_dim
    return BoxHead(width, *layers)


class RoIHead(nn.Module):
    """Pooler, box head trunk, then a classifier over num_classes + 1 (N(0, 0.01)) and a
    class-specific box regressor (N(0, 0.001))."""

    def __init__(self, pooler: RoIPooler, trunk: BoxHead, num_classes: int) -> None:
        super().__init__()
        self.pooler = pooler
        self.trunk = trunk
        self.cls_score = nn.Linear(trunk.out_features, num_classes + 1)
        self.bbox_pred = nn.Linear(trunk.out_features, 4 * (num_classes + 1))
        for layer, std in ((self.cls_score, 0.01), (self.bbox_pred, 0.001)):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Sequence[Tensor], boxes: Tensor, valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """boxes (B, R, 4) -> class logits (B, R, C + 1) and box deltas (B, R, C + 1, 4).

        In eval mode only the ``valid`` (B, R) boxes (all when None) are pooled and classified,
        packed (one host synchronisation); the other rows come out zero. A trace pools and
        classifies every row, as training does. A RoI's outputs depend on
        its own pooled features only, so the packed RoIs go through the pooler and the trunk in
        chunks small enough to reuse memory (large fresh buffers cost more in page faults than
        the pooling itself)."""
        batch, rois = boxes.shape[:2]
        if self.training or torch.jit.is_tracing():
            hidden = self.trunk(self.pooler(features, boxes))
            logits = self.cls_score(hidden).view(batch, rois, -1)
            return logits, self.bbox_pred(hidden).view(batch, rois, logits.shape[-1], 4)
        if valid is None:
            valid = torch.ones(batch, rois, dtype=torch.bool, device=boxes.device)
        image, roi = valid.nonzero(as_tuple=True)
        packed = boxes[image, roi]
        features = self.pooler.inference_features(features)
        per_roi = features[0].shape[1] * self.pooler.config.output_size**2
        hidden = torch.cat([self.trunk(self.pooler(features, packed[start:stop], image[start:stop]))
                            for start, stop in chunk_bounds(packed.shape[0], per_roi) or [(0, 0)]])
        classes = self.cls_score.out_features
        logits = hidden.new_zeros(batch, rois, classes)
        deltas = hidden.new_zeros(batch, rois, classes, 4)
        logits[image, roi] = self.cls_score(hidden)
        deltas[image, roi] = self.bbox_pred(hidden).view(-1, classes, 4)
        return logits, deltas


def fast_rcnn_losses(class_logits: Tensor, box_deltas: Tensor, sample: RoISample,
                     sigma: float) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the sampled RoIs, and smooth L1 (``sigma``) of the foreground RoIs'
    deltas for their gt class, summed over coordinates; both averaged over the sampled RoIs of the
    batch (0 when there are none)."""
    labels = sample.labels
    sampled = labels >= 0
    count = sampled.sum().clamp(min=1)
    classes = labels.clamp(min=0)
    losses = F.cross_entropy(class_logits.flatten(0, 1), classes.flatten(), reduction="none").view_as(labels)
    cls_loss = torch.where(sampled, losses, 0.0).sum() / count
    chosen = box_deltas.gather(2, classes[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
    box_losses = smooth_l1(chosen - sample.bbox_targets, sigma).sum(dim=2)
    box_loss = torch.where(labels > 0, box_losses, 0.0).sum() / count
    return cls_loss, box_loss
