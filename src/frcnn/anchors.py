"""Anchors: the base boxes of one feature cell (each library's rule) and their shifts over a
feature-map grid."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch import Tensor

from .boxes import box_codes


def generate_anchors(
    base_size: int = 16,
    ratios: Sequence[float] = (0.5, 1, 2),
    scales: Sequence[float] = (8, 16, 32),
) -> Tensor:
    """The A = len(ratios) * len(scales) base anchors (A, 4) of one cell, ratio-major.

    From the box (0, 0, base_size - 1, base_size - 1): for each ratio r keep the area with
    w = round(sqrt(area / r)), h = round(w * r) (half to even), then scale w and h by each s,
    all about the base box's centre, in the legacy "+1" pixel convention.
    """
    size = float(base_size)
    center = 0.5 * (size - 1)
    anchors = []
    for ratio in ratios:
        w = float(round(math.sqrt(size * size / ratio)))
        h = float(round(w * ratio))
        for scale in scales:
            half_w, half_h = 0.5 * (w * scale - 1), 0.5 * (h * scale - 1)
            anchors.append((center - half_w, center - half_h, center + half_w, center + half_h))
    return torch.tensor(anchors, dtype=torch.float64)


def torchvision_cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """torchvision's ``AnchorGenerator`` cell anchors (A, 4), ratio-major, centred on (0, 0):
    in float32, h = sqrt(r), w = 1 / h, then (-w s, -h s, w s, h s) / 2 rounded half to even."""
    scales = torch.tensor(sizes, dtype=torch.float32)
    h_ratios = torch.sqrt(torch.tensor(ratios, dtype=torch.float32))
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round().double()


def detectron2_cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """detectron2's ``DefaultAnchorGenerator`` cell anchors (A, 4), size-major, centred on
    (0, 0), unrounded: w = sqrt(s^2 / r), h = r w."""
    anchors = []
    for size in sizes:
        for ratio in ratios:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            anchors.append((-w / 2, -h / 2, w / 2, h / 2))
    return torch.tensor(anchors, dtype=torch.float64)


def mmdetection_cell_anchors(sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """mmdetection's ``AnchorGenerator`` cell anchors (A, 4) with center offset 0, ratio-major,
    unrounded: h = sqrt(r), w = 1 / h, corners (-w s / 2, -h s / 2, w s / 2, h s / 2)."""
    scales = torch.tensor(sizes, dtype=torch.float64)
    h_ratios = torch.sqrt(torch.tensor(ratios, dtype=torch.float64))
    ws = ((1 / h_ratios)[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=1)


def cell_anchors(rule: str, stride: int, sizes: Sequence[float], ratios: Sequence[float]) -> Tensor:
    """The cell anchors (A, 4) of a level with ``stride`` and anchor sides ``sizes`` (pixels) by
    ``rule``: "legacy" (``generate_anchors(stride, ratios, sizes / stride)``, centred on
    (stride - 1) / 2), "torchvision", "detectron2" or "mmdetection" (centred on the cell corner)."""
    if rule == "legacy":
        return generate_anchors(stride, ratios, [size / stride for size in sizes])
    rules = {"torchvision": torchvision_cell_anchors, "detectron2": detectron2_cell_anchors,
             "mmdetection": mmdetection_cell_anchors}
    if rule not in rules:
        raise ValueError(f"cell anchor rule must be one of legacy, {', '.join(rules)}, got {rule!r}")
    return rules[rule](sizes, ratios)


def cell_strides(rule: str, level_stride: int, image_size: Sequence[int],
                 feature_size: Sequence[int]) -> tuple[int, int]:
    """(stride_y, stride_x) between the cells of a feature map of ``feature_size`` (h, w) for a
    padded batch of ``image_size`` (H, W): "level", the level's nominal stride; "image",
    (H // h, W // w) as torchvision's ``AnchorGenerator`` (an odd map halved by FPN's extra level
    gives strides below 2x the previous level's)."""
    if rule == "level":
        return level_stride, level_stride
    if rule == "image":
        # Floor division of the sizes as they come: ints, or a trace's 0-dim tensors (kept graph values).
        return image_size[0] // feature_size[0], image_size[1] // feature_size[1]
    raise ValueError(f"anchor stride rule must be 'level' or 'image', got {rule!r}")


@dataclass(frozen=True, eq=False)
class AnchorGrid:
    """The anchors of one feature level: base anchors (A, 4) shifted by ``stride`` (an int, or
    (stride_y, stride_x)) over H x W cells.

    Anchor n = (y * W + x) * A + a is ``base[a] + (sx x, sy y, sx x, sy y)``. The grid keeps that
    structure, which the anchor target layer exploits: an anchor's x extent depends on (x, a)
    only and its y extent on (y, a) only.
    """

    base: Tensor
    height: int
    width: int
    stride: int | tuple[int, int]
    boxes: Tensor = field(init=False, repr=False)
    _codes: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        shape = (self.height, self.width, self.num_base)
        xs = self.x_intervals()[None].expand(*shape, 2)
        ys = self.y_intervals()[:, None].expand(*shape, 2)
        corners = torch.stack((xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]), dim=-1)
        object.__setattr__(self, "boxes", corners.reshape(-1, 4))

    @property
    def stride_y(self) -> int:
        return self.stride[0] if isinstance(self.stride, tuple) else self.stride

    @property
    def stride_x(self) -> int:
        return self.stride[1] if isinstance(self.stride, tuple) else self.stride

    @property
    def num_base(self) -> int:
        return self.base.shape[0]

    @property
    def num_anchors(self) -> int:
        return self.height * self.width * self.num_base

    def codes(self, plus_one: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``frcnn.boxes.box_codes`` of the anchors in ``dtype``, computed once per grid."""
        key = (plus_one, dtype)
        if key not in self._codes:
            self._codes[key] = box_codes(self.boxes.to(dtype), plus_one)
        return self._codes[key]

    def x_intervals(self) -> Tensor:
        """(W, A, 2): the (x1, x2) extent of every anchor of column x."""
        shifts = torch.arange(self.width, device=self.base.device, dtype=self.base.dtype) * self.stride_x
        return self.base[None, :, 0::2] + shifts[:, None, None]

    def y_intervals(self) -> Tensor:
        """(H, A, 2): the (y1, y2) extent of every anchor of row y."""
        shifts = torch.arange(self.height, device=self.base.device, dtype=self.base.dtype) * self.stride_y
        return self.base[None, :, 1::2] + shifts[:, None, None]


@lru_cache(maxsize=64)
def _cached_grid(base: tuple, height: int, width: int, stride: int | tuple[int, int], device: torch.device,
                 dtype: torch.dtype) -> AnchorGrid:
    return AnchorGrid(torch.tensor(base, device=device, dtype=dtype), height, width, stride)


def grid_anchors(base: Tensor, height: int, width: int, stride: int | tuple[int, int],
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> AnchorGrid:
    """The ``AnchorGrid`` of base anchors (A, 4) over H x W cells, cached per
    (base, H, W, stride, device, dtype) so that a training step does not rebuild it.

    ``base`` is read on the host (keep it a CPU tensor, as ``generate_anchors`` returns it).
    """
    device = torch.device(device)
    key = tuple(tuple(float(v) for v in row) for row in base.tolist())
    stride = (int(stride[0]), int(stride[1])) if isinstance(stride, (tuple, list)) else int(stride)
    return _cached_grid(key, int(height), int(width), stride, device, dtype)


def concat_anchors(levels: Sequence[AnchorGrid]) -> Tensor:
    """All anchors of several levels (N, 4), level-major (the FPN order)."""
    return torch.cat([level.boxes for level in levels], dim=0)
