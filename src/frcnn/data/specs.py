"""Datasets named by a spec string, as the command line gives them."""
from __future__ import annotations

from typing import Literal, Sequence

from .annotations import DatasetError
from .coco import load_coco
from .dataset import DetectionDataset
from .synthetic import SHAPE_NAMES, SyntheticConfig, ensure_synthetic
from .voc import VOC_CLASSES, load_voc

SPEC_HELP = ("synthetic | synthetic:ROOT | voc:ROOT (a VOCdevkit or VOC year folder) | "
             "coco:ANNOTATIONS_JSON:IMAGES_DIR")


def build_dataset(
    spec: str,
    split: str,
    *,
    drop_degenerate: bool = False,
    voc_class_names: Sequence[str] | Literal["found"] = VOC_CLASSES,
    synthetic: SyntheticConfig = SyntheticConfig(),
) -> DetectionDataset:
    """The dataset ``spec`` names (see SPEC_HELP), split ``split``.

    ``split`` picks ImageSets/Main/<split>.txt for VOC and synthetic data ("train", "val",
    "trainval"; also "test" for VOC); a COCO spec names its split by its annotation file, so
    ``split`` is not used. ``synthetic`` data is generated on first use.
    """
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        return load_voc(ensure_synthetic(synthetic, rest or None), split, SHAPE_NAMES, drop_degenerate)
    if kind == "voc" and rest:
        return load_voc(rest, split, voc_class_names, drop_degenerate)
    if kind == "coco":
        annotation_file, _, image_dir = rest.partition(":")
        if annotation_file and image_dir:
            return load_coco(annotation_file, image_dir, drop_degenerate)
    raise DatasetError(f"bad dataset spec {spec!r}; expected {SPEC_HELP}")
