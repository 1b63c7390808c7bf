"""A dataset's training boxes as the model sees them: resized by ``model.preprocess``, no flips.

Read from the annotations, so no image is decoded. The resize follows the model's transform
(``PreprocessConfig.transform``) exactly: the same factor and output size (``frcnn.preprocess``),
the same float32 products and clipping; tests hold the two equal.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import PreprocessConfig
from ..data import DetectionDataset
from ..preprocess import resize_factor, resized_size


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The gt boxes of every image, one row per box, images in dataset order.

    boxes (G, 4) float32 in resized coordinates; image (G,) int64 the image index; labels (G,)
    int64 in 1..C; areas (G,) float64 the annotation's own area in original pixels (COCO's size
    rule reads it); image_sizes (I, 2) int64 resized (height, width); scales (I,) float64.
    """

    boxes: Tensor
    image: Tensor
    labels: Tensor
    areas: Tensor
    image_sizes: Tensor
    scales: Tensor
    class_names: tuple[str, ...]

    @property
    def num_images(self) -> int:
        return self.image_sizes.shape[0]

    def __len__(self) -> int:
        return self.boxes.shape[0]

    def subset(self, images: Tensor) -> GroundTruth:
        """The boxes of the images ``images`` (M,) int64, renumbered 0..M-1 in that order."""
        position = torch.full((self.num_images,), -1, dtype=torch.int64)
        position[images] = torch.arange(len(images))
        keep = position[self.image] >= 0
        order = torch.argsort(position[self.image[keep]], stable=True)
        rows = keep.nonzero()[:, 0][order]
        return GroundTruth(self.boxes[rows], position[self.image[rows]], self.labels[rows], self.areas[rows],
                           self.image_sizes[images], self.scales[images], self.class_names)


def resized_ground_truth(dataset: DetectionDataset, preprocess: PreprocessConfig,
                         keep_difficult: bool = False) -> GroundTruth:
    """The training boxes of ``dataset`` under ``preprocess``'s resize.

    Difficult objects are left out unless ``keep_difficult`` (as ``frcnn.data.collate`` does);
    crowd regions are not objects and never appear. Boxes are scaled by (new width / old width,
    new height / old height) in float32 and clipped to the resized image, as the transform does.
    """
    sizes, scales = [], []
    # Each list starts with an empty block so that a dataset without boxes concatenates too.
    boxes, ratios = [np.zeros((0, 4))], [np.zeros((0, 2))]
    labels, areas, image = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros(0, np.int64)]
    for index, annotation in enumerate(dataset.annotations):
        height, width = annotation.height, annotation.width
        scale = resize_factor(height, width, preprocess)
        new_height, new_width = resized_size(height, width, preprocess)
        sizes.append((new_height, new_width))
        scales.append(scale)
        keep = slice(None) if keep_difficult else ~annotation.difficult.astype(bool)
        count = len(annotation.boxes[keep])
        boxes.append(annotation.boxes[keep])
        labels.append(annotation.labels[keep])
        areas.append(annotation.areas[keep])
        image.append(np.full(count, index))
        ratios.append(np.repeat([[new_width / width, new_height / height]], count, axis=0))
    image_sizes = torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2)
    image_index = torch.from_numpy(np.concatenate(image)).long()
    # torchvision multiplies float32 boxes by a float32 tensor of the two Python ratios.
    ratio = torch.from_numpy(np.concatenate(ratios)).float().repeat(1, 2)
    resized = torch.from_numpy(np.concatenate(boxes)).float() * ratio
    limits = image_sizes[image_index].flip(1).repeat(1, 2).float()
    resized = torch.minimum(resized.clamp(min=0), limits)
    return GroundTruth(resized, image_index, torch.from_numpy(np.concatenate(labels)).long(),
                       torch.from_numpy(np.concatenate(areas)).double(), image_sizes,
                       torch.tensor(scales, dtype=torch.float64), tuple(dataset.class_names))
