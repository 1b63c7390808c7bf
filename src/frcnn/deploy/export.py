"""ONNX export of a detector (``DetectorGraph`` traced) and the check that onnxruntime gives the
same detections as ``FasterRCNN.predict`` (docs/deploy.md)."""
from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .graph import DetectorGraph
from .runtime import CLASS_NAMES_KEY, INPUT, OUTPUTS, OnnxDetector, same_size_runs

# The oldest opset with RoiAlign's half-pixel mode (16) and the one onnxruntime's CPU kernels and
# graph optimisations cover fully; later opsets add nothing this graph uses.
DEFAULT_OPSET = 17
MIN_OPSET = 16
MAX_OPSET = 20  # the newest the TorchScript exporter writes

# What ``check_parity`` accepts (docs/deploy.md): boxes in input pixels, scores as probabilities.
# onnxruntime's float32 convolutions round differently from PyTorch's; a trained model's logits
# then differ by about 1e-4, which moves a probability near 0.5 by up to 2.5e-5 (the main job's
# own checkpoint), so scores get 1e-4.
BOX_TOLERANCE = 1e-3
SCORE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Parity:
    """How far onnxruntime's detections are from ``FasterRCNN.predict``'s on some images: whether
    every image has the same count and labels, and the largest box and score differences."""

    images: int
    detections: int
    same_counts_and_labels: bool
    max_box_diff: float
    max_score_diff: float

    @property
    def ok(self) -> bool:
        return (self.same_counts_and_labels and self.max_box_diff <= BOX_TOLERANCE
                and self.max_score_diff <= SCORE_TOLERANCE)

    def describe(self) -> str:
        counts = "same counts and labels" if self.same_counts_and_labels else "DIFFERENT counts or labels"
        return (f"{self.images} images, {self.detections} detections: {counts}, boxes within "
                f"{self.max_box_diff:.2g} px, scores within {self.max_score_diff:.2g}")


def export_onnx(model: nn.Module, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` (a ``FasterRCNN``) as an ONNX graph of plain images to ``path``
    (atomically): input ``images`` float32 (B, 3, H, W) RGB in [0, 1], B, H and W dynamic;
    outputs ``boxes`` (B, D, 4), ``scores`` (B, D), ``labels`` (B, D) int64, ``counts`` (B,)
    int64 (``DetectorGraph``). The class names go into the metadata (``class_names``, JSON).
    A ValueError says why a model cannot be exported."""
    import onnx

    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    path = Path(path)
    graph = DetectorGraph(model.eval()).eval()
    config = model.config.preprocess
    example = torch.rand(2, 3, config.min_size, config.min_size + config.size_divisible,
                         generator=torch.Generator().manual_seed(0))
    axes = {INPUT: {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch"}, "scores": {0: "batch"},
            "labels": {0: "batch"}, "counts": {0: "batch"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as folder:
        traced = Path(folder) / "traced.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on shape arithmetic, handled by DetectorGraph
            try:
                torch.onnx.export(graph, (example,), str(traced), dynamo=False, opset_version=opset,
                                  input_names=[INPUT], output_names=list(OUTPUTS), dynamic_axes=axes)
            except (RuntimeError, torch.onnx.errors.OnnxExporterError) as error:
                raise ValueError(f"the model cannot be exported: {str(error).strip().splitlines()[0]}") from error
        proto = onnx.load(str(traced))
        metadata = {CLASS_NAMES_KEY: json.dumps(list(model.class_names)),
                    "detections_per_image": str(model.config.test.detections_per_image),
                    "producer": "frcnn", "config": model.config.to_yaml()}
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        staged = Path(folder) / "model.onnx"
        onnx.save(proto, str(staged))
        os.replace(staged, path)
    return path


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


def check_parity(model: nn.Module, detector: OnnxDetector, images: Sequence[Tensor]) -> Parity:
    """Compare ``detector`` (onnxruntime) with ``model.predict`` on ``images`` (a list of (3, H, W)
    float tensors); each run of consecutive equal sizes is one batch in both (a batch's padding
    is part of its input)."""
    expected = [found for start, stop in same_size_runs(images) for found in model.predict(list(images[start:stop]))]
    found = detector.predict(list(images))
    same, box_diff, score_diff, total = True, 0.0, 0.0, 0
    for want, got in zip(map(_canonical, expected), map(_canonical, found)):
        total += len(want["scores"])
        if len(want["scores"]) != len(got["scores"]) or want["labels"].tolist() != got["labels"].tolist():
            same = False
            continue
        if len(want["scores"]):
            box_diff = max(box_diff, float((want["boxes"] - got["boxes"]).abs().max()))
            score_diff = max(score_diff, float((want["scores"] - got["scores"]).abs().max()))
    return Parity(len(images), total, same, box_diff, score_diff)


def _canonical(found: dict[str, Any]) -> dict[str, Tensor]:
    """One image's detections best first, exactly equal scores ordered by label, then box (their
    order is otherwise arbitrary)."""
    keys = [found["scores"].neg(), found["labels"].to(torch.float64), *found["boxes"].unbind(dim=1)]
    order = torch.arange(len(found["scores"]))
    for key in reversed(keys):
        order = order[torch.sort(key[order], stable=True)[1]]
    return {name: found[name][order] for name in ("boxes", "scores", "labels")}
