"""Datasets named by a spec string, as the command line gives them."""
from __future__ import annotations

from dataclasses import replace

from ..config import SyntheticConfig
from .annotations import DatasetError, ReadOptions
from .coco import load_coco
from .dataset import DetectionDataset
from .synthetic import SHAPE_NAMES, ensure_synthetic
from .voc import load_voc
from .yolo import load_yolo

SPEC_HELP = ("synthetic | synthetic:ROOT | voc:ROOT (a VOCdevkit or VOC year folder) | "
             "coco:ANNOTATIONS_JSON:IMAGES_DIR | yolo:DATA.yaml | yolo:ROOT (images/ and labels/ folders)")


def build_dataset(
    spec: str,
    split: str,
    options: ReadOptions = ReadOptions(),
    synthetic: SyntheticConfig = SyntheticConfig(),
) -> DetectionDataset:
    """The dataset ``spec`` names (see SPEC_HELP), split ``split``, read with ``options`` (class
    names, what to do with bad data).

    ``split`` picks ImageSets/Main/<split>.txt for VOC and synthetic data ("train", "val",
    "trainval"; also "test" for VOC), the data.yaml's (or images/<split>/) for YOLO ("train",
    "val", "test"); a COCO spec names its split by its annotation file, so ``split`` is not used.
    ``synthetic`` data is generated on first use.
    """
    kind, _, rest = spec.partition(":")
    if kind == "synthetic":
        root = ensure_synthetic(synthetic, rest or None)
        return load_voc(root, split, replace(options, class_names=options.class_names or SHAPE_NAMES))
    if kind == "voc" and rest:
        return load_voc(rest, split, options)
    if kind == "yolo" and rest:
        return load_yolo(rest, split, options)
    if kind == "coco":
        annotation_file, _, image_dir = rest.partition(":")
        if annotation_file and image_dir:
            return load_coco(annotation_file, image_dir, options)
    raise DatasetError(f"bad dataset spec {spec!r}; expected {SPEC_HELP}")
