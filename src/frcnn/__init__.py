"""frcnn: Faster R-CNN around an exact, batched RPN anchor target layer."""
import os

# OpenMP threads that spin at barriers stall each other ten-fold when another process shares the
# cores; passive waits cost ~5 % on an idle machine. Read when torch loads, so set before it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .anchor_targets import (AnchorTargetConfig, AnchorTargetLayer, AnchorTargets, assign_anchor_targets,
                             compute_anchor_targets)
from .anchors import AnchorGrid, concat_anchors, generate_anchors, grid_anchors
from .config import ModelConfig
from .model import FasterRCNN

__all__ = ["AnchorGrid", "AnchorTargetConfig", "AnchorTargetLayer", "AnchorTargets", "FasterRCNN", "ModelConfig",
           "assign_anchor_targets", "compute_anchor_targets", "concat_anchors", "generate_anchors", "grid_anchors"]
