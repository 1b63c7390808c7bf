"""The recipes: each backbone's ``ModelConfig`` and those of the torchvision detectors."""
from __future__ import annotations

from dataclasses import replace

from .model import (
    BACKBONES,
    AnchorConfig,
    BackboneConfig,
    HeadConfig,
    InferenceConfig,
    ModelConfig,
    PreprocessConfig,
    ProposalConfig,
    ProposalLimits,
    RoISamplingConfig,
    RPNConfig,
    model_anchor_targets,
)

# The torchvision detectors FasterRCNN.from_torchvision imports, each with a recipe here.
TORCHVISION_ARCHS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
                     "fasterrcnn_mobilenet_v3_large_320_fpn")
_FPN_PROPOSALS = ProposalConfig(ProposalLimits(2000, 1000), ProposalLimits(1000, 1000))


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
        rpn=replace(config.rpn, targets=model_anchor_targets(allowed_border=None)),
        proposals=replace(config.proposals if small else _FPN_PROPOSALS, min_size=0.0),
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
                      targets=model_anchor_targets(allowed_border=None)),
        proposals=ProposalConfig(ProposalLimits(2000, 2000),
                                 ProposalLimits(150, 150) if small_input else ProposalLimits(1000, 1000),
                                 nms_threshold=0.7, min_size=1e-3, scale_min_size=False, min_size_before_top_n=False,
                                 score_threshold=0.05 if mobilenet else 0.0),
        roi_sampling=RoISamplingConfig(batch_size_per_image=512),
        head=HeadConfig(align_impl="torchvision", fc_dim=1024, aligned=False, conv_layers=4 if v2 else 0,
                        conv_norm="batch" if v2 else "none", fc_layers=1 if v2 else 2),
        test=InferenceConfig(score_threshold=0.05, nms_threshold=0.5, detections_per_image=100, min_size=1e-2),
    )
