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
    order) give the model's labels. The model may detect classes the data lacks (COCO weights on
    a few of COCO's classes): they have no objects, and the evaluation leaves them out of its
    means. Classes the data has and the model lacks: a DatasetError listing both, or with
    ``data.unknown_classes`` "skip" their objects left out (and counted). A name the model gives
    more than once (torchvision's COCO models name every unused id 'N/A') labels no object."""
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
    repeated = {name for name in names if names.count(name) > 1}
    lacking = set(own.class_names) - (set(names) - repeated)
    if lacking and data.unknown_classes != "skip":
        raise DatasetError(f"the model detects {list(names)}, but the data's classes are {list(own.class_names)} "
                           "(data.unknown_classes=skip leaves out objects of classes the model lacks)")
    dataset = build_dataset(spec, split, replace(options, class_names=_unmatchable(names, repeated)), data.synthetic)
    return replace(dataset, class_names=names)


def _unmatchable(names: tuple[str, ...], repeated: set[str]) -> tuple[str, ...]:
    """``names`` with each repeated one made unique in a form no dataset names a class (a NUL
    character and the label), so that it matches no object."""
    return tuple(f"{name}\0{label}" if name in repeated else name for label, name in enumerate(names, start=1))
