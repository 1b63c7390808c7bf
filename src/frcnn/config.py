"""The detector's configuration: one frozen, validated dataclass tree with a YAML round trip.

``default_config(backbone, fpn)`` gives each backbone's recipe; every field can be overridden with
``dataclasses.replace`` or through YAML. Invalid values are refused when a node is made, with a
message naming the field and the value.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from .anchor_targets import AnchorTargetConfig
from .data.transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransform

BACKBONES = ("small", "vgg16", "resnet50", "resnet101", "mobilenet_v3_large")
# The torchvision detectors FasterRCNN.from_torchvision imports, each with a recipe here.
TORCHVISION_ARCHS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
                     "fasterrcnn_mobilenet_v3_large_320_fpn")


def _fail(owner: object, name: str, value: object, rule: str) -> None:
    raise ValueError(f"{type(owner).__name__}.{name} must be {rule}, got {value!r}")


def _check_int(owner: object, name: str, minimum: int, optional: bool = False) -> None:
    value = getattr(owner, name)
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(owner, name, value, f"an integer >= {minimum}" + (" or None" if optional else ""))


def _check_number(owner: object, name: str, low: float, high: float, *, open_low: bool = False) -> None:
    value = getattr(owner, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value <= high and (
        value > low if open_low else value >= low)
    if not ok:
        _fail(owner, name, value, f"a number in {'(' if open_low else '['}{low}, {high}]")


def _check_choice(owner: object, name: str, choices: Sequence[str]) -> None:
    value = getattr(owner, name)
    if value not in choices:
        _fail(owner, name, value, f"one of {', '.join(map(repr, choices))}")


def _check_bool(owner: object, name: str) -> None:
    if not isinstance(getattr(owner, name), bool):
        _fail(owner, name, getattr(owner, name), "a bool")


def _check_positive_tuple(owner: object, name: str, length: int | None = None) -> None:
    """Coerce a sequence field to a tuple of floats, each > 0 (and of ``length`` if given)."""
    value = getattr(owner, name)
    ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
          and (length is None or len(value) == length)
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in value))
    if not ok:
        count = f"{length} " if length else "one or more "
        _fail(owner, name, value, f"{count}positive numbers")
    object.__setattr__(owner, name, tuple(float(v) for v in value))


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
        _check_int(self, "min_size", 1)
        _check_int(self, "max_size", 1)
        _check_choice(self, "resize_rounding", ("round", "floor"))
        _check_choice(self, "interpolation", ("bilinear", "bicubic"))
        _check_bool(self, "antialias")
        _check_int(self, "size_divisible", 1)
        _check_choice(self, "box_rescale", ("scale", "per_axis"))
        _check_positive_tuple(self, "std", 3)
        mean = self.mean
        if not (isinstance(mean, Sequence) and len(mean) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in mean)):
            _fail(self, "mean", mean, "3 numbers")
        object.__setattr__(self, "mean", tuple(float(v) for v in mean))

    def transform(self, flip_prob: float = 0.0) -> DetectionTransform:
        """The data transform that applies this preprocessing (and random horizontal flips with
        probability ``flip_prob``, for training)."""
        return DetectionTransform(self.min_size, self.max_size, flip_prob, self.mean, self.std,
                                  size_rounding=self.resize_rounding, interpolation=self.interpolation,
                                  antialias=self.antialias)


@dataclass(frozen=True)
class BackboneConfig:
    """Feature extractor. ``frozen_stages`` leading stages keep their weights (VGG16: conv1..conv5
    blocks; ResNet: stem, res2, res3, ...; small: stem, three stages; MobileNetV3: the 17 blocks of
    ``features``). ``weights`` is a local state dict: the torchvision ImageNet classification
    model's for VGG16 / ResNet / MobileNetV3, ``Backbone.stages``' for small. ``norm``: the
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
        _check_choice(self, "name", BACKBONES)
        _check_bool(self, "fpn")
        _check_int(self, "fpn_channels", 1)
        _check_int(self, "frozen_stages", 0)
        if self.weights is not None and not isinstance(self.weights, str):
            _fail(self, "weights", self.weights, "a path string or None")
        _check_choice(self, "norm", ("frozen", "batch"))
        _check_choice(self, "fpn_norm", ("none", "batch"))
        if self.name == "mobilenet_v3_large" and not self.fpn:
            _fail(self, "fpn", False, "True for mobilenet_v3_large (its recipe is torchvision's FPN detector)")


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
        _check_positive_tuple(self, "scales")
        _check_positive_tuple(self, "ratios")
        sizes = self.sizes
        if not (isinstance(sizes, Sequence) and not isinstance(sizes, str) and all(
                isinstance(level, Sequence) and not isinstance(level, str) and len(level) > 0
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in level)
                for level in sizes)):
            _fail(self, "sizes", sizes, "a list of per-level lists of positive numbers")
        object.__setattr__(self, "sizes", tuple(tuple(float(v) for v in level) for level in sizes))
        if len({len(level) for level in self.sizes}) > 1:
            _fail(self, "sizes", self.sizes, "levels of equal length (one anchor count per cell)")
        _check_choice(self, "cell_rule", ("legacy", "torchvision", "detectron2", "mmdetection"))
        _check_choice(self, "stride_rule", ("level", "image"))

    @property
    def num_anchors(self) -> int:
        """A, the anchors per feature cell."""
        return (len(self.sizes[0]) if self.sizes else len(self.scales)) * len(self.ratios)

    def level_sizes(self, stride: int, level: int) -> tuple[float, ...]:
        """The anchor sides in pixels of pyramid level ``level`` with stride ``stride``."""
        if not self.sizes:
            return tuple(scale * stride for scale in self.scales)
        return self.sizes[level if len(self.sizes) > 1 else 0]


def _model_anchor_targets(**overrides: Any) -> AnchorTargetConfig:
    """torchvision's RPN target semantics (continuous boxes) with the Caffe layer's border filter
    (docs/anchor_targets.md, Inside rule)."""
    return AnchorTargetConfig.preset("torchvision", **{"allowed_border": 0, **overrides})


@dataclass(frozen=True)
class RPNConfig:
    """RPN head and losses. ``objectness``: "softmax" (2A outputs, py-faster-rcnn's two-way softmax) or
    "sigmoid" (A outputs). ``conv_depth`` 3x3 conv + ReLU layers (torchvision v2: 2), each
    ``conv_channels`` wide (None: as wide as the features)."""

    objectness: str = "softmax"
    conv_channels: int | None = None
    conv_depth: int = 1
    targets: AnchorTargetConfig = field(default_factory=_model_anchor_targets)
    box_loss_sigma: float = 3.0

    def __post_init__(self) -> None:
        _check_choice(self, "objectness", ("softmax", "sigmoid"))
        _check_int(self, "conv_channels", 1, optional=True)
        _check_int(self, "conv_depth", 1)
        if not isinstance(self.targets, AnchorTargetConfig):
            _fail(self, "targets", self.targets, "an AnchorTargetConfig")
        if self.targets.legacy_plus_one:
            _fail(self, "targets.legacy_plus_one", True, "False (the model uses continuous boxes)")
        _check_number(self, "box_loss_sigma", 0.0, float("inf"), open_low=True)


@dataclass(frozen=True)
class ProposalLimits:
    """How many proposals survive: per image (per level with FPN) before NMS, per image after."""

    pre_nms_top_n: int
    post_nms_top_n: int

    def __post_init__(self) -> None:
        _check_int(self, "pre_nms_top_n", 1)
        _check_int(self, "post_nms_top_n", 1)


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
        _check_number(self, "nms_threshold", 0.0, 1.0)
        _check_number(self, "min_size", 0.0, float("inf"))
        _check_bool(self, "scale_min_size")
        _check_bool(self, "min_size_before_top_n")
        _check_number(self, "score_threshold", 0.0, 1.0)


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
        _check_int(self, "batch_size_per_image", 1)
        for name in ("fg_fraction", "fg_threshold", "bg_threshold_hi", "bg_threshold_lo"):
            _check_number(self, name, 0.0, 1.0)
        if self.bg_threshold_lo > self.bg_threshold_hi:
            _fail(self, "bg_threshold_lo", self.bg_threshold_lo, f"<= bg_threshold_hi ({self.bg_threshold_hi})")
        if self.bg_threshold_hi > self.fg_threshold:
            _fail(self, "bg_threshold_hi", self.bg_threshold_hi, f"<= fg_threshold ({self.fg_threshold})")
        _check_positive_tuple(self, "bbox_weights", 4)


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
        _check_choice(self, "pooler", ("align", "pool"))
        _check_choice(self, "align_impl", ("dense", "torchvision"))
        _check_int(self, "output_size", 1)
        _check_int(self, "sampling_ratio", 0)
        if self.pooler == "align" and self.align_impl == "dense" and self.sampling_ratio < 1:
            _fail(self, "sampling_ratio", self.sampling_ratio, ">= 1 with align_impl='dense'")
        _check_int(self, "fc_dim", 1, optional=True)
        _check_number(self, "box_loss_sigma", 0.0, float("inf"), open_low=True)
        _check_bool(self, "aligned")
        _check_int(self, "conv_layers", 0)
        _check_int(self, "conv_dim", 1)
        _check_choice(self, "conv_norm", ("none", "batch"))
        _check_int(self, "fc_layers", 1)


@dataclass(frozen=True)
class InferenceConfig:
    """Detection post-processing: per-class score threshold, boxes with a side below ``min_size``
    network-input pixels dropped (torchvision: 0.01), per-class NMS, detections kept per image."""

    score_threshold: float = 0.05
    nms_threshold: float = 0.3
    detections_per_image: int = 100
    min_size: float = 0.0

    def __post_init__(self) -> None:
        _check_number(self, "score_threshold", 0.0, 1.0)
        _check_number(self, "nms_threshold", 0.0, 1.0)
        _check_int(self, "detections_per_image", 1)
        _check_number(self, "min_size", 0.0, float("inf"))


_SMALL_ANCHORS = AnchorConfig(scales=(2.0, 4.0, 8.0, 16.0))
_SMALL_PROPOSALS = ProposalConfig(ProposalLimits(1000, 300), ProposalLimits(1000, 300), min_size=4.0)
_FPN_PROPOSALS = ProposalConfig(ProposalLimits(2000, 1000), ProposalLimits(1000, 1000))


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a Faster R-CNN except the number of classes.

    The defaults are the small backbone's CPU recipe, ``default_config("small")``; each node's own
    defaults are the classic values.
    """

    preprocess: PreprocessConfig = PreprocessConfig()
    backbone: BackboneConfig = BackboneConfig()
    anchors: AnchorConfig = _SMALL_ANCHORS
    rpn: RPNConfig = RPNConfig()
    proposals: ProposalConfig = _SMALL_PROPOSALS
    roi_sampling: RoISamplingConfig = RoISamplingConfig(batch_size_per_image=64)
    head: HeadConfig = HeadConfig(fc_dim=256)
    test: InferenceConfig = InferenceConfig()

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for item in dataclasses.fields(self):
            if not isinstance(getattr(self, item.name), hints[item.name]):
                _fail(self, item.name, getattr(self, item.name), f"a {hints[item.name].__name__}")
        backbone, head = self.backbone, self.head
        if head.fc_dim is None and (backbone.name == "small" or backbone.fpn):
            _fail(self, "head.fc_dim", None, "set: the small backbone and FPN have no head of their own")
        if head.fc_dim is None and backbone.name == "vgg16" and head.output_size != 7:
            _fail(self, "head.output_size", head.output_size, "7 for VGG16's own fc6/fc7 head")
        if backbone.fpn and head.pooler == "align" and head.align_impl == "dense":
            _fail(self, "head.align_impl", "dense", "'torchvision' with FPN (dense RoIAlign needs one level)")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, lists and scalars."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """The inverse of ``to_dict``; missing keys take their defaults, unknown keys are refused."""
        return from_plain(cls, data, "ModelConfig")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ModelConfig:
        data = yaml.safe_load(text)
        return cls.from_dict({} if data is None else data)


def default_config(backbone: str = "small", fpn: bool = False) -> ModelConfig:
    """Each backbone's recipe.

    small (CPU, see docs/model.md): 12 anchors of 32-256 px, 1000 proposals before NMS and 300
    after, in training and at test, 64 RoIs per image, a 256-wide two-FC head.
    vgg16, resnet50, resnet101: the classic C4 recipe: 12000/2000 and 6000/300 proposals, 128 RoIs
    per image, the backbone's own head, conv1-2 (VGG) or stem and res2 (ResNet) frozen.
    fpn: one anchor shape per ratio and level (8 strides wide); proposal counts per level before
    NMS (small: as without FPN; others: 2000/1000 before and 1000 after NMS, as detectron2); no
    border filter, no min-size filter; a two-FC head 1024 wide (256 for small); torchvision's
    multi-level RoIAlign.
    mobilenet_v3_large (FPN only): torchvision's CPU-friendly detector,
    ``torchvision_config("fasterrcnn_mobilenet_v3_large_320_fpn")``, with frozen BatchNorm and
    its first 7 blocks frozen (for ImageNet weights; from scratch set ``backbone.norm`` "batch" and
    ``backbone.frozen_stages`` 0).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    if backbone == "mobilenet_v3_large":
        if not fpn:
            raise ValueError("backbone 'mobilenet_v3_large' has an FPN recipe only: pass fpn=True (--fpn)")
        return torchvision_config("fasterrcnn_mobilenet_v3_large_320_fpn")
    small = backbone == "small"
    if small:
        config = ModelConfig()
    else:
        config = ModelConfig(backbone=BackboneConfig(backbone, frozen_stages=2), anchors=AnchorConfig(),
                             proposals=ProposalConfig(), roi_sampling=RoISamplingConfig(),
                             head=HeadConfig(fc_dim=None))
    if not fpn:
        return config
    return replace(
        config,
        backbone=replace(config.backbone, fpn=True),
        anchors=AnchorConfig(scales=(8.0,)),
        rpn=replace(config.rpn, targets=_model_anchor_targets(allowed_border=None)),
        proposals=replace(_SMALL_PROPOSALS if small else _FPN_PROPOSALS, min_size=0.0),
        head=HeadConfig(fc_dim=256 if small else 1024, align_impl="torchvision"),
    )


def torchvision_config(arch: str) -> ModelConfig:
    """The recipe of a torchvision detector (``TORCHVISION_ARCHS``): every rule its eval mode
    applies, so that the imported model gives its detections, and its training settings.

    All: resize to 800 / 1333 (320 / 640 for the 320 model) by torchvision's floor rule, bilinear
    without antialiasing, padding to 32, per-axis box rescaling; torchvision's cell anchors
    (ratios 0.5, 1, 2) with strides from the padded image; sigmoid objectness; per-level top-n,
    then clipping, a 0.001 px min size and NMS 0.7 per level; 2000 / 1000 proposals (train / test)
    before and after NMS; RoIAlign 7 x 7, sampling ratio 2, unaligned; 512 RoIs per image, 25 %
    foreground; box coder (10, 10, 5, 5); score > 0.05, 0.01 px min size, NMS 0.5 per class, 100
    detections. resnet50_fpn: FrozenBatchNorm, FPN P2-P6, anchors 32-512 px one size per level,
    a two-FC head 1024 wide. v2: BatchNorm in the backbone, FPN and a 4-conv + 1-FC head, two RPN
    convolutions. mobilenet_v3_large(_320)_fpn: FPN on the last two stride-32 taps plus P6, sizes
    32-512 on every level, proposals with an object probability >= 0.05 (320: 150 at test).
    """
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"arch must be one of {', '.join(TORCHVISION_ARCHS)}, got {arch!r}")
    mobilenet = "mobilenet" in arch
    v2 = arch.endswith("_v2")
    small_input = arch.endswith("_320_fpn")
    norm = "batch" if v2 else "frozen"
    sizes = ((32.0, 64.0, 128.0, 256.0, 512.0),) if mobilenet else ((32.0,), (64.0,), (128.0,), (256.0,), (512.0,))
    return ModelConfig(
        preprocess=PreprocessConfig(min_size=320 if small_input else 800, max_size=640 if small_input else 1333,
                                    resize_rounding="floor", antialias=False, size_divisible=32,
                                    box_rescale="per_axis"),
        backbone=BackboneConfig("mobilenet_v3_large" if mobilenet else "resnet50", fpn=True,
                                frozen_stages=7 if mobilenet else 2, norm=norm, fpn_norm="batch" if v2 else "none"),
        anchors=AnchorConfig(sizes=sizes, cell_rule="torchvision", stride_rule="image"),
        rpn=RPNConfig(objectness="sigmoid", conv_depth=2 if v2 else 1,
                      targets=_model_anchor_targets(allowed_border=None)),
        proposals=ProposalConfig(ProposalLimits(2000, 2000),
                                 ProposalLimits(150, 150) if small_input else ProposalLimits(1000, 1000),
                                 nms_threshold=0.7, min_size=1e-3, scale_min_size=False, min_size_before_top_n=False,
                                 score_threshold=0.05 if mobilenet else 0.0),
        roi_sampling=RoISamplingConfig(batch_size_per_image=512),
        head=HeadConfig(align_impl="torchvision", fc_dim=1024, aligned=False, conv_layers=4 if v2 else 0,
                        conv_norm="batch" if v2 else "none", fc_layers=1 if v2 else 2),
        test=InferenceConfig(score_threshold=0.05, nms_threshold=0.5, detections_per_image=100, min_size=1e-2),
    )


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [to_plain(v) for v in value]
    return value


def from_plain(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{path} must be a mapping, got {data!r}")
    hints = _hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known: {', '.join(hints)}")
    values = {name: _coerce(hints[name], value, f"{path}.{name}") for name, value in data.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """A YAML value made into the annotated type: nested dataclasses and tuples."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_plain(hint, value, path)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if isinstance(value, list) and any(typing.get_origin(option) is tuple for option in options):
        return tuple(value)
    return value
