"""Input checks of the anchor target layer (docs/anchor_targets.md, Bad inputs)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..anchors import AnchorGrid
from .geometry import Anchors


def _first_bad(mask: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in mask.nonzero()[0])


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


def check_inputs(anchors: Anchors, gt_boxes: Tensor, num_boxes: Tensor, im_info: Tensor,
                 ignore_boxes: Tensor | None, num_ignore: Tensor | None) -> None:
    """Raise ValueError naming the argument, image and value of the first bad input.

    Shapes are checked for free; values cost one host synchronisation.
    """
    if isinstance(anchors, Tensor):
        if anchors.dim() != 2 or anchors.shape[1] != 4:
            raise ValueError(f"anchors must have shape (N, 4), got {tuple(anchors.shape)}")
    else:
        grids = [anchors] if isinstance(anchors, AnchorGrid) else list(anchors)
        if not grids or not all(isinstance(g, AnchorGrid) for g in grids):
            raise ValueError("anchors must be an (N, 4) tensor, an AnchorGrid or a non-empty sequence of them")
    if not isinstance(gt_boxes, Tensor) or gt_boxes.dim() != 3 or gt_boxes.shape[2] != 5:
        raise ValueError(f"gt_boxes must have shape (B, K, 5), got {_shape(gt_boxes)}")
    if not gt_boxes.is_floating_point():
        raise ValueError(f"gt_boxes must be floating point, got {gt_boxes.dtype}")
    batch, num_gt = gt_boxes.shape[:2]
    if not isinstance(num_boxes, Tensor) or tuple(num_boxes.shape) != (batch,):
        raise ValueError(f"num_boxes must have shape ({batch},), got {_shape(num_boxes)}")
    if num_boxes.is_floating_point() or num_boxes.dtype == torch.bool:
        raise ValueError(f"num_boxes must be an integer tensor, got {num_boxes.dtype}")
    if not isinstance(im_info, Tensor) or tuple(im_info.shape) != (batch, 3):
        raise ValueError(f"im_info must have shape ({batch}, 3), got {_shape(im_info)}")
    if (ignore_boxes is None) != (num_ignore is None):
        raise ValueError("ignore_boxes and num_ignore must be given together")
    if ignore_boxes is not None:
        if ignore_boxes.dim() != 3 or ignore_boxes.shape[0] != batch or ignore_boxes.shape[2] != 4:
            raise ValueError(f"ignore_boxes must have shape ({batch}, J, 4), got {_shape(ignore_boxes)}")
        if tuple(num_ignore.shape) != (batch,) or num_ignore.is_floating_point():
            raise ValueError(f"num_ignore must be an integer tensor of shape ({batch},), got "
                             f"{_shape(num_ignore)} {num_ignore.dtype}")

    checks = [("num_boxes", (num_boxes < 0) | (num_boxes > num_gt), num_boxes),
              ("im_info", ~(im_info[:, :2] > 0).all(dim=1) | ~torch.isfinite(im_info[:, :2]).all(dim=1), im_info)]
    for name, boxes, counts in (("gt_boxes", gt_boxes[..., :4], num_boxes), ("ignore_boxes", ignore_boxes, num_ignore)):
        if boxes is None:
            continue
        valid = torch.arange(boxes.shape[1], device=boxes.device)[None, :] < counts[:, None]
        checks.append((name, valid & ~torch.isfinite(boxes).all(dim=2), boxes))
        checks.append((name, valid & ((boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])), boxes))
    if not bool(torch.stack([bad.any() for _, bad, _ in checks]).any()):
        return
    for (name, bad, value), problem in zip(checks, (f"is outside [0, K={num_gt}]",
                                                    "must have a finite, positive height and width",
                                                    "has a non-finite coordinate", "has x2 < x1 or y2 < y1",
                                                    "has a non-finite coordinate", "has x2 < x1 or y2 < y1")):
        if bad.any():
            where = _first_bad(bad)
            shown = value[where].tolist()
            place = f"image {where[0]}" + (f", row {where[1]}" if len(where) > 1 else "")
            raise ValueError(f"{name}: {place} {problem}: {shown}")
