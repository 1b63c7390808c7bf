"""ONNX export (docs/deploy.md): onnxruntime against FasterRCNN.predict on a small trained model
(and on the fully trained one of ``make train`` when it is there), the in-graph resize against
PyTorch's, the parity rule, and frcnn export / frcnn detect."""
from __future__ import annotations

import json
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
from frcnn.deploy.export import (
    BOX_MIN_IOU,
    check_parity,
    compare_detections,
    export_onnx,
    parity_images,
    score_tolerance,
)
from frcnn.deploy.files import find_images
from frcnn.deploy.runtime import OnnxDetector
from frcnn.model import FasterRCNN
from frcnn.preprocess import resize_matrix
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
    parity = compare_detections(expected, found)
    assert parity.ok, parity.describe()


def test_onnxruntime_gives_predicts_detections_for_a_batch_and_other_sizes(model, exported) -> None:
    batch = images_of((64, 80), 2, seed=1)
    found = exported.predict(batch)
    assert sum(len(f["scores"]) for f in found) > 0
    assert_same(model.predict(batch, precision="fp32"), found)  # the export is float32
    for size in ((96, 72), (40, 130)):  # sizes the export never saw, each resized differently
        one = images_of(size, 1, seed=size[0])
        assert_same(model.predict(one, precision="fp32"), exported.predict(one))
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
    assert_same(strict.predict(batch, precision="fp32"), detector.predict(batch))


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


def test_the_exported_function_is_predict(model) -> None:
    batch = images_of((72, 72), 2, seed=4)
    padded = model.predict_padded(torch.stack(batch))
    for b, want in enumerate(model.predict(batch)):
        count = int(padded.counts[b])
        assert count == len(want["scores"])
        assert torch.equal(padded.scores[b, :count], want["scores"]) and torch.equal(padded.boxes[b, :count],
                                                                                     want["boxes"])


def detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict:
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


REFERENCE = [detections([[10.0, 10, 60, 60], [100, 20, 140, 90]], [0.9, 0.5], [1, 2]),
             detections([], [], [])]


@pytest.mark.parametrize("change, ok", [
    (lambda d: d, True),
    (lambda d: {**d, "boxes": d["boxes"] + torch.tensor([0.0013, 0, 0, 0])}, True),  # 0.0013 px on 50 px
    (lambda d: {**d, "scores": d["scores"] + score_tolerance(d["scores"]).float() * 0.9}, True),
    (lambda d: {name: value.flip(0) for name, value in d.items()}, True),  # the order of near ties is free
    (lambda d: {**d, "labels": d["labels"].flip(0)}, False),  # swapped labels
    (lambda d: {name: value[:1] for name, value in d.items()}, False),  # a missing detection
    (lambda d: {**d, "boxes": d["boxes"] + torch.tensor([0.0, 0, 0.505, 0])}, False),  # IoU 0.99 on 50 px
    (lambda d: {**d, "scores": d["scores"] + 1e-3}, False),
])
def test_the_parity_rule(change, ok) -> None:
    found = [change(REFERENCE[0]), REFERENCE[1]]
    parity = compare_detections(REFERENCE, found)
    assert parity.ok == ok, parity.describe()
    assert parity.detections == 2 and parity.images == 2


def test_score_tolerance_follows_the_logit_error_bound() -> None:
    # Near 0.5 the log-odds move by at most 2 rho (1 + |g|), the score by a quarter of that.
    tolerance = score_tolerance(torch.tensor([0.5, 0.99, 1.0]))
    assert float(tolerance[0]) == pytest.approx(0.25 * 2 * 2**-12 + 2**-23)
    assert float(tolerance[1]) < float(tolerance[0]) and float(tolerance[2]) == pytest.approx(2**-23, rel=1e-3)
    assert BOX_MIN_IOU == 0.999


FULLY_TRAINED = Path(__file__).resolve().parents[1] / "runs" / "train" / "model_final.pt"


@pytest.mark.skipif(not FULLY_TRAINED.is_file(), reason="no runs/train/model_final.pt (make train writes it)")
def test_a_fully_trained_checkpoint_exports_with_the_same_detections(tmp_path) -> None:
    model = FasterRCNN.load(FULLY_TRAINED)
    detector = OnnxDetector(export_onnx(model, tmp_path / "model.onnx"), threads=2)
    parity = check_parity(model, detector, parity_images(model))
    assert parity.ok and parity.detections > 0, parity.describe()


def test_the_other_resize_rules_and_the_image_stride_rule_export(workdir) -> None:
    """Floored sides, no antialiasing, per-axis box rescale and torchvision's image stride rule, on
    an untrained model whose every score passes, unpadded (odd
    strides): onnxruntime's detections equal predict's at sizes
    the trace never saw."""
    torch.manual_seed(0)
    small = FasterRCNN(2, "small")
    config = small.config
    config = replace(config, preprocess=replace(config.preprocess, min_size=64, max_size=100, resize_rounding="floor",
                                                antialias=False, box_rescale="per_axis",
                                                size_divisible=1),
                     anchors=replace(config.anchors, stride_rule="image"),
                     test=replace(config.test, score_threshold=0.0, detections_per_image=30))
    model = FasterRCNN(2, config=config).eval()
    model.load_state_dict(small.state_dict())
    detector = OnnxDetector(export_onnx(model, workdir / "rules.onnx"), threads=1)
    for size in ((70, 97), (45, 130)):
        batch = images_of(size, 2, seed=size[1])
        found = detector.predict(batch)
        assert sum(len(f["scores"]) for f in found) > 30
        assert_same(model.predict(batch, precision="fp32"), found)


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
