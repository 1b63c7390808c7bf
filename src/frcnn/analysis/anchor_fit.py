"""How well a model's anchors fit a dataset, measured with the anchor target layer itself.

Every image goes through ``assign_anchor_targets`` with the model's anchors, feature-map sizes,
border rule and RPN target configuration, sampling off, so that ``matched_gt`` names the gt of
every positive anchor. Each gt box is then (see docs/anchors.md):

* covered: some positive anchor has it as matched gt with IoU >= ``positive_overlap``;
* low_quality_only: it is the matched gt of positive anchors, all below ``positive_overlap``
  (low-quality matches);
* unmatched: no positive anchor has it as matched gt.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..anchor_targets import AnchorTargetConfig, assign_anchor_targets
from ..anchors import AnchorGrid, concat_anchors
from ..config import AnchorConfig, ModelConfig
from ..data import DetectionDataset
from .geometry import FeatureGeometry, anchor_grids, base_anchors, padded_size
from .ground_truth import GroundTruth, resized_ground_truth

COVERED, LOW_QUALITY_ONLY, UNMATCHED = 0, 1, 2
STATUS_NAMES = ("coverage", "low_quality_only", "unmatched")
# COCO's object sizes by area: small below 32^2, medium below 96^2, large above.
SIZE_LIMITS = (("small", 32.0 ** 2), ("medium", 96.0 ** 2), ("large", float("inf")))
IMAGES_PER_BATCH = 64


@dataclass(frozen=True, eq=False)
class GtFit:
    """Per gt box (G,): status (COVERED / LOW_QUALITY_ONLY / UNMATCHED), positives (the positive
    anchors whose matched gt it is), best_iou (its best IoU over the taking-part anchors) and
    best_level (the level of that anchor, the finest on ties)."""

    status: Tensor
    positives: Tensor
    best_iou: Tensor
    best_level: Tensor


def targets_without_sampling(model: ModelConfig) -> AnchorTargetConfig:
    """The model's RPN target rules with subsampling off (``batch_size`` None): every positive
    anchor stays positive and keeps its matched gt."""
    return replace(model.rpn.targets, batch_size=None)


def fit_ground_truth(gt: GroundTruth, model: ModelConfig, geometry: FeatureGeometry | None = None,
                     images_per_batch: int = IMAGES_PER_BATCH) -> GtFit:
    """Classify every gt of ``gt`` under ``model``'s anchors (see the module docstring).

    Images are batched by padded shape (each padded as ``collate`` pads it alone), so one call of
    the layer covers up to ``images_per_batch`` images on the grid fast path.
    """
    geometry = geometry or FeatureGeometry(model.backbone)
    config = targets_without_sampling(model)
    bases = base_anchors(model.anchors, geometry.strides)
    count = len(gt)
    status = torch.full((count,), UNMATCHED, dtype=torch.int64)
    positives = torch.zeros(count, dtype=torch.int64)
    best_iou = torch.zeros(count, dtype=torch.float32)
    best_level = torch.zeros(count, dtype=torch.int64)
    starts, counts = _image_rows(gt)
    for images, (height, width) in _batches(gt, counts, model.preprocess.size_divisible, images_per_batch):
        grids = anchor_grids(bases, model.anchors, (height, width), geometry.feature_sizes(height, width),
                             geometry.strides)
        rows, valid = _padded_rows(starts[images], counts[images])
        boxes = torch.where(valid[..., None], gt.boxes[rows], 0.0)
        gt_boxes = torch.cat((boxes, gt.labels[rows, None].float()), dim=2)
        sizes = gt.image_sizes[images]
        im_info = torch.cat((sizes.float(), gt.scales[images, None].float()), dim=1)
        targets = assign_anchor_targets(grids, gt_boxes, counts[images], im_info, config, validate=False)
        image, anchor = (targets.matched_gt >= 0).nonzero(as_tuple=True)
        matched = rows[image, targets.matched_gt[image, anchor]]
        offset = 1.0 if config.legacy_plus_one else 0.0
        iou = _pair_iou(concat_anchors(grids)[anchor], _anchor_areas(grids, offset)[anchor], gt.boxes[matched],
                        offset)
        positives += torch.bincount(matched, minlength=count)
        strong = torch.bincount(matched[iou >= config.positive_overlap], minlength=count) > 0
        status[strong] = COVERED
        real = rows[valid]
        batch_best, batch_level = best_anchor_iou(grids, gt.boxes[real], sizes[valid.nonzero()[:, 0]], config)
        best_iou[real], best_level[real] = batch_best, batch_level
    status[(positives > 0) & (status != COVERED)] = LOW_QUALITY_ONLY
    return GtFit(status, positives, best_iou, best_level)


def _image_rows(gt: GroundTruth) -> tuple[Tensor, Tensor]:
    """The first row (I,) and the number of rows (I,) of each image in ``gt`` (rows image-ordered)."""
    counts = torch.bincount(gt.image, minlength=gt.num_images)
    return torch.cumsum(counts, 0) - counts, counts


def _batches(gt: GroundTruth, counts: Tensor, multiple: int, size: int) -> Iterator[tuple[Tensor, tuple[int, int]]]:
    """Image indices (B,) of one padded shape (sides rounded up to ``multiple``) with the shape,
    fewest boxes first (little padding)."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for index, (height, width) in enumerate(gt.image_sizes.tolist()):
        groups[padded_size(height, width, multiple)].append(index)
    for shape, members in groups.items():
        members_tensor = torch.tensor(members, dtype=torch.int64)
        members_tensor = members_tensor[torch.argsort(counts[members_tensor], stable=True)]
        for start in range(0, len(members), size):
            yield members_tensor[start:start + size], shape


def _padded_rows(starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Rows (B, K) of gt table entries per image, K the most boxes, and which are real (B, K)."""
    rank = torch.arange(max(int(counts.max()), 1) if len(counts) else 1)
    valid = rank[None, :] < counts[:, None]
    return torch.where(valid, starts[:, None] + rank, 0), valid


def _base_areas(base: Tensor, offset: float) -> Tensor:
    """(A,) the areas of a level's base shapes, as the layer computes every anchor's area."""
    return (base[:, 2] - base[:, 0] + offset) * (base[:, 3] - base[:, 1] + offset)


def _anchor_areas(grids: list[AnchorGrid], offset: float) -> Tensor:
    """(N,) the area of every anchor, from its base shape, level-major."""
    return torch.cat([_base_areas(grid.base, offset).repeat(grid.height * grid.width) for grid in grids])


def _pair_iou(anchors: Tensor, anchor_areas: Tensor, boxes: Tensor, offset: float) -> Tensor:
    """IoU of anchor i (M, 4) of area anchor_areas[i] with box i (M, 4) -> (M,), by the layer's formula."""
    widths = (torch.minimum(anchors[:, 2], boxes[:, 2]) - torch.maximum(anchors[:, 0], boxes[:, 0]) + offset).clamp(0)
    heights = (torch.minimum(anchors[:, 3], boxes[:, 3]) - torch.maximum(anchors[:, 1], boxes[:, 1]) + offset).clamp(0)
    inter = heights * widths
    box_areas = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
    return inter / (anchor_areas + box_areas - inter)


def best_anchor_iou(grids: list[AnchorGrid], boxes: Tensor, image_sizes: Tensor,
                    config: AnchorTargetConfig) -> tuple[Tensor, Tensor]:
    """Each box's best IoU over the anchors that take part (the border rule of ``config`` on its
    image) and the level of that anchor (the finest on ties): (M,) each.

    boxes (M, 4); image_sizes (M, 2) (height, width) of each box's image. On a grid the
    intersection is a row overlap times a column overlap, so each anchor shape's best needs only
    the two axis maxima.
    """
    offset = 1.0 if config.legacy_plus_one else 0.0
    box_areas = (boxes[:, 2] - boxes[:, 0] + offset) * (boxes[:, 3] - boxes[:, 1] + offset)
    per_level = []
    for grid in grids:
        row_best = _axis_best(grid.y_intervals(), boxes[:, 1::2], image_sizes[:, 0], config.allowed_border, offset)
        column_best = _axis_best(grid.x_intervals(), boxes[:, 0::2], image_sizes[:, 1], config.allowed_border, offset)
        areas = _base_areas(grid.base, offset)
        inter = row_best * column_best                                        # (M, A)
        per_level.append((inter / (areas[None] + box_areas[:, None] - inter)).amax(dim=1))
    best, level = torch.stack(per_level, dim=1).max(dim=1)
    return best, level


def _axis_best(extents: Tensor, box: Tensor, limit: Tensor, border: float | None, offset: float) -> Tensor:
    """The largest overlap (M, A) of each box's extent (M, 2) with the anchor extents (L, A, 2)
    that lie inside [-border, limit + border) of the box's image (all when border is None)."""
    overlap = (torch.minimum(extents[None, ..., 1], box[:, None, None, 1])
               - torch.maximum(extents[None, ..., 0], box[:, None, None, 0]) + offset).clamp(min=0)
    if border is not None:
        inside = (extents[None, ..., 0] >= -border) & (extents[None, ..., 1] < limit[:, None, None] + border)
        overlap = overlap * inside
    return overlap.amax(dim=1)


def summarize(gt: GroundTruth, fit: GtFit, strides: tuple[int, ...]) -> dict[str, Any]:
    """The report: the overall figures, then the same keys ``by_size``, ``by_class`` and (more
    than one level) ``by_level`` (keyed ``stride_S``)."""
    everything = torch.ones(len(gt), dtype=torch.bool)
    report = {"images": gt.num_images, **_figures(fit, everything)}
    size_rank = torch.bucketize(gt.areas, torch.tensor([limit for _, limit in SIZE_LIMITS[:-1]], dtype=torch.float64),
                                right=True)
    report["by_size"] = {name: _figures(fit, size_rank == rank) for rank, (name, _) in enumerate(SIZE_LIMITS)}
    report["by_class"] = {name: _figures(fit, gt.labels == label) for label, name in enumerate(gt.class_names, 1)}
    if len(strides) > 1:
        report["by_level"] = {f"stride_{stride}": _figures(fit, fit.best_level == level)
                              for level, stride in enumerate(strides)}
    return report


def _figures(fit: GtFit, mask: Tensor) -> dict[str, Any]:
    """``gts``, the status fractions, ``positives_per_gt`` and ``best_iou`` of the gts in ``mask``;
    None for the fractions and means of an empty group."""
    count = int(mask.sum())
    figures: dict[str, Any] = {"gts": count}
    status = fit.status[mask]
    for code, name in enumerate(STATUS_NAMES):
        figures[name] = float((status == code).sum()) / count if count else None
    figures["positives_per_gt"] = float(fit.positives[mask].double().mean()) if count else None
    best = fit.best_iou[mask].double()
    if count:
        quantiles = torch.quantile(best, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()
        figures["best_iou"] = {"mean": float(best.mean()), "p10": quantiles[0], "p50": quantiles[1],
                               "p90": quantiles[2]}
    else:
        figures["best_iou"] = {"mean": None, "p10": None, "p50": None, "p90": None}
    return figures


def anchor_fit(dataset: DetectionDataset, model: ModelConfig, *, keep_difficult: bool = False) -> dict[str, Any]:
    """The anchor fit report of ``dataset`` (its boxes under ``model.preprocess``) for ``model``'s
    anchors and RPN target rules: see ``summarize`` and docs/anchors.md."""
    gt = resized_ground_truth(dataset, model.preprocess, keep_difficult)
    geometry = FeatureGeometry(model.backbone)
    report = summarize(gt, fit_ground_truth(gt, model, geometry), geometry.strides)
    return {"anchors": anchor_description(model, geometry.strides), **report}


def anchor_fields(anchors: AnchorConfig) -> dict[str, Any]:
    """An anchor set as a report shows it: ``scales``, ``ratios`` and, when set, per-level ``sizes``."""
    fields: dict[str, Any] = {"scales": list(anchors.scales), "ratios": list(anchors.ratios)}
    if anchors.sizes:
        fields["sizes"] = [list(level) for level in anchors.sizes]
    return fields


def anchor_description(model: ModelConfig, strides: tuple[int, ...]) -> dict[str, Any]:
    return {**anchor_fields(model.anchors), "strides": list(strides),
            "positive_overlap": model.rpn.targets.positive_overlap}
