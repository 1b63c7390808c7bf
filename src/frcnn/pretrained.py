"""Weights from elsewhere: torchvision's Faster R-CNN detectors as frcnn weights (``Checkpoint``),
and the checkpoint specs that name either kind (``read_checkpoint``); ``torchvision:ARCH`` names
torchvision's published COCO weights of ARCH (``hub.published_weights_file``).

A torchvision state dict is renamed into frcnn's layout by the rules of its architecture's
recipe (``config.torchvision_config``); BatchNorm buffers are carried whether the checkpoint has
frozen ones (no ``num_batches_tracked``, torchvision's COCO weights) or plain ones.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .checkpoint import Checkpoint, CheckpointError, read_frcnn_checkpoint, read_torch_file
from .config import TORCHVISION_ARCHS, ModelConfig, torchvision_config
from .hub import published_weights_file

SPEC_PREFIX = "torchvision:"
COCO_CLASSES = 91


def coco_class_names() -> tuple[str, ...]:
    """The 90 names (labels 1..90, 'N/A' for unused ids) of torchvision's COCO detectors."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
    return tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:])


def _rename_rules(config: ModelConfig) -> list[tuple[str, str]]:
    """(pattern, replacement) pairs from torchvision's parameter names to frcnn's for ``config``.

    Old torchvision files name the FPN and RPN convolutions without the ``.0`` of
    ``Conv2dNormActivation`` (``inner_blocks.0.weight``, ``rpn.head.conv.weight``); both forms map.
    """
    plain_fpn = config.backbone.fpn_norm == "none"
    rules = [
        (r"^backbone\.body\.conv1\.", "backbone.stages.0.0."),
        (r"^backbone\.body\.bn1\.", "backbone.stages.0.1."),
        (r"^backbone\.body\.layer(\d)\.", r"backbone.stages.\1."),
        (r"^backbone\.body\.(\d+)\.", r"backbone.stages.\1."),
        (r"^rpn\.head\.conv\.(weight|bias)$", r"rpn_head.conv.0.0.\1"),
        (r"^rpn\.head\.conv\.", "rpn_head.conv."),
        (r"^rpn\.head\.cls_logits\.", "rpn_head.cls_score."),
        (r"^rpn\.head\.bbox_pred\.", "rpn_head.bbox_pred."),
        (r"^roi_heads\.box_head\.fc6\.", "roi_head.trunk.1."),
        (r"^roi_heads\.box_head\.fc7\.", "roi_head.trunk.3."),
        (r"^roi_heads\.box_head\.", "roi_head.trunk."),
        (r"^roi_heads\.box_predictor\.", "roi_head."),
    ]
    for source, target in (("inner_blocks", "lateral"), ("layer_blocks", "output")):
        if plain_fpn:
            rules.append((rf"^backbone\.fpn\.{source}\.(\d+)\.(?:0\.)?(weight|bias)$", rf"backbone.fpn.{target}.\1.\2"))
        rules.append((rf"^backbone\.fpn\.{source}\.", f"backbone.fpn.{target}."))
    return rules


def rename_torchvision(state: Mapping[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """A torchvision detector's state dict with frcnn's names (first matching rule per name)."""
    rules = _rename_rules(config)
    renamed = {}
    for name, value in state.items():
        for pattern, replacement in rules:
            new_name, count = re.subn(pattern, replacement, name)
            if count:
                renamed[new_name] = value
                break
        else:
            renamed[name] = value
    return renamed


def read_torchvision_state(source: Any) -> dict[str, Tensor]:
    """A state dict from a model, a mapping or the path of a saved state dict."""
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, Mapping):
        return dict(source)
    state = read_torch_file(source)
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{source} is not a state dict (a mapping of names to tensors)")
    return dict(state)


def torchvision_arch(model: nn.Module) -> str:
    """The ``TORCHVISION_ARCHS`` name of a torchvision FasterRCNN model."""
    if "13" in dict(model.backbone.body.named_children()):  # the blocks of MobileNetV3's features
        return ("fasterrcnn_mobilenet_v3_large_320_fpn" if tuple(model.transform.min_size) == (320,)
                else "fasterrcnn_mobilenet_v3_large_fpn")
    return "fasterrcnn_resnet50_fpn_v2" if len(model.rpn.head.conv) == 2 else "fasterrcnn_resnet50_fpn"


def model_rules(model: nn.Module, config: ModelConfig) -> ModelConfig:
    """``config`` with the settings a torchvision model carries as attributes rather than weights:
    its transform's sizes and normalisation, RPN counts and thresholds, box thresholds."""
    transform, rpn, heads = model.transform, model.rpn, model.roi_heads
    return replace(
        config,
        preprocess=replace(config.preprocess, min_size=int(transform.min_size[-1]), max_size=int(transform.max_size),
                           mean=tuple(transform.image_mean), std=tuple(transform.image_std),
                           size_divisible=int(transform.size_divisible)),
        proposals=replace(config.proposals, train=replace(config.proposals.train,
                                                          pre_nms_top_n=rpn._pre_nms_top_n["training"],
                                                          post_nms_top_n=rpn._post_nms_top_n["training"]),
                          test=replace(config.proposals.test, pre_nms_top_n=rpn._pre_nms_top_n["testing"],
                                       post_nms_top_n=rpn._post_nms_top_n["testing"]),
                          nms_threshold=float(rpn.nms_thresh), min_size=float(rpn.min_size),
                          score_threshold=float(rpn.score_thresh)),
        test=replace(config.test, score_threshold=float(heads.score_thresh), nms_threshold=float(heads.nms_thresh),
                     detections_per_image=int(heads.detections_per_img)),
    )


def checkpoint_norm(state: Mapping[str, Tensor]) -> str:
    """The backbone BatchNorm kind a torchvision state dict was saved from: "batch" when it has
    ``num_batches_tracked`` buffers (``nn.BatchNorm2d``: models built without weights, v2), else
    "frozen" (``FrozenBatchNorm2d``: the COCO v1 and MobileNet weights)."""
    plain = any(name.startswith("backbone.body.") and name.endswith(".num_batches_tracked") for name in state)
    return "batch" if plain else "frozen"


def torchvision_weights(source: Any, arch: str | None = None) -> Checkpoint:
    """A torchvision detector (model, state dict, the path of one, or an ARCH name: its published
    COCO weights) as frcnn weights for ``FasterRCNN.load``: the recipe of ``arch`` (found from the
    model when ``source`` is one, whose transform sizes and thresholds are then kept too)."""
    if isinstance(source, str) and source in TORCHVISION_ARCHS:
        if arch not in (None, source):
            raise ValueError(f"source names {source} but arch is {arch}")
        arch, source = source, published_weights_file(source)
    if isinstance(source, nn.Module):
        arch = arch or torchvision_arch(source)
        config = model_rules(source, torchvision_config(arch))
    elif arch is None:
        raise ValueError(f"arch is needed to import a state dict: one of {', '.join(TORCHVISION_ARCHS)}")
    else:
        config = torchvision_config(arch)
    return torchvision_checkpoint(read_torchvision_state(source), config, f"torchvision {arch} weights")


def parse_spec(spec: str) -> tuple[str, str | None] | None:
    """``torchvision:ARCH:PATH`` -> (ARCH, PATH), ``torchvision:ARCH`` -> (ARCH, None: the
    published weights); None for anything else (an frcnn checkpoint)."""
    if not spec.startswith(SPEC_PREFIX):
        return None
    arch, _, path = spec[len(SPEC_PREFIX):].partition(":")
    if arch not in TORCHVISION_ARCHS:
        raise ValueError(f"{spec}: expected torchvision:ARCH or torchvision:ARCH:PATH with ARCH one of "
                         f"{', '.join(TORCHVISION_ARCHS)}")
    return arch, path or None


def spec_file(spec: str) -> Path:
    """The file a checkpoint spec reads: an frcnn checkpoint's path, ``torchvision:ARCH:PATH``'s
    PATH, or for ``torchvision:ARCH`` the file of torchvision's published COCO weights of ARCH in
    torch's hub cache (downloaded on first use: ``hub.published_weights_file``)."""
    parsed = parse_spec(spec)
    if parsed is None:
        return Path(spec)
    arch, path = parsed
    return Path(path) if path is not None else published_weights_file(arch)


def torchvision_checkpoint(state: Mapping[str, Tensor], config: ModelConfig, origin: str) -> Checkpoint:
    """A torchvision detector's state dict for ``config`` (its recipe), renamed; the backbone's
    BatchNorm follows the checkpoint's (``checkpoint_norm``), as torchvision's own builders pick
    it; the class count comes from the box predictor (COCO's names for 91 classes)."""
    config = replace(config, backbone=replace(config.backbone, norm=checkpoint_norm(state)))
    renamed = rename_torchvision(state, config)
    predictor = renamed.get("roi_head.cls_score.weight")
    if predictor is None:
        raise ValueError(f"{origin}: no roi_heads.box_predictor.cls_score.weight: not a Faster R-CNN state dict")
    count = predictor.shape[0]
    names = coco_class_names() if count == COCO_CLASSES else tuple(f"class_{i}" for i in range(1, count))
    return Checkpoint(config, names, renamed, origin)


def read_checkpoint(spec: str) -> Checkpoint:
    """The weights of a checkpoint spec, read on the CPU: an frcnn checkpoint file,
    ``torchvision:ARCH:PATH`` (a torchvision detector's saved state dict) or ``torchvision:ARCH``
    (torchvision's published COCO weights of ARCH, ``spec_file``)."""
    parsed = parse_spec(spec)
    path = spec_file(spec)
    if parsed is None:
        return read_frcnn_checkpoint(path)
    return torchvision_checkpoint(read_torchvision_state(path), torchvision_config(parsed[0]), str(path))
