"""The anchors a model puts on an image: strides, feature-map sizes and anchor grids.

Feature-map sizes come from the backbone itself, run on the meta device (shapes only, no
arithmetic and no weights), on the zero-padded batch shape the model sees.
"""
from __future__ import annotations

import math
from dataclasses import replace
from functools import lru_cache

import torch
from torch import Tensor

from ..anchors import AnchorGrid, cell_anchors, cell_strides, grid_anchors
from ..backbones import Backbone, build_backbone
from ..config import AnchorConfig, BackboneConfig


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    """The zero-padded (height, width) of an image batched alone: each side rounded up to a
    multiple of ``multiple`` (``PreprocessConfig.size_divisible``, as ``collate`` pads)."""
    return math.ceil(height / multiple) * multiple, math.ceil(width / multiple) * multiple


class FeatureGeometry:
    """Strides and feature-map sizes of a backbone configuration."""

    def __init__(self, backbone: BackboneConfig) -> None:
        self.backbone = _meta_backbone(replace(backbone, weights=None, frozen_stages=0))

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(self.backbone.strides)

    def feature_sizes(self, height: int, width: int) -> tuple[tuple[int, int], ...]:
        """The (H, W) of each feature level for a padded (height, width) input, finest first."""
        return _feature_sizes(self.backbone, int(height), int(width))


@lru_cache(maxsize=8)
def _meta_backbone(config: BackboneConfig) -> Backbone:
    with torch.device("meta"):
        backbone, _ = build_backbone(config)
    return backbone.eval()


@lru_cache(maxsize=256)
def _feature_sizes(backbone: Backbone, height: int, width: int) -> tuple[tuple[int, int], ...]:
    with torch.no_grad():
        features = backbone(torch.empty(1, 3, height, width, device="meta"))
    return tuple((int(f.shape[-2]), int(f.shape[-1])) for f in features)


def base_anchors(anchors: AnchorConfig, strides: tuple[int, ...]) -> list[Tensor]:
    """Each level's cell anchors (A, 4), as ``FasterRCNN`` makes them (a test holds them equal)."""
    return [cell_anchors(anchors.cell_rule, stride, anchors.level_sizes(stride, level), anchors.ratios)
            for level, stride in enumerate(strides)]


def anchor_grids(bases: list[Tensor], anchors: AnchorConfig, image_size: tuple[int, int],
                 sizes: tuple[tuple[int, int], ...], strides: tuple[int, ...]) -> list[AnchorGrid]:
    """The float32 CPU anchor grid of each level for a padded ``image_size`` (H, W) with feature
    maps of ``sizes``, level-major as ``FasterRCNN.anchor_grids`` makes them."""
    return [grid_anchors(base, height, width, cell_strides(anchors.stride_rule, stride, image_size, (height, width)))
            for base, (height, width), stride in zip(bases, sizes, strides)]
