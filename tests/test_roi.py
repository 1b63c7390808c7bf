"""Proposal target layer, RoI pooling, Fast R-CNN losses and detection post-processing."""

import pytest
import torch
import torchvision

from frcnn.boxes import box_iou, decode_boxes
from frcnn.config import HeadConfig, InferenceConfig, RoISamplingConfig
from frcnn.detection import detect_boxes, unpad
from frcnn.roi import RoIPooler, RoISample, fast_rcnn_losses, fpn_levels, sample_rois
from frcnn.roi_align import dense_roi_align
from frcnn.rpn import Proposals


def make_proposals(boxes: torch.Tensor, counts: list[int]) -> Proposals:
    batch, size = boxes.shape[:2]
    valid = torch.arange(size)[None, :] < torch.tensor(counts)[:, None]
    index = torch.arange(batch, dtype=boxes.dtype)[:, None, None].expand(batch, size, 1)
    rois = torch.cat((index, boxes), dim=2) * valid[..., None]
    return Proposals(rois, valid.to(boxes.dtype), torch.tensor(counts))


def jittered(gt: torch.Tensor, count: int, generator: torch.Generator, spread: float) -> torch.Tensor:
    """count boxes (count, 4) around the gt boxes (K, 4), some overlapping a lot, some not."""
    pick = torch.randint(0, gt.shape[0], (count,), generator=generator)
    base = gt[pick]
    size = (base[:, 2:] - base[:, :2]).repeat(1, 2)
    corners = base + spread * size * torch.randn(count, 4, generator=generator, dtype=gt.dtype)
    low = torch.minimum(corners[:, :2], corners[:, 2:] - 1)
    return torch.cat((low, torch.maximum(corners[:, 2:], low + 1)), 1)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    gt_boxes = torch.zeros(3, 4, 5, dtype=torch.float64)
    gt_boxes[0, :3] = torch.tensor([[10, 10, 60, 80, 1], [100, 40, 180, 120, 3], [50, 100, 90, 150, 2]])
    gt_boxes[1, :1] = torch.tensor([[20, 30, 200, 160, 2]])
    gt_boxes[1, 1:] = 1234.0  # padding rows may hold anything
    num_boxes = torch.tensor([3, 1, 0])
    proposals = torch.stack([jittered(gt_boxes[0, :3, :4], 400, generator, 0.4),
                             jittered(gt_boxes[1, :1, :4], 400, generator, 0.4),
                             jittered(torch.tensor([[30.0, 30, 90, 90]], dtype=torch.float64), 400, generator, 0.4)])
    return make_proposals(proposals, [400, 30, 400]), gt_boxes, num_boxes


def test_sample_counts_and_iou_ranges(batch):
    proposals, gt_boxes, num_boxes = batch
    config = RoISamplingConfig(batch_size_per_image=64, fg_fraction=0.25, bg_threshold_lo=0.1)
    sample = sample_rois(proposals, gt_boxes, num_boxes, config, torch.Generator().manual_seed(1))
    assert sample.boxes.shape == (3, 64, 4) and sample.labels.shape == (3, 64)
    fg = sample.labels > 0
    bg = sample.labels == 0
    assert fg[0].sum() == 16 and bg[0].sum() == 48  # plenty of both: exactly 25% foreground
    assert 0 < fg[1].sum() <= 16 and (fg[1] | bg[1]).sum() <= 31  # 30 proposals + 1 gt
    assert not fg[2].any() and not bg[2].any()  # no gt and bg_lo > 0: nothing to sample
    assert (sample.labels[2] == -1).all()
    for b in range(2):
        gt = gt_boxes[b, :num_boxes[b]]
        iou = box_iou(sample.boxes[b], gt[:, :4]).max(dim=1).values
        assert (iou[fg[b]] >= 0.5).all()
        assert ((iou[bg[b]] >= 0.1) & (iou[bg[b]] < 0.5)).all()
        assert (sample.labels[b][fg[b]] == gt[sample.matched_gt[b][fg[b]], 4].long()).all()
        chosen = sample.boxes[b][fg[b] | bg[b]]
        assert len(torch.unique(chosen, dim=0)) == len(chosen)  # without replacement
    assert (sample.matched_gt[~fg] == -1).all()
    assert (sample.bbox_targets[~fg] == 0).all()


def plain_iou(a: list[float], b: list[float]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_sampled_rois_take_their_first_max_iou_gt(batch):
    """Each sampled RoI against a plain loop over the valid gt boxes: the foreground ones carry
    the first gt of the highest IoU (a duplicated gt box with another label ties) and its class."""
    proposals, gt_boxes, num_boxes = batch
    gt_boxes = gt_boxes.clone()
    gt_boxes[0, 2, :4] = gt_boxes[0, 1, :4]  # labels 3 and 2 on one box: the first (3) wins
    config = RoISamplingConfig(batch_size_per_image=128, fg_fraction=0.5, bg_threshold_lo=0.0)
    sample = sample_rois(proposals, gt_boxes, num_boxes, config, torch.Generator().manual_seed(2))
    checked = 0
    for b in range(3):
        gts = gt_boxes[b, :int(num_boxes[b])].tolist()
        for box, label, matched in zip(sample.boxes[b].tolist(), sample.labels[b].tolist(),
                                       sample.matched_gt[b].tolist()):
            if label < 0:
                continue
            ious = [plain_iou(box, gt[:4]) for gt in gts]
            best = max(ious, default=0.0)
            if label > 0:
                first = ious.index(best)
                assert best >= 0.5 and matched == first and label == int(gts[first][4])
                checked += 1
            else:
                assert best < 0.5 and matched == -1
    assert checked > 20


def test_gt_boxes_are_appended(batch):
    proposals, gt_boxes, num_boxes = batch
    none = make_proposals(proposals.boxes, [0, 0, 0])
    sample = sample_rois(none, gt_boxes, num_boxes, RoISamplingConfig(batch_size_per_image=8, fg_fraction=1.0))
    for b in range(3):
        n = int(num_boxes[b])
        assert (sample.labels[b] > 0).sum() == n
        torch.testing.assert_close(sample.boxes[b, :n], gt_boxes[b, :n, :4])
        assert sample.labels[b, :n].tolist() == gt_boxes[b, :n, 4].long().tolist()
        assert (sample.labels[b, n:] == -1).all()


def test_targets_decode_back_to_their_gt(batch):
    proposals, gt_boxes, num_boxes = batch
    config = RoISamplingConfig(batch_size_per_image=128)
    sample = sample_rois(proposals, gt_boxes, num_boxes, config)
    fg = sample.labels > 0
    decoded = decode_boxes(sample.bbox_targets, sample.boxes, config.bbox_weights)
    image = torch.arange(3)[:, None].expand_as(fg)
    torch.testing.assert_close(decoded[fg], gt_boxes[image[fg], sample.matched_gt[fg], :4])


def test_image_without_gt_gives_background_only(batch):
    proposals, gt_boxes, num_boxes = batch
    sample = sample_rois(proposals, gt_boxes[:, :0], torch.zeros(3, dtype=torch.long),
                         RoISamplingConfig(batch_size_per_image=32))
    assert (sample.labels[0] == 0).all() and (sample.labels[2] == 0).all()
    assert (sample.labels[1] == 0).sum() == 30 and (sample.labels[1] == -1).sum() == 2


def test_fast_rcnn_losses():
    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([[2, 0, -1, 1], [0, 0, -1, -1]])
    targets = torch.randn(2, 4, 4, generator=generator) * (labels > 0)[..., None]
    sample = RoISample(torch.zeros(2, 4, 4), labels, targets, torch.zeros(2, 4, dtype=torch.long))
    logits = torch.randn(2, 4, 3, generator=generator, requires_grad=True)
    deltas = torch.randn(2, 4, 3, 4, generator=generator, requires_grad=True)
    cls_loss, box_loss = fast_rcnn_losses(logits, deltas, sample, sigma=1.0)
    keep = labels >= 0
    expected_cls = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    expected_box = (torch.nn.functional.smooth_l1_loss(deltas[0, 0, 2], targets[0, 0], reduction="sum")
                    + torch.nn.functional.smooth_l1_loss(deltas[0, 3, 1], targets[0, 3], reduction="sum")) / 5
    torch.testing.assert_close(cls_loss, expected_cls)
    torch.testing.assert_close(box_loss, expected_box)
    empty = RoISample(sample.boxes, torch.full_like(labels, -1), targets, sample.matched_gt)
    cls_loss, box_loss = fast_rcnn_losses(logits, deltas, empty, sigma=1.0)
    (cls_loss + box_loss).backward()
    assert cls_loss.item() == 0 and box_loss.item() == 0 and torch.isfinite(logits.grad).all()


def random_boxes(batch, rois, extent, generator, dtype=torch.float64):
    corner = torch.rand(batch, rois, 2, generator=generator, dtype=dtype) * extent * 1.2 - 0.1 * extent
    size = torch.rand(batch, rois, 2, generator=generator, dtype=dtype) ** 2 * extent * 0.8
    boxes = torch.cat((corner, corner + size), dim=2)
    boxes[0, 0] = torch.tensor([5.0, 5.0, 5.0, 5.0])  # empty
    boxes[0, 1] = torch.tensor([-40.0, -40.0, -20.0, -20.0])  # outside
    return boxes


@pytest.mark.parametrize("stride, sampling_ratio", [(16, 2), (8, 1), (16, 3)])
def test_dense_roi_align_equals_torchvision(stride, sampling_ratio):
    generator = torch.Generator().manual_seed(stride + sampling_ratio)
    features = torch.randn(2, 5, 9, 13, generator=generator, dtype=torch.float64, requires_grad=True)
    boxes = random_boxes(2, 40, torch.tensor([13.0 * stride, 9.0 * stride], dtype=torch.float64), generator)
    rois = torch.cat((torch.arange(2.0, dtype=torch.float64).repeat_interleave(40)[:, None], boxes.reshape(-1, 4)), 1)
    expected = torchvision.ops.roi_align(features, rois, 7, 1 / stride, sampling_ratio, aligned=True)
    actual = dense_roi_align(features, boxes, 7, 1 / stride, sampling_ratio)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad(actual, features, grad)[0],
                               torch.autograd.grad(expected, features, grad)[0])


def test_dense_roi_align_chunks(monkeypatch):
    import frcnn.roi_align as roi_align
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 4, 6, 7, generator=generator, requires_grad=True)
    boxes = random_boxes(2, 10, torch.tensor([112.0, 96.0]), generator, torch.float32)
    whole = dense_roi_align(features, boxes, 3, 1 / 16, 2)
    monkeypatch.setattr(roi_align, "DENSE_ALIGN_CHUNK_ELEMENTS", 1)
    chunked = dense_roi_align(features, boxes, 3, 1 / 16, 2)
    torch.testing.assert_close(chunked, whole)
    chunked.sum().backward()
    grad = features.grad.clone()
    features.grad = None
    whole.sum().backward()
    torch.testing.assert_close(grad, features.grad)


def test_fpn_levels_follow_the_canonical_rule():
    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 10, 10], [0, 0, 2000, 2000.0]])
    # levels 2..5 (strides 4..32): 224 -> 4, 112 -> 3, 448 -> 5, tiny -> 2, huge -> 5.
    assert fpn_levels(boxes, 4, 2).tolist() == [2, 1, 3, 0, 3]


def test_pooler_options_agree_with_torchvision():
    generator = torch.Generator().manual_seed(0)
    features = [torch.randn(2, 3, 16, 20, generator=generator), torch.randn(2, 3, 8, 10, generator=generator)]
    boxes = random_boxes(2, 6, torch.tensor([160.0, 128.0]), generator, torch.float32)
    rois = torch.cat((torch.arange(2.0).repeat_interleave(6)[:, None], boxes.reshape(-1, 4)), 1)
    pool = RoIPooler(HeadConfig(pooler="pool", output_size=5), [16])
    torch.testing.assert_close(pool(features[1:], boxes), torchvision.ops.roi_pool(features[1], rois, 5, 1 / 16))
    align = RoIPooler(HeadConfig(align_impl="torchvision"), [16])
    torch.testing.assert_close(align(features[1:], boxes),
                               torchvision.ops.roi_align(features[1], rois, 7, 1 / 16, 2, aligned=True))
    pyramid = RoIPooler(HeadConfig(align_impl="torchvision"), [8, 16])
    levels = fpn_levels(rois[:, 1:], 2, 3)
    pooled = pyramid(features, boxes)
    for i in range(rois.shape[0]):
        level = int(levels[i])
        expected = torchvision.ops.roi_align(features[level], rois[i:i + 1], 7, 1 / (8 * 2**level), 2, aligned=True)
        torch.testing.assert_close(pooled[i:i + 1], expected)


def ref_detect(logits, deltas, proposals, im_info, weights, config):
    """Per image and per class, plainly."""
    results = []
    for b in range(logits.shape[0]):
        n = int(proposals.counts[b])
        probs = torch.softmax(logits[b, :n], dim=1)
        found = []
        for c in range(1, logits.shape[2]):
            boxes = decode_boxes(deltas[b, :n, c], proposals.boxes[b, :n], weights)
            height, width = im_info[b, :2].tolist()
            boxes = torch.stack((boxes[:, 0].clamp(0, width), boxes[:, 1].clamp(0, height),
                                 boxes[:, 2].clamp(0, width), boxes[:, 3].clamp(0, height)), 1)
            keep = probs[:, c] > config.score_threshold
            boxes, scores = boxes[keep], probs[keep, c]
            kept = torchvision.ops.nms(boxes, scores, config.nms_threshold)
            found += [(float(scores[i]), c, boxes[i] / im_info[b, 2]) for i in kept]
        found.sort(key=lambda item: -item[0])
        results.append(found[:config.detections_per_image])
    return results


def test_detect_matches_a_per_image_per_class_reference():
    generator = torch.Generator().manual_seed(0)
    batch, rois, classes = 3, 40, 4
    gt = torch.tensor([[20.0, 20, 80, 90], [60, 30, 150, 100], [10, 90, 60, 140]], dtype=torch.float64)
    boxes = torch.stack([jittered(gt, rois, generator, 0.15) for _ in range(batch)])
    proposals = make_proposals(boxes, [40, 25, 0])
    logits = 2 * torch.randn(batch, rois, classes + 1, generator=generator, dtype=torch.float64)
    deltas = 0.5 * torch.randn(batch, rois, classes + 1, 4, generator=generator, dtype=torch.float64)
    im_info = torch.tensor([[160.0, 200, 2.0], [150, 180, 1.0], [100, 100, 1.0]], dtype=torch.float64)
    config = InferenceConfig(score_threshold=0.1, nms_threshold=0.3, detections_per_image=12)
    weights = (10.0, 10.0, 5.0, 5.0)
    scale = (1 / im_info[:, 2:3]).expand(-1, 4)
    padded = detect_boxes(logits, deltas, proposals.boxes, proposals.valid, im_info, weights, config, scale)
    assert padded.boxes.shape == (batch, 12, 4) and padded.counts.tolist() == [12, 12, 0]
    assert not padded.scores[2].any() and not padded.labels[2].any() and not padded.boxes[2].any()
    results = unpad(padded)
    expected = ref_detect(logits, deltas, proposals, im_info, weights, config)
    assert len(results) == batch and len(results[2]["boxes"]) == 0
    for got, want in zip(results, expected):
        assert len(got["scores"]) == len(want)
        torch.testing.assert_close(got["scores"], torch.tensor([w[0] for w in want], dtype=torch.float64))
        assert got["labels"].tolist() == [w[1] for w in want]
        if want:
            torch.testing.assert_close(got["boxes"], torch.stack([w[2] for w in want]))
    assert len(results[0]["boxes"]) == 12  # capped at detections_per_image


@pytest.mark.parametrize("strides", [(16,), (4, 8, 16, 32)], ids=["one-level", "fpn"])
def test_eval_head_classifies_only_the_valid_rows(strides):
    """In eval mode the valid boxes are pooled and classified packed: their outputs are the ones
    of the unpacked head (torchvision's RoIAlign as the reference pooling), the others zero."""
    from frcnn.roi import RoIHead, box_head

    torch.manual_seed(0)
    config = HeadConfig(fc_dim=32)
    features = [torch.randn(2, 8, 64 // s, 96 // s) for s in strides]
    head = RoIHead(RoIPooler(config, strides), box_head(8, config), num_classes=3).eval()
    corners = torch.rand(2, 30, 2) * 60
    boxes = torch.cat([corners, corners + torch.rand(2, 30, 2) * 30 + 1], dim=-1)
    valid = torch.rand(2, 30) < 0.6
    with torch.no_grad():
        logits, deltas = head(features, boxes, valid)
        rois = torch.cat([torch.arange(2).repeat_interleave(30)[:, None].float(), boxes.reshape(-1, 4)], dim=1)
        levels = fpn_levels(rois[:, 1:], head.pooler.num_levels, head.pooler.finest_level)
        pooled = torch.zeros(60, 8, 7, 7)
        for level, (feature, scale) in enumerate(zip(features, head.pooler.scales)):
            chosen = levels == level
            pooled[chosen] = torchvision.ops.roi_align(feature, rois[chosen], 7, scale, config.sampling_ratio,
                                                       aligned=config.aligned)
        hidden = head.trunk(pooled)
        want_logits = head.cls_score(hidden).view(2, 30, -1)
        want_deltas = head.bbox_pred(hidden).view(2, 30, 4, 4)
    assert torch.allclose(logits[valid], want_logits[valid], atol=1e-5)
    assert torch.allclose(deltas[valid], want_deltas[valid], atol=1e-5)
    assert (logits[~valid] == 0).all() and (deltas[~valid] == 0).all()
