"""The detector as one traceable graph: plain images in, padded detections out.

``DetectorGraph(model)`` computes what ``FasterRCNN.predict`` computes for a batch of equally
sized images, with every shape derived from the input by tensor ops, so that a trace of it (the
ONNX export, docs/deploy.md) stays valid for any batch size and image size:

* the model's preprocessing (``frcnn.preprocess``): normalise, resize and zero-pad, the resize and
  the padding as one matrix product per axis (``resize_matrix``);
* anchors from the feature maps' sizes;
* the proposal layer and the detection post-processing with NMS per (image, level) and per
  (image, class) as ONNX's ``NonMaxSuppression`` does it, and top-k in place of sorting;
* RoIAlign as two matrix products per image (``separable_roi_align``), which onnxruntime runs
  several times faster than its ``RoiAlign``;
* detections padded to D = ``detections_per_image`` rows per image, with counts.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torchvision
from torch import Tensor, nn

from ..boxes import box_size, clip_boxes, decode_boxes
from ..config import PreprocessConfig
from ..roi import axis_weights
from ..roi_align import roi_extents
from ..rpn import gather_rows, objectness_logit

# Stands in for "no limit" on the boxes NonMaxSuppression keeps per (batch, class).
_NO_LIMIT = 2**31 - 1


class Detections(NamedTuple):
    """Detections of a batch, best first: boxes (B, D, 4) in the input images' pixels, scores
    (B, D), labels (B, D) int64 in 1..C, all zero past counts[b]; counts (B,) int64."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    counts: Tensor


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot become a ``DetectorGraph`` (a one-line reason), or None."""
    config = model.config
    if config.preprocess.interpolation != "bilinear":
        return f"preprocess.interpolation is {config.preprocess.interpolation!r} (only 'bilinear' exports)"
    if config.head.pooler != "align":
        return f"head.pooler is {config.head.pooler!r} (only 'align' exports)"
    if config.head.sampling_ratio < 1:
        return f"head.sampling_ratio is {config.head.sampling_ratio} (the export needs a fixed ratio >= 1)"
    if model.backbone.num_roi_levels != 1:
        return "the model pools RoIs from several FPN levels (the export pools from one level)"
    return None


def _size(tensor: Tensor, dim: int) -> Tensor:
    """tensor.shape[dim] as a 0-dim int64 tensor (a graph value while tracing)."""
    return torch._shape_as_tensor(tensor)[dim]


def _as_count(value: Tensor) -> Tensor | int:
    """A 0-dim int64 tensor as ``torch.topk``'s k: the tensor while tracing (a graph value), an
    int otherwise."""
    return value if torch.jit.is_tracing() else int(value)


def resize_factor(height: Tensor, width: Tensor, config: PreprocessConfig) -> Tensor:
    """``frcnn.preprocess.resize_factor`` of 0-dim sizes, in float64 as Python computes it."""
    height, width = height.double(), width.double()
    return torch.minimum(config.min_size / torch.minimum(height, width),
                         config.max_size / torch.maximum(height, width))


def resized_side(side: Tensor, factor: Tensor, config: PreprocessConfig) -> Tensor:
    """side * factor rounded half to even ("round") or floored, as an int64 0-dim tensor."""
    scaled = side.double() * factor
    return (torch.floor(scaled) if config.resize_rounding == "floor" else torch.round(scaled)).long()


def resize_matrix(in_size: Tensor, out_size: Tensor, padded_size: Tensor, antialias: bool) -> Tensor:
    """(padded_size, in_size) float32 weights of PyTorch's bilinear resize (align_corners False)
    from ``in_size`` to ``out_size`` samples along one axis; rows past ``out_size`` are zero (the
    padding).

    Antialiased: output i is centred at c = scale (i + 0.5), scale = in / out; input a weighs
    max(0, 1 - |(a + 0.5 - c) / support|) within [floor(c - support + 0.5), floor(c + support + 0.5)),
    support = max(scale, 1), normalised to sum 1. Plain: the two neighbours of
    max(scale (i + 0.5) - 0.5, 0), the upper clamped to the last sample.
    """
    scale = in_size.float() / out_size.float()
    rows = torch.arange(padded_size, dtype=torch.float32)[:, None]
    columns = torch.arange(in_size, dtype=torch.float32)[None, :]
    if antialias:
        support = torch.clamp(scale, min=1.0)
        center = scale * (rows + 0.5)
        low = torch.clamp(torch.floor(center - support + 0.5), min=0.0)
        high = torch.minimum(torch.floor(center + support + 0.5), in_size.float())
        weights = torch.clamp(1.0 - ((columns - center + 0.5) / support).abs(), min=0.0)
        weights = weights * ((columns >= low) & (columns < high))
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1e-30)
    else:
        source = torch.clamp(scale * (rows + 0.5) - 0.5, min=0.0)
        low = torch.floor(source)
        fraction = source - low
        high = torch.minimum(low + 1, in_size.float() - 1)
        weights = (1.0 - fraction) * (columns == low) + fraction * (columns == high)
    return weights * (rows < out_size.float())


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``: boxes (N, M, 4), scores (N, K, M) -> selected (S, 3) int64 rows
    (n, k, m); for each (n, k), greedy NMS at ``iou_threshold`` over the boxes scoring above
    ``score_threshold``, best first. Exported as the ONNX operator, computed with
    ``torchvision.ops.nms`` otherwise."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
        selected = []
        for n in range(scores.shape[0]):
            for k in range(scores.shape[1]):
                candidates = torch.nonzero(scores[n, k] > score_threshold).squeeze(1)
                kept = candidates[torchvision.ops.nms(boxes[n, candidates], scores[n, k, candidates], iou_threshold)]
                selected.append(torch.stack((torch.full_like(kept, n), torch.full_like(kept, k), kept), dim=1))
        return torch.cat(selected) if selected else torch.zeros(0, 3, dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float, score_threshold: float):
        def constant(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op("NonMaxSuppression", boxes, scores, constant(_NO_LIMIT, torch.int64),
                    constant(iou_threshold, torch.float32), constant(score_threshold, torch.float32))


def grouped_nms(boxes: Tensor, scores: Tensor, groups: int, iou_threshold: float) -> Tensor:
    """Which boxes survive NMS within their group: boxes (B, N, G', 4) or (B, N, 4) shared by the
    groups, scores (B, N, G) with -inf (or anything below every real score) for boxes outside a
    group -> kept (B, N, G) bool."""
    batch, count = scores.shape[:2]
    if boxes.dim() == 3:
        flat_boxes, flat_scores = boxes, scores.transpose(1, 2)
    else:
        flat_boxes = boxes.transpose(1, 2).reshape(batch * groups, count, 4)
        flat_scores = scores.transpose(1, 2).reshape(batch * groups, 1, count)
    selected = _NonMaxSuppression.apply(flat_boxes, flat_scores, iou_threshold, -math.inf)
    if boxes.dim() == 3:
        image, group, box = selected[:, 0], selected[:, 1], selected[:, 2]
    else:
        image, group, box = selected[:, 0] // groups, selected[:, 0] % groups, selected[:, 2]
    kept = torch.zeros(batch, count, groups, dtype=torch.int64, device=scores.device)
    kept = kept.index_put((image, box, group), torch.ones_like(box))
    return kept > 0


def top_rows(values: Tensor, k: int | Tensor) -> tuple[Tensor, Tensor]:
    """The min(k, N) largest values (B, N) of each row, best first, and their columns."""
    return torch.topk(values, _as_count(torch.minimum(_size(values, 1), torch.as_tensor(k))), dim=1)


def separable_roi_align(features: Tensor, boxes: Tensor, output_size: int, spatial_scale: float,
                        sampling_ratio: int, aligned: bool) -> Tensor:
    """``torchvision.ops.roi_align`` of boxes (B, R, 4) on features (B, C, H, W) -> (B * R, C, S, S),
    as the two matrix products of ``roi.dense_roi_align`` (unchunked: dynamic sizes trace)."""
    channels = features.shape[1]
    height, width = _size(features, 2), _size(features, 3)
    starts, lengths = roi_extents(boxes.to(features.dtype), spatial_scale, aligned)
    weights_y = axis_weights(starts[..., 1], lengths[..., 1], output_size, sampling_ratio, height)
    weights_x = axis_weights(starts[..., 0], lengths[..., 0], output_size, sampling_ratio, width)
    by_row = features.transpose(1, 2).flatten(2)  # (B, H, C W)
    rows = torch.matmul(weights_y.flatten(1, 2), by_row)  # (B, R S, C W)
    rows = rows.reshape(-1, output_size * channels, _size(features, 3))  # (B R, S C, W)
    pooled = torch.matmul(rows, weights_x.flatten(0, 1).transpose(1, 2))  # (B R, S C, S)
    return pooled.reshape(-1, output_size, channels, output_size).transpose(1, 2)


class DetectorGraph(nn.Module):
    """``model`` as a function of plain images: images (B, 3, H, W) float RGB in [0, 1] ->
    ``Detections`` padded to the model's ``detections_per_image`` (see the module docstring).
    ``model`` must be in eval mode and exportable (``unsupported_reason``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"the model cannot be exported: {reason}")
        self.model = model
        config = model.config.preprocess
        self.register_buffer("mean", torch.tensor(config.mean)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(config.std)[:, None, None], persistent=False)

    def forward(self, images: Tensor) -> Detections:
        batch, image_info, box_scale = self.preprocess(images)
        model = self.model
        features = model.backbone(batch)
        logits, deltas = model.rpn_head(features)
        anchors, levels = self.anchors(features, batch)
        rois, valid = self.proposals(objectness_logit(logits), deltas, anchors, levels, image_info)
        return self.detections(features, rois, valid, image_info, box_scale)

    def preprocess(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """images (B, 3, H, W) -> the normalised, resized, zero-padded batch, im_info (B, 3) and the
        box scale (B, 4) back to the input pixels (``frcnn.preprocess.box_scale``)."""
        config = self.model.config.preprocess
        height, width = _size(images, 2), _size(images, 3)
        factor = resize_factor(height, width, config)
        new_height, new_width = resized_side(height, factor, config), resized_side(width, factor, config)
        multiple = config.size_divisible
        padded_height = torch.div(new_height + multiple - 1, multiple, rounding_mode="floor") * multiple
        padded_width = torch.div(new_width + multiple - 1, multiple, rounding_mode="floor") * multiple
        rows = resize_matrix(height, new_height, padded_height, config.antialias)
        columns = resize_matrix(width, new_width, padded_width, config.antialias)
        normalized = (images - self.mean) / self.std
        resized = torch.matmul(torch.matmul(rows, normalized), columns.t())
        ones = torch.ones_like(images[:, 0, 0, 0])
        info = torch.stack((new_height.float() * ones, new_width.float() * ones, factor.float() * ones), dim=1)
        if config.box_rescale == "scale":
            scale = (1.0 / info[:, 2:3]).expand(-1, 4)
        else:
            ratios = torch.stack((width.float() / new_width.float(), height.float() / new_height.float()))
            scale = ratios[[0, 1, 0, 1]][None, :] * ones[:, None]
        return resized, info, scale

    def anchors(self, features: list[Tensor], batch: Tensor) -> tuple[Tensor, Tensor]:
        """Anchors (N, 4) of all levels, in ``AnchorGrid`` order, and each anchor's level (N,)."""
        model = self.model
        boxes, levels = [], []
        for level, (base, feature, stride) in enumerate(zip(model.base_anchors, features, model.backbone.strides)):
            height, width = _size(feature, 2), _size(feature, 3)
            if model.config.anchors.stride_rule == "image":
                stride_y = torch.div(_size(batch, 2), height, rounding_mode="floor")
                stride_x = torch.div(_size(batch, 3), width, rounding_mode="floor")
            else:
                stride_y = stride_x = torch.tensor(stride)
            ys = (torch.arange(height) * stride_y).float()
            xs = (torch.arange(width) * stride_x).float()
            shifts = torch.stack((xs[None, :].expand(height, width), ys[:, None].expand(height, width)), dim=-1)
            corners = base.to(feature.device, torch.float32)[None, None] + shifts.repeat(1, 1, 2)[:, :, None, :]
            boxes.append(corners.reshape(-1, 4))
            levels.append(torch.full_like(boxes[-1][:, 0], level, dtype=torch.int64))
        return torch.cat(boxes), torch.cat(levels)

    def proposals(self, objectness: Tensor, deltas: Tensor, anchors: Tensor, levels: Tensor,
                  image_info: Tensor) -> tuple[Tensor, Tensor]:
        """``rpn.generate_proposals`` with the test limits -> boxes (B, P, 4) and valid (B, P),
        P = min(post_nms_top_n, candidates), best first."""
        config = self.model.config.proposals
        limits = config.test
        boxes = clip_boxes(decode_boxes(deltas, anchors[None]), image_info[:, :2])
        widths, heights = box_size(boxes)
        min_side = config.min_size * image_info[:, 2:3] if config.scale_min_size else config.min_size
        big_enough = (widths >= min_side) & (heights >= min_side)
        ranked = torch.where(big_enough, objectness, -math.inf) if config.min_size_before_top_n else objectness
        num_levels = len(self.model.base_anchors)
        tops = []
        for level in range(num_levels):
            in_level = torch.nonzero(levels == level).squeeze(1)
            tops.append(in_level[top_rows(ranked[:, in_level], limits.pre_nms_top_n)[1]])
        top = torch.cat(tops, dim=1)
        scores = objectness.gather(1, top)
        valid = big_enough.gather(1, top) & (torch.sigmoid(scores) >= config.score_threshold)
        scores = torch.where(valid, scores, -math.inf)
        boxes = gather_rows(boxes, top)
        by_level = torch.where(levels[top][..., None] == torch.arange(num_levels), scores[..., None], -math.inf)
        kept = grouped_nms(boxes, by_level, num_levels, config.nms_threshold).any(dim=2) & valid
        # P = the most proposals an image keeps (at least 1): the RoI head pools no empty columns.
        most = torch.clamp(kept.sum(dim=1).max(), min=1)
        best = top_rows(torch.where(kept, scores, -math.inf), torch.clamp(most, max=limits.post_nms_top_n))[1]
        return gather_rows(boxes, best), kept.gather(1, best)

    def detections(self, features: list[Tensor], boxes: Tensor, valid: Tensor, image_info: Tensor,
                   box_scale: Tensor) -> Detections:
        """``roi.detect`` on the proposals, padded to D rows per image."""
        model, config = self.model, self.model.config
        head = model.roi_head
        batch, count = boxes.shape[:2]
        pooled = separable_roi_align(features[0], boxes, config.head.output_size, head.pooler.scales[0],
                                     config.head.sampling_ratio, config.head.aligned)
        hidden = head.trunk(pooled)
        classes = model.num_classes
        logits = head.cls_score(hidden).view(batch, count, classes + 1)
        deltas = head.bbox_pred(hidden).view(batch, count, classes + 1, 4)
        scores = torch.softmax(logits, dim=2)[..., 1:]
        decoded = decode_boxes(deltas[:, :, 1:], boxes[:, :, None, :], tuple(config.roi_sampling.bbox_weights))
        decoded = clip_boxes(decoded.view(batch, -1, 4), image_info[:, :2]).view(batch, count, classes, 4)
        widths, heights = box_size(decoded)
        test = config.test
        big_enough = (widths >= test.min_size) & (heights >= test.min_size)
        candidate = (scores > test.score_threshold) & valid[..., None] & big_enough
        kept = grouped_nms(decoded, torch.where(candidate, scores, -math.inf), classes, test.nms_threshold)
        # Every kept (proposal, class) pair, class-major, competes for the image's D rows.
        ranked = torch.where(kept, scores, -1.0).transpose(1, 2).reshape(batch, -1)
        limit = test.detections_per_image
        padding = torch.full_like(ranked[:, :1], -1.0).expand(-1, limit)
        best_scores, best = torch.topk(torch.cat((ranked, padding), dim=1), limit, dim=1)
        found = best_scores >= 0
        best = torch.where(found, best, 0)
        pair_boxes = decoded.transpose(1, 2).reshape(batch, -1, 4)
        out_boxes = gather_rows(pair_boxes, best) * box_scale[:, None, :] * found[..., None]
        labels = torch.div(best, count, rounding_mode="floor") + 1
        return Detections(out_boxes, best_scores * found, labels * found, found.sum(dim=1))
