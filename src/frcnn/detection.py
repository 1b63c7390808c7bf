"""Detection post-processing: from the box head's outputs for the proposals to the detections of
each image, padded to a fixed number of rows per image (traceable: the ONNX export's outputs)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .boxes import box_size, clip_boxes, decode_boxes
from .config import InferenceConfig
from .rpn import gather_rows
from .selection import grouped_nms, top_rows


class Detections(NamedTuple):
    """Detections of a batch, best first: boxes (B, D, 4) in the input images' pixels, scores
    (B, D), labels (B, D) int64 in 1..C, all zero past counts[b]; counts (B,) int64."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    counts: Tensor


@torch.no_grad()
def detect_boxes(class_logits: Tensor, box_deltas: Tensor, boxes: Tensor, valid: Tensor, im_info: Tensor,
                 bbox_weights: Sequence[float], config: InferenceConfig, box_scale: Tensor) -> Detections:
    """Detections from the head's class logits (B, R, C + 1) and box deltas (B, R, C + 1, 4) for
    the proposals boxes (B, R, 4), of which the ``valid`` (B, R) ones count; D =
    ``config.detections_per_image``.

    Every proposal is decoded for every class and clipped to its image (im_info (B, 3)); the
    (proposal, class) pairs scoring above ``score_threshold`` whose box sides are at least
    ``min_size`` go through one NMS per image and class, all at once; each image keeps its D best,
    equal scores in class, then proposal order. Boxes go to the original pixels: times
    ``box_scale`` (B, 4) per coordinate (``frcnn.preprocess.box_scale``).
    """
    batch, rois, num_classes = class_logits.shape[0], class_logits.shape[1], class_logits.shape[2] - 1
    scores = torch.softmax(class_logits, dim=2)[..., 1:]
    decoded = decode_boxes(box_deltas[:, :, 1:], boxes[:, :, None, :], tuple(bbox_weights))
    decoded = clip_boxes(decoded.view(batch, -1, 4), im_info[:, :2]).view(batch, rois, num_classes, 4)
    widths, heights = box_size(decoded)
    big_enough = (widths >= config.min_size) & (heights >= config.min_size)
    candidate = (scores > config.score_threshold) & valid[..., None] & big_enough
    kept = grouped_nms(decoded, torch.where(candidate, scores, -math.inf), config.nms_threshold)
    # Every kept (proposal, class) pair, class-major, competes for the image's D rows; D columns
    # of -1 behind them fill the rows of an image with fewer.
    ranked = torch.where(kept, scores, -1.0).transpose(1, 2).reshape(batch, -1)
    limit = config.detections_per_image
    padding = torch.full_like(ranked[:, :1], -1.0).expand(-1, limit)
    best_scores, best = top_rows(torch.cat((ranked, padding), dim=1), limit)
    found = best_scores >= 0
    best = torch.where(found, best, 0)
    pair_boxes = decoded.transpose(1, 2).reshape(batch, -1, 4)
    out_boxes = gather_rows(pair_boxes, best) * box_scale[:, None, :] * found[..., None]
    labels = torch.div(best, rois, rounding_mode="floor") + 1
    return Detections(out_boxes, best_scores * found, labels * found, found.sum(dim=1))


def unpad(detections: Detections, class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Padded ``Detections`` -> one dict per image with its counts[b] detections: ``boxes``
    (n, 4), ``scores`` (n,), ``labels`` (n,), and with ``class_names`` their ``names`` (one host
    synchronisation)."""
    results = []
    for boxes, scores, labels, count in zip(*detections[:3], detections.counts.tolist()):
        found = {"boxes": boxes[:count], "scores": scores[:count], "labels": labels[:count]}
        if class_names is not None:
            found["names"] = [class_names[label - 1] for label in found["labels"].tolist()]
        results.append(found)
    return results
