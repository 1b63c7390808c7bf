"""frcnn: Faster R-CNN around an exact, batched RPN anchor target layer.

The top-level names are loaded on first use, so ``import frcnn`` alone loads nothing heavy and
changes nothing in the process.
"""
from importlib import import_module
from typing import Any

_HOMES = {
    "AnchorGrid": "anchors", "concat_anchors": "anchors", "generate_anchors": "anchors", "grid_anchors": "anchors",
    "AnchorTargetConfig": "anchor_targets", "AnchorTargetLayer": "anchor_targets", "AnchorTargets": "anchor_targets",
    "assign_anchor_targets": "anchor_targets", "assign_anchor_targets_unchecked": "anchor_targets",
    "ModelConfig": "config", "FasterRCNN": "model", "anchor_fit": "analysis",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'frcnn' has no attribute {name!r}")
    value = getattr(import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
