"""The configuration of a run: model, training and data, as one frozen tree with a YAML form.

A run's configuration is built from the defaults, then a YAML file (any subset of the tree),
then ``KEY=VALUE`` assignments with dotted keys (``train.lr=0.01``, ``model.head.fc_dim=512``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import ModelConfig, from_plain, to_plain
from ..data import (
    DetectionDataset,
    DetectionTransform,
    ReadOptions,
    SyntheticConfig,
    build_dataset,
    resolve_class_names,
)
from .results import VALIDATION_COLUMNS

SCHEDULES = ("cosine", "step")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(owner: str, name: str, value: object, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{owner}.{name} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimiser, schedule, budget, logging, checkpointing and validation.

    The budget is the first reached of ``max_iters``, ``epochs`` (passes over the training set,
    fractions allowed) and ``max_minutes`` of training; null disables a limit, and at least one
    must be set. ``lr_steps`` are the fractions of the budget at which the step schedule
    multiplies the rate by ``gamma``. ``batch_size`` is per process.

    Validation during training (docs/train.md): every ``eval_every`` iterations (null: once per
    epoch) and, with a time budget, at least every ``eval_minutes`` of training (null: no time
    trigger), on the first ``eval_images`` images of the validation split (null: all of them),
    and at the end; metrics.json scores the final weights on the whole split. ``best_metric``
    (a validation column of results.csv; losses count lower as better) chooses model_best.pt;
    ``patience`` evaluations without improvement stop the run (null: never).

    Distributed runs: ``dist_timeout_s`` bounds every wait for another process (the group
    forming, each collective); a peer silent that long ends the run. It must exceed the longest
    time rank 0 works alone: an evaluation, and the final one of the whole validation split.
    """

    batch_size: int = 4
    epochs: float | None = None
    max_iters: int | None = None
    max_minutes: float | None = 10.5
    lr: float = 0.04
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    schedule: str = "cosine"
    lr_steps: tuple[float, ...] = (0.75, 0.9)
    gamma: float = 0.1
    clip_grad_norm: float | None = None
    amp: bool = True
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    num_workers: int = 0
    eval_batch_size: int = 2
    eval_every: int | None = None
    eval_minutes: float | None = 3.0
    eval_images: int | None = 100
    best_metric: str = "voc07_map"
    patience: int | None = None
    dist_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        def require(name: str, ok: bool, expected: str) -> None:
            _require("train", name, getattr(self, name), ok, expected)

        def is_int(name: str, minimum: int) -> bool:
            value = getattr(self, name)
            return isinstance(value, int) and not isinstance(value, bool) and value >= minimum

        for name in ("batch_size", "log_every", "checkpoint_every", "eval_batch_size"):
            require(name, is_int(name, 1), "an integer >= 1")
        for name in ("warmup_iters", "num_workers", "seed"):
            require(name, is_int(name, 0), "an integer >= 0")
        for name in ("max_iters", "eval_every", "eval_images", "patience"):
            require(name, getattr(self, name) is None or is_int(name, 1), "an integer >= 1 or null")
        for name in ("epochs", "max_minutes", "clip_grad_norm", "eval_minutes"):
            value = getattr(self, name)
            require(name, value is None or (_is_number(value) and value > 0), "a number > 0 or null")
        if self.epochs is None and self.max_iters is None and self.max_minutes is None:
            raise ValueError("train: set at least one of epochs, max_iters and max_minutes")
        for name in ("lr", "weight_decay", "momentum", "warmup_factor", "gamma"):
            require(name, _is_number(getattr(self, name)) and getattr(self, name) >= 0, "a number >= 0")
        require("dist_timeout_s", _is_number(self.dist_timeout_s) and self.dist_timeout_s > 0,
                "a number of seconds > 0")
        require("amp", isinstance(self.amp, bool), "true or false")
        require("schedule", self.schedule in SCHEDULES, f"one of {', '.join(SCHEDULES)}")
        require("best_metric", self.best_metric in VALIDATION_COLUMNS, f"one of {', '.join(VALIDATION_COLUMNS)}")
        steps = self.lr_steps
        require("lr_steps", isinstance(steps, Sequence) and all(_is_number(s) and 0 < s < 1 for s in steps)
                and list(steps) == sorted(steps), "increasing fractions of the budget, each in (0, 1)")
        object.__setattr__(self, "lr_steps", tuple(float(s) for s in steps))

    @property
    def max_seconds(self) -> float | None:
        return None if self.max_minutes is None else 60.0 * self.max_minutes

    def iteration_budget(self, iterations_per_epoch: int) -> int | None:
        """The iterations ``max_iters`` and ``epochs`` allow; None: no iteration limit."""
        limits = [self.max_iters] if self.max_iters is not None else []
        if self.epochs is not None:
            limits.append(max(1, math.ceil(self.epochs * iterations_per_epoch)))
        return min(limits) if limits else None


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, how they are read and how they are prepared.

    ``train`` and ``val`` are dataset specs (``frcnn.data.SPEC_HELP``; ``val`` null: the training
    spec), read at ``train_split`` and ``val_split``. ``class_names`` (null: from the data; a list,
    or a text file with one name a line) fixes the classes and their order; objects of other
    classes stop the run, or with ``unknown_classes: skip`` are left out and counted. ``on_bad``:
    ``error`` stops at the first bad file, line, object or image, ``skip`` drops it with a warning
    and counts it (docs/data.md). Training images are flipped horizontally with probability
    ``flip_prob`` (the resize and normalisation are the model's, ``model.preprocess``).
    ``synthetic`` shapes the embedded dataset.
    """

    train: str = "synthetic"
    val: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    class_names: tuple[str, ...] | str | None = None
    unknown_classes: str = "error"
    on_bad: str = "error"
    flip_prob: float = 0.5
    keep_difficult: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        _require("data", "flip_prob", self.flip_prob, _is_number(self.flip_prob) and 0 <= self.flip_prob <= 1,
                 "a number in [0, 1]")
        for name in ("train", "train_split", "val_split"):
            _require("data", name, getattr(self, name), isinstance(getattr(self, name), str) and getattr(self, name),
                     "a non-empty string")
        _require("data", "val", self.val, self.val is None or (isinstance(self.val, str) and self.val),
                 "a non-empty string or null")
        names = self.class_names
        _require("data", "class_names", names, names is None or (isinstance(names, str) and names)
                 or (isinstance(names, tuple) and all(isinstance(n, str) for n in names)),
                 "null, a list of names or the path of a text file with one name a line")
        ReadOptions(names if isinstance(names, tuple) else None, self.unknown_classes, self.on_bad)

    @property
    def val_spec(self) -> str:
        return self.val if self.val is not None else self.train

    def read_options(self) -> ReadOptions:
        """How the readers name classes and treat bad data (a class-names file is read here)."""
        return ReadOptions(resolve_class_names(self.class_names), self.unknown_classes, self.on_bad)

    def dataset(self, role: str) -> DetectionDataset:
        """The training ("train") or evaluation ("val") dataset, untransformed."""
        spec, split = (self.train, self.train_split) if role == "train" else (self.val_spec, self.val_split)
        return build_dataset(spec, split, self.read_options(), self.synthetic)


@dataclass(frozen=True)
class RunConfig:
    """A whole run: the detector, its training, its data."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def transform(self, training: bool) -> DetectionTransform:
        """The model's preprocessing, with the data's random flips when ``training``."""
        return self.model.preprocess.transform(self.data.flip_prob if training else 0.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts, lists and scalars."""
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """The inverse of ``to_dict``. Keys left out take the defaults of ``RunConfig()``;
        unknown keys are refused."""
        return from_plain(cls, merge(cls().to_dict(), data), "config")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> RunConfig:
        return cls.from_dict(_yaml_mapping(text, "<yaml>"))

    def with_yaml_file(self, path: str | Path) -> RunConfig:
        """This configuration with the keys of a YAML file (any subset of the tree) laid over it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        return from_plain(RunConfig, merge(self.to_dict(), _yaml_mapping(path.read_text(), str(path))), "config")

    def with_assignments(self, assignments: Sequence[str]) -> RunConfig:
        """This configuration with ``KEY=VALUE`` assignments applied, in order (values in YAML)."""
        values = {}
        for assignment in assignments:
            key, equals, text = assignment.partition("=")
            if not equals or not key.strip():
                raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
            values[key.strip()] = parse_value(text)
        return self.with_values(values)

    def with_values(self, values: Mapping[str, Any]) -> RunConfig:
        """This configuration with the dotted keys of ``values`` set, in order."""
        plain = self.to_dict()
        for key, value in values.items():
            _assign(plain, key, value)
        return from_plain(RunConfig, plain, "config")


def _yaml_mapping(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML: {str(error).splitlines()[0]}") from error
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping with keys model, train, data")
    return data or {}


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay``'s keys laid over it, recursively for nested mappings."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it, except that ``1e-3`` is a number, not a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"cannot read value {text!r}: {str(error).splitlines()[0]}") from error
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _assign(plain: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of a nested dict; ValueError naming the known keys if it is not one."""
    node = plain
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            known = ", ".join(node) if isinstance(node, dict) else "none (not a section)"
            raise ValueError(f"unknown config key {key!r}: {where} has {known}")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]
