"""frcnn: Faster R-CNN around an exact, batched RPN anchor target layer."""

from .anchor_targets import (AnchorTargetConfig, AnchorTargetLayer, AnchorTargets, assign_anchor_targets,
                             compute_anchor_targets)
from .anchors import AnchorGrid, concat_anchors, generate_anchors, grid_anchors

__all__ = ["AnchorGrid", "AnchorTargetConfig", "AnchorTargetLayer", "AnchorTargets", "assign_anchor_targets",
           "compute_anchor_targets", "concat_anchors", "generate_anchors", "grid_anchors"]
