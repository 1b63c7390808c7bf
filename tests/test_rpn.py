"""RPN head layout, RPN losses and the proposal layer against a plain per-image reference."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from frcnn.anchor_targets import AnchorTargetConfig, assign_anchor_targets, to_legacy_layout
from frcnn.anchors import concat_anchors, generate_anchors, grid_anchors
from frcnn.config import ProposalConfig, ProposalLimits
from frcnn.rpn import RPNHead, generate_proposals, objectness_logit, per_anchor, rpn_losses, smooth_l1

CLIP = math.log(1000.0 / 16)


def test_objectness_layout_is_the_seed_softmax_reshape():
    batch, anchors, height, width = 2, 3, 4, 5
    scores = torch.randn(batch, 2 * anchors, height, width)
    # The seed: (B, 2A, H, W) -> (B, 2, A*H, W), softmax over dim 1, back to (B, 2A, H, W).
    seed = F.softmax(scores.view(batch, 2, anchors * height, width), dim=1).view_as(scores)
    seed_object = seed[:, anchors:].permute(0, 2, 3, 1).reshape(batch, -1)  # anchor n = (y*W + x)*A + a
    ours = F.softmax(per_anchor(scores, 2), dim=2)[..., 1]
    torch.testing.assert_close(ours, seed_object)
    torch.testing.assert_close(torch.sigmoid(objectness_logit(per_anchor(scores, 2))), seed_object)


def test_delta_layout_matches_the_anchor_target_layer():
    grid = grid_anchors(generate_anchors(), 4, 6, 16)
    gt = torch.tensor([[[10.0, 10, 60, 50, 1], [30, 5, 90, 60, 2]]])
    targets = assign_anchor_targets(grid, gt, torch.tensor([2]), torch.tensor([[64.0, 96.0, 1.0]]),
                                    AnchorTargetConfig(batch_size=None, allowed_border=None))
    legacy = to_legacy_layout(targets, 4, 6)
    torch.testing.assert_close(per_anchor(legacy[1], 4, anchor_major=True), targets.bbox_targets)
    labels = legacy[0].view(1, 9, 4, 6).float()
    torch.testing.assert_close(per_anchor(labels, 1)[..., 0], targets.labels.float())


@pytest.mark.parametrize("objectness, logits", [("softmax", 2), ("sigmoid", 1)])
def test_rpn_head_shapes_and_init(objectness, logits):
    head = RPNHead(8, 16, 3, objectness)
    out_logits, out_deltas = head([torch.randn(2, 8, 5, 7), torch.randn(2, 8, 3, 4)])
    assert out_logits.shape == (2, (35 + 12) * 3, logits)
    assert out_deltas.shape == (2, (35 + 12) * 3, 4)
    assert abs(head.conv[0][0].weight.std().item() - 0.01) < 0.002
    assert head.cls_score.out_channels == logits * 3


def test_smooth_l1_matches_its_definition():
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)
    sigma = 3.0
    expected = torch.where(x.abs() < 1 / 9, 4.5 * x**2, x.abs() - 0.5 / 9)
    torch.testing.assert_close(smooth_l1(x, sigma), expected)


def test_rpn_losses_follow_the_seed():
    torch.manual_seed(0)
    grid = grid_anchors(generate_anchors(), 5, 6, 16)
    gt = torch.tensor([[[10.0, 10, 60, 50, 1]], [[0.0, 0, 0, 0, 0]]])
    im_info = torch.tensor([[80.0, 96.0, 1.0], [80.0, 96.0, 1.0]])
    targets = assign_anchor_targets(grid, gt, torch.tensor([1, 0]), im_info,
                                    AnchorTargetConfig.preset("torchvision", allowed_border=None, batch_size=64))
    logits = torch.randn(2, grid.num_anchors, 2)
    deltas = torch.randn(2, grid.num_anchors, 4)
    cls_loss, box_loss = rpn_losses(logits, deltas, targets, sigma=3.0)

    keep = targets.labels.flatten() >= 0
    expected_cls = F.cross_entropy(logits.flatten(0, 1)[keep], targets.labels.flatten()[keep])
    diff = (deltas - targets.bbox_targets) * targets.bbox_inside_weights
    per_image = (targets.bbox_outside_weights * smooth_l1(diff, 3.0)).sum(dim=(1, 2))
    torch.testing.assert_close(cls_loss, expected_cls)
    torch.testing.assert_close(box_loss, per_image.mean())

    sig_cls, _ = rpn_losses(logits[..., 1:], deltas, targets, sigma=3.0)
    expected_sig = F.binary_cross_entropy_with_logits(logits[..., 1].flatten()[keep],
                                                      targets.labels.flatten()[keep].float())
    torch.testing.assert_close(sig_cls, expected_sig)


# ---------------------------------------------------------------- proposal layer reference

def ref_decode(deltas: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * widths, anchors[:, 1] + 0.5 * heights
    px, py = deltas[:, 0] * widths + cx, deltas[:, 1] * heights + cy
    pw = np.exp(np.minimum(deltas[:, 2], CLIP)) * widths
    ph = np.exp(np.minimum(deltas[:, 3], CLIP)) * heights
    return np.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], axis=1)


def ref_nms(boxes: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS over boxes already in processing order; a box goes when IoU > threshold."""
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    alive = np.ones(len(boxes), dtype=bool)
    keep = []
    for i in range(len(boxes)):
        if not alive[i]:
            continue
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[:, 2]) - np.maximum(boxes[i, 0], boxes[:, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1]), 0, None)
        inter = w * h
        alive &= ~(inter / (areas[i] + areas - inter) > threshold)
    return keep


def ref_proposals(scores, deltas, anchors, level_sizes, info, config, limits):
    """One image: decode, clip, min-size, per-level stable sort and top-k, NMS per level, top-k."""
    height, width, scale = info
    boxes = ref_decode(deltas, anchors)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    side = config.min_size * scale
    big = ((boxes[:, 2] - boxes[:, 0]) >= side) & ((boxes[:, 3] - boxes[:, 1]) >= side)
    survivors = []
    start = 0
    for size in level_sizes:
        index = np.arange(start, start + size)[big[start:start + size]]
        index = index[np.argsort(-scores[index], kind="stable")][:limits.pre_nms_top_n]
        survivors.extend(index[ref_nms(boxes[index], config.nms_threshold)])
        start += size
    survivors = np.array(survivors, dtype=np.int64)
    order = survivors[np.argsort(-scores[survivors], kind="stable")][:limits.post_nms_top_n]
    return boxes[order], 1 / (1 + np.exp(-scores[order]))


def random_rpn_outputs(levels, batch, generator, tie_levels=None):
    grids = [grid_anchors(generate_anchors(stride, (0.5, 1, 2), scales), h, w, stride, dtype=torch.float64)
             for (h, w, stride, scales) in levels]
    anchors = concat_anchors(grids)
    count = anchors.shape[0]
    scores = torch.randn(batch, count, generator=generator, dtype=torch.float64)
    if tie_levels:
        scores = torch.round(scores * tie_levels) / tie_levels
    deltas = 0.3 * torch.randn(batch, count, 4, generator=generator, dtype=torch.float64)
    return grids, anchors, scores, deltas


def check_against_reference(scores, deltas, anchors, level_sizes, im_info, config, limits):
    proposals = generate_proposals(scores, deltas, anchors, level_sizes, im_info, config, limits)
    assert proposals.rois.shape == (scores.shape[0], limits.post_nms_top_n, 5)
    for b in range(scores.shape[0]):
        ref_boxes, ref_scores = ref_proposals(scores[b].numpy(), deltas[b].numpy(), anchors.numpy(), level_sizes,
                                              im_info[b].tolist(), config, limits)
        n = int(proposals.counts[b])
        assert n == len(ref_boxes)
        np.testing.assert_allclose(proposals.rois[b, :n, 1:].numpy(), ref_boxes, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(proposals.scores[b, :n].numpy(), ref_scores, rtol=1e-9, atol=1e-12)
        assert (proposals.rois[b, :n, 0] == b).all()
        assert (proposals.rois[b, n:] == 0).all() and (proposals.scores[b, n:] == 0).all()
    return proposals


@pytest.mark.parametrize("seed", range(3))
def test_proposals_match_reference_single_level(seed):
    generator = torch.Generator().manual_seed(seed)
    _, anchors, scores, deltas = random_rpn_outputs([(12, 15, 16, (2, 4, 8))], 3, generator)
    im_info = torch.tensor([[192.0, 240.0, 1.0], [150.0, 200.0, 1.5], [100.0, 120.0, 0.5]], dtype=torch.float64)
    config = ProposalConfig(nms_threshold=0.7, min_size=8.0)
    check_against_reference(scores, deltas, anchors, [anchors.shape[0]], im_info, config, ProposalLimits(600, 150))


def test_proposals_with_ties_keep_anchor_order():
    generator = torch.Generator().manual_seed(7)
    _, anchors, scores, deltas = random_rpn_outputs([(10, 12, 16, (2, 4, 8))], 2, generator, tie_levels=2)
    assert len(torch.unique(scores[0])) < 20  # many ties
    im_info = torch.tensor([[160.0, 192.0, 1.0]] * 2, dtype=torch.float64)
    check_against_reference(scores, deltas, anchors, [anchors.shape[0]], im_info,
                            ProposalConfig(min_size=4.0), ProposalLimits(300, 100))


def test_image_with_fewer_boxes_than_post_nms_top_n():
    generator = torch.Generator().manual_seed(3)
    _, anchors, scores, deltas = random_rpn_outputs([(6, 8, 16, (1, 2))], 2, generator)
    # The second image is tiny: most boxes are clipped to slivers and fail the min-size filter.
    im_info = torch.tensor([[96.0, 128.0, 1.0], [20.0, 24.0, 1.0]], dtype=torch.float64)
    proposals = check_against_reference(scores, deltas, anchors, [anchors.shape[0]], im_info,
                                        ProposalConfig(min_size=6.0), ProposalLimits(1000, 500))
    assert 0 < int(proposals.counts[1]) < 500
    assert proposals.valid.sum(dim=1).tolist() == proposals.counts.tolist()


def test_image_with_no_surviving_box():
    generator = torch.Generator().manual_seed(4)
    _, anchors, scores, deltas = random_rpn_outputs([(4, 5, 16, (2,))], 2, generator)
    im_info = torch.tensor([[64.0, 80.0, 1.0], [64.0, 80.0, 100.0]], dtype=torch.float64)
    proposals = check_against_reference(scores, deltas, anchors, [anchors.shape[0]], im_info,
                                        ProposalConfig(min_size=16.0), ProposalLimits(100, 50))
    assert int(proposals.counts[1]) == 0


def test_fpn_proposals_take_top_k_per_level_then_merge():
    generator = torch.Generator().manual_seed(11)
    levels = [(16, 20, 8, (4,)), (8, 10, 16, (4,)), (4, 5, 32, (4,))]
    grids, anchors, scores, deltas = random_rpn_outputs(levels, 2, generator)
    im_info = torch.tensor([[128.0, 160.0, 1.0], [100.0, 150.0, 2.0]], dtype=torch.float64)
    check_against_reference(scores, deltas, anchors, [g.num_anchors for g in grids], im_info,
                            ProposalConfig(min_size=2.0), ProposalLimits(200, 250))


def test_proposals_in_float32_agree_with_float64():
    generator = torch.Generator().manual_seed(5)
    _, anchors, scores, deltas = random_rpn_outputs([(12, 15, 16, (2, 4, 8))], 2, generator)
    im_info = torch.tensor([[192.0, 240.0, 1.0]] * 2, dtype=torch.float64)
    args = ([anchors.shape[0]], ProposalConfig(), ProposalLimits(500, 100))
    double = generate_proposals(scores, deltas, anchors, args[0], im_info, *args[1:])
    single = generate_proposals(scores.float(), deltas.float(), anchors.float(), args[0], im_info.float(), *args[1:])
    assert single.rois.dtype == torch.float32
    assert (single.counts - double.counts).abs().max() <= 2
    torch.testing.assert_close(single.rois[:, :20].double(), double.rois[:, :20], rtol=1e-4, atol=1e-3)


def test_trimmed_proposals_drop_only_empty_rows():
    generator = torch.Generator().manual_seed(6)
    _, anchors, scores, deltas = random_rpn_outputs([(6, 8, 16, (1, 2))], 2, generator)
    im_info = torch.tensor([[96.0, 128.0, 1.0], [20.0, 24.0, 1.0]], dtype=torch.float64)
    args = (scores, deltas, anchors, [anchors.shape[0]], im_info, ProposalConfig(min_size=6.0),
            ProposalLimits(1000, 500))
    proposals = generate_proposals(*args)
    trimmed = generate_proposals(*args, trim=True)
    size = int(proposals.counts.max())
    assert size < 500 and trimmed.rois.shape == (2, size, 5)
    torch.testing.assert_close(trimmed.rois, proposals.rois[:, :size])
    torch.testing.assert_close(trimmed.scores, proposals.scores[:, :size])
    assert torch.equal(trimmed.valid, proposals.valid[:, :size])
    none_left = generate_proposals(*args[:5], ProposalConfig(min_size=500.0), args[6], trim=True)
    assert none_left.rois.shape == (2, 1, 5) and none_left.counts.tolist() == [0, 0]
