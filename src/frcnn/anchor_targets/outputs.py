"""What the layer's stages hand over: the per-anchor match and the layer's outputs."""
from __future__ import annotations

from typing import NamedTuple

from torch import Tensor


class Match(NamedTuple):
    """Per-anchor results of matching, (B, N) each."""

    max_iou: Tensor      # the IoU with the anchor's max-IoU gt
    target_gt: Tensor    # the lowest gt reaching max_iou, or with low_quality_reassign the
                         # highest gt whose best anchor this is
    low_quality: Tensor  # bool: the best anchor of some eligible gt
    inside: Tensor       # bool: the anchor takes part


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
