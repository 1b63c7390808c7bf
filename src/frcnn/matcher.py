"""Matching rules on a given quality matrix (IoU, or any score where higher is better), for code
that computes the overlaps itself: detectron2's ``Matcher`` (levels and labels) and torchvision's
``det_utils.Matcher`` (a gt index or a negative flag).

``quality`` is (K, N) or batched (B, K, N): K ground-truth elements (rows) against N
predictions (columns). Batched images may pad their gt rows with -inf: such a row takes no part
(it is never a prediction's best and has no best prediction of its own), so a padded image
matches as its unpadded matrix does, and an image with no gts as detectron2's empty case.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


def best_gt(quality: Tensor) -> tuple[Tensor, Tensor]:
    """Each prediction's best gt of quality (..., K, N): its quality (..., N) and index (..., N),
    the first gt on ties; -inf and index 0 without gts."""
    if quality.shape[-2] == 0:
        shape = (*quality.shape[:-2], quality.shape[-1])
        return (torch.full(shape, -math.inf, dtype=quality.dtype, device=quality.device),
                torch.zeros(shape, dtype=torch.int64, device=quality.device))
    return quality.max(dim=-2)


def best_of_some_gt(quality: Tensor) -> Tensor:
    """(..., N) bool: the predictions that, ties included, have the highest quality of some gt of
    quality (..., K, N), the "low-quality matches"; -inf gt rows have none."""
    if quality.shape[-1] == 0 or quality.shape[-2] == 0:
        return torch.zeros((*quality.shape[:-2], quality.shape[-1]), dtype=torch.bool, device=quality.device)
    highest = quality.amax(dim=-1, keepdim=True)
    return ((quality == highest) & (highest > -math.inf)).any(dim=-2)


def match_with_labels(quality: Tensor, thresholds: Sequence[float], labels: Sequence[int],
                      allow_low_quality_matches: bool = False) -> tuple[Tensor, Tensor]:
    """detectron2's ``Matcher``: matches (..., N) int64 and match labels (..., N) int8 for
    quality (..., K, N).

    A prediction's match is its best gt (``best_gt``). Its label is ``labels[i]`` for the level
    its best quality q falls in: level 0 is q < thresholds[0], level i is thresholds[i - 1] <= q
    < thresholds[i], the last is q >= thresholds[-1]; labels are -1 (ignore), 0 (negative) or 1
    (positive). With ``allow_low_quality_matches``, the predictions of ``best_of_some_gt`` are
    labelled 1 (keeping their own best gt as the match; a gt that overlaps nothing makes every
    zero-quality prediction positive, as in detectron2). Without gts: match 0, ``labels[0]``.
    """
    if list(thresholds) != sorted(thresholds):
        raise ValueError(f"match thresholds must be ascending, got {list(thresholds)}")
    if len(labels) != len(thresholds) + 1:
        raise ValueError(f"{len(thresholds)} match thresholds need {len(thresholds) + 1} labels, got {len(labels)}")
    if any(label not in (-1, 0, 1) for label in labels):
        raise ValueError(f"match labels must be -1, 0 or 1, got {list(labels)}")
    values, matches = best_gt(quality)
    boundaries = torch.tensor(list(thresholds), dtype=values.dtype, device=values.device)
    level = torch.bucketize(values, boundaries, right=True)
    match_labels = torch.tensor(list(labels), dtype=torch.int8, device=values.device)[level]
    if allow_low_quality_matches:
        match_labels = match_labels.masked_fill(best_of_some_gt(quality), 1)
    return matches, match_labels


def match_to_gt(quality: Tensor, high_threshold: float, low_threshold: float,
                allow_low_quality_matches: bool = False) -> Tensor:
    """torchvision's ``Matcher``: each prediction's gt index (..., N) int64 for quality
    (..., K, N), or ``BELOW_LOW_THRESHOLD`` (-1) where its best quality is below
    ``low_threshold``, ``BETWEEN_THRESHOLDS`` (-2) where it is in [low, high).

    With ``allow_low_quality_matches``, the predictions of ``best_of_some_gt`` keep their best gt
    whatever its quality. Without gts every prediction is ``BELOW_LOW_THRESHOLD`` (torchvision
    raises there).
    """
    if low_threshold > high_threshold:
        raise ValueError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
    values, best = best_gt(quality)
    flags = torch.where(values < low_threshold, BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS)
    matches = torch.where(values < high_threshold, flags, best)
    if allow_low_quality_matches:
        matches = torch.where(best_of_some_gt(quality), best, matches)
    return matches
