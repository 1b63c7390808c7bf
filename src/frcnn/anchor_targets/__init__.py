"""The RPN anchor target layer: a label, a regression target and loss weights for every anchor.

``assign_anchor_targets`` is the batched, loop-free implementation of docs/anchor_targets.md;
``AnchorTargetLayer`` wraps it with the Caffe layer's inputs and output layout.

Modules: ``config`` (configuration and presets), ``geometry`` (anchors as shapes over rows and
columns, the chunk plan), ``grid_matching`` (the per-gt and per-anchor sweeps on grids),
``recognition`` (grids found in plain tensors), ``box_matching`` (plain anchors of any order),
``targets`` (labels, sampling, weights, regression targets), ``outputs`` (what the stages hand
over), ``checks`` (input checks), ``assign`` (the assignment), ``layer`` (the Caffe layout).
"""
from .assign import assign_anchor_targets, assign_anchor_targets_unchecked
from .config import AnchorTargetConfig
from .geometry import Anchors
from .layer import AnchorTargetLayer, to_legacy_layout
from .outputs import AnchorTargets

__all__ = ["AnchorTargetConfig", "AnchorTargetLayer", "AnchorTargets", "Anchors", "assign_anchor_targets",
           "assign_anchor_targets_unchecked", "to_legacy_layout"]
