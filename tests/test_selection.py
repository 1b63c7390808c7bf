"""Row selection: top_rows against a stable sort, grouped NMS against torchvision's batched_nms."""
import math

import pytest
import torch
import torchvision

from frcnn.selection import first_true, grouped_nms, top_rows


@pytest.mark.parametrize("k", [1, 7, 40, 199, 200, 500])  # topk with the tie rule below N / 4, sort above
def test_top_rows_is_a_stable_sort_cut_at_k(k):
    generator = torch.Generator().manual_seed(k)
    values = torch.round(4 * torch.randn(3, 200, generator=generator, dtype=torch.float64)) / 4  # many ties
    values[1, 50:] = -math.inf
    found, columns = top_rows(values, k)
    order = torch.sort(values, dim=1, descending=True, stable=True)[1][:, :k]
    assert torch.equal(columns, order)
    assert torch.equal(found, values.gather(1, order))


def test_first_true_takes_the_first_k_in_order():
    mask = torch.tensor([[False, True, True, False, True], [False] * 5, [True] * 5])
    index, filled = first_true(mask, 2)
    assert index.tolist() == [[1, 2], [0, 0], [0, 1]]
    assert filled.tolist() == [[True, True], [False, False], [True, True]]


@pytest.mark.parametrize("shared", [True, False], ids=["boxes shared by groups", "boxes per group"])
def test_grouped_nms_keeps_batched_nms_sets(shared):
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(3, 40, 4, 2, generator=generator) * 50
    boxes = torch.cat((corners, corners + 5 + 20 * torch.rand(3, 40, 4, 2, generator=generator)), dim=3)
    if shared:
        boxes = boxes[:, :, 0]
    scores = torch.rand(3, 40, 4, generator=generator)
    scores[scores < 0.2] = -math.inf  # outside the group
    kept = grouped_nms(boxes, scores, 0.4)
    for image in range(3):
        inside = torch.isfinite(scores[image]).nonzero()
        candidates = boxes[image, inside[:, 0]] if shared else boxes[image, inside[:, 0], inside[:, 1]]
        keep = torchvision.ops.batched_nms(candidates, scores[image][inside[:, 0], inside[:, 1]], inside[:, 1], 0.4)
        expected = torch.zeros(40, 4, dtype=torch.bool)
        expected[inside[keep, 0], inside[keep, 1]] = True
        assert torch.equal(kept[image], expected)
