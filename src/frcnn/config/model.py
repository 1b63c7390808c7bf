"""The detector's configuration: one frozen, validated dataclass per part of the model.

Each node checks its fields when made (``frcnn.field_checks``): an invalid value raises
ValueError naming the field, the value and the rule. ``ModelConfig``'s defaults are the small
backbone's CPU recipe; ``frcnn.config.recipes`` gives the others.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..anchor_targets.config import AnchorTargetConfig
from ..field_checks import (
    check_bool,
    check_choice,
    check_int,
    check_nodes,
    check_number,
    check_numbers,
    is_number,
    require,
)
from ..precision import PRECISIONS
from .plain import overlay, read_yaml_mapping, to_plain

BACKBONES = ("small", "vgg16", "resnet50", "resnet101", "mobilenet_v3_large")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# BackboneConfig.weights naming torchvision's published ImageNet weights of the backbone.
PUBLISHED_WEIGHTS = "imagenet"


def _is_list(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


@dataclass(frozen=True)
class PreprocessConfig:
    """What the model does to an image before the backbone: resize by the factor
    s = min(min_size / shorter side, max_size / longer side) to sides ``resize_rounding``(side * s)
    ("round", or "floor" as torchvision's interpolate with a scale factor), with ``interpolation``
    (bilinear / bicubic, ``antialias`` or not), normalise RGB values in [0, 1] by ``mean`` and
    ``std``, and zero-pad a batch to a multiple of ``size_divisible``. Detections go back to the
    original pixels by ``box_rescale``: "scale" divides by s, "per_axis" multiplies x by
    original width / resized width and y likewise (torchvision). Part of the model, so every
    checkpoint carries it."""

    min_size: int = 320
    max_size: int = 400
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize_rounding: str = "round"
    interpolation: str = "bilinear"
    antialias: bool = True
    size_divisible: int = 32
    box_rescale: str = "scale"

    def __post_init__(self) -> None:
        check_int(self, "min_size", 1)
        check_int(self, "max_size", 1)
        check_numbers(self, "mean", 3)
        check_numbers(self, "std", 3, low=0.0, open_low=True)
        check_choice(self, "resize_rounding", ("round", "floor"))
        check_choice(self, "interpolation", ("bilinear", "bicubic"))
        check_bool(self, "antialias")
        check_int(self, "size_divisible", 1)
        check_choice(self, "box_rescale", ("scale", "per_axis"))


@dataclass(frozen=True)
class BackboneConfig:
    """Feature extractor. ``frozen_stages`` leading stages keep their weights (VGG16: conv1..conv5
    blocks; ResNet: stem, res2, res3, ...; small: stem, three stages; MobileNetV3: the 17 blocks of
    ``features``). ``weights`` is a local state dict: the torchvision ImageNet classification
    model's for VGG16 / ResNet / MobileNetV3, ``Backbone.stages``' for small; or "imagenet":
    torchvision's published ImageNet weights of VGG16 / ResNet / MobileNetV3 (its ``DEFAULT``
    ones), downloaded once into torch's hub cache. ``norm``: the
    BatchNorm of ResNet and MobileNetV3, "frozen" (fixed statistics and affine, torchvision's
    ``FrozenBatchNorm2d``) or "batch" (``nn.BatchNorm2d``); ``fpn_norm``: "none" (biased FPN
    convolutions) or "batch" (unbiased convolutions then BatchNorm, torchvision's v2 FPN)."""

    name: str = "small"
    fpn: bool = False
    fpn_channels: int = 256
    frozen_stages: int = 0
    weights: str | None = None
    norm: str = "frozen"
    fpn_norm: str = "none"

    def __post_init__(self) -> None:
        check_choice(self, "name", BACKBONES)
        check_bool(self, "fpn")
        check_int(self, "fpn_channels", 1)
        check_int(self, "frozen_stages", 0)
        require(self, "weights", self.weights is None or isinstance(self.weights, str),
                f"a path, {PUBLISHED_WEIGHTS} or null")
        require(self, "weights", self.weights != PUBLISHED_WEIGHTS or self.name != "small",
                f"a path or null for the small backbone (it has no published {PUBLISHED_WEIGHTS} weights)")
        check_choice(self, "norm", ("frozen", "batch"))
        check_choice(self, "fpn_norm", ("none", "batch"))
        require(self, "fpn", self.fpn or self.name != "mobilenet_v3_large",
                "true for mobilenet_v3_large (its recipe is torchvision's FPN detector)")


@dataclass(frozen=True)
class AnchorConfig:
    """Anchors of a feature level with stride s: the cell anchors of ``cell_rule``
    (``frcnn.anchors.cell_anchors``: "legacy" is ``generate_anchors(s, ratios, scales)``;
    "torchvision", "detectron2", "mmdetection" those libraries' rules) for sides ``sizes`` in
    pixels (one tuple for every level, or one per level) or, when ``sizes`` is empty, scale * s;
    ratio = height / width. Cells are ``stride_rule`` apart: "level" (the level's stride) or
    "image" (padded image size // feature map size per axis, torchvision's AnchorGenerator)."""

    scales: tuple[float, ...] = (8.0, 16.0, 32.0)
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    sizes: tuple[tuple[float, ...], ...] = ()
    cell_rule: str = "legacy"
    stride_rule: str = "level"

    def __post_init__(self) -> None:
        check_numbers(self, "scales", low=0.0, open_low=True)
        check_numbers(self, "ratios", low=0.0, open_low=True)
        require(self, "sizes", _is_list(self.sizes) and all(
            _is_list(level) and len(level) > 0 and all(is_number(v) and v > 0 for v in level) for level in self.sizes),
            "a list of per-level lists of numbers > 0")
        object.__setattr__(self, "sizes", tuple(tuple(float(v) for v in level) for level in self.sizes))
        require(self, "sizes", len({len(level) for level in self.sizes}) <= 1,
                "levels of equal length (one anchor count per cell)")
        check_choice(self, "cell_rule", ("legacy", "torchvision", "detectron2", "mmdetection"))
        check_choice(self, "stride_rule", ("level", "image"))

    @property
    def num_anchors(self) -> int:
        """A, the anchors per feature cell."""
        return (len(self.sizes[0]) if self.sizes else len(self.scales)) * len(self.ratios)

    def level_sizes(self, stride: int, level: int) -> tuple[float, ...]:
        """The anchor sides in pixels of pyramid level ``level`` with stride ``stride``."""
        if not self.sizes:
            return tuple(scale * stride for scale in self.scales)
        return self.sizes[level if len(self.sizes) > 1 else 0]


def model_anchor_targets(**overrides: Any) -> AnchorTargetConfig:
    """The detector's RPN target rules, ``RPNConfig.targets``' default: torchvision's semantics
    (continuous boxes, no +1 pixel) with the Caffe layer's border filter (allowed_border 0,
    docs/anchor_targets.md, Inside rule); ``overrides`` replace fields. ``AnchorTargetConfig()``
    itself keeps py-faster-rcnn's rules for the layer's standalone users."""
    return AnchorTargetConfig.preset("torchvision", **{"allowed_border": 0, **overrides})


@dataclass(frozen=True)
class RPNConfig:
    """RPN head and losses. ``objectness``: "softmax" (2A outputs, py-faster-rcnn's two-way softmax) or
    "sigmoid" (A outputs). ``conv_depth`` 3x3 conv + ReLU layers (torchvision v2: 2), each
    ``conv_channels`` wide (None: as wide as the features)."""

    objectness: str = "softmax"
    conv_channels: int | None = None
    conv_depth: int = 1
    targets: AnchorTargetConfig = field(default_factory=model_anchor_targets)
    box_loss_sigma: float = 3.0

    def __post_init__(self) -> None:
        check_choice(self, "objectness", ("softmax", "sigmoid"))
        check_int(self, "conv_channels", 1, optional=True)
        check_int(self, "conv_depth", 1)
        check_nodes(self)
        require(self, "targets.legacy_plus_one", not self.targets.legacy_plus_one,
                "false: the model's boxes are continuous, while AnchorTargetConfig()'s defaults are "
                "py-faster-rcnn's +1 pixel rules; start from frcnn.config.model_anchor_targets()")
        check_number(self, "box_loss_sigma", 0.0, open_low=True)


@dataclass(frozen=True)
class ProposalLimits:
    """How many proposals survive: per image (per level with FPN) before NMS, per image after."""

    pre_nms_top_n: int
    post_nms_top_n: int

    def __post_init__(self) -> None:
        check_int(self, "pre_nms_top_n", 1)
        check_int(self, "post_nms_top_n", 1)


@dataclass(frozen=True)
class ProposalConfig:
    """Proposal layer: boxes with a side below ``min_size`` (times the image's resize factor when
    ``scale_min_size``, py-faster-rcnn; in network-input pixels otherwise, torchvision) are
    dropped, before the per-level top-n when ``min_size_before_top_n`` (py-faster-rcnn), after it
    otherwise (torchvision); so are proposals whose object probability is below
    ``score_threshold``; then NMS."""

    train: ProposalLimits = ProposalLimits(12000, 2000)
    test: ProposalLimits = ProposalLimits(6000, 300)
    nms_threshold: float = 0.7
    min_size: float = 16.0
    scale_min_size: bool = True
    min_size_before_top_n: bool = True
    score_threshold: float = 0.0

    def __post_init__(self) -> None:
        check_nodes(self)
        check_number(self, "nms_threshold", 0.0, 1.0)
        check_number(self, "min_size", 0.0)
        check_bool(self, "scale_min_size")
        check_bool(self, "min_size_before_top_n")
        check_number(self, "score_threshold", 0.0, 1.0)


@dataclass(frozen=True)
class RoISamplingConfig:
    """Proposal target layer: RoIs per image, the foreground share, the IoU ranges (foreground
    IoU >= fg_threshold, background IoU in [bg_threshold_lo, bg_threshold_hi)) and the box-coder
    weights of the class-specific regression targets."""

    batch_size_per_image: int = 128
    fg_fraction: float = 0.25
    fg_threshold: float = 0.5
    bg_threshold_hi: float = 0.5
    bg_threshold_lo: float = 0.0
    bbox_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)

    def __post_init__(self) -> None:
        check_int(self, "batch_size_per_image", 1)
        for name in ("fg_fraction", "fg_threshold", "bg_threshold_hi", "bg_threshold_lo"):
            check_number(self, name, 0.0, 1.0)
        require(self, "bg_threshold_lo", self.bg_threshold_lo <= self.bg_threshold_hi,
                f"<= bg_threshold_hi ({self.bg_threshold_hi})")
        require(self, "bg_threshold_hi", self.bg_threshold_hi <= self.fg_threshold,
                f"<= fg_threshold ({self.fg_threshold})")
        check_numbers(self, "bbox_weights", 4, low=0.0, open_low=True)


@dataclass(frozen=True)
class HeadConfig:
    """RoI head. ``pooler``: "align" (RoIAlign) or "pool" (RoIPool); ``aligned``: RoIAlign's
    half-pixel shift (True) or torchvision's detectors' unshifted boxes of at least one cell
    (False). ``align_impl``: "dense" (this package's separable RoIAlign: the same numbers as
    torchvision's, computed with matrix products; one feature level only, ``sampling_ratio`` >= 1)
    or "torchvision" (``torchvision.ops.roi_align``). The fresh box head: ``conv_layers`` 3x3
    convolutions ``conv_dim`` wide with ReLU (``conv_norm`` "batch": unbiased, then BatchNorm,
    torchvision v2's head), then ``fc_layers`` fully connected layers ``fc_dim`` wide with ReLU;
    ``fc_dim`` None: the backbone's own head (VGG16's fc6/fc7, ResNet's C5 stage)."""

    pooler: str = "align"
    align_impl: str = "dense"
    output_size: int = 7
    sampling_ratio: int = 2
    fc_dim: int | None = None
    box_loss_sigma: float = 1.0
    aligned: bool = True
    conv_layers: int = 0
    conv_dim: int = 256
    conv_norm: str = "none"
    fc_layers: int = 2

    def __post_init__(self) -> None:
        check_choice(self, "pooler", ("align", "pool"))
        check_choice(self, "align_impl", ("dense", "torchvision"))
        check_int(self, "output_size", 1)
        check_int(self, "sampling_ratio", 0)
        dense = self.pooler == "align" and self.align_impl == "dense"
        require(self, "sampling_ratio", not dense or self.sampling_ratio >= 1, ">= 1 with align_impl 'dense'")
        check_int(self, "fc_dim", 1, optional=True)
        check_number(self, "box_loss_sigma", 0.0, open_low=True)
        check_bool(self, "aligned")
        check_int(self, "conv_layers", 0)
        check_int(self, "conv_dim", 1)
        check_choice(self, "conv_norm", ("none", "batch"))
        check_int(self, "fc_layers", 1)


@dataclass(frozen=True)
class InferenceConfig:
    """Detection post-processing: per-class score threshold, boxes with a side below ``min_size``
    network-input pixels dropped (torchvision: 0.01), per-class NMS, detections kept per image;
    and the ``precision`` inference computes in (``frcnn.precision``: fp32, bf16, fp16 on GPUs,
    or auto: bf16 where the device has it natively, else fp32; the ONNX export is always fp32)."""

    score_threshold: float = 0.05
    nms_threshold: float = 0.3
    detections_per_image: int = 100
    min_size: float = 0.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        check_choice(self, "precision", PRECISIONS)
        check_number(self, "score_threshold", 0.0, 1.0)
        check_number(self, "nms_threshold", 0.0, 1.0)
        check_int(self, "detections_per_image", 1)
        check_number(self, "min_size", 0.0)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a Faster R-CNN except the number of classes.

    The defaults are the small backbone's CPU recipe, ``default_config("small")``; each node's own
    defaults are the classic values.
    """

    preprocess: PreprocessConfig = PreprocessConfig()
    backbone: BackboneConfig = BackboneConfig()
    anchors: AnchorConfig = AnchorConfig(scales=(2.0, 4.0, 8.0, 16.0))
    rpn: RPNConfig = RPNConfig()
    proposals: ProposalConfig = ProposalConfig(ProposalLimits(1000, 300), ProposalLimits(1000, 300), min_size=4.0)
    roi_sampling: RoISamplingConfig = RoISamplingConfig(batch_size_per_image=64)
    head: HeadConfig = HeadConfig(fc_dim=256)
    test: InferenceConfig = InferenceConfig()

    def __post_init__(self) -> None:
        check_nodes(self)
        backbone, head = self.backbone, self.head
        require(self, "head.fc_dim", head.fc_dim is not None or (backbone.name != "small" and not backbone.fpn),
                "set: the small backbone and FPN have no head of their own")
        require(self, "head.output_size", head.fc_dim is not None or backbone.name != "vgg16" or head.output_size == 7,
                "7 for VGG16's own fc6/fc7 head")
        require(self, "head.align_impl", not (backbone.fpn and head.pooler == "align" and head.align_impl == "dense"),
                "'torchvision' with FPN (dense RoIAlign needs one level)")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, lists and scalars."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The inverse of ``to_dict``. Keys left out take the values of ``ModelConfig()``; unknown
        keys are refused; errors name the key below "model"."""
        return overlay(cls(), data, "model")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ModelConfig:
        return cls.from_dict(read_yaml_mapping(text, "<yaml>"))
