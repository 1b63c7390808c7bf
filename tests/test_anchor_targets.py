"""The batched anchor target layer against the plain per-image oracle (tests/oracle.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from frcnn import (
    AnchorTargetConfig,
    AnchorTargetLayer,
    assign_anchor_targets,
    concat_anchors,
    generate_anchors,
    grid_anchors,
)
from oracle import ref_anchor_targets, ref_generate_anchors, ref_legacy_layout, ref_shifted_anchors

STRIDE = 16
SMALL_SCALES = (1, 2, 4)  # anchors of 16..90 px, so that small grids have inside anchors


def random_batch(rng: np.random.Generator, batch: int, height: int, width: int, max_gt: int,
                 garbage: bool = True):
    """Integer-valued gt boxes (float64) in images of different sizes, with junk in padded rows."""
    im_info = np.zeros((batch, 3))
    gt = np.zeros((batch, max_gt, 5))
    num = rng.integers(0, max_gt + 1, size=batch)
    num[0] = max_gt
    if batch > 1:
        num[1] = 0
    for b in range(batch):
        h = rng.integers(max(STRIDE, height * STRIDE // 2), height * STRIDE + 1)
        w = rng.integers(max(STRIDE, width * STRIDE // 2), width * STRIDE + 1)
        im_info[b] = (h, w, 1.0)
        for k in range(num[b]):
            x1, x2 = np.sort(rng.integers(0, w, size=2))
            y1, y2 = np.sort(rng.integers(0, h, size=2))
            if rng.random() < 0.15:  # a small box in a corner that no inside anchor may touch
                x1, y1 = 0, 0
                x2, y2 = rng.integers(0, 4, size=2)
            if rng.random() < 0.1 and k > 0:  # an exact duplicate: ties between gts
                gt[b, k] = gt[b, k - 1]
                continue
            gt[b, k] = (x1, y1, x2, y2, rng.integers(1, 4))
        if garbage:
            gt[b, num[b]:] = rng.choice([np.nan, np.inf, -5.0, 1e9])
    return gt, num, im_info


def random_ignore(rng: np.random.Generator, im_info: np.ndarray, max_ignore: int):
    batch = im_info.shape[0]
    boxes = np.full((batch, max_ignore, 4), np.nan)
    num = rng.integers(0, max_ignore + 1, size=batch)
    for b in range(batch):
        h, w = im_info[b, :2]
        for j in range(num[b]):
            x1, x2 = np.sort(rng.integers(0, int(w), size=2))
            y1, y2 = np.sort(rng.integers(0, int(h), size=2))
            boxes[b, j] = (x1, y1, x2, y2)
    return boxes, num


CONFIGS = {
    "default": {},
    **{f"preset-{name}": {"preset": name} for name in AnchorTargetConfig.preset_names()},
    "clobber": {"clobber_positives": True},
    "no-low-quality": {"low_quality_matches": False},
    "min-positive-overlap": {"min_positive_overlap": 0.4},
    "reassign": {"low_quality_reassign": True, "min_positive_overlap": 0.2},
    "reassign-clobber": {"low_quality_reassign": True, "clobber_positives": True},
    "border-8": {"allowed_border": 8},
    "border-none-legacy": {"allowed_border": None, "legacy_plus_one": True},
    "positive-weight": {"positive_weight": 0.3},
    "box-weights": {"bbox_weights": (10.0, 10.0, 5.0, 5.0), "bbox_inside_weights": (0.5, 1.0, 2.0, 1.0)},
    "loose-thresholds": {"positive_overlap": 0.5, "negative_overlap": 0.5},
    "zero-negative": {"negative_overlap": 0.0},
    "ignore-regions": {"ignore_overlap": 0.3, "ignore": True},
}


def make_config(spec: dict) -> AnchorTargetConfig:
    spec = {k: v for k, v in spec.items() if k != "ignore"}
    name = spec.pop("preset", None)
    spec["batch_size"] = None
    return AnchorTargetConfig.preset(name, **spec) if name else AnchorTargetConfig(**spec)


def assert_matches_oracle(result, anchors_np, gt, num, im_info, config, ignore=None):
    for b in range(gt.shape[0]):
        ign = None if ignore is None else ignore[0][b, :ignore[1][b]]
        ref = ref_anchor_targets(anchors_np, gt[b, :num[b]], im_info[b], config, ignore_boxes=ign)
        np.testing.assert_array_equal(result.labels[b].numpy(), ref["labels"], err_msg=f"labels, image {b}")
        np.testing.assert_array_equal(result.matched_gt[b].numpy(), ref["matched_gt"], err_msg=f"matched, image {b}")
        for name in ("bbox_targets", "bbox_inside_weights", "bbox_outside_weights"):
            np.testing.assert_allclose(getattr(result, name)[b].numpy(), ref[name], rtol=1e-12, atol=1e-12,
                                       err_msg=f"{name}, image {b}")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_oracle_on_grid_anchors(name):
    spec = CONFIGS[name]
    config = make_config(spec)
    rng = np.random.default_rng(sum(map(ord, name)))
    base = generate_anchors(16, (0.5, 1, 2), SMALL_SCALES)
    for _ in range(6):
        height, width = rng.integers(2, 7, size=2)
        gt, num, im_info = random_batch(rng, batch=3, height=height, width=width, max_gt=int(rng.integers(1, 7)))
        ignore = random_ignore(rng, im_info, 3) if spec.get("ignore") else None
        grid = grid_anchors(base, height, width, STRIDE, dtype=torch.float64)
        kwargs = {}
        if ignore is not None:
            kwargs = dict(ignore_boxes=torch.from_numpy(ignore[0]), num_ignore=torch.from_numpy(ignore[1]))
        result = assign_anchor_targets(grid, torch.from_numpy(gt), torch.from_numpy(num), torch.from_numpy(im_info),
                                       config, **kwargs)
        anchors_np = ref_shifted_anchors(base.numpy(), height, width, STRIDE)
        assert_matches_oracle(result, anchors_np, gt, num, im_info, config, ignore)


@pytest.mark.parametrize("name", ["default", "reassign", "ignore-regions", "preset-torchvision"])
def test_plain_tensor_and_multilevel_anchors_match_oracle(name):
    spec = CONFIGS[name]
    config = make_config(spec)
    rng = np.random.default_rng(7)
    levels = [grid_anchors(generate_anchors(8, (0.5, 1, 2), (2,)), 8, 10, 8, dtype=torch.float64),
              grid_anchors(generate_anchors(16, (1,), (2, 4)), 4, 5, 16, dtype=torch.float64)]
    for _ in range(4):
        gt, num, im_info = random_batch(rng, batch=3, height=4, width=5, max_gt=5)
        ignore = random_ignore(rng, im_info, 2) if spec.get("ignore") else None
        kwargs = {}
        if ignore is not None:
            kwargs = dict(ignore_boxes=torch.from_numpy(ignore[0]), num_ignore=torch.from_numpy(ignore[1]))
        inputs = (torch.from_numpy(gt), torch.from_numpy(num), torch.from_numpy(im_info), config)
        anchors_np = concat_anchors(levels).numpy()
        for anchors in (levels, concat_anchors(levels)):
            result = assign_anchor_targets(anchors, *inputs, **kwargs)
            assert_matches_oracle(result, anchors_np, gt, num, im_info, config, ignore)


def test_generate_anchors_spec_vector():
    expected = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
                [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
                [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]
    assert generate_anchors().tolist() == expected
    np.testing.assert_array_equal(generate_anchors(8, (0.25, 1, 3), (1, 5)).numpy(),
                                  ref_generate_anchors(8, (0.25, 1, 3), (1, 5)))


def test_grid_order_and_cache():
    base = generate_anchors()
    grid = grid_anchors(base, 3, 4, 16)
    np.testing.assert_array_equal(grid.boxes.numpy(), ref_shifted_anchors(base.numpy(), 3, 4, 16))
    assert grid_anchors(base, 3, 4, 16) is grid
    assert grid_anchors(base, 3, 4, 16, dtype=torch.float64) is not grid


def test_legacy_layer_layout_matches_oracle():
    rng = np.random.default_rng(3)
    config = AnchorTargetConfig(batch_size=None)
    layer = AnchorTargetLayer(feat_stride=16, scales=SMALL_SCALES, config=config)
    height, width = 4, 5
    gt, num, im_info = random_batch(rng, batch=2, height=height, width=width, max_gt=4)
    score = torch.zeros(2, 18, height, width, dtype=torch.float64)
    outputs = layer((score, torch.from_numpy(gt), torch.from_numpy(im_info), torch.from_numpy(num)))
    anchors_np = ref_shifted_anchors(ref_generate_anchors(16, (0.5, 1, 2), SMALL_SCALES), height, width, 16)
    for b in range(2):
        ref = ref_anchor_targets(anchors_np, gt[b, :num[b]], im_info[b], config)
        for got, want in zip(outputs, ref_legacy_layout(ref, height, width, 9)):
            np.testing.assert_allclose(got[b].numpy(), want, rtol=1e-12, atol=1e-12)
    assert outputs[0].shape == (2, 1, 9 * height, width)
    assert all(o.shape == (2, 36, height, width) for o in outputs[1:])


def test_chunked_equals_one_shot_bitwise():
    """A tiny working-set budget forces chunks; every output must be bit-identical."""
    torch.manual_seed(0)
    base = generate_anchors()
    levels = [grid_anchors(base, 19, 32, 16), grid_anchors(generate_anchors(32, scales=(4, 8)), 10, 16, 32)]
    gt_xy = torch.rand(2, 30, 2) * 400
    gt = torch.cat([gt_xy, gt_xy + torch.rand(2, 30, 2) * 200 + 1, torch.ones(2, 30, 1)], dim=-1)
    gt[:, 5] = gt[:, 4]  # exact duplicate: a tie
    num = torch.tensor([30, 17])
    im_info = torch.tensor([[300.0, 500.0, 1.0], [250.5, 511.0, 1.0]])
    for spec in ({}, {"low_quality_reassign": True}, {"allowed_border": None, "legacy_plus_one": False}):
        one_shot = AnchorTargetConfig(batch_size=None, **spec)
        chunked = dataclasses.replace(one_shot, working_set_bytes=4096)
        for anchors in (levels, concat_anchors(levels)):
            expected = assign_anchor_targets(anchors, gt, num, im_info, one_shot)
            got = assign_anchor_targets(anchors, gt, num, im_info, chunked)
            for e, g in zip(expected, got):
                assert torch.equal(e, g)
