"""The configuration of a run: model, training and data, as one frozen tree with a YAML form.

A run's configuration is built from the defaults, then a YAML file (any subset of the tree),
then ``KEY=VALUE`` assignments with dotted keys (``train.lr=0.01``, ``model.head.fc_dim=512``).
Errors name the dotted key ("train.lr must be a number >= 0, got -1").
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..field_checks import check_nodes
from .data import DataConfig
from .model import ModelConfig
from .plain import assign, from_plain, overlay, parse_assignments, read_yaml_mapping, to_plain
from .train import TrainConfig


@dataclass(frozen=True)
class RunConfig:
    """A whole run: the detector, its training, its data."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        check_nodes(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, lists and scalars."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """The inverse of ``to_dict``. Keys left out take the defaults of ``RunConfig()``;
        unknown keys are refused."""
        return overlay(cls(), data)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> RunConfig:
        return cls.from_dict(read_yaml_mapping(text, "<yaml>"))

    def with_yaml_file(self, path: str | Path) -> RunConfig:
        """This configuration with the keys of a YAML file (any subset of the tree) laid over it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return overlay(self, read_yaml_mapping(path.read_text(), str(path)))

    def with_assignments(self, assignments: Sequence[str]) -> RunConfig:
        """This configuration with ``KEY=VALUE`` assignments applied, in order (values in YAML)."""
        return self.with_values(parse_assignments(assignments))

    def with_values(self, values: Mapping[str, Any]) -> RunConfig:
        """This configuration with the dotted keys of ``values`` set, in order."""
        plain = self.to_dict()
        for key, value in values.items():
            assign(plain, key, value)
        return from_plain(RunConfig, plain)
