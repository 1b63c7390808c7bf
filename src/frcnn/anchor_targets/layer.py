"""The classic Caffe-layout anchor target layer (docs/anchor_targets.md, Legacy layout)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..anchors import generate_anchors, grid_anchors
from .assign import assign_anchor_targets
from .config import AnchorTargetConfig
from .outputs import AnchorTargets


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
