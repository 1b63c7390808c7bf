"""Tests of the numpy oracle itself, on tiny cases computed by hand."""

import math
import time

import numpy as np
import pytest

from oracle import (
    SimpleConfig,
    ref_anchor_targets,
    ref_generate_anchors,
    ref_iou,
    ref_legacy_layout,
    ref_shifted_anchors,
)

IM = (100.0, 100.0, 1.0)  # (height, width, scale)


def cfg(**kw):
    kw.setdefault("batch_size", None)
    return SimpleConfig(**kw)


def gt(*rows):
    """gt rows (x1, y1, x2, y2) -> (K, 5) with a class column."""
    return np.array([list(r) + [1.0] for r in rows], dtype=np.float64).reshape(-1, 5)


def arr(*rows):
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


# --------------------------------------------------------------------------- anchors


def test_generate_anchors_spec_vector():
    expected = np.array(
        [
            [-84, -40, 99, 55],
            [-176, -88, 191, 103],
            [-360, -184, 375, 199],
            [-56, -56, 71, 71],
            [-120, -120, 135, 135],
            [-248, -248, 263, 263],
            [-36, -80, 51, 95],
            [-80, -168, 95, 183],
            [-168, -344, 183, 359],
        ],
        dtype=np.float64,
    )
    out = ref_generate_anchors()
    assert out.shape == (9, 4) and out.dtype == np.float64
    np.testing.assert_array_equal(out, expected)


def test_generate_anchors_half_to_even():
    # ratio 0.5: w = round(sqrt(512)) = round(22.63) = 23, h = round(11.5) = 12 (half to even,
    # not 13). Scale 1, centre 7.5: x = 7.5 -+ 11 -> (-3.5, 18.5), y = 7.5 -+ 5.5 -> (2, 13).
    out = ref_generate_anchors(16, ratios=(0.5,), scales=(1,))
    np.testing.assert_array_equal(out, [[-3.5, 2.0, 18.5, 13.0]])
    # ratio 1 scale 1 is the base box itself.
    np.testing.assert_array_equal(ref_generate_anchors(16, (1,), (1,)), [[0, 0, 15, 15]])


def test_shifted_anchors_order():
    base = arr((0, 0, 3, 3), (-1, -2, 5, 6))  # A = 2
    H, W, stride = 2, 3, 16
    out = ref_shifted_anchors(base, H, W, stride)
    assert out.shape == (H * W * 2, 4)
    # n = (y*W + x)*A + a.  n = 9 -> y=1, x=1, a=1: base[1] + (16, 16, 16, 16)
    np.testing.assert_array_equal(out[9], [15, 14, 21, 22])
    # n = 4 -> y=0, x=2, a=0: base[0] + (32, 0, 32, 0)
    np.testing.assert_array_equal(out[4], [32, 0, 35, 3])
    # n = 6 -> y=1, x=0, a=0: base[0] + (0, 16, 0, 16)
    np.testing.assert_array_equal(out[6], [0, 16, 3, 19])


# --------------------------------------------------------------------------- IoU conventions


def test_iou_plus_one_vs_continuous():
    g = arr((0, 0, 9, 9))
    a = arr((0, 0, 4, 9), (9, 0, 18, 9), (10, 0, 19, 9))
    # legacy: gt area 10*10=100; a0 area 5*10=50 inside gt -> 50/100 = 0.5
    #         a1: iw = 9-9+1 = 1, inter 10, union 190 -> 1/19; a2: iw = 0 -> 0
    np.testing.assert_allclose(ref_iou(a, g, True)[:, 0], [0.5, 1 / 19, 0.0])
    # continuous: gt area 81; a0 area 36 inside -> 36/81; a1 touches only: iw = 0 -> 0
    np.testing.assert_allclose(ref_iou(a, g, False)[:, 0], [36 / 81, 0.0, 0.0])


# --------------------------------------------------------------------------- one gt


def test_single_gt_four_anchors_legacy():
    g = gt((0, 0, 9, 9))  # area 100
    a = arr(
        (0, 0, 9, 9),  # IoU 1             -> 1
        (0, 0, 4, 9),  # 50/100 = 0.5      -> -1 (between thresholds)
        (5, 0, 14, 9),  # 50/150 = 1/3     -> -1
        (20, 20, 29, 29),  # 0             -> 0
    )
    np.testing.assert_allclose(ref_iou(a, g[:, :4], True)[:, 0], [1, 0.5, 1 / 3, 0])
    out = ref_anchor_targets(a, g, IM, cfg())
    np.testing.assert_array_equal(out["labels"], [1, -1, -1, 0])
    np.testing.assert_array_equal(out["matched_gt"], [0, -1, -1, -1])
    # targets (legacy): gt w=h=10, centre (5, 5)
    #  a0 identical -> 0
    #  a1 w=5, cx=2.5: dx = 2.5/5 = 0.5, dw = log(10/5)
    #  a2 w=10, cx=10: dx = -5/10 = -0.5
    #  a3 w=10, c=(25,25): dx = dy = -20/10 = -2
    expected_t = [
        [0, 0, 0, 0],
        [0.5, 0, math.log(2), 0],
        [-0.5, 0, 0, 0],
        [-2, -2, 0, 0],
    ]
    np.testing.assert_allclose(out["bbox_targets"], expected_t, atol=1e-12)
    np.testing.assert_array_equal(out["bbox_inside_weights"], [[1] * 4, [0] * 4, [0] * 4, [0] * 4])
    # positive_weight -1: 1 / (#labels >= 0) = 1/2 for the positive and the negative
    np.testing.assert_allclose(out["bbox_outside_weights"], [[0.5] * 4, [0] * 4, [0] * 4, [0.5] * 4])
    assert out["labels"].dtype.kind == "i" and out["matched_gt"].dtype.kind == "i"


def test_targets_continuous_convention_and_weights():
    g = gt((0, 0, 9, 9))
    a = arr((0, 0, 4, 9))
    # continuous: a w=4, h=9, c=(2, 4.5); gt w=h=9, c=(4.5, 4.5)
    # dx = 2.5/4 = 0.625, dy = 0, dw = log(9/4), dh = 0; then weights (10, 10, 5, 5)
    out = ref_anchor_targets(a, g, IM, cfg(legacy_plus_one=False, bbox_weights=(10, 10, 5, 5)))
    np.testing.assert_allclose(out["bbox_targets"], [[6.25, 0, 5 * math.log(9 / 4), 0]])
    # IoU 36/81 = 0.444 but the anchor is the gt's best -> low-quality positive
    np.testing.assert_array_equal(out["labels"], [1])
    # legacy on the same boxes: (0.5, 0, log 2, 0)
    out = ref_anchor_targets(a, g, IM, cfg())
    np.testing.assert_allclose(out["bbox_targets"], [[0.5, 0, math.log(2), 0]])


def test_inside_weights_values():
    g = gt((0, 0, 9, 9))
    a = arr((0, 0, 9, 9), (50, 50, 59, 59))
    out = ref_anchor_targets(a, g, IM, cfg(bbox_inside_weights=(0.1, 0.2, 0.3, 0.4)))
    np.testing.assert_allclose(out["bbox_inside_weights"], [[0.1, 0.2, 0.3, 0.4], [0, 0, 0, 0]])


# --------------------------------------------------------------------------- clobber


def test_clobber_positives_on_off():
    g = gt((0, 0, 9, 9))
    # a0: area 40*40 = 1600 contains gt: IoU 100/1600 = 0.0625 < 0.3, but gt's best anchor
    # a1: IoU 0
    a = arr((0, 0, 39, 39), (50, 50, 59, 59))
    off = ref_anchor_targets(a, g, IM, cfg(clobber_positives=False))
    np.testing.assert_array_equal(off["labels"], [1, 0])
    np.testing.assert_array_equal(off["matched_gt"], [0, -1])
    on = ref_anchor_targets(a, g, IM, cfg(clobber_positives=True))
    np.testing.assert_array_equal(on["labels"], [0, 0])
    np.testing.assert_array_equal(on["matched_gt"], [-1, -1])
    np.testing.assert_array_equal(on["bbox_inside_weights"], np.zeros((2, 4)))
    # targets are computed for every taking-part anchor regardless of the label
    np.testing.assert_array_equal(on["bbox_targets"], off["bbox_targets"])


def test_clobber_keeps_threshold_positives():
    # IoU 1 >= 0.7 stays positive with clobber on; 0.5 stays ignored
    g = gt((0, 0, 9, 9))
    a = arr((0, 0, 9, 9), (0, 0, 4, 9))
    on = ref_anchor_targets(a, g, IM, cfg(clobber_positives=True))
    np.testing.assert_array_equal(on["labels"], [1, -1])


# --------------------------------------------------------------------------- low quality


def test_gt_touching_no_inside_anchor_makes_no_positive():
    g = gt((0, 0, 9, 9))
    a = arr(
        (-5, -5, 4, 4),  # overlaps the gt but x1 < 0 -> not taking part with border 0
        (50, 50, 59, 59),  # IoU 0
        (80, 80, 89, 89),  # IoU 0
    )
    out = ref_anchor_targets(a, g, IM, cfg(allowed_border=0))
    # gt's max IoU over taking-part anchors is 0 -> not eligible -> no positive
    np.testing.assert_array_equal(out["labels"], [-1, 0, 0])
    np.testing.assert_array_equal(out["matched_gt"], [-1, -1, -1])
    np.testing.assert_array_equal(out["bbox_targets"][0], [0, 0, 0, 0])
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [0, 0.5, 0.5])

    # allowed_border None: a0 takes part; legacy inter 5*5=25, union 175 -> 1/7, gt's best
    out = ref_anchor_targets(a, g, IM, cfg(allowed_border=None))
    np.testing.assert_array_equal(out["labels"], [1, 0, 0])
    np.testing.assert_array_equal(out["matched_gt"], [0, -1, -1])
    # a0 w=10, c=(0, 0); gt c=(5, 5): dx = dy = 0.5
    np.testing.assert_allclose(out["bbox_targets"][0], [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [1 / 3] * 3)


def test_zero_iou_gt_with_other_gt():
    # gt1 touches no anchor: it makes nothing positive, and the anchors with IoU 0 to it
    # (which equal its max 0) are not promoted.
    g = gt((0, 0, 9, 9), (90, 0, 99, 9))
    a = arr((0, 0, 9, 9), (50, 50, 59, 59))
    out = ref_anchor_targets(a, g, IM, cfg())
    np.testing.assert_array_equal(out["labels"], [1, 0])


def _tie_case():
    g = gt((10, 10, 19, 19))  # area 100
    a = arr(
        (10, 10, 29, 19),  # area 200, inter 100 -> 0.5
        (0, 10, 19, 19),  # area 200, inter 100 -> 0.5
        (10, 10, 19, 39),  # area 300, inter 100 -> 1/3
        (50, 50, 59, 59),  # 0
    )
    return a, g


def test_low_quality_ties_all_positive():
    a, g = _tie_case()
    out = ref_anchor_targets(a, g, IM, cfg())
    np.testing.assert_array_equal(out["labels"], [1, 1, -1, 0])
    np.testing.assert_array_equal(out["matched_gt"], [0, 0, -1, -1])
    # 3 labels >= 0 -> 1/3 each
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [1 / 3, 1 / 3, 0, 1 / 3])


def test_low_quality_matches_off():
    a, g = _tie_case()
    out = ref_anchor_targets(a, g, IM, cfg(low_quality_matches=False))
    np.testing.assert_array_equal(out["labels"], [-1, -1, -1, 0])
    np.testing.assert_array_equal(out["matched_gt"], [-1, -1, -1, -1])


def test_min_positive_overlap():
    a, g = _tie_case()  # gt's best IoU is 0.5
    out = ref_anchor_targets(a, g, IM, cfg(min_positive_overlap=0.6))
    np.testing.assert_array_equal(out["labels"], [-1, -1, -1, 0])
    out = ref_anchor_targets(a, g, IM, cfg(min_positive_overlap=0.5))  # >= : eligible
    np.testing.assert_array_equal(out["labels"], [1, 1, -1, 0])


# --------------------------------------------------------------------------- reassign


def _reassign_case():
    # continuous convention, border None
    g = gt((0, 0, 10, 10), (5, 0, 25, 10))  # areas 100, 200
    a = arr(
        (0, 0, 10, 10),  # gt0: 1;          gt1: inter 5*10=50, union 250 -> 0.2
        (2, 0, 12, 10),  # gt0: 80/120=2/3;  gt1: inter 7*10=70, union 230 -> 0.3043
        (100, 100, 110, 110),  # 0, 0
    )
    return a, g


def test_reassign_off_keeps_max_iou_gt():
    a, g = _reassign_case()
    c = cfg(legacy_plus_one=False, allowed_border=None)
    np.testing.assert_allclose(ref_iou(a, g[:, :4], False)[:2], [[1, 0.2], [2 / 3, 70 / 230]])
    out = ref_anchor_targets(a, g, IM, c)
    # a1 is gt1's best anchor (0.304 > 0.2) -> positive, matched to its max-IoU gt 0
    np.testing.assert_array_equal(out["labels"], [1, 1, 0])
    np.testing.assert_array_equal(out["matched_gt"], [0, 0, -1])
    # a1 (w=10, cx=7) vs gt0 (w=10, cx=5): dx = -0.2
    np.testing.assert_allclose(out["bbox_targets"][1], [-0.2, 0, 0, 0], atol=1e-12)


def test_reassign_on_uses_gt_whose_best_anchor_it_is():
    a, g = _reassign_case()
    c = cfg(legacy_plus_one=False, allowed_border=None, low_quality_reassign=True)
    out = ref_anchor_targets(a, g, IM, c)
    np.testing.assert_array_equal(out["labels"], [1, 1, 0])
    # a0 is gt0's best only -> 0; a1 is gt1's best -> 1
    np.testing.assert_array_equal(out["matched_gt"], [0, 1, -1])
    # a1 (w=10, cx=7) vs gt1 (w=20, cx=15): dx = 0.8, dw = log 2
    np.testing.assert_allclose(out["bbox_targets"][1], [0.8, 0, math.log(2), 0], atol=1e-12)
    # min_positive_overlap 0.31 > 0.304: gt1 not eligible, a1 (2/3) back to -1
    c.min_positive_overlap = 0.31
    out = ref_anchor_targets(a, g, IM, c)
    np.testing.assert_array_equal(out["labels"], [1, -1, 0])
    np.testing.assert_array_equal(out["matched_gt"], [0, -1, -1])
    np.testing.assert_allclose(out["bbox_targets"][1], [-0.2, 0, 0, 0], atol=1e-12)


def test_reassign_picks_highest_gt_index():
    # a0 is the best anchor of both gts: gt0 (IoU 1), gt1 (100/400 = 0.25)
    g = gt((0, 0, 10, 10), (0, 0, 20, 20))
    a = arr((0, 0, 10, 10), (100, 100, 110, 110))
    base = dict(legacy_plus_one=False, allowed_border=None)
    out = ref_anchor_targets(a, g, IM, cfg(**base))
    np.testing.assert_array_equal(out["matched_gt"], [0, -1])
    np.testing.assert_allclose(out["bbox_targets"][0], [0, 0, 0, 0])
    out = ref_anchor_targets(a, g, IM, cfg(low_quality_reassign=True, **base))
    np.testing.assert_array_equal(out["labels"], [1, 0])
    np.testing.assert_array_equal(out["matched_gt"], [1, -1])
    # a0 w=10, c=5 vs gt1 w=20, c=10: dx = dy = 0.5, dw = dh = log 2
    l2 = math.log(2)
    np.testing.assert_allclose(out["bbox_targets"][0], [0.5, 0.5, l2, l2])


def test_argmax_tie_lowest_gt_index():
    # two identical gts: IoU 1 with both; max-IoU gt = lowest index 0
    g = gt((0, 0, 9, 9), (0, 0, 9, 9))
    a = arr((0, 0, 9, 9), (50, 50, 59, 59))
    out = ref_anchor_targets(a, g, IM, cfg())
    np.testing.assert_array_equal(out["matched_gt"], [0, -1])
    # reassign: best anchor of both -> highest index 1
    out = ref_anchor_targets(a, g, IM, cfg(low_quality_reassign=True))
    np.testing.assert_array_equal(out["matched_gt"], [1, -1])


# --------------------------------------------------------------------------- ignore regions


def _ignore_case():
    g = gt((0, 0, 9, 9))
    a = arr(
        (0, 0, 9, 9),  # positive (IoU 1)
        (50, 50, 59, 59),  # negative; inside ignore box 0 -> iof 1
        (70, 70, 79, 79),  # negative; no ignore box
        (0, 50, 9, 59),  # negative; ignore box 1 covers 5*10 of its 100 -> 0.5
    )
    ign = arr(
        (50, 50, 64, 64),
        (0, 50, 4, 59),
        (0, 0, 4, 9),  # covers half of the positive: positives are never ignored
    )
    return a, g, ign


def test_ignore_regions():
    a, g, ign = _ignore_case()
    out = ref_anchor_targets(a, g, IM, cfg())
    np.testing.assert_array_equal(out["labels"], [1, 0, 0, 0])
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [0.25] * 4)

    out = ref_anchor_targets(a, g, IM, cfg(), ignore_boxes=ign)
    np.testing.assert_array_equal(out["labels"], [1, -1, 0, -1])
    np.testing.assert_array_equal(out["matched_gt"], [0, -1, -1, -1])
    # weights count labels after ignoring: 2 labels >= 0
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [0.5, 0, 0.5, 0])

    # threshold 0.6: a3 (0.5) stays negative
    out = ref_anchor_targets(a, g, IM, cfg(ignore_overlap=0.6), ignore_boxes=ign)
    np.testing.assert_array_equal(out["labels"], [1, -1, 0, 0])

    # continuous: a3 area 81, inter 4*9 = 36 -> 0.444 < 0.5 -> stays 0
    out = ref_anchor_targets(a, g, IM, cfg(legacy_plus_one=False), ignore_boxes=ign)
    np.testing.assert_array_equal(out["labels"], [1, -1, 0, 0])

    # empty ignore array = no ignore
    out = ref_anchor_targets(a, g, IM, cfg(), ignore_boxes=np.zeros((0, 4)))
    np.testing.assert_array_equal(out["labels"], [1, 0, 0, 0])


def test_ignore_regions_no_gt():
    a, _, ign = _ignore_case()
    out = ref_anchor_targets(a, np.zeros((0, 5)), IM, cfg(), ignore_boxes=ign)
    # a0 is now negative and half covered by ignore box 2 (0.5) -> -1 too
    np.testing.assert_array_equal(out["labels"], [-1, -1, 0, -1])
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [0, 0, 1, 0])


# --------------------------------------------------------------------------- outside weights


def test_positive_weight():
    g = gt((0, 0, 9, 9))
    a = arr((0, 0, 9, 9), (0, 0, 4, 9), (5, 0, 14, 9), (20, 20, 29, 29), (80, 80, 89, 89))
    # labels [1, -1, -1, 0, 0]
    out = ref_anchor_targets(a, g, IM, cfg(positive_weight=0.25))
    np.testing.assert_array_equal(out["labels"], [1, -1, -1, 0, 0])
    # positives 0.25/1, negatives 0.75/2
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [0.25, 0, 0, 0.375, 0.375])
    assert np.all(out["bbox_outside_weights"] == out["bbox_outside_weights"][:, :1])
    out = ref_anchor_targets(a, g, IM, cfg(positive_weight=-1.0))
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [1 / 3, 0, 0, 1 / 3, 1 / 3])


def test_positive_weight_zero_count():
    # no positives: negatives get (1-p)/#neg, no division by zero
    a = arr((0, 0, 9, 9), (50, 50, 59, 59))
    out = ref_anchor_targets(a, np.zeros((0, 5)), IM, cfg(positive_weight=0.25))
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [0.375, 0.375])
    # no anchor takes part at all -> every weight 0, no nan
    a = arr((-10, 0, 9, 9), (95, 95, 104, 104))
    for p in (-1.0, 0.25):
        out = ref_anchor_targets(a, gt((0, 0, 9, 9)), IM, cfg(positive_weight=p))
        np.testing.assert_array_equal(out["labels"], [-1, -1])
        np.testing.assert_array_equal(out["bbox_outside_weights"], np.zeros((2, 4)))
        np.testing.assert_array_equal(out["bbox_targets"], np.zeros((2, 4)))


# --------------------------------------------------------------------------- no gt


def test_image_without_gt():
    a = arr((0, 0, 9, 9), (50, 50, 59, 59), (-1, 0, 9, 9))  # last is outside
    out = ref_anchor_targets(a, np.zeros((0, 5)), IM, cfg())
    np.testing.assert_array_equal(out["labels"], [0, 0, -1])
    np.testing.assert_array_equal(out["matched_gt"], [-1, -1, -1])
    np.testing.assert_array_equal(out["bbox_targets"], np.zeros((3, 4)))
    np.testing.assert_array_equal(out["bbox_inside_weights"], np.zeros((3, 4)))
    np.testing.assert_allclose(out["bbox_outside_weights"][:, 0], [0.5, 0.5, 0])


# --------------------------------------------------------------------------- inside filter


def test_inside_filter_border_zero_and_none():
    far = (200, 200, 209, 209)  # a gt far away so every label is decided by the filter
    g = gt(far)
    im = (100.0, 100.0, 1.0)
    a = arr(
        (0, 0, 99, 99),  # x2 = 99 < 100: inside
        (0, 0, 100, 99),  # x2 = 100 not < 100: outside
        (-1, 0, 50, 50),  # x1 = -1 < 0: outside
        (0, 0, 99, 100),  # y2 = 100: outside
    )
    out = ref_anchor_targets(a, g, im, cfg(allowed_border=0, low_quality_matches=False))
    np.testing.assert_array_equal(out["labels"], [0, -1, -1, -1])
    np.testing.assert_array_equal(out["bbox_targets"][1:], np.zeros((3, 4)))
    assert np.all(out["bbox_targets"][0] != 0)
    out = ref_anchor_targets(a, g, im, cfg(allowed_border=1, low_quality_matches=False))
    np.testing.assert_array_equal(out["labels"], [0, 0, 0, 0])
    out = ref_anchor_targets(a, g, im, cfg(allowed_border=None, low_quality_matches=False))
    np.testing.assert_array_equal(out["labels"], [0, 0, 0, 0])
    assert np.all(out["bbox_targets"] != 0)


def test_inside_filter_uses_height_then_width():
    g = gt((200, 200, 209, 209))
    im = (50.0, 100.0, 1.0)  # height 50, width 100
    a = arr((0, 0, 80, 40), (0, 0, 40, 80))
    out = ref_anchor_targets(a, g, im, cfg(low_quality_matches=False))
    np.testing.assert_array_equal(out["labels"], [0, -1])


# --------------------------------------------------------------------------- layout


def test_legacy_layout_order():
    H, W, A = 2, 3, 2
    N = H * W * A
    per = {
        "labels": np.arange(N),
        "bbox_targets": np.arange(N * 4, dtype=np.float64).reshape(N, 4),
        "bbox_inside_weights": np.arange(N * 4, dtype=np.float64).reshape(N, 4) + 1000,
        "bbox_outside_weights": np.arange(N * 4, dtype=np.float64).reshape(N, 4) + 2000,
    }
    lab, tgt, inw, outw = ref_legacy_layout(per, H, W, A)
    assert lab.shape == (1, A * H, W)
    assert tgt.shape == inw.shape == outw.shape == (4 * A, H, W)
    # labels[0, a*H + y, x] = label of n = (y*W + x)*A + a
    expected_lab = [[[0, 2, 4], [6, 8, 10], [1, 3, 5], [7, 9, 11]]]
    np.testing.assert_array_equal(lab, expected_lab)
    # tgt[c, y, x] = targets[(y*W + x)*A + c//4, c%4] = (y*W + x)*8 + c
    np.testing.assert_array_equal(tgt[0], [[0, 8, 16], [24, 32, 40]])
    np.testing.assert_array_equal(tgt[5], [[5, 13, 21], [29, 37, 45]])
    np.testing.assert_array_equal(inw[5], np.array([[5, 13, 21], [29, 37, 45]]) + 1000)
    np.testing.assert_array_equal(outw[7], np.array([[7, 15, 23], [31, 39, 47]]) + 2000)


# --------------------------------------------------------------------------- misc


def test_defaults_and_batch_size_refused():
    c = SimpleConfig()
    assert (c.positive_overlap, c.negative_overlap, c.batch_size, c.fg_fraction) == (0.7, 0.3, 256, 0.5)
    assert c.allowed_border == 0 and c.legacy_plus_one and c.low_quality_matches
    assert c.positive_weight == -1.0 and c.ignore_overlap == 0.5 and not c.clobber_positives
    assert c.min_positive_overlap == 0.0 and not c.low_quality_reassign
    with pytest.raises(NotImplementedError):
        ref_anchor_targets(arr((0, 0, 9, 9)), gt((0, 0, 9, 9)), IM, SimpleConfig())


def test_realistic_size_runs_fast():
    rng = np.random.default_rng(0)
    H, W = 38, 63  # ~600x1000 image, stride 16
    anchors = ref_shifted_anchors(ref_generate_anchors(), H, W, 16)
    xy = rng.uniform(0, 900, size=(20, 2))
    wh = rng.uniform(10, 300, size=(20, 2))
    g = np.concatenate([xy, np.minimum(xy + wh, [999, 599]), np.ones((20, 1))], axis=1)
    for border in (0, None):
        t0 = time.perf_counter()
        out = ref_anchor_targets(anchors, g, (600.0, 1000.0, 1.0), cfg(allowed_border=border))
        dt = time.perf_counter() - t0
        assert dt < 3.0
        assert out["labels"].shape == (H * W * 9,)
        assert (out["labels"] == 1).sum() >= 20 or border == 0
        assert np.isfinite(out["bbox_targets"]).all()
        # every positive has a matched gt, no other anchor does
        assert np.array_equal(out["matched_gt"] >= 0, out["labels"] == 1)
