"""ONNX export (docs/deploy.md): onnxruntime against FasterRCNN.predict on a small trained model,
the in-graph preprocessing and NMS against PyTorch's, and frcnn export / frcnn detect."""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
import torchvision

from frcnn.cli import main
from frcnn.deploy.export import BOX_TOLERANCE, SCORE_TOLERANCE, check_parity, export_onnx, parity_images
from frcnn.deploy.files import find_images
from frcnn.deploy.graph import DetectorGraph, grouped_nms, resize_matrix
from frcnn.deploy.runtime import OnnxDetector
from frcnn.model import FasterRCNN
from test_cli import PNG_MAGIC, TINY, frcnn, ok


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The commands run without building the compiled kernels (their PyTorch twins give the same
    # numbers), which a fresh cache folder would otherwise compile first.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FRCNN_NATIVE", "0")
        yield tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def checkpoint(workdir: Path) -> Path:
    """A 4-iteration run of the command line's tiny settings."""
    ok(frcnn(workdir, "train", "--out", "run", "--no-eval", "--set", *TINY, "train.max_iters=4"))
    return workdir / "run" / "model_final.pt"


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> FasterRCNN:
    return FasterRCNN.load(checkpoint)


@pytest.fixture(scope="module")
def exported(model: FasterRCNN, workdir: Path) -> OnnxDetector:
    return OnnxDetector(export_onnx(model, workdir / "model.onnx"), threads=1)


def images_of(size: tuple[int, int], count: int, seed: int) -> list[torch.Tensor]:
    """Noise with a few coloured blocks, (3, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(count):
        image = 0.5 + 0.15 * torch.randn(3, *size, generator=generator)
        for _ in range(2):
            y, x = (int(v) for v in torch.randint(0, min(size) // 2, (2,), generator=generator))
            image[:, y:y + size[0] // 3, x:x + size[1] // 3] = torch.rand(3, 1, 1, generator=generator)
        images.append(image.clamp(0, 1))
    return images


def assert_same(expected: list[dict], found: list[dict]) -> None:
    assert len(expected) == len(found)
    for want, got in zip(expected, found):
        assert got["labels"].tolist() == want["labels"].tolist()
        if len(want["scores"]):
            assert float((got["boxes"] - want["boxes"]).abs().max()) <= BOX_TOLERANCE
            assert float((got["scores"] - want["scores"]).abs().max()) <= SCORE_TOLERANCE


def test_onnxruntime_gives_predicts_detections_for_a_batch_and_other_sizes(model, exported) -> None:
    batch = images_of((64, 80), 2, seed=1)
    found = exported.predict(batch)
    assert sum(len(f["scores"]) for f in found) > 0
    assert_same(model.predict(batch), found)
    for size in ((96, 72), (40, 130)):  # sizes the export never saw, each resized differently
        one = images_of(size, 1, seed=size[0])
        assert_same(model.predict(one), exported.predict(one))
    parity = check_parity(model, exported, parity_images(model))
    assert parity.ok and parity.same_counts_and_labels, parity.describe()


def test_padded_outputs_and_an_image_without_detections(model, exported, workdir) -> None:
    batch = images_of((64, 80), 2, seed=2)
    scores = [float(f["scores"].max()) for f in model.predict(batch)]
    strict = FasterRCNN.load(workdir / "run" / "model_final.pt")
    # Between the two images' best scores: the lower-scoring image has no detections.
    threshold = sum(scores) / 2
    strict.config = replace(strict.config, test=replace(strict.config.test, score_threshold=threshold))
    detector = OnnxDetector(export_onnx(strict, workdir / "strict.onnx"), threads=1)
    detections = detector(torch.stack(batch))
    empty = int(np.argmin(scores))
    assert int(detections.counts[empty]) == 0 and int(detections.counts[1 - empty]) > 0
    assert detections.boxes.shape == (2, strict.config.test.detections_per_image, 4)
    assert detections.labels.dtype == torch.int64 and detections.counts.dtype == torch.int64
    for b, count in enumerate(detections.counts.tolist()):
        assert not detections.boxes[b, count:].any() and not detections.scores[b, count:].any()
        assert not detections.labels[b, count:].any()
    assert_same(strict.predict(batch), detector.predict(batch))


def test_metadata_names_the_classes_and_the_axes_are_dynamic(model, workdir, exported) -> None:
    proto = onnx.load(str(workdir / "model.onnx"))
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    assert json.loads(metadata["class_names"]) == list(model.class_names) == exported.class_names
    images = proto.graph.input[0]
    assert images.name == "images" and images.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = images.type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"] and dims[1].dim_value == 3
    assert [o.name for o in proto.graph.output] == ["boxes", "scores", "labels", "counts"]
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}  # no custom operators


@pytest.mark.parametrize("images, message", [
    (np.zeros((1, 3, 32, 32), dtype=np.float64), "float32"),
    (np.zeros((3, 32, 32), dtype=np.float32), "(B, 3, H, W)"),
    (np.zeros((1, 1, 32, 32), dtype=np.float32), "(B, 3, H, W)"),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float32"),
])
def test_inputs_of_the_wrong_dtype_or_rank_are_refused(exported, images, message) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        exported(images)


def test_a_model_that_cannot_be_exported_says_why(model, workdir) -> None:
    pooled = FasterRCNN(2, config=replace(model.config, head=replace(model.config.head, pooler="pool")))
    with pytest.raises(ValueError, match="cannot be exported: head.pooler is 'pool'"):
        export_onnx(pooled, workdir / "never.onnx")
    assert not (workdir / "never.onnx").exists()


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("source, target", [(37, 64), (64, 37), (50, 50), (9, 100), (100, 9)])
def test_resize_matrix_is_pytorchs_bilinear_resize(source, target, antialias) -> None:
    signal = torch.rand(2, 3, source, 5, generator=torch.Generator().manual_seed(source + target))
    expected = F.interpolate(signal, size=(target, 5), mode="bilinear", align_corners=False, antialias=antialias)
    weights = resize_matrix(torch.tensor(source), torch.tensor(target), torch.tensor(target + 7), antialias)
    resized = torch.matmul(weights, signal)
    torch.testing.assert_close(resized[:, :, :target], expected, rtol=0, atol=2e-6)
    assert not resized[:, :, target:].any()


def test_grouped_nms_keeps_batched_nms_sets() -> None:
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(3, 40, 2, generator=generator) * 50
    boxes = torch.cat((corners, corners + 5 + 20 * torch.rand(3, 40, 2, generator=generator)), dim=2)
    scores = torch.rand(3, 40, 4, generator=generator)
    scores[scores < 0.2] = -math.inf  # outside the group
    kept = grouped_nms(boxes, scores, 4, 0.4)
    for image in range(3):
        inside = torch.isfinite(scores[image]).nonzero()
        keep = torchvision.ops.batched_nms(boxes[image, inside[:, 0]], scores[image][inside[:, 0], inside[:, 1]],
                                           inside[:, 1], 0.4)
        expected = torch.zeros(40, 4, dtype=torch.bool)
        expected[inside[keep, 0], inside[keep, 1]] = True
        assert torch.equal(kept[image], expected)


def test_the_graph_runs_eagerly_like_predict(model) -> None:
    batch = images_of((72, 72), 2, seed=4)
    with torch.no_grad():
        padded = DetectorGraph(model)(torch.stack(batch))
    for b, want in enumerate(model.predict(batch)):
        count = int(padded.counts[b])
        assert count == len(want["scores"])
        torch.testing.assert_close(padded.scores[b, :count], want["scores"], rtol=0, atol=SCORE_TOLERANCE)


def test_find_images_takes_files_folders_and_globs(workdir: Path) -> None:
    folder = workdir / "found"
    (folder / "deep").mkdir(parents=True)
    for name in ("b.jpg", "a.png", "notes.txt", "deep/c.JPG"):
        (folder / name).write_bytes(b"")
    assert find_images([str(folder)]) == [folder / "a.png", folder / "b.jpg"]
    assert find_images([str(folder / "**" / "*.*"), str(folder / "a.png")]) == [
        folder / "a.png", folder / "b.jpg", folder / "deep" / "c.JPG"]
    with pytest.raises(ValueError, match="no such file or folder"):
        find_images([str(folder / "missing.jpg")])
    with pytest.raises(ValueError, match="no image files"):
        find_images([str(folder / "*.gif")])


def test_frcnn_export_then_detect_with_onnxruntime_equals_the_checkpoint(workdir, checkpoint) -> None:
    result = ok(frcnn(workdir, "export", str(checkpoint), "--out", "cli.onnx"))
    assert "checked against PyTorch" in result.stderr and "same counts and labels" in result.stderr
    images = workdir / "pictures"
    images.mkdir()
    for index, image in enumerate(images_of((64, 80), 3, seed=5)):
        torchvision.io.write_png((image * 255).round().to(torch.uint8), str(images / f"p{index}.png"))
    common = ["--score-threshold", "0.0", "--batch-size", "2", "--no-progress"]
    ok(frcnn(workdir, "detect", "cli.onnx", str(images), "--out", "by_onnx", "--save-images", *common))
    ok(frcnn(workdir, "detect", str(checkpoint), str(images / "p*.png"), "--out", "by_torch", *common))
    by_onnx = json.loads((workdir / "by_onnx" / "detections.json").read_text())
    by_torch = json.loads((workdir / "by_torch" / "detections.json").read_text())
    assert len(by_onnx) == len(by_torch) > 0
    for a, b in zip(by_onnx, by_torch):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["bbox"] == pytest.approx(b["bbox"], abs=2e-3) and a["score"] == pytest.approx(b["score"], abs=2e-5)
    assert json.loads((workdir / "by_onnx" / "images.json").read_text())["categories"][0]["id"] == 1
    assert (workdir / "by_onnx" / "p0.png").read_bytes()[:8] == PNG_MAGIC
    assert not (workdir / "by_torch" / "p0.png").exists()


@pytest.mark.parametrize("args, message", [
    (["export", "{dir}/missing.pt"], "missing.pt"),
    (["detect", "{dir}/missing.onnx", "{dir}"], "missing.onnx"),
    (["detect", "{dir}/run/model_final.pt", "{dir}/nowhere/*.jpg"], "no image files"),
])
def test_command_errors_are_one_line(workdir, checkpoint, capsys, args, message) -> None:
    assert main([arg.format(dir=workdir) for arg in args]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"frcnn {args[0]}: error:") and message in lines[0]
