"""RoIAlign's bilinear sampling rule, and RoIAlign for inference as one weighted gather.

``torchvision.ops.roi_align`` averages ``sampling_ratio``^2 bilinear samples
per output bin. The rule factors into one axis at a time (``axis_samples``); each bin then reads
at most (2 ``sampling_ratio``)^2 feature cells with weights that are products of the two axes'.
``gather_roi_align`` reads exactly those cells (``torch.nn.functional.embedding_bag`` with
per-cell weights), so it does no work for the cells a RoI does not touch: the pooling without a
gradient (eager inference). ``dense_roi_align`` applies the same weights as two matrix products
per RoI: training (it has the gradient) and the ONNX export (onnxruntime runs the products
several times faster than its own RoiAlign).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .precision import widened_dtype


def axis_samples(start: Tensor, length: Tensor, output_size: int, sampling_ratio: int,
                 size: int | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Where RoIAlign samples along one axis of ``size`` feature cells.

    start, length (B, R) in feature cells (``roi_extents``) -> low, fraction, inside, each
    (B, R, output_size, sampling_ratio): bin i's samples sit at start + (i + (j + 0.5) /
    sampling_ratio) * length / output_size; a sample reads cell ``low`` with weight 1 - fraction
    and cell low + 1 with weight ``fraction``; one below -1 or beyond ``size`` counts as zero
    (``inside`` False), one in [-1, 0] reads cell 0, one at or past the last cell reads the last
    cell (torchvision's rules). ``low`` is a float tensor of cell indices. ``size`` may be a
    0-dim tensor (a traced graph's dynamic size).
    """
    steps = torch.arange(output_size, device=start.device, dtype=start.dtype)[:, None] + (
        torch.arange(sampling_ratio, device=start.device, dtype=start.dtype)[None, :] + 0.5) / sampling_ratio
    position = start[..., None, None] + steps * (length / output_size)[..., None, None]
    inside = (position >= -1.0) & (position <= size)
    position = position.clamp(min=0.0)
    low = position.floor()
    at_end = low >= size - 1
    low = torch.where(at_end, size - 1, low)
    fraction = torch.where(at_end, 0.0, position - low) * inside
    return low, fraction, inside


def _axis_cells(start: Tensor, length: Tensor, output_size: int, sampling_ratio: int,
                size: int) -> tuple[Tensor, Tensor]:
    """The cells (B, R, S, 2 * sampling_ratio) int64 each bin of one axis reads, and their
    weights (the same shape), averaging over the bin's samples; a sample's two cells are
    adjacent (the upper one clamped to the axis, where its weight is 0)."""
    low, fraction, inside = axis_samples(start, length, output_size, sampling_ratio, size)
    cells = torch.stack((low, (low + 1).clamp(max=size - 1)), dim=-1).flatten(-2).long()
    weights = torch.stack(((1.0 - fraction) * inside, fraction), dim=-1).flatten(-2) / sampling_ratio
    return cells, weights


def roi_extents(boxes: Tensor, spatial_scale: float, aligned: bool) -> tuple[Tensor, Tensor]:
    """boxes (B, R, 4) in image coordinates -> starts (B, R, 2) and lengths (B, R, 2), (x, y), in
    feature cells: aligned boxes are shifted by -0.5 cells; unaligned ones are not, and span at
    least one cell."""
    scaled = boxes * spatial_scale - (0.5 if aligned else 0.0)
    lengths = scaled[..., 2:] - scaled[..., :2]
    return scaled[..., :2], lengths if aligned else lengths.clamp(min=1.0)


def gather_roi_align(features: Tensor, boxes: Tensor, output_size: int, spatial_scale: float,
                     sampling_ratio: int, aligned: bool = True, image: Tensor | None = None) -> Tensor:
    """``torchvision.ops.roi_align(..., aligned=aligned)`` as a weighted gather.

    features (B, C, H, W); boxes (B, R, 4) in image coordinates, R per image, or boxes (K, 4)
    with ``image`` (K,) the image of each -> (B * R or K, C, S, S), channels last in memory (a
    flatten or a convolution takes it as it is; features channels last in memory save a copy).
    Bin (s, t) of a RoI is the sum over its cells (y, x) of weight_y * weight_x * features[:, y, x];
    no gradient flows to the boxes.
    """
    batch, channels, height, width = features.shape
    size = output_size
    if image is None:
        image = torch.arange(batch, device=boxes.device)[:, None].expand(boxes.shape[:2])
    # Sampling positions in float32 beside bf16 / fp16 features, whose 8 or 11 bits would place
    # samples a cell or more off in a large map; only the weights take the features' dtype.
    starts, lengths = roi_extents(boxes.detach().to(widened_dtype(features.dtype)), spatial_scale, aligned)
    rows, weights_y = _axis_cells(starts[..., 1], lengths[..., 1], size, sampling_ratio, height)
    columns, weights_x = _axis_cells(starts[..., 0], lengths[..., 0], size, sampling_ratio, width)
    # (..., S, S, 2 sampling_ratio, 2 sampling_ratio): rows of the (B H W, C) table and weights.
    offset = (image * (height * width))[..., None, None, None, None]
    cells = offset + rows[..., :, None, :, None] * width + columns[..., None, :, None, :]
    weights = (weights_y[..., :, None, :, None] * weights_x[..., None, :, None, :]).to(features.dtype)
    table = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    per_bin = cells.shape[-1] * cells.shape[-2]
    pooled = F.embedding_bag(cells.reshape(-1, per_bin), table, mode="sum",
                             per_sample_weights=weights.reshape(-1, per_bin))
    return pooled.view(-1, size, size, channels).permute(0, 3, 1, 2)


# Above this many elements, the dense RoIAlign's (B, r * S, C * W) intermediate is made in chunks
# of r RoIs (and the eval RoI head pools and classifies in chunks of that size): large fresh
# buffers cost more in page faults than the products that fill them.
DENSE_ALIGN_CHUNK_ELEMENTS = 2**22


def chunk_bounds(count: int, elements_per_item: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive chunks of ``count`` items, each of at most
    ``DENSE_ALIGN_CHUNK_ELEMENTS`` elements (at least one item)."""
    step = max(1, DENSE_ALIGN_CHUNK_ELEMENTS // max(elements_per_item, 1))
    return [(start, min(start + step, count)) for start in range(0, count, step)]


def axis_weights(start: Tensor, length: Tensor, output_size: int, sampling_ratio: int, size: int | Tensor) -> Tensor:
    """RoIAlign's sampling along one axis as averaging weights over the feature cells.

    start, length (B, R) in feature cells (``roi_extents``) -> (B, R, output_size, size): bin i
    averages the ``sampling_ratio`` bilinear samples of ``axis_samples``.
    """
    low, fraction, inside = axis_samples(start, length, output_size, sampling_ratio, size)
    cells = torch.arange(size, device=start.device, dtype=start.dtype)
    weights = ((1.0 - fraction) * inside)[..., None] * (cells == low[..., None]) + fraction[..., None] * (
        cells == low[..., None] + 1)
    return weights.sum(dim=-2) / sampling_ratio


def separable_products(by_row: Tensor, weights_y: Tensor, weights_x: Tensor) -> Tensor:
    """out[b, r, c] = Wy[b, r] @ features[b, c] @ Wx[b, r]^T as two batched matrix products:
    features as by_row (B, H, C W) (``features.transpose(1, 2).flatten(2)``), weights_y
    (B, R, S, H), weights_x (B, R, S, W) -> (B, R, C, S, S)."""
    batch, rois, size, width = weights_x.shape
    rows = torch.matmul(weights_y.flatten(1, 2), by_row).view(batch * rois, -1, width)  # (B R, S C, W)
    pooled = torch.matmul(rows, weights_x.flatten(0, 1).transpose(1, 2))  # (B R, S C, S)
    return pooled.view(batch, rois, size, -1, size).transpose(2, 3)


class _SeparableRoIAlign(torch.autograd.Function):
    """``separable_products`` in chunks of RoIs, with its gradient for the features."""

    @staticmethod
    def forward(ctx, features: Tensor, weights_y: Tensor, weights_x: Tensor) -> Tensor:
        batch, channels, height, width = features.shape
        rois, size = weights_y.shape[1:3]
        by_row = features.transpose(1, 2).reshape(batch, height, channels * width)
        out = features.new_empty(batch, rois, channels, size, size)
        for start, stop in chunk_bounds(rois, batch * size * channels * width):
            out[:, start:stop] = separable_products(by_row, weights_y[:, start:stop], weights_x[:, start:stop])
        ctx.save_for_backward(weights_y, weights_x)
        ctx.feature_shape = features.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        weights_y, weights_x = ctx.saved_tensors
        batch, channels, height, width = ctx.feature_shape
        rois, size = weights_y.shape[1:3]
        grad = grad.transpose(2, 3).contiguous()
        grad_by_row = grad.new_zeros(batch, height, channels * width)
        for start, stop in chunk_bounds(rois, batch * size * channels * width):
            count = stop - start
            grad_rows = torch.bmm(grad[:, start:stop].reshape(batch * count, size * channels, size),
                                  weights_x[:, start:stop].reshape(batch * count, size, width))
            grad_by_row.baddbmm_(weights_y[:, start:stop].reshape(batch, count * size, height).transpose(1, 2),
                                 grad_rows.view(batch, count * size, channels * width))
        return grad_by_row.view(batch, height, channels, width).transpose(1, 2).contiguous(), None, None


def dense_roi_align(features: Tensor, boxes: Tensor, output_size: int, spatial_scale: float,
                    sampling_ratio: int, aligned: bool = True) -> Tensor:
    """``torchvision.ops.roi_align(..., aligned=aligned)`` with R boxes per image, as matrix products.

    features (B, C, H, W), boxes (B, R, 4) in image coordinates -> (B * R, C, S, S), RoIs
    image-major. RoIAlign's bilinear sampling factors into a (S, H) and a (W, S) weight matrix per
    RoI, so the pooling and its gradient are batched products (``separable_products``, in chunks
    eagerly, whole in a trace, whose sizes are the graph's); it has no gradient for the boxes.
    """
    height, width = features.shape[-2:]
    starts, lengths = roi_extents(boxes.detach().to(widened_dtype(features.dtype)), spatial_scale, aligned)
    weights_y = axis_weights(starts[..., 1], lengths[..., 1], output_size, sampling_ratio, height).to(features.dtype)
    weights_x = axis_weights(starts[..., 0], lengths[..., 0], output_size, sampling_ratio, width).to(features.dtype)
    if torch.jit.is_tracing():
        return separable_products(features.transpose(1, 2).flatten(2), weights_y, weights_x).flatten(0, 1)
    return _SeparableRoIAlign.apply(features, weights_y, weights_x).flatten(0, 1)
