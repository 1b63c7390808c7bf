"""Datasets (synthetic, Pascal VOC, COCO), the training transform and batching."""
from .annotations import DatasetError, DatasetWarning, ImageAnnotation
from .batching import AspectRatioBatchSampler, Batch, build_loader, collate
from .coco import load_coco
from .dataset import DetectionDataset
from .specs import SPEC_HELP, build_dataset
from .synthetic import SHAPE_NAMES, SyntheticConfig, ensure_synthetic
from .transforms import IMAGENET_MEAN, IMAGENET_STD, DetectionTransform, resize_scale
from .voc import VOC_CLASSES, internal_to_voc, load_voc, voc_to_internal

__all__ = [
    "AspectRatioBatchSampler", "Batch", "DatasetError", "DatasetWarning", "DetectionDataset",
    "DetectionTransform", "IMAGENET_MEAN", "IMAGENET_STD", "ImageAnnotation", "SHAPE_NAMES",
    "SPEC_HELP", "SyntheticConfig", "VOC_CLASSES", "build_dataset", "build_loader", "collate",
    "ensure_synthetic", "internal_to_voc", "load_coco", "load_voc", "resize_scale",
    "voc_to_internal",
]
