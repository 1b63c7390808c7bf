"""The matching rules against torchvision's own Matcher and a numpy port of detectron2's rule."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.models.detection._utils import Matcher as TorchvisionMatcher

from frcnn.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, match_to_gt, match_with_labels

DETECTRON2_CASES = [  # (thresholds, labels): RPN, RoI heads, and a level that is empty
    ([0.3, 0.7], [0, -1, 1]),
    ([0.5], [0, 1]),
    ([0.25, 0.5, 0.5], [-1, 0, 1, 1]),
]


def detectron2_rule(quality: np.ndarray, thresholds: list[float], labels: list[int],
                    allow_low_quality_matches: bool) -> tuple[np.ndarray, np.ndarray]:
    """detectron2's Matcher, per its documentation, for one (K, N) matrix."""
    num_gt, num_predictions = quality.shape
    if quality.size == 0:
        return np.zeros(num_predictions, np.int64), np.full(num_predictions, labels[0], np.int8)
    matches, values = quality.argmax(axis=0), quality.max(axis=0)
    match_labels = np.ones(num_predictions, np.int8)
    bounds = [-math.inf, *thresholds, math.inf]
    for label, low, high in zip(labels, bounds[:-1], bounds[1:]):
        match_labels[(values >= low) & (values < high)] = label
    if allow_low_quality_matches:
        for row in quality:
            match_labels[row == row.max()] = 1
    return matches, match_labels


def quality_matrices(seed: int) -> list[np.ndarray]:
    """Random (K, N) matrices, and tie-heavy ones: values on a grid that holds the thresholds,
    rows of zeros (a gt that overlaps nothing), duplicated rows and columns, K or N of 1."""
    rng = np.random.default_rng(seed)
    matrices = [rng.random((int(rng.integers(1, 6)), int(rng.integers(1, 40)))) for _ in range(4)]
    for _ in range(6):
        grid = rng.choice([0.0, 0.25, 0.3, 0.5, 0.7, 0.75, 1.0], (int(rng.integers(1, 6)), int(rng.integers(1, 30))))
        grid[rng.random(len(grid)) < 0.3] = 0.0
        if grid.shape[0] > 1:
            grid[-1] = grid[0]
        if grid.shape[1] > 1:
            grid[:, -1] = grid[:, 0]
        matrices.append(grid)
    return matrices + [rng.random((1, 9)), rng.random((4, 1))]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("allow_low_quality_matches", [False, True])
def test_match_to_gt_is_torchvisions_matcher(seed, allow_low_quality_matches):
    for high, low in ((0.7, 0.3), (0.5, 0.5), (0.75, 0.25)):
        reference = TorchvisionMatcher(high, low, allow_low_quality_matches)
        for quality in quality_matrices(seed):
            quality = torch.from_numpy(quality).float()
            assert torch.equal(match_to_gt(quality, high, low, allow_low_quality_matches),
                               reference(quality.clone()))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("allow_low_quality_matches", [False, True])
def test_match_with_labels_is_detectron2s_rule(seed, allow_low_quality_matches):
    for thresholds, labels in DETECTRON2_CASES:
        for quality in quality_matrices(seed):
            matches, match_labels = match_with_labels(torch.from_numpy(quality), thresholds, labels,
                                                      allow_low_quality_matches)
            expected_matches, expected_labels = detectron2_rule(quality, thresholds, labels,
                                                                allow_low_quality_matches)
            assert matches.dtype == torch.int64 and match_labels.dtype == torch.int8
            np.testing.assert_array_equal(matches.numpy(), expected_matches)
            np.testing.assert_array_equal(match_labels.numpy(), expected_labels)


def padded_batch(matrices: list[np.ndarray], num_predictions: int) -> torch.Tensor:
    """The matrices' first ``num_predictions`` columns as one (B, K, N) batch, -inf rows below."""
    rows = max(len(m) for m in matrices)
    batch = torch.full((len(matrices), rows, num_predictions), -math.inf, dtype=torch.float64)
    for b, quality in enumerate(matrices):
        batch[b, :len(quality)] = torch.from_numpy(quality[:, :num_predictions])
    return batch


@pytest.mark.parametrize("allow_low_quality_matches", [False, True])
def test_a_padded_batch_matches_as_each_image_alone(allow_low_quality_matches):
    matrices = [m for m in quality_matrices(7) if m.shape[1] >= 9]
    batch = padded_batch(matrices, 9)
    assert (batch == -math.inf).any()
    found = match_to_gt(batch, 0.7, 0.3, allow_low_quality_matches)
    matches, labels = match_with_labels(batch, [0.3, 0.7], [0, -1, 1], allow_low_quality_matches)
    for b, quality in enumerate(matrices):
        alone = torch.from_numpy(quality[:, :9])
        assert torch.equal(found[b], match_to_gt(alone, 0.7, 0.3, allow_low_quality_matches))
        expected = match_with_labels(alone, [0.3, 0.7], [0, -1, 1], allow_low_quality_matches)
        assert torch.equal(matches[b], expected[0]) and torch.equal(labels[b], expected[1])


def test_images_without_gts_and_without_predictions():
    no_gt = torch.zeros(2, 0, 5)
    assert torch.equal(match_to_gt(no_gt, 0.7, 0.3, True), torch.full((2, 5), BELOW_LOW_THRESHOLD))
    matches, labels = match_with_labels(no_gt, [0.3, 0.7], [-1, 0, 1], True)
    assert torch.equal(matches, torch.zeros(2, 5, dtype=torch.int64))
    assert torch.equal(labels, torch.full((2, 5), -1, dtype=torch.int8))
    # A padded image with only -inf rows is an image without gts.
    matches, labels = match_with_labels(torch.full((3, 5), -math.inf), [0.3, 0.7], [-1, 0, 1], True)
    assert torch.equal(labels, torch.full((5,), -1, dtype=torch.int8))
    assert match_to_gt(torch.zeros(3, 0), 0.7, 0.3, True).shape == (0,)
    assert match_with_labels(torch.zeros(2, 3, 0), [0.5], [0, 1], True)[1].shape == (2, 0)


def test_the_flags_are_torchvisions():
    assert (BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS) == (TorchvisionMatcher.BELOW_LOW_THRESHOLD,
                                                         TorchvisionMatcher.BETWEEN_THRESHOLDS)
    quality = torch.tensor([[0.1, 0.4, 0.8]])
    assert match_to_gt(quality, 0.7, 0.3).tolist() == [BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, 0]


@pytest.mark.parametrize("thresholds, labels, message", [
    ([0.7, 0.3], [0, -1, 1], "ascending"),
    ([0.3, 0.7], [0, 1], "need 3 labels"),
    ([0.5], [0, 2], "-1, 0 or 1"),
])
def test_bad_detectron2_parameters_are_refused(thresholds, labels, message):
    with pytest.raises(ValueError, match=message):
        match_with_labels(torch.zeros(1, 1), thresholds, labels)


def test_low_threshold_above_high_is_refused():
    with pytest.raises(ValueError, match="above high_threshold"):
        match_to_gt(torch.zeros(1, 1), 0.3, 0.7)
