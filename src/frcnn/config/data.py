"""Where a run's images come from and how they are read: ``DataConfig`` and ``SyntheticConfig``.

Configuration only: ``frcnn.data.open_dataset`` and ``frcnn.data.read_options`` read what these
name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..field_checks import (
    check_bool,
    check_choice,
    check_int,
    check_nodes,
    check_number,
    check_numbers,
    check_text,
    require,
)
from .augment import check_augment

# What a reader does with bad data or objects of unknown classes: stop, or drop it and count it.
BAD_DATA_POLICIES = ("error", "skip")


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the synthetic dataset; a change makes a different dataset.

    Image sizes: the longer side uniform in ``long_side``, the shorter at least
    ``min_side_ratio`` of it, portrait or landscape. Objects: sqrt(w * h) log-uniform in
    ``object_size`` (the shorter side at least its low end, the box shrunk to fit the image),
    w / h log-uniform in [1 / max_object_aspect, max_object_aspect], centres inside the image,
    up to ``max_objects`` per image (none with probability ``empty_fraction``), a later object
    covering at most ``max_overlap`` of the smaller box of any earlier one.
    """

    num_train: int = 3000
    num_val: int = 300
    seed: int = 0
    long_side: tuple[int, int] = (256, 400)
    min_side_ratio: float = 0.6
    object_size: tuple[float, float] = (12.0, 300.0)
    max_object_aspect: float = 3.0
    max_objects: int = 6
    empty_fraction: float = 0.05
    max_overlap: float = 0.5
    min_visible: float = 0.4
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        for name in ("num_train", "num_val", "seed", "max_objects"):
            check_int(self, name, 0)
        check_numbers(self, "long_side", 2, low=32, integer=True)
        require(self, "long_side", self.long_side[0] <= self.long_side[1], "(low, high) with low <= high")
        check_number(self, "min_side_ratio", 0.0, 1.0, open_low=True)
        check_numbers(self, "object_size", 2, low=1.0)
        require(self, "object_size", self.object_size[0] <= self.object_size[1], "(low, high) with low <= high")
        check_number(self, "max_object_aspect", 1.0)
        for name in ("empty_fraction", "max_overlap", "min_visible"):
            check_number(self, name, 0.0, 1.0)
        check_int(self, "jpeg_quality", 1, 100)

    def split_size(self, split: str) -> int:
        """The number of images of ``split`` ("train" or "val")."""
        return {"train": self.num_train, "val": self.num_val}[split]


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from, how they are read and how they are prepared.

    ``train`` and ``val`` are dataset specs (``frcnn.data.SPEC_HELP``; ``val`` null: the training
    spec), read at ``train_split`` and ``val_split``. ``class_names`` (null: from the data; a list,
    or a text file with one name a line) fixes the classes and their order; objects of other
    classes stop the run, or with ``unknown_classes: skip`` are left out and counted. ``on_bad``:
    ``error`` stops at the first bad file, line, object or image, ``skip`` drops it with a warning
    and counts it (docs/data.md). ``augment`` is how training images are augmented before the
    model's own resize and normalisation (``model.preprocess``): "none", "flip" (a horizontal
    flip with probability ``flip_prob``), "default" (``frcnn.config.augment.DEFAULT_STEPS``, then
    that flip) or a list of torchvision.transforms.v2 steps (``frcnn.config.augment``; the list is
    the whole augmentation, ``flip_prob`` unused). Evaluation never augments. ``synthetic``
    shapes the embedded dataset.
    """

    train: str = "synthetic"
    val: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    class_names: tuple[str, ...] | str | None = None
    unknown_classes: str = "error"
    on_bad: str = "error"
    augment: str | tuple[dict[str, Any], ...] = "flip"
    flip_prob: float = 0.5
    keep_difficult: bool = False
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        for name in ("train", "train_split", "val_split"):
            check_text(self, name)
        check_text(self, "val", optional=True)
        names = self.class_names
        listed = isinstance(names, tuple) and len(names) > 0 and all(isinstance(n, str) and n.strip() for n in names)
        require(self, "class_names", names is None or (isinstance(names, str) and bool(names)) or listed,
                "null, a list of non-empty names or the path of a text file with one name a line")
        require(self, "class_names", not isinstance(names, tuple) or len(set(names)) == len(names),
                "names that differ from each other")
        check_choice(self, "unknown_classes", BAD_DATA_POLICIES)
        check_choice(self, "on_bad", BAD_DATA_POLICIES)
        check_augment(self, "augment")
        check_number(self, "flip_prob", 0.0, 1.0)
        check_bool(self, "keep_difficult")
        check_nodes(self)

    @property
    def val_spec(self) -> str:
        """The evaluation data's spec: ``val``, or ``train`` when ``val`` is null."""
        return self.val if self.val is not None else self.train
