"""Configuration: frozen, validated dataclass trees with a YAML round trip; every default stated once.

Modules: ``model`` (the detector's nodes, ``ModelConfig``), ``recipes`` (each backbone's and
torchvision's ``ModelConfig``), ``train`` (``TrainConfig``), ``data`` (``DataConfig``,
``SyntheticConfig``), ``augment`` (``data.augment``'s recipes and list form, checked against
torchvision.transforms.v2), ``run`` (``RunConfig``: model, train, data), ``plain`` (plain data,
YAML layering, ``--set`` assignments). Values are checked by ``frcnn.field_checks``. The package
reads no files but the YAML it is given, and imports nothing from frcnn but ``frcnn.field_checks``
and the anchor target layer's ``AnchorTargetConfig``.
"""
from ..anchor_targets.config import AnchorTargetConfig
from .data import BAD_DATA_POLICIES, DataConfig, SyntheticConfig
from .model import (
    BACKBONES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PUBLISHED_WEIGHTS,
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
from .plain import from_plain, merge, overlay, parse_value, to_plain
from .recipes import TORCHVISION_ARCHS, default_config, torchvision_config
from .run import RunConfig
from .train import METRIC_COLUMNS, SCHEDULES, TRAIN_LOSSES, VALIDATION_COLUMNS, VALIDATION_LOSSES, TrainConfig

__all__ = [
    "AnchorConfig", "AnchorTargetConfig", "BACKBONES", "BAD_DATA_POLICIES", "BackboneConfig", "DataConfig",
    "HeadConfig", "IMAGENET_MEAN", "IMAGENET_STD", "InferenceConfig", "METRIC_COLUMNS", "ModelConfig",
    "PUBLISHED_WEIGHTS", "PreprocessConfig", "ProposalConfig", "ProposalLimits", "RPNConfig", "RoISamplingConfig",
    "RunConfig",
    "SCHEDULES", "SyntheticConfig", "TORCHVISION_ARCHS", "TRAIN_LOSSES", "TrainConfig", "VALIDATION_COLUMNS",
    "VALIDATION_LOSSES", "default_config", "from_plain", "merge", "model_anchor_targets", "overlay", "parse_value",
    "to_plain", "torchvision_config",
]
