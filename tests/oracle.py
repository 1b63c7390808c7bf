"""Independent numpy (float64) reference for the RPN anchor target layer (the rules of docs/anchor_targets.md).

Written for clarity, one image at a time. It shares no code with ``frcnn`` and is
used as a test oracle. Only ``batch_size=None`` (no random subsampling) is supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SimpleConfig",
    "ref_generate_anchors",
    "ref_shifted_anchors",
    "ref_iou",
    "ref_anchor_targets",
    "ref_legacy_layout",
]


@dataclass
class SimpleConfig:
    """Plain configuration holder with the layer's field names and defaults."""

    positive_overlap: float = 0.7
    negative_overlap: float = 0.3
    clobber_positives: bool = False
    fg_fraction: float = 0.5
    batch_size: int | None = 256
    bbox_inside_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    positive_weight: float = -1.0
    allowed_border: float | None = 0
    legacy_plus_one: bool = True
    low_quality_matches: bool = True
    bbox_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    min_positive_overlap: float = 0.0
    low_quality_reassign: bool = False
    ignore_overlap: float = 0.5


# --------------------------------------------------------------------------- base anchors


def ref_generate_anchors(
    base_size: int = 16,
    ratios: Sequence[float] = (0.5, 1, 2),
    scales: Sequence[float] = (8, 16, 32),
) -> np.ndarray:
    """Base anchors (A, 4), ratios in the outer loop, scales in the inner loop."""
    # Base box (0, 0, base_size-1, base_size-1), "+1" convention.
    bx1, by1, bx2, by2 = 0.0, 0.0, float(base_size - 1), float(base_size - 1)
    base_w = bx2 - bx1 + 1.0
    base_h = by2 - by1 + 1.0
    cx = bx1 + 0.5 * (base_w - 1.0)
    cy = by1 + 0.5 * (base_h - 1.0)
    area = base_w * base_h

    rows = []
    for r in ratios:
        w_r = np.round(np.sqrt(area / float(r)))  # numpy rounds half to even
        h_r = np.round(w_r * float(r))
        for s in scales:
            w = w_r * float(s)
            h = h_r * float(s)
            rows.append(
                [
                    cx - 0.5 * (w - 1.0),
                    cy - 0.5 * (h - 1.0),
                    cx + 0.5 * (w - 1.0),
                    cy + 0.5 * (h - 1.0),
                ]
            )
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


# --------------------------------------------------------------------------- shifted anchors


def ref_shifted_anchors(base: np.ndarray, height: int, width: int, stride: int) -> np.ndarray:
    """All anchors (H*W*A, 4); anchor index n = (y*W + x)*A + a."""
    base = np.asarray(base, dtype=np.float64).reshape(-1, 4)
    A = base.shape[0]
    out = np.zeros((height * width * A, 4), dtype=np.float64)
    for y in range(height):
        for x in range(width):
            shift = np.array([x * stride, y * stride, x * stride, y * stride], dtype=np.float64)
            start = (y * width + x) * A
            out[start : start + A] = base + shift
    return out


# --------------------------------------------------------------------------- helpers


def _extent(lo: np.ndarray, hi: np.ndarray, plus_one: bool) -> np.ndarray:
    return hi - lo + (1.0 if plus_one else 0.0)


def ref_iou(boxes_a: np.ndarray, boxes_b: np.ndarray, plus_one: bool) -> np.ndarray:
    """IoU matrix (len(a), len(b)) with the chosen pixel convention."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    inter = _intersection(a, b, plus_one)
    area_a = _extent(a[:, 0], a[:, 2], plus_one) * _extent(a[:, 1], a[:, 3], plus_one)
    area_b = _extent(b[:, 0], b[:, 2], plus_one) * _extent(b[:, 1], b[:, 3], plus_one)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def _intersection(a: np.ndarray, b: np.ndarray, plus_one: bool) -> np.ndarray:
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    if plus_one:
        iw = iw + 1.0
        ih = ih + 1.0
    iw = np.maximum(iw, 0.0)
    ih = np.maximum(ih, 0.0)
    return iw * ih


def _encode(anchors: np.ndarray, gts: np.ndarray, plus_one: bool, weights) -> np.ndarray:
    """Regression targets of each anchor row against the gt row of the same index."""
    wx, wy, ww, wh = (float(v) for v in weights)
    aw = _extent(anchors[:, 0], anchors[:, 2], plus_one)
    ah = _extent(anchors[:, 1], anchors[:, 3], plus_one)
    ax = anchors[:, 0] + 0.5 * aw
    ay = anchors[:, 1] + 0.5 * ah
    gw = _extent(gts[:, 0], gts[:, 2], plus_one)
    gh = _extent(gts[:, 1], gts[:, 3], plus_one)
    gx = gts[:, 0] + 0.5 * gw
    gy = gts[:, 1] + 0.5 * gh
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = (gx - ax) / aw * wx
        dy = (gy - ay) / ah * wy
        dw = np.log(gw / aw) * ww
        dh = np.log(gh / ah) * wh
    return np.stack([dx, dy, dw, dh], axis=1)


# --------------------------------------------------------------------------- targets of one image


def ref_anchor_targets(anchors, gt_boxes, im_info, cfg, ignore_boxes=None) -> dict:
    """Targets for ONE image.

    anchors (N, 4); gt_boxes (K, 5) or (K, 4) holding only the valid rows;
    im_info (height, width, scale); ignore_boxes (J, 4) valid rows only, or None.
    Returns a dict of numpy arrays: labels (N,) int64, bbox_targets (N, 4),
    bbox_inside_weights (N, 4), bbox_outside_weights (N, 4), matched_gt (N,) int64.
    """
    if cfg.batch_size is not None:
        raise NotImplementedError("the oracle only supports batch_size=None")

    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 4)
    gts = np.asarray(gt_boxes, dtype=np.float64)
    if gts.size == 0:
        gts = np.zeros((0, 4), dtype=np.float64)
    else:
        gts = gts.reshape(-1, gts.shape[-1])[:, :4]  # drop the class column
    height, width = float(im_info[0]), float(im_info[1])
    plus_one = bool(cfg.legacy_plus_one)

    N = anchors.shape[0]
    K = gts.shape[0]

    labels = np.full(N, -1, dtype=np.int64)
    bbox_targets = np.zeros((N, 4), dtype=np.float64)
    inside_w = np.zeros((N, 4), dtype=np.float64)
    outside_w = np.zeros((N, 4), dtype=np.float64)
    matched_gt = np.full(N, -1, dtype=np.int64)

    # Inside rule.
    if cfg.allowed_border is None:
        inside = np.ones(N, dtype=bool)
    else:
        b = float(cfg.allowed_border)
        inside = (
            (anchors[:, 0] >= -b)
            & (anchors[:, 1] >= -b)
            & (anchors[:, 2] < width + b)
            & (anchors[:, 3] < height + b)
        )
    idx = np.nonzero(inside)[0]  # taking-part anchors
    part = anchors[idx]

    if K == 0:
        # No gt: every taking-part anchor is negative, targets stay zero.
        labels[idx] = 0
    else:
        # Overlaps between taking-part anchors and gts.
        iou = ref_iou(part, gts, plus_one)  # (M, K)
        M = part.shape[0]
        if M > 0:
            max_iou = iou.max(axis=1)
            argmax = iou.argmax(axis=1)  # ties -> lowest gt index
            gt_max = iou.max(axis=0)  # (K,)
        else:
            max_iou = np.zeros(0)
            argmax = np.zeros(0, dtype=np.int64)
            gt_max = np.zeros(K)

        # Low-quality candidates: for each eligible gt, its best anchors (ties all count).
        eligible = (gt_max > 0) & (gt_max >= cfg.min_positive_overlap)
        lq_hit = np.zeros((M, K), dtype=bool)
        for k in range(K):
            if eligible[k]:
                lq_hit[:, k] = iou[:, k] == gt_max[k]
        is_lq = lq_hit.any(axis=1)

        # Labels, in the documented order (part_labels starts at -1).
        part_labels = np.full(M, -1, dtype=np.int64)
        if not cfg.clobber_positives:
            part_labels[max_iou < cfg.negative_overlap] = 0
        if cfg.low_quality_matches:
            part_labels[is_lq] = 1
        part_labels[max_iou >= cfg.positive_overlap] = 1
        if cfg.clobber_positives:
            part_labels[max_iou < cfg.negative_overlap] = 0
        labels[idx] = part_labels

        # Matched gt: max-IoU gt, or (reassign) the highest eligible gt whose best anchor it is.
        match = argmax.astype(np.int64).copy()
        if cfg.low_quality_matches and cfg.low_quality_reassign:
            for m in np.nonzero(is_lq)[0]:
                match[m] = int(np.nonzero(lq_hit[m])[0].max())

        # Regression targets for all taking-part anchors.
        if M > 0:
            bbox_targets[idx] = _encode(part, gts[match], plus_one, cfg.bbox_weights)

        pos_part = part_labels == 1
        matched_gt[idx[pos_part]] = match[pos_part]

    # Ignore regions (after labelling, before weights).
    if ignore_boxes is not None:
        ign = np.asarray(ignore_boxes, dtype=np.float64).reshape(-1, 4)
        if ign.shape[0] > 0 and idx.size > 0:
            inter = _intersection(part, ign, plus_one)  # (M, J)
            a_area = _extent(part[:, 0], part[:, 2], plus_one) * _extent(part[:, 1], part[:, 3], plus_one)
            with np.errstate(divide="ignore", invalid="ignore"):
                iof = inter / a_area[:, None]
            max_iof = iof.max(axis=1)
            hit = (labels[idx] != 1) & (max_iof >= cfg.ignore_overlap)
            labels[idx[hit]] = -1

    # Inside weights.
    pos = labels == 1
    neg = labels == 0
    inside_w[pos] = np.asarray(cfg.bbox_inside_weights, dtype=np.float64)

    # Outside weights.
    p = float(cfg.positive_weight)
    if p < 0:
        n_ex = int(np.sum(labels >= 0))
        w_pos = 1.0 / n_ex if n_ex > 0 else 0.0
        w_neg = w_pos
    else:
        n_pos = int(pos.sum())
        n_neg = int(neg.sum())
        w_pos = p / n_pos if n_pos > 0 else 0.0
        w_neg = (1.0 - p) / n_neg if n_neg > 0 else 0.0
    outside_w[pos] = w_pos
    outside_w[neg] = w_neg

    return {
        "labels": labels,
        "bbox_targets": bbox_targets,
        "bbox_inside_weights": inside_w,
        "bbox_outside_weights": outside_w,
        "matched_gt": matched_gt,
    }


# --------------------------------------------------------------------------- the legacy layout


def ref_legacy_layout(per_anchor: dict, height: int, width: int, num_anchors_per_cell: int):
    """Caffe layout for ONE image: labels (1, A*H, W); targets and weights (4A, H, W)."""
    H, W, A = int(height), int(width), int(num_anchors_per_cell)
    labels = np.asarray(per_anchor["labels"])
    labels = labels.reshape(H, W, A).transpose(2, 0, 1).reshape(1, A * H, W)

    def four(name):
        arr = np.asarray(per_anchor[name])
        return arr.reshape(H, W, 4 * A).transpose(2, 0, 1)

    return (
        labels,
        four("bbox_targets"),
        four("bbox_inside_weights"),
        four("bbox_outside_weights"),
    )


# --------------------------------------------------------------------------- mmdetection's assigner


def ref_mmdet_max_iou_assign(anchors, gts, ignore_boxes, pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                             ignore_iof_thr=0.5) -> tuple[np.ndarray, np.ndarray]:
    """mmdetection's ``MaxIoUAssigner.assign`` for ONE image, written out plainly (continuous
    pixels, ``gt_max_assign_all=True``, ``match_low_quality=True``, ``ignore_wrt_candidates=True``).

    anchors (N, 4), gts (K, 4), ignore_boxes (J, 4). Returns labels (N,) (1 / 0 / -1) and the
    0-based gt of each positive (-1 elsewhere).
    """
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 4)
    gts = np.asarray(gts, dtype=np.float64).reshape(-1, 4)
    ign = np.asarray(ignore_boxes, dtype=np.float64).reshape(-1, 4)
    num_anchors, num_gts = anchors.shape[0], gts.shape[0]
    overlaps = ref_iou(gts, anchors, plus_one=False)  # (K, N)
    if ign.shape[0] > 0 and num_anchors > 0:
        area = _extent(anchors[:, 0], anchors[:, 2], False) * _extent(anchors[:, 1], anchors[:, 3], False)
        iof = _intersection(anchors, ign, False) / area[:, None]
        overlaps[:, iof.max(axis=1) > ignore_iof_thr] = -1.0
    assigned = np.full(num_anchors, -1, dtype=np.int64)  # -1 ignored, 0 negative, i + 1 gt i
    if num_gts == 0 or num_anchors == 0:
        if num_gts == 0:
            assigned[:] = 0
    else:
        max_overlaps, argmax = overlaps.max(axis=0), overlaps.argmax(axis=0)
        gt_max = overlaps.max(axis=1)
        assigned[(max_overlaps >= 0) & (max_overlaps < neg_iou_thr)] = 0
        positive = max_overlaps >= pos_iou_thr
        assigned[positive] = argmax[positive] + 1
        for i in range(num_gts):
            if gt_max[i] >= min_pos_iou:
                assigned[overlaps[i] == gt_max[i]] = i + 1
    labels = np.where(assigned > 0, 1, np.where(assigned == 0, 0, -1))
    return labels, np.where(assigned > 0, assigned - 1, -1)
