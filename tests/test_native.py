"""The compiled CPU kernel against the PyTorch-op path it replaces: equal bit for bit."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from frcnn import AnchorTargetConfig, assign_anchor_targets, concat_anchors, generate_anchors, grid_anchors, native
from frcnn.anchor_targets.geometry import axis_overlaps, grid_levels
from frcnn.anchor_targets.grid_matching import low_quality_gts, rank_gts
from frcnn.sampling import random_keys, sample_balanced, splitmix_keys

needs_kernels = pytest.mark.skipif(native.kernels() is None, reason="the compiled CPU kernels cannot be built here")


def both_paths(monkeypatch, fn):
    """fn() with the compiled kernel, then with the PyTorch-op path."""
    compiled = fn()
    with monkeypatch.context() as patch:
        patch.setattr(native, "kernels", lambda: None)
        fallback = fn()
    return compiled, fallback


def tie_heavy_overlaps(generator: torch.Generator, dtype: torch.dtype, levels: int):
    """Row and column overlaps (2, 3, K, 7) and (2, 3, K, 9) with values in [0, levels): exact
    ties everywhere, zero rows and zero columns common."""
    num_gt = int(torch.randint(1, 13, (), generator=generator))
    heights = torch.randint(0, levels, (2, 3, num_gt, 7), generator=generator).to(dtype)
    widths = torch.randint(0, levels, (2, 3, num_gt, 9), generator=generator).to(dtype)
    return heights, widths


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_gts_kernel_equals_op_path_on_tie_heavy_overlaps(monkeypatch, dtype):
    generator = torch.Generator().manual_seed(3)
    for trial in range(40):
        heights, widths = tie_heavy_overlaps(generator, dtype, levels=4)
        area_sum = torch.randint(20, 24, heights.shape[:3], generator=generator).to(dtype)

        def ranked():  # into (B, a, h, W) views of (B, h, W, a) buffers, as match_level writes them
            best = torch.full((2, 7, 9, 3), -5, dtype=torch.int32).permute(0, 3, 1, 2)
            return rank_gts(heights, widths, area_sum, out=(best, torch.full((2, 7, 9, 3), -5.0, dtype=dtype)
                                                            .permute(0, 3, 1, 2)))

        compiled, fallback = both_paths(monkeypatch, ranked)
        for got, want in zip(compiled, fallback):
            assert got.dtype == want.dtype and got.shape == want.shape == (2, 3, 7, 9)
            assert torch.equal(got, want), trial
        assert (compiled[0] >= 0).all() and (compiled[1] >= 0).all()


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_quality_kernel_equals_op_path(monkeypatch, dtype):
    generator = torch.Generator().manual_seed(4)
    for trial in range(40):
        heights, widths = tie_heavy_overlaps(generator, dtype, levels=3)
        eligible = torch.rand(heights.shape[:3], generator=generator) < 0.7
        inputs = (heights, widths, heights.amax(dim=3), widths.amax(dim=3), eligible)
        start = torch.randint(0, 50, (2, 7, 9, 3), generator=generator, dtype=torch.int32)
        for reassign in (False, True):
            def hit():  # into (B, a, h, W) views, as match_level writes them
                hits = torch.ones(2, 7, 9, 3, dtype=torch.bool).permute(0, 3, 1, 2)
                target = start.clone().permute(0, 3, 1, 2) if reassign else None
                return low_quality_gts(*inputs, hits, target), target

            (hits, target), (want_hits, want_target) = both_paths(monkeypatch, hit)
            assert hits.dtype == torch.bool and hits.shape == (2, 3, 7, 9) and torch.equal(hits, want_hits), trial
            assert hits.any() and not hits.all()
            if reassign:
                assert torch.equal(target, want_target), trial
                kept = start.permute(0, 3, 1, 2)
                assert torch.equal(target[~hits], kept[~hits]) and (target[hits] < heights.shape[2]).all()


@needs_kernels
def test_key_kernel_equals_op_path(monkeypatch):
    """Every seed's bits matter: the extremes, signs and sizes around the kernel's chunks."""
    for seed in (0, 1, -1, 2**63 - 1, -2**63, 1234567, -987654321987):
        for count in (0, 1, 7, 4096, 4097, 20011):
            state = torch.tensor(seed, dtype=torch.int64)
            compiled, fallback = both_paths(monkeypatch, lambda: splitmix_keys(state, count))
            assert compiled.dtype == torch.int32 and compiled.shape == (count,)
            assert torch.equal(compiled, fallback), (seed, count)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_axis_overlap_kernel_equals_op_path(monkeypatch, dtype):
    """Random grids and boxes, partly outside the image, with invalid rows, every border rule and
    both area conventions."""
    generator = torch.Generator().manual_seed(11)
    meeting = 0
    for trial in range(30):
        base = generate_anchors(16, (0.5, 1, 2), (float(torch.rand((), generator=generator)) * 8 + 1, 4))
        height, width = (int(v) for v in torch.randint(1, 14, (2,), generator=generator))
        level = grid_levels([grid_anchors(base, height, width, 16)], dtype, 0.0)[0]
        batch, num_boxes = 3, int(torch.randint(1, 9, (), generator=generator))
        corner = torch.rand(batch, num_boxes, 2, generator=generator, dtype=dtype) * 260 - 30
        boxes = torch.cat((corner, corner + torch.rand(batch, num_boxes, 2, generator=generator, dtype=dtype) * 120), 2)
        valid = torch.rand(batch, num_boxes, generator=generator) < 0.8
        im_info = torch.tensor([[150.0, 190.0, 1.0], [211.0, 97.5, 1.0], [64.0, 250.0, 2.0]], dtype=dtype)
        border = [None, 0.0, 7.5][trial % 3]
        offset = float(trial % 2)
        compiled, fallback = both_paths(
            monkeypatch, lambda: axis_overlaps(level, boxes, valid, im_info, border, offset)
        )
        for name, got, want in zip(compiled._fields, compiled, fallback):
            assert got.dtype == want.dtype and torch.equal(got, want), (trial, name)
        meeting += bool((compiled.heights * compiled.widths.amax(dim=3, keepdim=True) > 0).any())
    assert meeting >= 20


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_last_dim_max_kernel_is_amax(dtype):
    generator = torch.Generator().manual_seed(2)
    for shape in ((1,), (5, 1), (3, 4, 7), (2, 3, 5, 38)):
        values = torch.randint(-3, 4, shape, generator=generator).to(dtype)  # many ties
        values.view(-1)[:: 5] = torch.nan
        want = values.amax(dim=-1)
        assert torch.equal(native.kernels().last_dim_max(values).isnan(), want.isnan())
        assert torch.equal(native.kernels().last_dim_max(values).nan_to_num(), want.nan_to_num()), shape
    strided = torch.rand(4, 6, 9, dtype=dtype).transpose(1, 2)
    assert torch.equal(native.kernels().last_dim_max(strided), strided.amax(dim=-1))


def distinct_keys(generator: torch.Generator, rows: int, size: int, uniform: bool) -> torch.Tensor:
    """Sampling keys with no repeat in a row: uniform ones (the kernel's fast path) or a shuffled
    odd range (small values, its fallback)."""
    if not uniform:
        return (torch.argsort(torch.rand(rows, size, generator=generator), dim=1) * 2 + 1).int()
    while True:
        keys = random_keys((rows, size), generator=generator)
        if all(len(torch.unique(row)) == size for row in keys):
            return keys


@needs_kernels
@pytest.mark.parametrize("uniform", [True, False])
def test_sampling_kernel_keeps_the_same_sets_as_top_k(monkeypatch, uniform):
    """Distinct keys make the kept sets unique: both paths must find them."""
    generator = torch.Generator().manual_seed(5)
    for trial in range(30):
        size = int(torch.randint(1, 3000, (), generator=generator))
        scores = torch.rand(6, size, generator=generator)
        density = torch.rand(6, 1, generator=generator)
        positive = scores < density * 0.3
        negative = ~positive & (torch.rand(6, size, generator=generator) < density)
        keys = distinct_keys(generator, 6, size, uniform)
        batch_size = int(torch.randint(1, 300, (), generator=generator))
        compiled, fallback = both_paths(monkeypatch, lambda: sample_balanced(positive, negative, batch_size, 0.5, keys))
        for got, want in zip(compiled, fallback):
            assert got.dtype == torch.bool and torch.equal(got, want), trial


@needs_kernels
def test_sampling_kernel_breaks_equal_keys_by_the_lower_index():
    candidates = torch.tensor([[True, True, True, True, False]])
    keys = torch.tensor([[5, 9, 9, 9, 11]], dtype=torch.int32)
    kept_pos, kept_neg = sample_balanced(candidates, torch.zeros_like(candidates), 4, 0.5, keys)
    assert kept_pos.tolist() == [[False, True, True, False, False]] and not kept_neg.any()


@needs_kernels
@pytest.mark.parametrize("spec", [{}, {"low_quality_reassign": True, "min_positive_overlap": 0.3},
                                  {"allowed_border": None, "legacy_plus_one": False},
                                  {"working_set_bytes": 4096}])
def test_layer_outputs_are_identical_with_and_without_the_kernel(monkeypatch, spec):
    torch.manual_seed(0)
    levels = [
        grid_anchors(generate_anchors(), 19, 32, 16),
        grid_anchors(generate_anchors(32, scales=(4, 8)), 10, 16, 32),
    ]
    corners = torch.rand(3, 25, 2) * 400
    gt = torch.cat([corners, corners + torch.rand(3, 25, 2) * 200 + 1, torch.ones(3, 25, 1)], dim=-1)
    gt[:, 5] = gt[:, 4]  # an exact duplicate: a tie
    num = torch.tensor([25, 0, 11])
    im_info = torch.tensor([[300.0, 500.0, 1.0], [320.0, 512.0, 1.0], [250.5, 511.0, 1.0]])
    config = AnchorTargetConfig(**spec)
    for anchors in (levels, concat_anchors(levels)):
        compiled, fallback = both_paths(monkeypatch, lambda: assign_anchor_targets(
            anchors, gt, num, im_info, config, generator=torch.Generator().manual_seed(1)))
        for name, got, want in zip(compiled._fields, compiled, fallback):
            assert torch.equal(got, want), name
        assert (compiled.labels == 1).sum() > 10


def test_native_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("FRCNN_NATIVE", "0")
    assert native._build() is None


def test_a_failed_build_warns_and_falls_back(monkeypatch):
    import torch.utils.cpp_extension as cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.delenv("FRCNN_NATIVE", raising=False)
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        assert native._build() is None


def test_the_pip_ninja_is_found_without_the_venv_on_path(monkeypatch, tmp_path):
    ninja = pytest.importorskip("ninja")
    monkeypatch.setenv("PATH", str(tmp_path))
    native._put_ninja_on_path()
    assert shutil.which("ninja") == str(Path(ninja.BIN_DIR) / "ninja")


def tie_heavy_boxes(generator: torch.Generator, count: int, dtype: torch.dtype, shape: tuple[int, ...] = ()):
    """Boxes (*shape, count, 4) on a coarse integer lattice, with zero-width and zero-height ones:
    exact IoU ties everywhere."""
    corners = torch.randint(-8, 40, (*shape, count, 2), generator=generator)
    sizes = torch.randint(0, 24, (*shape, count, 2), generator=generator)
    return torch.cat([corners, corners + sizes], dim=-1).to(dtype)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_matching_kernel_equals_its_twin(monkeypatch, dtype):
    """Arbitrary anchors (duplicates, degenerate boxes, scales from 0 to 2^9), every switch of
    the matching: the compiled kernel and the PyTorch-op twin agree bit for bit."""
    from frcnn.anchor_targets.box_matching import match_boxes

    generator = torch.Generator().manual_seed(7)
    for trial in range(24):
        num_anchors = int(torch.randint(0, 300, (), generator=generator))
        anchors = tie_heavy_boxes(generator, num_anchors, dtype)
        anchors[::7] *= 2 ** int(torch.randint(0, 5, (), generator=generator))  # several size classes
        anchors[1::11] = anchors[0::11][: anchors[1::11].shape[0]]              # duplicates
        num_gt = int(torch.randint(1, 9, (), generator=generator))
        gt = tie_heavy_boxes(generator, num_gt, dtype, (3,))
        valid = torch.rand(3, num_gt, generator=generator) < 0.8
        gt = torch.where(valid[..., None], gt, 0)
        im_info = torch.tensor([[40.0, 48.0, 1.0], [30.0, 30.0, 1.0], [64.0, 20.0, 1.0]], dtype=dtype)
        takes_part = torch.rand(3, num_anchors, generator=generator) < 0.9 if trial % 3 == 0 else None
        config = AnchorTargetConfig(
            allowed_border=(None, 0, 4)[trial % 3], legacy_plus_one=bool(trial % 2),
            low_quality_matches=trial % 4 != 3, low_quality_reassign=trial % 5 == 0,
            min_positive_overlap=0.3 if trial % 6 == 0 else 0.0, working_set_bytes=(4096, 2**26)[trial % 2])
        offset = 1.0 if config.legacy_plus_one else 0.0
        compiled, fallback = both_paths(monkeypatch, lambda: match_boxes(anchors, gt, valid, im_info, config,
                                                                         offset, takes_part))
        for name, got, want in zip(compiled._fields, compiled, fallback):
            assert got.dtype == want.dtype and got.shape == want.shape == (3, num_anchors), (name, trial)
            assert torch.equal(got, want), (name, trial)
        if num_anchors > 50 and config.low_quality_matches:
            assert compiled.low_quality.any() and (compiled.max_iou > 0).any(), trial


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_finish_targets_kernel_equals_its_twin(monkeypatch, dtype):
    """Labels, sampling, weights, matched gt and targets from random matches (IoUs at the
    thresholds exactly, images without gt, excluded anchors, degenerate gts): bit for bit."""
    from frcnn.anchor_targets.outputs import Match
    from frcnn.anchor_targets.targets import finish_targets
    from frcnn.boxes import box_codes

    generator = torch.Generator().manual_seed(11)
    for trial in range(24):
        batch, size, num_gt = 3, int(torch.randint(1, 2000, (), generator=generator)), 5
        levels = torch.tensor([0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0], dtype=dtype)
        max_iou = levels[torch.randint(0, 7, (batch, size), generator=generator)]
        max_iou = torch.where(torch.rand(batch, size, generator=generator) < 0.5, max_iou,
                              torch.rand(batch, size, generator=generator, dtype=dtype))
        match = Match(max_iou, torch.randint(0, num_gt, (batch, size), generator=generator, dtype=torch.int32),
                      torch.rand(batch, size, generator=generator) < 0.05,
                      torch.rand(batch, size, generator=generator) < 0.9)
        has_gt = torch.tensor([True, trial % 3 != 0, True])
        gt = tie_heavy_boxes(generator, num_gt, dtype, (batch,))
        gt[~has_gt] = 0
        anchors = tie_heavy_boxes(generator, size, dtype) + torch.tensor([0, 0, 1, 1], dtype=dtype)
        excluded = torch.rand(batch, size, generator=generator) < 0.2 if trial % 2 else None
        keys = distinct_keys(generator, batch, size, uniform=bool(trial % 4))
        config = AnchorTargetConfig(
            batch_size=(None, 64, 256)[trial % 3], fg_fraction=(0.5, 0.25)[trial % 2],
            clobber_positives=trial % 5 == 0, positive_weight=(-1.0, 0.3)[trial % 2],
            legacy_plus_one=trial % 4 == 1, bbox_weights=((1.0,) * 4, (10.0, 10.0, 5.0, 5.0))[trial % 2],
            bbox_inside_weights=((1.0,) * 4, (1.0, 1.0, 0.5, 0.5))[(trial // 2) % 2])
        codes, scales = box_codes(anchors, config.legacy_plus_one)
        compiled, fallback = both_paths(monkeypatch, lambda: finish_targets(match, has_gt, gt, codes, scales, config,
                                                                            excluded, keys))
        for name, got, want in zip(compiled._fields, compiled, fallback):
            assert got.dtype == want.dtype and got.shape == want.shape, (name, trial)
            assert torch.equal(got, want), (name, trial)
        assert (compiled.labels == 1).any() and (compiled.labels == 0).any(), trial
