"""Datasets (synthetic, Pascal VOC, COCO, YOLO), their check and report, the transform and the
training augmentation, batching."""
from .annotations import DatasetError, DatasetWarning, ImageAnnotation, Problem, ReadOptions, resolve_class_names
from .augment import MIN_BOX_SIDE, Augmentation, augmentation
from .batching import AspectRatioBatchSampler, Batch, build_loader, collate
from .coco import load_coco
from .configured import open_dataset, read_options
from .dataset import DetectionDataset
from .images import image_annotation, image_size
from .specs import SPEC_HELP, build_dataset
from .synthetic import SHAPE_NAMES, ensure_synthetic
from .transforms import DetectionTransform, training_transform
from .voc import VOC_CLASSES, internal_to_voc, load_voc, voc_to_internal
from .yolo import load_yolo

__all__ = [
    "AspectRatioBatchSampler", "Augmentation", "Batch", "DatasetError", "DatasetWarning", "DetectionDataset",
    "DetectionTransform", "ImageAnnotation", "MIN_BOX_SIDE", "Problem", "ReadOptions", "SHAPE_NAMES", "SPEC_HELP",
    "VOC_CLASSES",
    "augmentation", "build_dataset", "build_loader", "collate", "ensure_synthetic", "image_annotation", "image_size",
    "internal_to_voc", "load_coco", "load_voc", "load_yolo", "open_dataset", "read_options", "resolve_class_names",
    "training_transform", "voc_to_internal",
]
