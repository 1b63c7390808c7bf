"""Backbones: images (B, 3, H, W) -> feature maps at known strides, with an optional FPN.

A backbone is a sequence of stages. Without FPN the detector uses the last stage's output (stride
16); with FPN it uses its taps (by default, for each stride >= 4, the last stage at that stride),
merged top-down, plus one extra coarser level for the RPN. ``build_backbone`` also returns the backbone's own RoI box
head where it has one (VGG16's fc6/fc7, ResNet's C5 stage).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from .checkpoint import read_torch_file
from .config import PUBLISHED_WEIGHTS, BackboneConfig
from .hub import published_weights_file

SMALL_WIDTHS = (32, 64, 128, 256)
SMALL_GROUPS = 8


class BoxHead(nn.Sequential):
    """A RoI box head trunk: pooled features (R, C, S, S) -> (R, out_features)."""

    def __init__(self, out_features: int, *layers: nn.Module) -> None:
        super().__init__(*layers)
        self.out_features = out_features


def norm_layer(norm: str) -> type[nn.Module]:
    """The BatchNorm module of a ``BackboneConfig.norm`` ("frozen" or "batch"), eps 1e-5."""
    return FrozenBatchNorm2d if norm == "frozen" else nn.BatchNorm2d


def _fpn_conv(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> nn.Module:
    """A biased convolution (norm "none") or an unbiased one followed by BatchNorm ("batch")."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm == "none")
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if norm == "none":
        nn.init.zeros_(conv.bias)
        return conv
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class FeaturePyramid(nn.Module):
    """FPN: lateral 1x1 and output 3x3 convolutions (``norm``: see ``_fpn_conv``) over top-down
    nearest-upsampled sums, plus one extra level, the coarsest output subsampled by 2."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, norm: str = "none") -> None:
        super().__init__()
        self.lateral = nn.ModuleList(_fpn_conv(c, out_channels, 1, norm) for c in in_channels)
        self.output = nn.ModuleList(_fpn_conv(out_channels, out_channels, 3, norm) for _ in in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Feature maps finest first -> len(features) + 1 maps of ``out_channels``, finest first."""
        merged = self.lateral[-1](features[-1])
        outputs = [self.output[-1](merged)]
        for feature, lateral, output in zip(features[-2::-1], self.lateral[-2::-1], self.output[-2::-1]):
            merged = lateral(feature) + F.interpolate(merged, size=feature.shape[-2:], mode="nearest")
            outputs.insert(0, output(merged))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))
        return outputs


class Backbone(nn.Module):
    """Stages run in order; ``forward`` returns the maps the detector uses, finest first.

    ``strides`` and ``out_channels`` describe those maps; the RoI head pools from the first
    ``num_roi_levels`` of them (FPN's extra level serves the RPN only).
    """

    def __init__(self, stages: Sequence[nn.Module], stage_strides: Sequence[int], stage_channels: Sequence[int],
                 fpn_channels: int | None = None, taps: Sequence[int] | None = None, fpn_norm: str = "none") -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        if fpn_channels is None:
            self.taps = (len(stages) - 1,)
            self.fpn = None
            self.strides = (stage_strides[-1],)
            self.out_channels = stage_channels[-1]
            self.num_roi_levels = 1
        else:
            self.taps = tuple(taps) if taps is not None else _pyramid_taps(stage_strides)
            self.fpn = FeaturePyramid([stage_channels[i] for i in self.taps], fpn_channels, fpn_norm)
            tap_strides = tuple(stage_strides[i] for i in self.taps)
            self.strides = (*tap_strides, 2 * tap_strides[-1])
            self.out_channels = fpn_channels
            self.num_roi_levels = len(self.taps)

    def forward(self, images: Tensor) -> list[Tensor]:
        """images (B, 3, H, W) -> feature maps (B, out_channels, H / s, W / s), one per stride s."""
        tapped = []
        x = images
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.taps:
                tapped.append(x)
        return tapped if self.fpn is None else self.fpn(tapped)

    def freeze(self, num_stages: int) -> None:
        """Stop training the first ``num_stages`` stages."""
        if not 0 <= num_stages <= len(self.stages):
            raise ValueError(f"BackboneConfig.frozen_stages must be in [0, {len(self.stages)}] for this "
                             f"backbone, got {num_stages}")
        for stage in self.stages[:num_stages]:
            stage.requires_grad_(False)


def _pyramid_taps(strides: Sequence[int]) -> tuple[int, ...]:
    """Indices of the last stage at each distinct stride >= 4."""
    return tuple(i for i, s in enumerate(strides) if s >= 4 and (i + 1 == len(strides) or strides[i + 1] != s))


def _conv_gn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.GroupNorm(SMALL_GROUPS, out_channels), nn.ReLU(inplace=True))


def _small_stages() -> tuple[list[nn.Module], tuple[int, ...], tuple[int, ...]]:
    """A stride-2 stem and three stages (a stride-2 and a stride-1 3x3 conv each), GroupNorm
    throughout so that it trains from scratch with batches of a few images."""
    stages: list[nn.Module] = [_conv_gn_relu(3, SMALL_WIDTHS[0], 2)]
    for in_channels, width in zip(SMALL_WIDTHS, SMALL_WIDTHS[1:]):
        stages.append(nn.Sequential(_conv_gn_relu(in_channels, width, 2), _conv_gn_relu(width, width, 1)))
    return stages, (2, 4, 8, 16), SMALL_WIDTHS


def _load_state_dict(module: nn.Module, config: BackboneConfig) -> None:
    """Load ``config.weights`` into ``module``: a local state dict, or "imagenet": torchvision's
    published ImageNet weights of ``config.name`` from torch's hub cache (downloaded on first use)."""
    path = published_weights_file(config.name) if config.weights == PUBLISHED_WEIGHTS else config.weights
    module.load_state_dict(read_torch_file(path, expected="backbone weights, a state dict"))


def _vgg16(config: BackboneConfig, own_head: bool):
    net = torchvision.models.vgg16(weights=None)
    if config.weights:
        _load_state_dict(net, config)
    features = net.features
    # conv1 .. conv5 (conv5_3 at stride 16: the last max-pool is dropped); each block after the
    # first starts with the previous block's max-pool.
    stages = [features[0:4], features[4:9], features[9:16], features[16:23], features[23:30]]
    head = BoxHead(4096, nn.Flatten(), *net.classifier[:-1]) if own_head else None
    return stages, (1, 2, 4, 8, 16), (64, 128, 256, 512, 512), head


def _resnet(config: BackboneConfig, own_head: bool):
    build = {"resnet50": torchvision.models.resnet50, "resnet101": torchvision.models.resnet101}[config.name]
    net = build(weights=None, norm_layer=norm_layer(config.norm))
    if config.weights:
        _load_state_dict(net, config)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    stages = [stem, net.layer1, net.layer2, net.layer3]
    strides, channels = (4, 4, 8, 16), (64, 256, 512, 1024)
    if config.fpn:
        return [*stages, net.layer4], (*strides, 32), (*channels, 2048), None
    head = BoxHead(2048, net.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten()) if own_head else None
    return stages, strides, channels, head


# torchvision's mobilenet FPN taps the first stride-32 block and the last block of ``features``.
MOBILENET_TAPS = (13, 16)


def _mobilenet_v3_large(config: BackboneConfig):
    """``features`` of torchvision's MobileNetV3-Large, one stage per block (17)."""
    net = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm_layer(config.norm))
    if config.weights:
        _load_state_dict(net, config)
    stages = list(net.features)
    strides, stride = [], 1
    for block in stages:
        stride *= max(m.stride[0] for m in block.modules() if isinstance(m, nn.Conv2d))
        strides.append(stride)
    return stages, tuple(strides), tuple(block.out_channels for block in stages)


def build_backbone(config: BackboneConfig, own_head: bool = False) -> tuple[Backbone, BoxHead | None]:
    """The backbone of ``config`` and, when ``own_head`` and it has one, its own RoI box head.

    torchvision models are built with ``weights=None``; ``config.weights`` names a local state
    dict or "imagenet" (``_load_state_dict``). ResNets and MobileNetV3 use ``config.norm``'s
    BatchNorm; the first ``config.frozen_stages`` stages are frozen.
    """
    taps = None
    head = None
    if config.name == "small":
        stages, strides, channels = _small_stages()
    elif config.name == "vgg16":
        stages, strides, channels, head = _vgg16(config, own_head)
    elif config.name == "mobilenet_v3_large":
        stages, strides, channels = _mobilenet_v3_large(config)
        taps = MOBILENET_TAPS
    else:
        stages, strides, channels, head = _resnet(config, own_head)
    backbone = Backbone(stages, strides, channels, config.fpn_channels if config.fpn else None, taps,
                        config.fpn_norm)
    if config.name == "small" and config.weights:
        _load_state_dict(backbone.stages, config)
    backbone.freeze(config.frozen_stages)
    if own_head and head is None:
        raise ValueError(f"backbone {config.name!r}{' with FPN' if config.fpn else ''} has no RoI head of its "
                         "own; set HeadConfig.fc_dim")
    return backbone, head
