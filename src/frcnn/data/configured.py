"""The datasets a run's ``DataConfig`` names, read with the options it sets."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace

from ..config import DataConfig
from .annotations import DatasetError, ReadOptions, resolve_class_names
from .dataset import DetectionDataset
from .specs import build_dataset

ROLES = ("train", "val")


def read_options(data: DataConfig) -> ReadOptions:
    """How the readers name classes and treat bad data (``data.class_names``,
    ``data.unknown_classes``, ``data.on_bad``); a class-names file is read here."""
    return ReadOptions(resolve_class_names(data.class_names), data.unknown_classes, data.on_bad)


def open_dataset(data: DataConfig, role: str, class_names: Sequence[str] | None = None) -> DetectionDataset:
    """The training ("train": ``data.train`` at ``data.train_split``) or evaluation ("val":
    ``data.val_spec`` at ``data.val_split``) dataset, untransformed.

    ``class_names`` (a model's, in its label order) are the labels the data is read with, so
    that the same classes in another order (VOC's sorted set, COCO's category ids, a data.yaml's
    order) give the model's labels. When the data's classes are another set: a DatasetError
    listing both, or with ``data.unknown_classes`` "skip" the objects of classes the model lacks
    left out (and counted)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    spec, split = (data.train, data.train_split) if role == "train" else (data.val_spec, data.val_split)
    options = read_options(data)
    if class_names is None:
        return build_dataset(spec, split, options, data.synthetic)
    names = tuple(class_names)
    # Read once with the data's own names to learn its class set; its warnings are shown only when
    # that reading is the one returned (a second reading shows its own).
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        own = build_dataset(spec, split, options, data.synthetic)
    if own.class_names == names:
        for warning in caught:
            warnings.warn(warning.message, stacklevel=2)
        return own
    if set(own.class_names) != set(names) and data.unknown_classes != "skip":
        raise DatasetError(f"the model detects {list(names)}, but the data's classes are {list(own.class_names)} "
                           "(data.unknown_classes=skip leaves out objects of classes the model lacks)")
    return build_dataset(spec, split, replace(options, class_names=names), data.synthetic)
