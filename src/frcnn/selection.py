"""Choosing rows, batched: the k best of each row (ONNX ``TopK``), the first k True entries of each
row, and NMS within groups (ONNX ``NonMaxSuppression``); the first and the last traceable.

Each rule has one definition; where PyTorch's eager kernel and the ONNX operator differ in speed
or support, the eager call and a trace (``torch.jit.is_tracing``) take different kernels that
give the same result.
"""
from __future__ import annotations

import math

import torch
import torchvision
from torch import Tensor

# Stands in for "no limit" on the boxes NonMaxSuppression keeps per (batch, class).
_NO_LIMIT = 2**31 - 1


def first_true(mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Column indices (B, k) of the first k True entries of each row of mask (B, M), in order, and
    whether each slot is filled (B, k); empty slots point at column 0."""
    batch, columns = mask.shape
    rank = mask.cumsum(dim=1) - 1
    slot = torch.where(mask & (rank < k), rank, k)
    source = torch.arange(columns, device=mask.device).expand(batch, columns)
    index = torch.zeros(batch, k + 1, dtype=torch.long, device=mask.device).scatter_(1, slot, source)[:, :k]
    filled = torch.arange(k, device=mask.device)[None, :] < mask.sum(dim=1, keepdim=True)
    return torch.where(filled, index, 0), filled


def top_rows(values: Tensor, k: int | Tensor) -> tuple[Tensor, Tensor]:
    """The K = min(k, N) largest values (B, K) of each row of values (B, N), best first, equal
    values in column order, and their columns (B, K).

    The tie rule is ONNX ``TopK``'s, which a trace exports to; eagerly ``torch.topk`` (whose order
    of equal values is open) finds the K-th largest value v, then the row keeps every value above v
    and the first of those equal to v, stably sorted; a stable sort of the whole row is cheaper
    where K is at least a quarter of N.
    """
    if torch.jit.is_tracing():
        return torch.topk(values, torch.minimum(torch._shape_as_tensor(values)[1], torch.as_tensor(k)), dim=1)
    count = min(int(k), values.shape[1])
    if count == 0 or 4 * count >= values.shape[1]:
        order = torch.sort(values, dim=1, descending=True, stable=True)[1][:, :count]
        return values.gather(1, order), order
    kth = torch.topk(values, count, dim=1, sorted=False)[0].amin(dim=1, keepdim=True)
    above, equal = values > kth, values == kth
    room = count - above.sum(dim=1, keepdim=True)
    columns = first_true(above | (equal & (equal.cumsum(dim=1) <= room)), count)[0]
    chosen = values.gather(1, columns)
    order = torch.sort(chosen, dim=1, descending=True, stable=True)[1]
    return chosen.gather(1, order), columns.gather(1, order)


class _NonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``: boxes (N, M, 4), scores (N, K, M) -> selected (S, 3) int64 rows
    (n, k, m), in no particular order; for each (n, k), greedy NMS at ``iou_threshold`` over the
    boxes scoring above ``score_threshold``. Exported as the ONNX operator; computed eagerly by one
    ``torchvision.ops.batched_nms`` over every (n, k) group."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float) -> Tensor:
        image, group, box = torch.nonzero(scores > score_threshold, as_tuple=True)
        keep = torchvision.ops.batched_nms(boxes[image, box], scores[image, group, box],
                                           image * scores.shape[1] + group, iou_threshold)
        return torch.stack((image[keep], group[keep], box[keep]), dim=1)

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float, score_threshold: float):
        def constant(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        return g.op("NonMaxSuppression", boxes, scores, constant(_NO_LIMIT, torch.int64),
                    constant(iou_threshold, torch.float32), constant(score_threshold, torch.float32))


def grouped_nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Which boxes survive greedy NMS (a box goes when its IoU with a better kept one is above
    ``iou_threshold``) within their group: boxes (B, N, 4) shared by the G groups, or (B, N, G, 4)
    one per group; scores (B, N, G), -inf for a box outside a group -> kept (B, N, G) bool.
    The groups of different images never meet."""
    batch, count, groups = scores.shape
    if boxes.dim() == 3:
        flat_boxes, flat_scores = boxes, scores.transpose(1, 2)
    else:
        flat_boxes = boxes.transpose(1, 2).reshape(-1, count, 4)
        flat_scores = scores.transpose(1, 2).reshape(-1, 1, count)
    selected = _NonMaxSuppression.apply(flat_boxes, flat_scores, iou_threshold, -math.inf)
    if boxes.dim() == 3:
        image, group, box = selected[:, 0], selected[:, 1], selected[:, 2]
    else:
        image, group, box = selected[:, 0] // groups, selected[:, 0] % groups, selected[:, 2]
    kept = torch.zeros(batch, count, groups, dtype=torch.int64, device=scores.device)
    kept = kept.index_put((image, box, group), torch.ones_like(box))
    return kept > 0
