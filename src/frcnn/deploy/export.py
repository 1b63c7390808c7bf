"""ONNX export of a detector (``FasterRCNN.predict_padded`` traced) and the check that onnxruntime
gives the same detections as ``FasterRCNN.predict`` (docs/deploy.md)."""
from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import replacing
from ..boxes import box_iou
from .runtime import CLASS_NAMES_KEY, INPUT, OUTPUTS, OnnxDetector, same_size_runs

# The oldest opset with RoiAlign's half-pixel mode (16) and the one onnxruntime's CPU kernels and
# graph optimisations cover fully; later opsets add nothing this graph uses.
DEFAULT_OPSET = 17
MIN_OPSET = 16
MAX_OPSET = 20  # the newest the TorchScript exporter writes

# What ``compare_detections`` accepts (docs/deploy.md): boxes matched at this IoU, and scores
# within ``score_tolerance``, whose derivation this error bound of the logits starts.
BOX_MIN_IOU = 0.999
LOGIT_RELATIVE_ERROR = 2.0**-12


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be exported (a one-line reason), or None."""
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


class _PlainImagesDetector(nn.Module):
    """``model.predict_padded`` in fp32 as a module's forward, the form ``torch.onnx.export`` traces."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.model.predict_padded(images, precision="fp32"))


def export_onnx(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` (a ``FasterRCNN``) as an ONNX graph of plain images to ``path``
    (atomically): input ``images`` float32 (B, 3, H, W) RGB in [0, 1], B, H and W dynamic;
    outputs ``boxes`` (B, D, 4), ``scores`` (B, D), ``labels`` (B, D) int64, ``counts`` (B,)
    int64 (``FasterRCNN.predict_padded`` in fp32, traced, whatever ``model.test.precision``
    says). The class names go into the metadata
    (``class_names``, JSON). A ValueError says why a model cannot be exported."""
    import onnx

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    reason = unsupported_reason(model)
    if reason is not None:
        raise ValueError(f"the model cannot be exported: {reason}")
    config = model.config.preprocess
    example = torch.rand(2, 3, config.min_size, config.min_size + config.size_divisible,
                         generator=torch.Generator().manual_seed(0))
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch"}, "scores": {0: "batch"},
            "labels": {0: "batch"}, "counts": {0: "batch"}}
    traced = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic, kept as graph values
        try:
            torch.onnx.export(_PlainImagesDetector(model.eval()).eval(), (example,), traced, dynamo=False,
                              opset_version=opset, input_names=[INPUT], output_names=list(OUTPUTS),
                              dynamic_axes=axes)
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
            raise ValueError(f"the model cannot be exported: {str(error).strip().splitlines()[0]}") from error
    proto = onnx.load_from_string(traced.getvalue())
    metadata = {CLASS_NAMES_KEY: json.dumps(list(model.class_names)),
                "detections_per_image": str(model.config.test.detections_per_image),
                "producer": "frcnn", "config": model.config.to_yaml()}
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    with replacing(path) as staged:
        onnx.save(proto, str(staged))
    return Path(path)


def parity_images(model: nn.Module) -> list[Tensor]:
    """Images for ``check_parity``: two of one size with coloured rectangles on noise, one of
    another size, and a plain grey one of a third; float32 in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    side = model.config.preprocess.min_size

    def picture(height: int, width: int) -> Tensor:
        image = 0.5 + 0.1 * torch.randn(3, height, width, generator=generator)
        for _ in range(3):
            h, w = (int(v) for v in torch.randint(height // 6, height // 2, (2,), generator=generator))
            y, x = int(torch.randint(0, height - h, (1,), generator=generator)), int(
                torch.randint(0, width - w, (1,), generator=generator))
            image[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=generator)
        return image.clamp(0, 1)

    size = (side, side * 4 // 3)
    plain = (0.5 + 0.02 * torch.randn(3, side // 2, side, generator=generator)).clamp(0, 1)
    return [picture(*size), picture(*size), picture(side * 3 // 4, side), plain]


def score_tolerance(scores: Tensor) -> Tensor:
    """How far two float32 implementations of one network may put each score p (a class
    probability, softmax of the logits z), float64 of the scores' shape.

    Two implementations (onnxruntime's kernels, PyTorch's) sum in different orders: each layer's
    sum of n terms carries a relative error of about sqrt(n) u (u = 2^-24, float32's unit
    roundoff; roundings are random in sign) and the layers' errors add, so the logits differ by
    d <= rho |z| with rho = L sqrt(n) u <= 2^-12 (``LOGIT_RELATIVE_ERROR``) for L sqrt(n) <= 4096
    (50 layers of sums of 3 x 3 x 512 terms: 3400). The score's log-odds g = log(p / (1 - p))
    then move by at most 2 d (d log p_c = sum_j p_j (d z_c - d z_j) and d g = d log p_c / (1 - p)),
    and p by p (1 - p) times that. |z| is not in the outputs: |g| + 1 stands for it (the gap the
    score shows, and a logit of magnitude 1 where p is near 0.5). Plus 2^-23 for the rounding of
    p itself: tolerance = 2 rho (1 + |g|) p (1 - p) + 2^-23.
    """
    p = scores.to(torch.float64)
    log_odds = torch.logit(p, eps=2.0**-24)
    return 2 * LOGIT_RELATIVE_ERROR * (1 + log_odds.abs()) * p * (1 - p) + 2.0**-23


@dataclass(frozen=True)
class Parity:
    """How far one detector's detections are from another's on some images: whether every image
    has the same count and labels, the lowest IoU of two matched boxes (1 without detections),
    the largest score difference and the largest as a fraction of ``score_tolerance``."""

    images: int
    detections: int
    same_counts_and_labels: bool
    min_box_iou: float
    max_score_diff: float
    max_score_share: float

    @property
    def ok(self) -> bool:
        return self.same_counts_and_labels and self.min_box_iou >= BOX_MIN_IOU and self.max_score_share <= 1.0

    def describe(self) -> str:
        counts = "same counts and labels" if self.same_counts_and_labels else "DIFFERENT counts or labels"
        return (f"{self.images} images, {self.detections} detections: {counts}, boxes matched at IoU >= "
                f"{self.min_box_iou:.6f}, scores within {self.max_score_diff:.2g} "
                f"({self.max_score_share:.0%} of their tolerance)")


def compare_detections(expected: Sequence[dict[str, Any]], found: Sequence[dict[str, Any]]) -> Parity:
    """Compare two detectors' detections of the same images (one dict per image with ``boxes``
    (n, 4), ``scores`` (n,), ``labels`` (n,)): per image the same count and the same labels, and
    each expected detection matched to a found one of its label, one to one, greedily best
    expected first to the highest IoU, the pairs' IoU and score difference measured (the order of
    near-equal scores is free)."""
    same = len(expected) == len(found)
    min_iou, score_diff, score_share, total = 1.0, 0.0, 0.0, 0
    for want, got in zip(expected, found):
        total += len(want["scores"])
        labels = want["labels"].cpu()
        if len(labels) != len(got["labels"]) or sorted(labels.tolist()) != sorted(got["labels"].tolist()):
            same = False
            continue
        if not len(labels):
            continue
        iou = box_iou(want["boxes"].cpu().double(), got["boxes"].cpu().double())
        iou = iou.masked_fill(labels[:, None] != got["labels"].cpu()[None, :], -math.inf)
        taken = torch.zeros(len(labels), dtype=torch.bool)
        columns = []
        for row in iou:
            columns.append(int(row.masked_fill(taken, -math.inf).argmax()))
            taken[columns[-1]] = True
        rows, columns = torch.arange(len(labels)), torch.tensor(columns)
        min_iou = min(min_iou, float(iou[rows, columns].min()))
        want_scores, got_scores = want["scores"].cpu().double()[rows], got["scores"].cpu().double()[columns]
        diff = (want_scores - got_scores).abs()
        score_diff = max(score_diff, float(diff.max()))
        score_share = max(score_share, float((diff / score_tolerance(want_scores)).max()))
    return Parity(len(expected), total, same, min_iou, score_diff, score_share)


def check_parity(model: nn.Module, detector: OnnxDetector, images: Sequence[Tensor]) -> Parity:
    """``compare_detections`` of ``model.predict`` in fp32 (as exported) and ``detector``
    (onnxruntime) on ``images`` (a list of (3, H, W) float tensors); each run of consecutive equal
    sizes is one batch in both (a batch's padding is part of its input)."""
    expected = [found for start, stop in same_size_runs(images)
                for found in model.predict(list(images[start:stop]), precision="fp32")]
    return compare_detections(expected, detector.predict(list(images)))
