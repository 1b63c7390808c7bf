"""The anchor target layer's configuration: every default in one frozen dataclass, and the presets."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..field_checks import check_bool, check_int, check_number, check_numbers, is_number, require

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
            check_number(self, name, 0.0, 1.0)
        require(self, "negative_overlap", self.negative_overlap <= self.positive_overlap,
                f"<= positive_overlap ({self.positive_overlap!r})")
        for name in ("clobber_positives", "legacy_plus_one", "low_quality_matches", "low_quality_reassign",
                     "ignore_before_matching"):
            check_bool(self, name)
        check_int(self, "batch_size", 1, optional=True)
        weight = self.positive_weight
        require(self, "positive_weight", is_number(weight) and (weight < 0 or 0 < weight < 1),
                "negative or strictly between 0 and 1")
        check_numbers(self, "bbox_inside_weights", 4)
        check_numbers(self, "bbox_weights", 4)
        require(self, "bbox_weights", 0 not in self.bbox_weights, "non-zero")
        check_number(self, "allowed_border", optional=True)
        check_int(self, "working_set_bytes", 1)

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
