"""The configuration of a run: model, training and data, as one frozen tree with a YAML form.

A run's configuration is built from the defaults, then a YAML file (any subset of the tree),
then ``KEY=VALUE`` assignments with dotted keys (``train.lr=0.01``, ``model.head.fc_dim=512``).
Errors name the dotted key ("train.lr must be a number >= 0, got -1").

Keys of earlier versions (``RETIRED_KEYS``) are refused with a pointer to their replacement,
except in a configuration a checkpoint stored (``from_stored``), where the old value is read as
the nearest new one: ``train.amp`` true as ``train.precision`` auto (mixed precision where it
pays), false as fp32.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..field_checks import check_nodes
from .data import DataConfig
from .model import ModelConfig
from .plain import assign, from_plain, overlay, parse_assignments, read_yaml_mapping, to_plain
from .train import TrainConfig

# A retired dotted key -> the key that replaced it and how a stored value of the old key reads there.
RETIRED_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "train.amp": ("train.precision", lambda amp: "fp32" if amp is False else "auto"),
}


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
        _refuse_retired(data, "the configuration")
        return overlay(cls(), data)

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> RunConfig:
        """A configuration a checkpoint stored (``to_dict``), of this version or an earlier one:
        ``from_dict`` with each retired key's value read as its replacement's."""
        plain = to_plain(data)
        for old, (new, convert) in RETIRED_KEYS.items():
            section, _, name = old.partition(".")
            if isinstance(plain.get(section), dict) and name in plain[section]:
                value = convert(plain[section].pop(name))
                plain[section].setdefault(new.partition(".")[2], value)
        return cls.from_dict(plain)

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
        data = read_yaml_mapping(path.read_text(), str(path))
        _refuse_retired(data, str(path))
        return overlay(self, data)

    def with_assignments(self, assignments: Sequence[str]) -> RunConfig:
        """This configuration with ``KEY=VALUE`` assignments applied, in order (values in YAML)."""
        return self.with_values(parse_assignments(assignments))

    def with_values(self, values: Mapping[str, Any]) -> RunConfig:
        """This configuration with the dotted keys of ``values`` set, in order."""
        plain = self.to_dict()
        for key, value in values.items():
            if key in RETIRED_KEYS:
                raise ValueError(_retired_message(key))
            assign(plain, key, value)
        return from_plain(RunConfig, plain)


def _retired_message(key: str) -> str:
    return f"{key} is no longer a configuration key: use {RETIRED_KEYS[key][0]} instead"


def _refuse_retired(data: Mapping[str, Any], source: str) -> None:
    """ValueError naming ``source`` and the replacement when the nested ``data`` holds a retired key."""
    for key in RETIRED_KEYS:
        section, _, name = key.partition(".")
        if isinstance(data.get(section), Mapping) and name in data[section]:
            raise ValueError(f"{source}: {_retired_message(key)}")
