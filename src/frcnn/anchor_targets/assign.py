"""The batched, loop-free assignment: anchors and gt boxes in, ``AnchorTargets`` out
(docs/anchor_targets.md states the algorithm)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..sampling import random_keys
from .box_matching import match_boxes, max_ioa_boxes
from .checks import check_inputs
from .config import AnchorTargetConfig
from .geometry import Anchors, anchor_codes, as_grids, grid_levels, num_anchors
from .grid_matching import match_grids, max_ioa_grids
from .outputs import AnchorTargets
from .recognition import recognise_grids
from .targets import finish_targets


def assign_anchor_targets_unchecked(
    anchors: Anchors,
    gt_boxes: Tensor,
    num_boxes: Tensor,
    im_info: Tensor,
    config: AnchorTargetConfig,
    ignore_boxes: Tensor | None = None,
    num_ignore: Tensor | None = None,
    sample_keys: Tensor | None = None,
) -> AnchorTargets:
    """The assignment itself, on checked inputs: no validation, no host synchronisation.

    ``sample_keys`` (B, N) from ``frcnn.sampling.random_keys`` drive the subsampling; when None
    and subsampling is on they are drawn from the global generator. This is the function to ``torch.compile``.
    """
    dtype = gt_boxes.dtype
    offset = 1.0 if config.legacy_plus_one else 0.0
    batch = gt_boxes.shape[0]
    if gt_boxes.shape[1] == 0:
        gt_boxes = gt_boxes.new_zeros(batch, 1, 5)
    rank = torch.arange(gt_boxes.shape[1], device=gt_boxes.device)
    valid = rank[None, :] < num_boxes[:, None]
    # Padded rows may hold anything; replace them so that no NaN or inf can leak through.
    gt = torch.where(valid[..., None], gt_boxes[..., :4], 0.0)
    im_info = im_info.to(dtype)
    has_gt = num_boxes > 0
    grids = as_grids(anchors)
    if grids is None:
        grids = recognise_grids(anchors, dtype, offset)
    # Exactly one of the two forms: grid levels, or plain boxes in dtype.
    levels = None if grids is None else grid_levels(grids, dtype, offset)
    boxes = anchors.to(dtype) if grids is None else None

    covered = None
    if ignore_boxes is not None and ignore_boxes.shape[1] > 0:
        ignore_valid = torch.arange(ignore_boxes.shape[1], device=gt.device)[None, :] < num_ignore[:, None]
        ignore = torch.where(ignore_valid[..., None], ignore_boxes.to(dtype), 0.0)
        if levels is not None:
            ioa = max_ioa_grids(levels, ignore, ignore_valid, im_info, config, offset)
        else:
            ioa = max_ioa_boxes(boxes, ignore, ignore_valid, config, offset)
        covered = ioa > config.ignore_overlap if config.ignore_before_matching else ioa >= config.ignore_overlap

    if covered is not None and config.ignore_before_matching:
        # Covered anchors of images with gt leave matching (docs/anchor_targets.md, Ignore regions).
        if boxes is None:
            boxes = torch.cat([grid.boxes for grid in grids]).to(dtype)
        match = match_boxes(boxes, gt, valid, im_info, config, offset, ~(covered & has_gt[:, None]))
    elif levels is not None:
        match = match_grids(levels, gt, valid, im_info, config, offset)
    else:
        match = match_boxes(boxes, gt, valid, im_info, config, offset)
    # Covered anchors are no negatives when the ignore regions apply after matching.
    excluded = covered if covered is not None and not config.ignore_before_matching else None
    if config.batch_size is not None and sample_keys is None:
        sample_keys = random_keys(match.max_iou.shape, match.max_iou.device)
    codes, scales = anchor_codes(grids if grids is not None else anchors, config.legacy_plus_one, dtype)
    return finish_targets(match, has_gt, gt, codes, scales, config, excluded, sample_keys)


def assign_anchor_targets(
    anchors: Anchors,
    gt_boxes: Tensor,
    num_boxes: Tensor,
    im_info: Tensor,
    config: AnchorTargetConfig | None = None,
    generator: torch.Generator | None = None,
    ignore_boxes: Tensor | None = None,
    num_ignore: Tensor | None = None,
    *,
    validate: bool = True,
) -> AnchorTargets:
    """RPN targets for every anchor of every image (docs/anchor_targets.md).

    anchors: (N, 4) boxes, or an ``AnchorGrid`` / a sequence of them (level-major order; the
    fast path). gt_boxes (B, K, 5) rows (x1, y1, x2, y2, class), rows >= num_boxes[b] ignored;
    num_boxes (B,); im_info (B, 3) rows (height, width, scale); ignore_boxes (B, J, 4) with
    num_ignore (B,) mark crowd regions. ``generator`` drives the subsampling.
    ``validate=False`` skips the input checks and their one host synchronisation.
    """
    config = config or AnchorTargetConfig()
    if validate:
        check_inputs(anchors, gt_boxes, num_boxes, im_info, ignore_boxes, num_ignore)
    sample_keys = None
    if config.batch_size is not None and generator is not None:
        sample_keys = random_keys((gt_boxes.shape[0], num_anchors(anchors)), gt_boxes.device, generator)
    return assign_anchor_targets_unchecked(anchors, gt_boxes, num_boxes, im_info, config, ignore_boxes,
                                  num_ignore, sample_keys)
