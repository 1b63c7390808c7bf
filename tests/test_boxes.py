"""Box ops against torchvision, plain float64 loops, and float64 references in half precision."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from frcnn.boxes import box_area, box_codes, box_ioa, box_iou, box_size, clip_boxes, decode_boxes, encode_boxes

HALF_TYPES = (torch.float16, torch.bfloat16)


def random_boxes(generator: torch.Generator, *shape: int, extent: float = 1000.0, smallest: float = 2.0,
                 largest: float = 800.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Boxes (*shape, 4) with corners in [0, extent) and sides in [smallest, largest) (by default
    areas far past float16's 65,504), rounded to ``dtype``."""
    corners = torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * extent
    sides = smallest + torch.rand(*shape, 2, generator=generator, dtype=torch.float64) * (largest - smallest)
    return torch.cat((corners, corners + sides), dim=-1).to(dtype)


def loop_overlaps(boxes1: np.ndarray, boxes2: np.ndarray, plus_one: bool) -> tuple[np.ndarray, np.ndarray]:
    """IoU and IoA (n, m), one pair at a time in float64."""
    offset = 1.0 if plus_one else 0.0
    iou, ioa = np.zeros((len(boxes1), len(boxes2))), np.zeros((len(boxes1), len(boxes2)))
    for i, a in enumerate(boxes1):
        for j, b in enumerate(boxes2):
            width = max(min(a[2], b[2]) - max(a[0], b[0]) + offset, 0.0)
            height = max(min(a[3], b[3]) - max(a[1], b[1]) + offset, 0.0)
            area_a = (a[2] - a[0] + offset) * (a[3] - a[1] + offset)
            area_b = (b[2] - b[0] + offset) * (b[3] - b[1] + offset)
            iou[i, j] = width * height / (area_a + area_b - width * height)
            ioa[i, j] = width * height / area_a if width * height > 0 else 0.0
    return iou, ioa


# ---------------------------------------------------------------- float32 / float64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_continuous_iou_and_area_are_torchvisions_bit_for_bit(dtype):
    generator = torch.Generator().manual_seed(0)
    boxes1, boxes2 = random_boxes(generator, 3, 40, dtype=dtype), random_boxes(generator, 3, 7, dtype=dtype)
    boxes2[0, 0] = boxes2[0, 1]  # a twin: IoU ties
    batched = box_iou(boxes1, boxes2)
    for b in range(3):
        assert torch.equal(batched[b], torchvision.ops.box_iou(boxes1[b], boxes2[b]))
        assert torch.equal(box_iou(boxes1[b], boxes2[b]), batched[b])
    assert torch.equal(box_area(boxes1), torchvision.ops.box_area(boxes1.view(-1, 4)).view(3, 40))


@pytest.mark.parametrize("plus_one", [False, True])
def test_iou_and_ioa_equal_a_pairwise_loop(plus_one):
    generator = torch.Generator().manual_seed(1)
    boxes1, boxes2 = random_boxes(generator, 30, extent=60, largest=40), random_boxes(generator, 9, extent=60,
                                                                                     largest=40)
    boxes2[3] = boxes1[4]
    iou, ioa = loop_overlaps(boxes1.numpy(), boxes2.numpy(), plus_one)
    assert (ioa == 0).any() and (ioa == 1).any()
    np.testing.assert_allclose(box_iou(boxes1, boxes2, plus_one).numpy(), iou, rtol=1e-14, atol=0)
    np.testing.assert_allclose(box_ioa(boxes1, boxes2, plus_one).numpy(), ioa, rtol=1e-14, atol=0)


def test_ioa_divides_by_the_first_box_and_is_zero_where_boxes_do_not_meet():
    inner, outer = torch.tensor([[2.0, 2.0, 4.0, 4.0]]), torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    apart, empty = torch.tensor([[10.0, 10.0, 12.0, 12.0]]), torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_ioa(inner, outer).item() == 1.0
    assert box_ioa(outer, inner).item() == 4 / 64
    assert box_iou(outer, inner).item() == 4 / 64
    assert box_ioa(inner, apart).item() == 0.0
    assert box_ioa(empty, outer).item() == 0.0
    assert box_ioa(torch.zeros(0, 4), outer).shape == (0, 1)


# ---------------------------------------------------------------- float16 / bfloat16


def close_to_rounded(result: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype, atol: float = 0.0) -> None:
    """``result`` is in ``dtype`` and within one of its steps of the float64 ``reference``."""
    assert result.dtype == dtype
    torch.testing.assert_close(result.double(), reference, rtol=torch.finfo(dtype).eps, atol=atol)


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("plus_one", [False, True])
def test_overlaps_and_areas_in_half_precision_are_the_float64_ones(dtype, plus_one):
    generator = torch.Generator().manual_seed(2)
    boxes1, boxes2 = random_boxes(generator, 2, 50, dtype=dtype), random_boxes(generator, 2, 6, dtype=dtype)
    exact1, exact2 = boxes1.double(), boxes2.double()
    assert (box_area(exact1, plus_one) > 65504).any()
    for op in (box_iou, box_ioa):
        for found, expected in ((op(boxes1, boxes2, plus_one), op(exact1, exact2, plus_one)),
                                (op(boxes1[0], boxes2[0], plus_one), op(exact1[0], exact2[0], plus_one))):
            assert found.dtype == torch.float32
            assert (expected > 0.1).any()
            torch.testing.assert_close(found.double(), expected, rtol=1e-6, atol=1e-7)
    area = box_area(boxes1, plus_one)
    assert area.dtype == torch.float32
    torch.testing.assert_close(area.double(), box_area(exact1, plus_one), rtol=1e-7, atol=0)


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("plus_one", [False, True])
def test_sizes_and_clipping_in_half_precision_round_once(dtype, plus_one):
    generator = torch.Generator().manual_seed(3)
    boxes = random_boxes(generator, 2, 200, extent=3000, dtype=dtype) - 100
    for found, expected in zip(box_size(boxes, plus_one), box_size(boxes.double(), plus_one)):
        assert found.dtype == dtype
        assert torch.equal(found, expected.to(dtype))
    image_sizes = torch.tensor([[2000.0, 3001.0], [480.0, 640.0]])
    clipped = clip_boxes(boxes, image_sizes, plus_one)
    assert clipped.dtype == dtype
    assert torch.equal(clipped, clip_boxes(boxes.double(), image_sizes.double(), plus_one).to(dtype))


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("plus_one", [False, True])
def test_regression_deltas_in_half_precision_are_the_float64_ones(dtype, plus_one):
    generator = torch.Generator().manual_seed(4)
    # Small boxes far from the origin: centres near 1,500 have steps of 1 (float16) or 8
    # (bfloat16) pixels, as large as the deltas' own numerators.
    reference = random_boxes(generator, 2, 300, extent=1500, smallest=20, largest=60, dtype=dtype)
    shift = torch.randn(2, 300, 2, generator=generator, dtype=torch.float64) * 4
    growth = torch.rand(2, 300, 2, generator=generator, dtype=torch.float64) * 8
    target = (reference.double() + torch.cat((shift, shift + growth), dim=-1)).to(dtype)
    weights = (10.0, 10.0, 5.0, 5.0)
    deltas = encode_boxes(reference, target, weights, plus_one)
    close_to_rounded(deltas, encode_boxes(reference.double(), target.double(), weights, plus_one), dtype, atol=1e-4)
    codes, scales = box_codes(reference, plus_one)
    assert codes.dtype == scales.dtype == torch.float32
    for found, expected in zip((codes, scales), box_codes(reference.double(), plus_one)):
        torch.testing.assert_close(found.double(), expected, rtol=1e-7, atol=0)
    decoded = decode_boxes(deltas, reference, weights, plus_one)
    close_to_rounded(decoded, decode_boxes(deltas.double(), reference.double(), weights, plus_one), dtype)
