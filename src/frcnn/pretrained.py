"""Weights from elsewhere: torchvision's Faster R-CNN detectors as frcnn models, frcnn checkpoints,
and starting a model from any of them (``init_weights``).

A torchvision state dict is renamed into frcnn's layout by the rules of its architecture's
recipe (``config.torchvision_config``); BatchNorm buffers are carried whether the checkpoint has
frozen ones (no ``num_batches_tracked``, torchvision's COCO weights) or plain ones.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import TORCHVISION_ARCHS, ModelConfig, torchvision_config
from .model import FasterRCNN

SPEC_PREFIX = "torchvision:"
# The layers whose shapes depend on the number of classes.
CLASS_SPECIFIC = ("roi_head.cls_score.", "roi_head.bbox_pred.")
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


def fit_batchnorm_buffers(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with ``num_batches_tracked`` made to match ``target``'s BatchNorm kind: dropped
    where the target's norm is frozen, zero where the target's is plain and the source's frozen."""
    fitted = {name: value for name, value in state.items()
              if not name.endswith(".num_batches_tracked") or name in target}
    for name, value in target.items():
        if name.endswith(".num_batches_tracked") and name not in fitted:
            fitted[name] = torch.zeros_like(value)
    return fitted


def _check_fit(state: Mapping[str, Tensor], target: Mapping[str, Tensor], origin: str) -> None:
    """One-line ValueError for the first tensor missing, unexpected or of another shape."""
    for name, value in target.items():
        if name not in state:
            raise ValueError(f"{origin}: tensor {name} (shape {tuple(value.shape)}) is missing")
        if state[name].shape != value.shape:
            raise ValueError(f"{origin}: tensor {name} has shape {tuple(state[name].shape)}, the model's is "
                             f"{tuple(value.shape)}")
    for name, value in state.items():
        if name not in target:
            raise ValueError(f"{origin}: tensor {name} (shape {tuple(value.shape)}) has no place in the model")


def _read_state(source: Any) -> dict[str, Tensor]:
    """A state dict from a model, a mapping or the path of a saved state dict."""
    if isinstance(source, nn.Module):
        return dict(source.state_dict())
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"torchvision checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged or foreign file raises one of several types
        raise ValueError(f"{path} is not a readable state dict ({type(error).__name__})") from error
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict (a mapping of names to tensors)")
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


def from_torchvision(source: Any, arch: str | None = None) -> FasterRCNN:
    """``FasterRCNN.from_torchvision``: a torchvision detector (model, state dict or path) as an
    frcnn model in eval mode. From a model, its transform sizes and thresholds are kept too."""
    if isinstance(source, nn.Module):
        arch = arch or torchvision_arch(source)
        config = model_rules(source, torchvision_config(arch))
    elif arch is None:
        raise ValueError(f"arch is needed to import a state dict: one of {', '.join(TORCHVISION_ARCHS)}")
    else:
        config = torchvision_config(arch)
    return build_model(torchvision_checkpoint(_read_state(source), config, f"torchvision {arch} weights"))


def parse_spec(spec: str) -> tuple[str, str] | None:
    """``torchvision:ARCH:PATH`` -> (ARCH, PATH); None for anything else (an frcnn checkpoint)."""
    if not spec.startswith(SPEC_PREFIX):
        return None
    arch, _, path = spec[len(SPEC_PREFIX):].partition(":")
    if arch not in TORCHVISION_ARCHS or not path:
        raise ValueError(f"{spec}: expected torchvision:ARCH:PATH with ARCH one of {', '.join(TORCHVISION_ARCHS)}")
    return arch, path


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint spec holds: the model configuration, class names, frcnn-named weights,
    and an frcnn checkpoint's whole run configuration (a plain dict; None for torchvision's)."""

    config: ModelConfig
    class_names: tuple[str, ...]
    state: dict[str, Tensor]
    origin: str
    run_config: dict[str, Any] | None = None


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
    """An frcnn checkpoint file or ``torchvision:ARCH:PATH``, read on the CPU."""
    parsed = parse_spec(spec)
    if parsed is not None:
        arch, path = parsed
        return torchvision_checkpoint(_read_state(path), torchvision_config(arch), path)
    from .engine.checkpoint import load_checkpoint
    payload = load_checkpoint(spec)
    config = ModelConfig.from_dict(payload["config"].get("model", {}))
    return Checkpoint(config, tuple(payload["class_names"]), dict(payload["model"]), spec, payload["config"])


def build_model(checkpoint: Checkpoint, config: ModelConfig | None = None,
                device: torch.device | str | None = None) -> FasterRCNN:
    """The checkpoint's model (with ``config`` instead of its own if given), in eval mode."""
    model = FasterRCNN(len(checkpoint.class_names), config=config or checkpoint.config,
                       class_names=checkpoint.class_names)
    target = model.state_dict()
    state = fit_batchnorm_buffers(checkpoint.state, target)
    _check_fit(state, target, checkpoint.origin)
    model.load_state_dict(state)
    return model.to(device or "cpu").eval()


def load_model(spec: str, device: torch.device | str | None = None) -> FasterRCNN:
    """``FasterRCNN.load``."""
    return build_model(read_checkpoint(spec), device=device)


@dataclass(frozen=True)
class InitReport:
    """Which of the model's tensors ``init_weights`` loaded and which it left new."""

    loaded: tuple[str, ...]
    new: tuple[str, ...]

    def summary(self) -> str:
        """Two lines: loaded tensors counted by top-level module, new tensors by name."""
        groups: dict[str, int] = {}
        for name in self.loaded:
            key = ".".join(name.split(".")[:2])
            groups[key] = groups.get(key, 0) + 1
        loaded = ", ".join(f"{key} ({count})" for key, count in groups.items())
        return (f"loaded {len(self.loaded)} tensors: {loaded or 'none'}\n"
                f"new {len(self.new)} tensors: {', '.join(self.new) or 'none'}")


def init_weights(model: nn.Module, spec: str) -> InitReport:
    """Start ``model`` from the checkpoint ``spec`` (frcnn or ``torchvision:ARCH:PATH``): every
    tensor whose name and shape fit is loaded; the class-specific layers (the box classifier and
    regressor) stay new when their shapes differ; any other missing, unexpected or differently
    shaped tensor is a ValueError naming it and both shapes."""
    checkpoint = read_checkpoint(spec)
    target = model.state_dict()
    state = fit_batchnorm_buffers(checkpoint.state, target)
    new = tuple(name for name in target if name.startswith(CLASS_SPECIFIC)
                and (name not in state or state[name].shape != target[name].shape))
    kept = {name: value for name, value in state.items() if name not in new}
    _check_fit(kept, {name: value for name, value in target.items() if name not in new}, checkpoint.origin)
    model.load_state_dict({**target, **kept})
    return InitReport(tuple(kept), new)
