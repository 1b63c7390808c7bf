"""Better anchor scales and ratios for a dataset, scored by the anchor target layer itself.

The search (docs/anchors.md): IoU k-means of the boxes' shapes (each in units of the stride of
its current best level) gives a start, made into ``scales x ratios``; from the better of it and
the current anchors a coordinate search multiplies one scale or ratio at a time by 2^(+-1/2),
then 2^(+-1/4), 2^(+-1/8), keeping a step when it raises the coverage measured by
``fit_ground_truth`` on a sample of images (ties: the mean best IoU). The winner is measured
again on every image and kept only if it is no worse there than the current anchors.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..config import AnchorConfig, ModelConfig
from .anchor_fit import COVERED, GtFit, fit_ground_truth
from .geometry import FeatureGeometry
from .ground_truth import GroundTruth

SAMPLE_IMAGES = 500
STEPS = (2 ** 0.5, 2 ** 0.25, 2 ** 0.125)
MAX_EVALUATIONS = 150
KMEANS_ITERATIONS = 30


@dataclass(frozen=True)
class Score:
    """What the search maximises: coverage, then the mean best IoU."""

    coverage: float
    mean_best_iou: float

    @classmethod
    def of(cls, fit: GtFit) -> Score:
        if len(fit.status) == 0:
            return cls(0.0, 0.0)
        return cls(float((fit.status == COVERED).double().mean()), float(fit.best_iou.double().mean()))

    def key(self) -> tuple[float, float]:
        return self.coverage, self.mean_best_iou


@dataclass(frozen=True)
class Suggestion:
    """The suggested anchors with their fit on every image, and how the search went."""

    anchors: AnchorConfig
    fit: GtFit
    sample_current: Score
    sample_suggested: Score
    evaluations: int


def anchor_shape(num_scales: int, num_ratios: int, anchors_per_cell: int | None) -> tuple[int, int]:
    """(scales, ratios) counts for ``anchors_per_cell`` anchors (None: the current counts): the
    divisor of it nearest the current ratio count gives the ratios."""
    if anchors_per_cell is None:
        return num_scales, num_ratios
    if anchors_per_cell < 1:
        raise ValueError(f"--anchors-per-cell must be >= 1, got {anchors_per_cell}")
    divisors = [d for d in range(1, anchors_per_cell + 1) if anchors_per_cell % d == 0]
    ratios = min(divisors, key=lambda d: (abs(d - num_ratios), d))
    return anchors_per_cell // ratios, ratios


def iou_kmeans(shapes: Tensor, k: int, generator: torch.Generator,
               iterations: int = KMEANS_ITERATIONS) -> Tensor:
    """k cluster centres (k, 2) of (w, h) shapes (M, 2) under the distance 1 - IoU of centred
    boxes; centres start at k distinct shapes by k-means++ and move to each cluster's median."""
    shapes = shapes.double()
    k = min(k, len(torch.unique(shapes, dim=0)))
    first = int(torch.randint(len(shapes), (), generator=generator))
    centres = shapes[first:first + 1]
    while len(centres) < k:
        distance = (1 - _centred_iou(shapes, centres)).amin(dim=1)
        weights = distance ** 2
        pick = torch.multinomial(weights / weights.sum(), 1, generator=generator) if weights.sum() > 0 else \
            torch.randint(len(shapes), (1,), generator=generator)
        centres = torch.cat((centres, shapes[pick]))
    for _ in range(iterations):
        nearest = _centred_iou(shapes, centres).argmax(dim=1)
        moved = torch.stack([shapes[nearest == j].median(dim=0).values if (nearest == j).any() else centres[j]
                             for j in range(len(centres))])
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres


def _centred_iou(shapes: Tensor, centres: Tensor) -> Tensor:
    """IoU (M, k) of boxes (w, h) (M, 2) and (k, 2) sharing a centre."""
    inter = torch.minimum(shapes[:, None], centres[None]).prod(dim=2)
    return inter / (shapes.prod(dim=1)[:, None] + centres.prod(dim=1)[None] - inter)


def product_anchors(centres: Tensor, num_scales: int, num_ratios: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scales and ratios (each sorted) whose product best spans shape centres (k, 2) in stride units: the
    centres' sizes sqrt(w h) and ratios h / w, each sorted and split into equal groups, give the
    geometric mean of each group. Groups that come out equal (few distinct shapes) are made
    distinct again, each next value sqrt(2) above the last, so that the count per cell holds."""
    def grouped(values: Tensor, groups: int) -> tuple[float, ...]:
        ordered = torch.sort(values.log()).values
        parts = torch.tensor_split(ordered, min(groups, len(ordered)))
        means = sorted({round(math.exp(float(part.mean())), 4) for part in parts})
        while len(means) < groups:
            means.append(round(means[-1] * 2 ** 0.5, 4))
        return tuple(means)

    sizes = centres.prod(dim=1).sqrt()
    ratios = centres[:, 1] / centres[:, 0]
    return grouped(sizes, num_scales), grouped(ratios, num_ratios)


def _varied(values: tuple[float, ...], step: float) -> list[tuple[float, ...]]:
    """``values`` with one entry multiplied or divided by ``step``, sorted, distinct entries only."""
    found = []
    for index in range(len(values)):
        for factor in (step, 1 / step):
            changed = list(values)
            changed[index] = round(values[index] * factor, 4)
            if len(set(changed)) == len(changed):
                found.append(tuple(sorted(changed)))
    return found


def neighbours(anchors: AnchorConfig, step: float) -> list[AnchorConfig]:
    """Every anchor set with one ratio or one scale multiplied or divided by ``step``; where
    ``sizes`` is set, one size index on every level at once (a scale of them all), then one
    level's size alone."""
    found = [replace(anchors, ratios=ratios) for ratios in _varied(anchors.ratios, step)]
    if not anchors.sizes:
        return found + [replace(anchors, scales=scales) for scales in _varied(anchors.scales, step)]
    if len(anchors.sizes) > 1:
        for index in range(len(anchors.sizes[0])):
            for factor in (step, 1 / step):
                scaled = tuple(tuple(sorted(round(size * factor, 4) if position == index else size
                                            for position, size in enumerate(level))) for level in anchors.sizes)
                if all(len(set(level)) == len(level) for level in scaled):
                    found.append(replace(anchors, sizes=scaled))
    for level, sizes in enumerate(anchors.sizes):
        found += [replace(anchors, sizes=(*anchors.sizes[:level], changed, *anchors.sizes[level + 1:]))
                  for changed in _varied(sizes, step)]
    return found


def in_pixels(anchors: AnchorConfig, strides: tuple[int, ...]) -> AnchorConfig:
    """``anchors`` with its scales made into per-level ``sizes`` (scale * stride)."""
    return replace(anchors, sizes=tuple(tuple(round(scale * stride, 2) for scale in anchors.scales)
                                        for stride in strides))


def suggest_anchors(gt: GroundTruth, model: ModelConfig, current: GtFit, *,
                    anchors_per_cell: int | None = None, sample_images: int = SAMPLE_IMAGES,
                    max_evaluations: int = MAX_EVALUATIONS, seed: int = 0,
                    progress: Callable[[str], None] | None = None) -> Suggestion:
    """Anchors for ``model`` that cover more of ``gt`` (``current`` is the fit of the model's own).

    A coordinate search from the better of the clustered start and the current anchors, up to
    ``max_evaluations`` anchor sets. With more than one level (FPN) and shared scales, the winner
    is then refined level by level (per-level ``sizes``, ``in_pixels``; the ratios stay shared)
    with up to ``max_evaluations`` more. Never worse than the current anchors on every image:
    when the search's winner measures lower there (or only equal), the current anchors come back.
    """
    geometry = FeatureGeometry(model.backbone)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randperm(gt.num_images, generator=generator)[:sample_images].sort().values
    sample = gt.subset(images)
    in_sample = torch.isin(gt.image, images)
    cache: dict[AnchorConfig, Score] = {}

    def score(anchors: AnchorConfig) -> Score:
        if anchors not in cache:
            cache[anchors] = Score.of(fit_ground_truth(sample, replace(model, anchors=anchors), geometry))
        return cache[anchors]

    def climb(best: AnchorConfig, limit: int) -> AnchorConfig:
        for step in STEPS:
            improved = True
            while improved and len(cache) < limit:
                improved = False
                for candidate in neighbours(best, step):
                    if len(cache) >= limit:
                        break
                    if score(candidate).key() > score(best).key():
                        best, improved = candidate, True
                if progress:
                    progress(f"step {step:.3f}: coverage {score(best).coverage:.4f} on the sample "
                             f"({len(cache)} anchor sets tried)")
        return best

    num_scales = model.anchors.num_anchors // len(model.anchors.ratios)
    num_scales, num_ratios = anchor_shape(num_scales, len(model.anchors.ratios), anchors_per_cell)
    start = model.anchors
    if len(sample):
        strides = torch.tensor(geometry.strides, dtype=torch.float64)[current.best_level[in_sample]]
        shapes = torch.stack((sample.boxes[:, 2] - sample.boxes[:, 0], sample.boxes[:, 3] - sample.boxes[:, 1]), 1)
        shapes = shapes.double().clamp(min=0.5) / strides[:, None]
        scales, ratios = product_anchors(iou_kmeans(shapes, num_scales * num_ratios, generator), num_scales,
                                         num_ratios)
        clustered = replace(model.anchors, scales=scales, ratios=ratios, sizes=())
        if model.anchors.sizes:
            clustered = in_pixels(clustered, geometry.strides)
        same_shape = start.num_anchors == num_scales * num_ratios and len(start.ratios) == num_ratios
        start = max((clustered, start) if same_shape else (clustered,), key=lambda a: score(a).key())
    best = climb(start, max_evaluations)
    if len(geometry.strides) > 1 and not best.sizes:
        refined = climb(in_pixels(best, geometry.strides), len(cache) + max_evaluations)
        best = refined if score(refined).key() > score(best).key() else best
    evaluations = len(cache)
    if best == model.anchors:
        return Suggestion(best, current, score(model.anchors), score(best), evaluations)
    full = fit_ground_truth(gt, replace(model, anchors=best), geometry)
    if Score.of(full).key() <= Score.of(current).key():
        best, full = model.anchors, current
    return Suggestion(best, full, score(model.anchors), score(best), evaluations)
