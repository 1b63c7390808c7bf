"""Every anchor form gives the same targets: grids, plain tensors recognised as grids, and plain
tensors of any order (the box path); the recognition itself; empty anchors; mmdetection's ignore rule."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from frcnn import AnchorTargetConfig, assign_anchor_targets, concat_anchors, generate_anchors, grid_anchors, native
from frcnn.anchor_targets import box_matching
from frcnn.anchor_targets.recognition import recognise_grids
from oracle import ref_mmdet_max_iou_assign
from test_anchor_targets import CONFIGS, SMALL_SCALES, STRIDE, make_config, random_batch, random_ignore


def no_kernels(monkeypatch):
    monkeypatch.setattr(native, "kernels", lambda: None)


def assert_same(expected, got, order=None):
    for name, e, g in zip(expected._fields, expected, got):
        if order is not None:
            e = e[:, order]
        assert torch.equal(e, g), name


def oracle_case(rng, name):
    """A batch of the oracle tests' kind (integer boxes, float64), its grid and its ignore boxes."""
    height, width = (int(v) for v in rng.integers(2, 6, size=2))
    gt, num, im_info = random_batch(rng, batch=3, height=height, width=width, max_gt=int(rng.integers(1, 7)))
    grid = grid_anchors(generate_anchors(16, (0.5, 1, 2), SMALL_SCALES), height, width, STRIDE, dtype=torch.float64)
    kwargs = {}
    if CONFIGS[name].get("ignore"):
        boxes, counts = random_ignore(rng, im_info, 3)
        kwargs = dict(ignore_boxes=torch.from_numpy(boxes), num_ignore=torch.from_numpy(counts))
    return grid, (torch.from_numpy(gt), torch.from_numpy(num), torch.from_numpy(im_info)), kwargs


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_plain_tensors_equal_the_grid_bit_for_bit(monkeypatch, name):
    """On every oracle configuration, one-shot and chunked: the grid's own tensor (recognised) and
    the same anchors shuffled (the box path, compiled kernel and PyTorch-op twin) give the grid's
    outputs exactly."""
    rng = np.random.default_rng(sum(map(ord, name)) + 1)
    one_shot = make_config(CONFIGS[name])
    for _ in range(2):
        grid, inputs, kwargs = oracle_case(rng, name)
        expected = assign_anchor_targets(grid, *inputs, one_shot, **kwargs)
        order = torch.from_numpy(rng.permutation(grid.num_anchors))
        for config in (one_shot, dataclasses.replace(one_shot, working_set_bytes=4096)):
            assert_same(expected, assign_anchor_targets(grid.boxes.clone(), *inputs, config, **kwargs))
            assert_same(expected, assign_anchor_targets(grid.boxes[order], *inputs, config, **kwargs), order)
            with monkeypatch.context() as patch:
                no_kernels(patch)
                assert_same(expected, assign_anchor_targets(grid.boxes[order], *inputs, config, **kwargs), order)


def fpn_levels(dtype=torch.float32):
    return [grid_anchors(generate_anchors(stride, (0.5, 1, 2), (8,)), 64 // stride + 1, 96 // stride, stride,
                         dtype=dtype) for stride in (4, 8, 16, 32)]


def shape_of(grids):
    return [(g.num_base, g.height, g.width, g.stride) for g in grids]


@pytest.fixture(params=["kernels", "ops"])
def recognition_path(request, monkeypatch):
    """Run a recognition test with the compiled kernels (where they build) and with the PyTorch ops."""
    if request.param == "ops":
        monkeypatch.setattr(native, "kernels", lambda: None)
    elif native.kernels() is None:
        pytest.skip("the compiled CPU kernels cannot be built here")
    return request.param


def test_recognises_grids_and_fpn_levels_in_level_order(recognition_path):
    base = generate_anchors()
    for height, width in ((5, 7), (1, 7), (5, 1), (1, 1)):
        grid = grid_anchors(base, height, width, 16)
        found = recognise_grids(grid.boxes.clone(), torch.float32, 1.0)
        if height * width == 1:
            assert found is None  # a single cell has no stride to find: the box path
        else:
            assert shape_of(found) == [(9, height, width, 16)]
            assert torch.equal(found[0].base, grid.base.float())
    levels = fpn_levels()
    assert shape_of(recognise_grids(concat_anchors(levels), torch.float32, 0.0)) == shape_of(levels)
    wide = fpn_levels(torch.float64)
    assert shape_of(recognise_grids(concat_anchors(wide), torch.float64, 1.0)) == shape_of(wide)
    assert shape_of(recognise_grids(concat_anchors(levels[::-1]), torch.float32, 0.0)) == shape_of(levels[::-1])
    two = [
        grid_anchors(generate_anchors(8, (1,), (2,)), 3, 4, 8),
        grid_anchors(generate_anchors(8, (1,), (2,)), 2, 2, 8),
    ]
    assert shape_of(recognise_grids(concat_anchors(two), torch.float32, 0.0)) == shape_of(two)


def test_near_grids_are_not_recognised(recognition_path):
    levels = fpn_levels()
    anchors = concat_anchors(levels)
    generator = torch.Generator().manual_seed(0)
    assert recognise_grids(anchors[torch.randperm(anchors.shape[0], generator=generator)], torch.float32, 0.0) is None
    for index in (0, 5, anchors.shape[0] // 2, anchors.shape[0] - 1):
        for delta in (1e-3, 4.0):
            moved = anchors.clone()
            moved[index, 2] += delta
            assert recognise_grids(moved, torch.float32, 0.0) is None, (index, delta)
    # Cell-major across levels (all levels' anchors of a cell together) is not level-major.
    same_size = [grid_anchors(generate_anchors(16, (1,), scales), 4, 5, 16) for scales in ((2,), (4,))]
    cell_major = torch.stack([level.boxes for level in same_size], dim=1).reshape(-1, 4)
    found = recognise_grids(cell_major, torch.float32, 0.0)
    assert found is not None and shape_of(found) == [(2, 4, 5, 16)]  # it is one grid of two shapes
    assert recognise_grids(anchors[:-1], torch.float32, 0.0) is None  # a level cut short
    assert recognise_grids(anchors * 0.3, torch.float32, 0.0) is None  # strides 1.2, 2.4, ...: not integers
    # An anchor whose own area differs from its base shape's by rounding is not taken for the grid.
    odd = grid_anchors(torch.tensor([[-22.627417, -11.313708, 22.627417, 11.313708]]), 4, 70, 16)
    assert recognise_grids(odd.boxes, torch.float32, 0.0) is None


def test_fpn_plain_tensor_equals_levels(monkeypatch):
    levels = fpn_levels(torch.float64)
    corners = torch.rand(2, 12, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 60
    gt = torch.cat([corners, corners + 4 + corners.flip(-1) / 2, torch.ones(2, 12, 1, dtype=torch.float64)], dim=-1)
    inputs = (gt, torch.tensor([12, 5]), torch.tensor([[68.0, 96.0, 1.0], [60.0, 90.0, 1.0]], dtype=torch.float64))
    for config in (AnchorTargetConfig(batch_size=None), AnchorTargetConfig.preset("mmdetection", batch_size=None)):
        expected = assign_anchor_targets(levels, *inputs, config)
        assert (expected.labels == 1).any()
        assert_same(expected, assign_anchor_targets(concat_anchors(levels), *inputs, config))
        order = torch.randperm(expected.labels.shape[1], generator=torch.Generator().manual_seed(2))
        assert_same(expected, assign_anchor_targets(concat_anchors(levels)[order], *inputs, config), order)


def test_the_twin_keeps_plain_tensors_within_the_budget(monkeypatch):
    """With a 4 KB budget every dense (B, n, K) intermediate of the box path's twin fits it (or
    holds one anchor), and the outputs equal the one-shot ones."""
    no_kernels(monkeypatch)
    shapes = []
    real = box_matching.intersections

    def recording(anchors, boxes, offset):
        inter = real(anchors, boxes, offset)
        shapes.append(tuple(inter.shape))
        return inter

    monkeypatch.setattr(box_matching, "intersections", recording)
    grid = grid_anchors(generate_anchors(16, (0.5, 1, 2), SMALL_SCALES), 6, 8, STRIDE)
    anchors = grid.boxes.flip(0)  # not a grid in this order
    gt, num, im_info = random_batch(np.random.default_rng(5), batch=2, height=6, width=8, max_gt=9)
    ignore = random_ignore(np.random.default_rng(6), im_info, 4)
    inputs = (torch.from_numpy(gt).float(), torch.from_numpy(num), torch.from_numpy(im_info).float())
    kwargs = dict(ignore_boxes=torch.from_numpy(ignore[0]).float(), num_ignore=torch.from_numpy(ignore[1]))
    config = AnchorTargetConfig(batch_size=None)
    expected = assign_anchor_targets(anchors, *inputs, config, **kwargs)
    shapes.clear()
    budget = 4096
    got = assign_anchor_targets(anchors, *inputs, dataclasses.replace(config, working_set_bytes=budget), **kwargs)
    assert_same(expected, got)
    assert len(shapes) > 10
    assert all(box_matching._TWIN_TENSORS * b * n * k * 4 <= budget or n == 1 for b, n, k in shapes)


@pytest.mark.parametrize("preset", ["py-faster-rcnn", "torchvision", "mmdetection"])
def test_empty_anchors_give_empty_outputs(monkeypatch, preset):
    gt = torch.tensor([[[0.0, 0.0, 10.0, 10.0, 1.0]], [[0.0, 0.0, 0.0, 0.0, 0.0]]])
    im_info = torch.tensor([[50.0, 50.0, 1.0]] * 2)
    ignore = dict(ignore_boxes=torch.tensor([[[0.0, 0.0, 5.0, 5.0]]] * 2), num_ignore=torch.tensor([1, 1]))
    for use_kernels in (True, False):
        with monkeypatch.context() as patch:
            if not use_kernels:
                no_kernels(patch)
            for num in (torch.tensor([1, 0]), torch.tensor([0, 0])):
                for batch_size in (None, 256):
                    config = AnchorTargetConfig.preset(preset, batch_size=batch_size)
                    for kwargs in ({}, ignore):
                        out = assign_anchor_targets(torch.zeros(0, 4), gt, num, im_info, config,
                                                    generator=torch.Generator().manual_seed(0), **kwargs)
                        assert out.labels.shape == out.matched_gt.shape == (2, 0)
                        assert all(t.shape == (2, 0, 4) for t in out[1:4])


def mmdet_case(rng, num_anchors=60, num_gt=5, num_ignore=3):
    """Integer boxes on a 64x64 image with many exact IoF ties at 0.5."""
    def boxes(count, low=2, high=24):
        xy = rng.integers(0, 48, size=(count, 2))
        return np.concatenate([xy, xy + 2 * rng.integers(low // 2, high // 2, size=(count, 2))], axis=1).astype(float)

    anchors = boxes(num_anchors)
    gts = np.concatenate([boxes(num_gt), np.ones((num_gt, 1))], axis=1)
    ignore = boxes(num_ignore)
    # Ignore boxes that cover exactly half of an anchor: equal to ignore_iof_thr, so not ignored.
    x1, y1, x2, y2 = anchors[0]
    ignore[0] = (x1, y1, (x1 + x2) / 2, y2)
    return anchors, gts, ignore


def test_mmdetection_ignore_rule_equals_its_assigner(monkeypatch):
    rng = np.random.default_rng(11)
    config = AnchorTargetConfig.preset("mmdetection", batch_size=None)
    differs_from_the_default_rule = 0
    for trial in range(12):
        cases = [mmdet_case(rng) for _ in range(3)]
        anchors = torch.from_numpy(cases[0][0])
        if trial % 2:  # the grid path hands this case to the box path too
            anchors = grid_anchors(generate_anchors(16, (0.5, 1, 2), (1, 2)), 3, 4, 16, dtype=torch.float64).boxes
        num = np.array([5, 0, 3])
        gt = np.stack([c[1] for c in cases])
        ignore = np.stack([c[2] for c in cases])
        inputs = (
            torch.from_numpy(gt),
            torch.from_numpy(num),
            torch.tensor([[64.0, 64.0, 1.0]] * 3, dtype=torch.float64),
        )
        kwargs = dict(ignore_boxes=torch.from_numpy(ignore), num_ignore=torch.tensor([3, 3, 2]))
        for use_kernels in (True, False):
            with monkeypatch.context() as patch:
                if not use_kernels:
                    no_kernels(patch)
                out = assign_anchor_targets(anchors, *inputs, config, **kwargs)
            for b in range(3):
                labels, matched = ref_mmdet_max_iou_assign(anchors.numpy(), gt[b, :num[b], :4],
                                                           ignore[b, :int(kwargs["num_ignore"][b])])
                np.testing.assert_array_equal(out.labels[b].numpy(), labels, err_msg=f"trial {trial}, image {b}")
                np.testing.assert_array_equal(out.matched_gt[b].numpy(), matched, err_msg=f"trial {trial}, image {b}")
        after = assign_anchor_targets(anchors, *inputs, dataclasses.replace(config, ignore_before_matching=False),
                                      **kwargs)
        differs_from_the_default_rule += int(not torch.equal(after.labels, out.labels))
    assert differs_from_the_default_rule > 0


def test_an_ignored_best_anchor_hands_the_low_quality_match_on():
    """An anchor covered by an ignore region cannot be a gt's best anchor: the next best is."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 6.0, 10.0, 20.0], [40.0, 40.0, 50.0, 50.0]])
    gt = torch.tensor([[[0.0, 0.0, 10.0, 20.0, 1.0]]])  # IoU 0.5 with anchor 0, 0.7 with anchor 1
    inputs = (gt, torch.tensor([1]), torch.tensor([[64.0, 64.0, 1.0]]))
    # Covers 80 / 140 of anchor 1 and nothing of anchor 0.
    ignore = dict(ignore_boxes=torch.tensor([[[0.0, 12.0, 10.0, 20.0]]]), num_ignore=torch.tensor([1]))
    mmdet = AnchorTargetConfig.preset("mmdetection", batch_size=None)
    assert assign_anchor_targets(anchors, *inputs, mmdet).labels.tolist() == [[-1, 1, 0]]
    assert assign_anchor_targets(anchors, *inputs, mmdet, **ignore).labels.tolist() == [[1, -1, 0]]
    after = dataclasses.replace(mmdet, ignore_before_matching=False)
    assert assign_anchor_targets(anchors, *inputs, after, **ignore).labels.tolist() == [[-1, 1, 0]]
