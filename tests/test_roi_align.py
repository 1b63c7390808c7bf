"""The gathered RoIAlign of inference against torchvision's and against the dense one of training."""
import pytest
import torch
import torchvision

from frcnn.config import HeadConfig
from frcnn.roi import RoIPooler
from frcnn.roi_align import gather_roi_align


def boxes_in(batch: int, count: int, width: float, height: float, generator: torch.Generator,
             dtype: torch.dtype) -> torch.Tensor:
    """Random boxes (batch, count, 4), some crossing the border, one empty, one outside, one tiny."""
    corner = torch.rand(batch, count, 2, generator=generator, dtype=dtype) * torch.tensor(
        [width * 1.1, height * 1.1], dtype=dtype) - 0.1 * torch.tensor([width, height], dtype=dtype)
    size = torch.rand(batch, count, 2, generator=generator, dtype=dtype) * torch.tensor([width, height], dtype=dtype)
    boxes = torch.cat((corner, corner + size), dim=2)
    boxes[0, 0] = torch.tensor([5.0, 5.0, 5.0, 5.0])
    boxes[0, 1] = torch.tensor([-40.0, -40.0, -20.0, -20.0])
    boxes[-1, -1] = torch.tensor([30.0, 20.0, 30.5, 20.25])
    return boxes


def with_batch_index(boxes: torch.Tensor) -> torch.Tensor:
    index = torch.arange(boxes.shape[0], dtype=boxes.dtype).repeat_interleave(boxes.shape[1])
    return torch.cat((index[:, None], boxes.reshape(-1, 4)), dim=1)


@pytest.mark.parametrize("stride, sampling_ratio, output_size, aligned",
                         [(16, 2, 7, True), (8, 1, 7, True), (16, 3, 5, True), (16, 2, 7, False), (4, 2, 3, False)])
def test_gather_roi_align_equals_torchvision(stride, sampling_ratio, output_size, aligned):
    generator = torch.Generator().manual_seed(stride * 10 + sampling_ratio)
    features = torch.randn(3, 5, 9, 13, generator=generator, dtype=torch.float64)
    boxes = boxes_in(3, 30, 13.0 * stride, 9.0 * stride, generator, torch.float64)
    expected = torchvision.ops.roi_align(features, with_batch_index(boxes), output_size, 1 / stride,
                                         sampling_ratio, aligned=aligned)
    actual = gather_roi_align(features, boxes, output_size, 1 / stride, sampling_ratio, aligned)
    torch.testing.assert_close(actual, expected)


def test_pooler_gathers_without_a_gradient_and_agrees_with_the_dense_path(monkeypatch):
    import frcnn.roi as roi
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, 8, 12, 15, generator=generator, requires_grad=True)
    boxes = boxes_in(2, 20, 240.0, 192.0, generator, torch.float32)
    pooler = RoIPooler(HeadConfig(), [16])
    dense = pooler([features], boxes)
    assert dense.requires_grad
    monkeypatch.setattr(roi, "dense_roi_align", None)  # must not be used without a gradient
    with torch.no_grad():
        gathered = pooler([features], boxes)
    torch.testing.assert_close(gathered, dense.detach(), rtol=1e-5, atol=1e-5)
    assert gathered.shape == (40, 8, 7, 7)
