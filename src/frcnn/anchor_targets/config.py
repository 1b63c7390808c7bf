"""The anchor target layer's configuration: every default in one frozen dataclass, and the presets."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

# Each system's RPN target semantics (docs/anchor_targets.md, Presets); every other field keeps
# its default.
_PRESETS: dict[str, dict] = {
    "py-faster-rcnn": dict(allowed_border=0, legacy_plus_one=True, min_positive_overlap=0.0,
                           low_quality_reassign=False),
    "faster-rcnn.pytorch": dict(allowed_border=0, legacy_plus_one=True, min_positive_overlap=0.0,
                                low_quality_reassign=False),
    "torchvision": dict(allowed_border=None, legacy_plus_one=False, min_positive_overlap=0.0,
                        low_quality_reassign=False),
    "detectron2": dict(allowed_border=None, legacy_plus_one=False, min_positive_overlap=0.0,
                       low_quality_reassign=False),
    "mmdetection": dict(allowed_border=None, legacy_plus_one=False, min_positive_overlap=0.3,
                        low_quality_reassign=True, ignore_before_matching=True),
}


@dataclass(frozen=True)
class AnchorTargetConfig:
    """RPN target semantics (docs/anchor_targets.md, Configuration); validated when made."""

    positive_overlap: float = 0.7
    negative_overlap: float = 0.3
    clobber_positives: bool = False
    fg_fraction: float = 0.5
    batch_size: int | None = 256
    bbox_inside_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    positive_weight: float = -1.0
    allowed_border: float | None = 0
    legacy_plus_one: bool = True
    low_quality_matches: bool = True
    bbox_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    min_positive_overlap: float = 0.0
    low_quality_reassign: bool = False
    ignore_overlap: float = 0.5
    # mmdetection's rule for ignore regions: anchors covered by more than ignore_overlap leave
    # matching (images with gt only); else covered non-positives are relabelled -1 after it.
    ignore_before_matching: bool = False
    # Above this many bytes of (image, anchor, gt) intermediates, anchors are processed in chunks.
    working_set_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        for name in ("positive_overlap", "negative_overlap", "fg_fraction", "min_positive_overlap",
                     "ignore_overlap"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"AnchorTargetConfig.{name} must be in [0, 1], got {value!r}")
        if self.negative_overlap > self.positive_overlap:
            raise ValueError(
                f"AnchorTargetConfig.negative_overlap ({self.negative_overlap!r}) must not exceed "
                f"positive_overlap ({self.positive_overlap!r})")
        if self.batch_size is not None and (
                isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"AnchorTargetConfig.batch_size must be an integer >= 1 or None, "
                             f"got {self.batch_size!r}")
        p = self.positive_weight
        if not (isinstance(p, (int, float)) and (p < 0 or 0 < p < 1)):
            raise ValueError(f"AnchorTargetConfig.positive_weight must be negative or strictly "
                             f"between 0 and 1, got {p!r}")
        for name in ("bbox_inside_weights", "bbox_weights"):
            value = getattr(self, name)
            if not (isinstance(value, Sequence) and len(value) == 4
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)):
                raise ValueError(f"AnchorTargetConfig.{name} must be 4 finite numbers, got {value!r}")
            if name == "bbox_weights" and 0 in value:
                raise ValueError(f"AnchorTargetConfig.bbox_weights must be non-zero, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if self.allowed_border is not None and not (
                isinstance(self.allowed_border, (int, float)) and math.isfinite(self.allowed_border)):
            raise ValueError(f"AnchorTargetConfig.allowed_border must be a finite number or None, "
                             f"got {self.allowed_border!r}")
        if not (isinstance(self.working_set_bytes, int) and self.working_set_bytes >= 1):
            raise ValueError(f"AnchorTargetConfig.working_set_bytes must be a positive integer, "
                             f"got {self.working_set_bytes!r}")

    @classmethod
    def preset(cls, name: str, **overrides) -> AnchorTargetConfig:
        """The RPN target semantics of a known system (docs/anchor_targets.md, Presets), with overrides."""
        if name not in _PRESETS:
            raise ValueError(f"unknown AnchorTargetConfig preset {name!r}; known: {', '.join(_PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown AnchorTargetConfig field(s) {unknown} for preset {name!r}")
        return cls(**{**_PRESETS[name], **overrides})

    @staticmethod
    def preset_names() -> tuple[str, ...]:
        return tuple(_PRESETS)
