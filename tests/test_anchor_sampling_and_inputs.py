"""Subsampling, properties, torchvision parity, bad inputs and configs of the anchor target layer."""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from frcnn import (
    AnchorTargetConfig,
    assign_anchor_targets,
    assign_anchor_targets_unchecked,
    generate_anchors,
    grid_anchors,
)
from frcnn.sampling import keep_random, random_keys, splitmix_keys

GRID = grid_anchors(generate_anchors(16, (0.5, 1, 2), (1, 2, 4)), 12, 16, 16, dtype=torch.float64)


def crowded_batch(batch: int = 3, num_gt: int = 12, seed: int = 0):
    """Many overlapping gts on a 192x256 image, so that positives outnumber num_fg."""
    rng = np.random.default_rng(seed)
    xy = rng.integers(0, [200, 140], size=(batch, num_gt, 2)).astype(float)
    wh = rng.integers(20, 70, size=(batch, num_gt, 2)).astype(float)
    boxes = np.concatenate([xy, np.minimum(xy + wh, [255, 191]), np.ones((batch, num_gt, 1))], axis=-1)
    im_info = torch.tensor([[192.0, 256.0, 1.0]]).repeat(batch, 1).double()
    return torch.from_numpy(boxes), torch.full((batch,), num_gt), im_info


def test_sampling_keeps_subsets_with_exact_counts_and_weights():
    gt, num, im_info = crowded_batch()
    full = assign_anchor_targets(GRID, gt, num, im_info, AnchorTargetConfig(batch_size=None))
    for batch_size, fg_fraction in ((16, 0.5), (64, 0.25), (1000, 0.5), (7, 0.0)):
        config = AnchorTargetConfig(batch_size=batch_size, fg_fraction=fg_fraction)
        sampled = assign_anchor_targets(GRID, gt, num, im_info, config, generator=torch.Generator().manual_seed(1))
        num_fg = int(fg_fraction * batch_size)
        for b in range(gt.shape[0]):
            pos, neg = full.labels[b] == 1, full.labels[b] == 0
            kept_pos, kept_neg = sampled.labels[b] == 1, sampled.labels[b] == 0
            assert not (kept_pos & ~pos).any() and not (kept_neg & ~neg).any()
            assert int(kept_pos.sum()) == min(int(pos.sum()), num_fg)
            assert int(kept_neg.sum()) == min(int(neg.sum()), batch_size - int(kept_pos.sum()))
            count = int((sampled.labels[b] >= 0).sum())
            weights = sampled.bbox_outside_weights[b, :, 0]
            assert torch.equal(weights[sampled.labels[b] >= 0], torch.full((count,), 1.0 / count, dtype=weights.dtype))
            assert (weights[sampled.labels[b] < 0] == 0).all()
            # matched_gt and inside weights follow the sampled labels
            assert torch.equal(sampled.matched_gt[b] >= 0, kept_pos)
            assert torch.equal(sampled.bbox_inside_weights[b].abs().sum(-1) > 0, kept_pos)
        assert (full.labels == 1).sum(1).min() > 8  # the case really subsamples positives


def test_sampling_repeats_with_a_seed_and_differs_without():
    gt, num, im_info = crowded_batch()
    config = AnchorTargetConfig(batch_size=32)
    draws = [assign_anchor_targets(GRID, gt, num, im_info, config, generator=torch.Generator().manual_seed(s)).labels
             for s in (5, 5, 6)]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_positive_weight_per_image():
    gt, num, im_info = crowded_batch()
    config = AnchorTargetConfig(batch_size=48, positive_weight=0.25)
    result = assign_anchor_targets(GRID, gt, num, im_info, config, generator=torch.Generator().manual_seed(0))
    for b in range(gt.shape[0]):
        labels, weights = result.labels[b], result.bbox_outside_weights[b, :, 0]
        assert torch.allclose(weights[labels == 1], torch.tensor(0.25 / int((labels == 1).sum())).double())
        assert torch.allclose(weights[labels == 0], torch.tensor(0.75 / int((labels == 0).sum())).double())


def test_keys_are_the_splitmix64_stream():
    """The published splitmix64 outputs from state 1234567, reduced to their top 31 bits."""
    outputs = [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
               16408922859458223821]
    keys = splitmix_keys(torch.tensor(1234567), len(outputs))
    assert keys.tolist() == [(value >> 33) | 1 for value in outputs]


def test_keys_repeat_with_the_generator_and_differ_without():
    first = random_keys((3, 500), generator=torch.Generator().manual_seed(4))
    again = random_keys((3, 500), generator=torch.Generator().manual_seed(4))
    other = random_keys((3, 500), generator=torch.Generator().manual_seed(5))
    assert first.shape == (3, 500) and first.dtype == torch.int32 and torch.equal(first, again)
    assert bool((first % 2 == 1).all()) and int(first.min()) >= 1
    assert (first != other).float().mean() > 0.99 and len(torch.unique(first)) == first.numel()


def test_selection_is_uniform():
    """Each of 40 candidates is kept with probability 10/40; counts over 2,000 draws stay binomial."""
    candidates = torch.zeros(1, 300, dtype=torch.bool)
    candidates[0, torch.arange(3, 300, 7)[:40]] = True
    generator = torch.Generator().manual_seed(0)
    draws = 2000
    counts = torch.zeros(300)
    for _ in range(draws):
        keys = random_keys((1, 300), generator=generator)
        kept, count = keep_random(candidates, keys, torch.tensor([10]), 10)
        assert int(kept.sum()) == int(count) == 10 and not (kept & ~candidates).any()
        counts += kept[0]
    expected, std = draws * 0.25, math.sqrt(draws * 0.25 * 0.75)
    assert (counts[candidates[0]] - expected).abs().max() < 4.5 * std
    chi_square = float(((counts[candidates[0]] - expected) ** 2 / expected).sum())
    assert chi_square < 80  # 39 degrees of freedom: p < 1e-4 beyond this


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_permuting_gt_rows_keeps_labels(data):
    num_gt = data.draw(st.integers(1, 6))
    coords = st.integers(0, 250)
    boxes = []
    for _ in range(num_gt):
        x1, x2 = sorted(data.draw(st.tuples(coords, coords)))
        y1, y2 = sorted(data.draw(st.tuples(st.integers(0, 190), st.integers(0, 190))))
        boxes.append((x1, y1, x2, y2, 1))
    gt = torch.tensor([boxes], dtype=torch.float64)
    order = torch.tensor(data.draw(st.permutations(range(num_gt))))
    spec = data.draw(st.sampled_from([{}, {"clobber_positives": True}, {"low_quality_reassign": True},
                                      {"allowed_border": None, "legacy_plus_one": False}]))
    config = AnchorTargetConfig(batch_size=None, **spec)
    im_info = torch.tensor([[192.0, 256.0, 1.0]], dtype=torch.float64)
    num = torch.tensor([num_gt])
    base = assign_anchor_targets(GRID, gt, num, im_info, config)
    permuted = assign_anchor_targets(GRID, gt[:, order], num, im_info, config)
    assert torch.equal(base.labels, permuted.labels)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_translating_gt_by_whole_cells_translates_labels(data):
    """Without the border filter, moving every gt by (dx, dy) cells moves the labels with them."""
    grid = grid_anchors(generate_anchors(16, (0.5, 1, 2), (1, 2)), 16, 16, 16, dtype=torch.float64)
    num_gt = data.draw(st.integers(1, 4))
    boxes = []
    for _ in range(num_gt):  # centres in the middle cells, so that every best anchor stays in the grid
        cx, cy = data.draw(st.integers(96, 160)), data.draw(st.integers(96, 160))
        w, h = data.draw(st.integers(4, 48)), data.draw(st.integers(4, 48))
        boxes.append((cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2, 1))
    gt = torch.tensor([boxes], dtype=torch.float64)
    dx, dy = data.draw(st.integers(-2, 2)), data.draw(st.integers(-2, 2))
    moved = gt.clone()
    moved[..., [0, 2]] += 16 * dx
    moved[..., [1, 3]] += 16 * dy
    config = AnchorTargetConfig(batch_size=None, allowed_border=None,
                                legacy_plus_one=data.draw(st.booleans()))
    im_info = torch.tensor([[256.0, 256.0, 1.0]], dtype=torch.float64)
    num = torch.tensor([num_gt])
    labels = assign_anchor_targets(grid, gt, num, im_info, config).labels.view(16, 16, -1)
    shifted = assign_anchor_targets(grid, moved, num, im_info, config).labels.view(16, 16, -1)
    rows = slice(max(0, -dy), 16 - max(0, dy))
    cols = slice(max(0, -dx), 16 - max(0, dx))
    rows_moved = slice(rows.start + dy, rows.stop + dy)
    cols_moved = slice(cols.start + dx, cols.stop + dx)
    assert torch.equal(labels[rows, cols], shifted[rows_moved, cols_moved])


def test_torchvision_preset_equals_torchvision_matcher_and_box_coder():
    from torchvision.models.detection import _utils as det_utils
    from torchvision.ops import box_iou

    gt, num, im_info = crowded_batch(batch=2, num_gt=9, seed=3)
    anchors = GRID.boxes
    config = AnchorTargetConfig.preset("torchvision", batch_size=None)
    result = assign_anchor_targets(GRID, gt, num, im_info, config)
    matcher = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
    coder = det_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    for b in range(2):
        matched = matcher(box_iou(gt[b, :, :4], anchors))
        labels = torch.where(matched >= 0, 1, torch.where(matched == matcher.BELOW_LOW_THRESHOLD, 0, -1))
        assert torch.equal(result.labels[b], labels)
        positive = matched >= 0
        assert torch.equal(result.matched_gt[b][positive], matched[positive])
        expected = coder.encode_single(gt[b, matched.clamp(min=0), :4], anchors)
        torch.testing.assert_close(result.bbox_targets[b][positive], expected[positive])


def bad_inputs():
    gt, num, im_info = crowded_batch(batch=2, num_gt=3)
    nan_gt = gt.clone()
    nan_gt[1, 2, 0] = math.nan
    flipped = gt.clone()
    flipped[1, 1, 2] = flipped[1, 1, 0] - 1
    bad_size = im_info.clone()
    bad_size[1, 0] = 0
    return [
        ("gt_boxes", dict(gt_boxes=gt[0])),
        ("gt_boxes", dict(gt_boxes=gt[..., :4])),
        ("num_boxes", dict(num_boxes=torch.tensor([3]))),
        ("num_boxes", dict(num_boxes=torch.tensor([3, 4]))),
        ("num_boxes", dict(num_boxes=torch.tensor([-1, 2]))),
        ("num_boxes", dict(num_boxes=torch.tensor([3.0, 2.0]))),
        ("im_info", dict(im_info=im_info[:, :2])),
        ("im_info", dict(im_info=bad_size)),
        ("gt_boxes", dict(gt_boxes=nan_gt)),
        ("gt_boxes", dict(gt_boxes=flipped)),
        ("anchors", dict(anchors=GRID.boxes[:, :3])),
        ("ignore_boxes", dict(ignore_boxes=torch.zeros(2, 1, 4))),
    ]


@pytest.mark.parametrize("argument,override", bad_inputs())
def test_bad_inputs_raise_value_error_naming_the_argument(argument, override):
    gt, num, im_info = crowded_batch(batch=2, num_gt=3)
    kwargs = dict(anchors=GRID, gt_boxes=gt, num_boxes=num, im_info=im_info)
    kwargs.update(override)
    with pytest.raises(ValueError, match=argument):
        assign_anchor_targets(**kwargs)


def test_bad_value_messages_name_image_and_value():
    gt, num, im_info = crowded_batch(batch=2, num_gt=3)
    gt[1, 2, 0] = math.nan
    with pytest.raises(ValueError, match=r"gt_boxes: image 1, row 2 .*nan"):
        assign_anchor_targets(GRID, gt, num, im_info)
    with pytest.raises(ValueError, match=r"num_boxes: image 0 .*\[0, K=3\]: 5"):
        assign_anchor_targets(GRID, gt, torch.tensor([5, 1]), im_info)
    # the same NaN in a padded row is fine
    assign_anchor_targets(GRID, gt, torch.tensor([3, 2]), im_info)


@pytest.mark.parametrize("field,value", [
    ("positive_overlap", 1.5), ("negative_overlap", -0.1), ("fg_fraction", 2.0), ("batch_size", 0),
    ("batch_size", 2.5), ("positive_weight", 0.0), ("positive_weight", 1.0), ("bbox_inside_weights", (1, 1, 1)),
    ("bbox_weights", (1, 1, 1, 1, 1)), ("min_positive_overlap", 1.2), ("ignore_overlap", -1.0),
    ("working_set_bytes", 0), ("bbox_weights", (0.0, 1.0, 1.0, 1.0)),
])
def test_invalid_config_is_refused_naming_field_and_value(field, value):
    with pytest.raises(ValueError, match=rf"{field}.*{value!r}".replace("(", r"\(").replace(")", r"\)")):
        AnchorTargetConfig(**{field: value})


def test_negative_overlap_above_positive_is_refused():
    with pytest.raises(ValueError, match="negative_overlap"):
        AnchorTargetConfig(positive_overlap=0.4, negative_overlap=0.5)


def test_presets():
    assert AnchorTargetConfig.preset("mmdetection").min_positive_overlap == 0.3
    assert AnchorTargetConfig.preset("detectron2").allowed_border is None
    assert AnchorTargetConfig.preset("torchvision", batch_size=512).batch_size == 512
    with pytest.raises(ValueError, match="unknown AnchorTargetConfig preset 'yolo'"):
        AnchorTargetConfig.preset("yolo")
    with pytest.raises(ValueError, match="unknown AnchorTargetConfig field"):
        AnchorTargetConfig.preset("torchvision", positive_iou=0.5)


def test_image_without_gt_and_no_gt_columns():
    config = AnchorTargetConfig(batch_size=None)
    im_info = torch.tensor([[192.0, 256.0, 1.0]], dtype=torch.float64)
    for gt in (torch.zeros(1, 0, 5, dtype=torch.float64), torch.full((1, 3, 5), math.nan, dtype=torch.float64)):
        result = assign_anchor_targets(GRID, gt, torch.tensor([0]), im_info, config)
        inside = result.labels >= 0
        assert inside.any() and (result.labels[inside] == 0).all()
        assert (result.matched_gt == -1).all() and (result.bbox_targets == 0).all()


needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="torch.compile needs a C++ compiler")


@needs_compiler
@pytest.mark.parametrize("form", ["grid", "plain", "shuffled"])
def test_compiles_without_graph_breaks(form):
    """A grid, the same anchors as a plain tensor, and that tensor shuffled: each traces into one
    graph (a plain tensor takes the box-matching twin there) with the eager outputs."""
    gt, num, im_info = crowded_batch(batch=2, num_gt=6)
    gt, im_info = gt.float(), im_info.float()
    grid = grid_anchors(generate_anchors(16, (0.5, 1, 2), (1, 2, 4)), 12, 16, 16)
    order = torch.randperm(grid.num_anchors, generator=torch.Generator().manual_seed(0))
    grid = {"grid": grid, "plain": grid.boxes, "shuffled": grid.boxes[order]}[form]
    torch._dynamo.reset()
    compiled = torch.compile(assign_anchor_targets_unchecked, fullgraph=True)

    exact = AnchorTargetConfig(batch_size=None, low_quality_reassign=True)
    eager = assign_anchor_targets_unchecked(grid, gt, num, im_info, exact)
    traced = compiled(grid, gt, num, im_info, exact)
    for name, e, c in zip(eager._fields, eager, traced):
        assert torch.equal(e, c), name

    sampled_config = AnchorTargetConfig(batch_size=32)
    sampled = compiled(grid, gt, num, im_info, sampled_config)
    for b in range(2):
        kept_pos, kept_neg = sampled.labels[b] == 1, sampled.labels[b] == 0
        assert not (kept_pos & (eager.labels[b] != 1)).any() and not (kept_neg & (eager.labels[b] != 0)).any()
        assert int(kept_pos.sum()) == min(int((eager.labels[b] == 1).sum()), 16)
        assert int(kept_neg.sum()) == min(int((eager.labels[b] == 0).sum()), 32 - int(kept_pos.sum()))
