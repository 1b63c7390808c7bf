"""The datasets a run's ``DataConfig`` names, read with the options it sets."""
from __future__ import annotations

from ..config import DataConfig
from .annotations import ReadOptions, resolve_class_names
from .dataset import DetectionDataset
from .specs import build_dataset

ROLES = ("train", "val")


def read_options(data: DataConfig) -> ReadOptions:
    """How the readers name classes and treat bad data (``data.class_names``,
    ``data.unknown_classes``, ``data.on_bad``); a class-names file is read here."""
    return ReadOptions(resolve_class_names(data.class_names), data.unknown_classes, data.on_bad)


def open_dataset(data: DataConfig, role: str) -> DetectionDataset:
    """The training ("train": ``data.train`` at ``data.train_split``) or evaluation ("val":
    ``data.val_spec`` at ``data.val_split``) dataset, untransformed."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    spec, split = (data.train, data.train_split) if role == "train" else (data.val_spec, data.val_split)
    return build_dataset(spec, split, read_options(data), data.synthetic)
