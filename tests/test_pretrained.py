"""torchvision's detectors imported into frcnn: the same proposals and detections, checkpoints
from elsewhere, ``predict`` on every input type, ``--init``; cell-anchor rules."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops.misc import FrozenBatchNorm2d

from frcnn.anchors import cell_anchors, cell_strides, detectron2_cell_anchors, mmdetection_cell_anchors
from frcnn.config import TORCHVISION_ARCHS, RunConfig, torchvision_config
from frcnn.engine import CHECKPOINT_FORMAT
from frcnn.model import FasterRCNN
from frcnn.pretrained import coco_class_names
from frcnn.weights import init_weights

MIN_SIZE, MAX_SIZE = 128, 160
# Original sizes (H, W): upscaled, downscaled, capped by the longer side, portrait; uneven
# resized sides so that the per-axis rescale and the padding to 32 both act.
SIZES = [(100, 130), (90, 200), (150, 121)]


def images(sizes=SIZES, seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=generator) for h, w in sizes]


def calibrated(arch: str, classifier_scale: float = 15.0) -> nn.Module:
    """A seeded ``weights=None`` torchvision model made non-degenerate: BatchNorm statistics from
    one training-mode pass over a few images, the box classifier scaled so that tens of
    detections pass the score threshold; few proposals, to keep the test fast."""
    torch.manual_seed(0)
    model = getattr(detection, arch)(weights=None, weights_backbone=None, min_size=MIN_SIZE, max_size=MAX_SIZE,
                                     rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 20, 80, 90]]), "labels": torch.tensor([1])}] * 2
    with torch.no_grad():
        model(images(SIZES[:2], seed=7), targets)
    model.eval()
    model.roi_heads.box_predictor.cls_score.weight.data *= classifier_scale
    model.roi_heads.score_thresh = 0.3 if "mobilenet" in arch else 0.6
    return model


def assert_matched(boxes, scores, expected_boxes, expected_scores, labels=None, expected_labels=None):
    """The same set of boxes (1e-2 px), scores (1e-4) and labels, in any order among ties."""
    assert len(boxes) == len(expected_boxes)
    if len(boxes) == 0:
        return
    cost = (boxes[:, None, :] - expected_boxes[None, :, :]).abs().amax(dim=2)
    if labels is not None:
        cost = cost + 1e3 * (labels[:, None] != expected_labels[None, :])
    match = []
    for row in cost:  # greedy, each expected row used once (identical boxes of different levels exist)
        row = row.clone()
        row[match] = math.inf
        match.append(int(row.argmin()))
    match = torch.tensor(match)
    assert float(cost[torch.arange(len(boxes)), match].max()) < 1e-2
    torch.testing.assert_close(scores, expected_scores[match], atol=1e-4, rtol=0)


def torchvision_proposals(model: nn.Module, image_list) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """torchvision's RPN proposals and their object probabilities (its forward returns boxes only)."""
    rpn = model.rpn
    features = list(model.backbone(image_list.tensors).values())
    objectness, deltas = rpn.head(features)
    anchors = rpn.anchor_generator(image_list, features)
    counts = [o[0].numel() for o in objectness]
    objectness, deltas = concat_box_prediction_layers(objectness, deltas)
    boxes = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
    return rpn.filter_proposals(boxes, objectness, image_list.image_sizes, counts)


@pytest.fixture(scope="module", params=TORCHVISION_ARCHS)
def pair(request):
    reference = calibrated(request.param)
    return request.param, reference, FasterRCNN.from_torchvision(reference)


def test_imported_model_gives_torchvision_proposals_and_detections(pair):
    arch, reference, model = pair
    inputs = images()
    with torch.no_grad():
        expected = reference(inputs)
        image_list, _ = reference.transform(inputs)
        expected_proposals, expected_scores = torchvision_proposals(reference, image_list)
    found = model.predict(inputs, precision="fp32")  # torchvision's precision, whatever auto is here
    assert all(10 <= len(e["boxes"]) < 100 for e in expected)  # tens each, none capped
    for want, got in zip(expected, found):
        assert_matched(got["boxes"], got["scores"], want["boxes"], want["scores"], got["labels"], want["labels"])
    batch = model.preprocess(inputs)
    torch.testing.assert_close(batch.images, image_list.tensors, atol=1e-5, rtol=0)
    proposals = model.propose(batch.images, batch.im_info, batch.orig_sizes, precision="fp32")
    for want, scores, got, resized, image in zip(expected_proposals, expected_scores, proposals,
                                                 image_list.image_sizes, inputs):
        ratio = torch.tensor(image.shape[-2:], dtype=torch.float32) / torch.tensor(resized, dtype=torch.float32)
        assert_matched(got["boxes"], got["scores"], want * ratio[[1, 0, 1, 0]], scores)
    assert model.class_names == coco_class_names() and len(model.class_names) == 90


def test_state_dict_imports_carry_every_tensor_and_the_batchnorm_buffers(pair, tmp_path):
    arch, reference, model = pair
    path = tmp_path / "weights.pth"
    torch.save(reference.state_dict(), path)
    from_file = FasterRCNN.from_torchvision(str(path), arch)
    assert from_file.config.preprocess == torchvision_config(arch).preprocess
    for name, value in model.state_dict().items():
        torch.testing.assert_close(from_file.state_dict()[name], value, rtol=0, atol=0)
    # The frozen form (COCO weights: no num_batches_tracked) loads into FrozenBatchNorm2d.
    frozen = {k: v for k, v in reference.state_dict().items() if not k.endswith("num_batches_tracked")}
    imported = FasterRCNN.from_torchvision(frozen, arch)
    norms = [m for m in imported.backbone.stages.modules() if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d))]
    assert norms and all(isinstance(m, FrozenBatchNorm2d) for m in norms)
    bn1 = reference.backbone.body.bn1 if hasattr(reference.backbone.body, "bn1") else reference.backbone.body["0"][1]
    torch.testing.assert_close(norms[0].running_var, bn1.running_var)
    torch.testing.assert_close(norms[0].running_mean, bn1.running_mean)


def test_predict_takes_every_input_type_alike(tmp_path):
    model = FasterRCNN.from_torchvision(calibrated("fasterrcnn_mobilenet_v3_large_320_fpn"))
    array = (np.random.default_rng(0).random((90, 140, 3)) * 255).astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    tensor = torch.from_numpy(array).permute(2, 0, 1)
    forms = [array, Image.fromarray(array), path, str(path), tensor, tensor.float() / 255]
    results = [model.predict(form) for form in forms]
    assert len(results[0]["boxes"]) > 0
    assert results[0]["names"] == [model.class_names[i - 1] for i in results[0]["labels"].tolist()]
    for result in results[1:]:
        torch.testing.assert_close(result["boxes"], results[0]["boxes"])
        torch.testing.assert_close(result["scores"], results[0]["scores"])
        assert result["labels"].tolist() == results[0]["labels"].tolist()
    batched = model.predict([array, tensor[:, :70, :100]])
    torch.testing.assert_close(batched[0]["scores"], results[0]["scores"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        model.predict(array.astype(np.float32))


def test_load_reads_frcnn_and_torchvision_checkpoints(tmp_path):
    reference = calibrated("fasterrcnn_mobilenet_v3_large_320_fpn")
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    model = FasterRCNN.load(f"torchvision:fasterrcnn_mobilenet_v3_large_320_fpn:{path}")
    assert not model.training and model.class_names == coco_class_names()
    frcnn_path = tmp_path / "frcnn.pt"
    names = [f"thing{i}" for i in range(1, 91)]
    torch.save({"format": CHECKPOINT_FORMAT, "config": RunConfig(model=model.config).to_dict(),
                "class_names": names, "model": model.state_dict()}, frcnn_path)
    again = FasterRCNN.load(frcnn_path)
    assert again.class_names == tuple(names)
    image = images([(120, 150)])[0]
    torch.testing.assert_close(again.predict(image)["boxes"], model.predict(image)["boxes"])
    with pytest.raises(ValueError, match="torchvision:ARCH:PATH"):
        FasterRCNN.load(f"torchvision:resnet18:{path}")


def test_init_loads_all_but_the_predictor_and_names_mismatches(tmp_path):
    reference = calibrated("fasterrcnn_mobilenet_v3_large_320_fpn")
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    spec = f"torchvision:fasterrcnn_mobilenet_v3_large_320_fpn:{path}"
    model = FasterRCNN(5, config=torchvision_config("fasterrcnn_mobilenet_v3_large_320_fpn"))
    report = init_weights(model, spec)
    assert set(report.new) == {"roi_head.cls_score.weight", "roi_head.cls_score.bias", "roi_head.bbox_pred.weight",
                               "roi_head.bbox_pred.bias"}
    assert set(report.loaded) | set(report.new) == set(model.state_dict())
    torch.testing.assert_close(model.rpn_head.cls_score.weight, reference.rpn.head.cls_logits.weight)
    other = FasterRCNN(5, config=torchvision_config("fasterrcnn_resnet50_fpn"))
    with pytest.raises(ValueError, match=r"tensor backbone\.stages\.0\.0\.weight has shape \(16, 3, 3, 3\), "
                                         r"the model's is \(64, 3, 7, 7\)"):
        init_weights(other, spec)


def test_cell_anchor_rules():
    generator = AnchorGenerator(((32, 64, 128),), ((0.5, 1.0, 2.0),))
    torch.testing.assert_close(cell_anchors("torchvision", 16, (32, 64, 128), (0.5, 1.0, 2.0)),
                               generator.cell_anchors[0].double())
    w = math.sqrt(32 * 32 / 0.5)
    torch.testing.assert_close(detectron2_cell_anchors((32, 64), (0.5, 1.0))[0],
                               torch.tensor([-w / 2, -w / 4, w / 2, w / 4], dtype=torch.float64))
    assert detectron2_cell_anchors((32, 64), (0.5, 1.0))[1].tolist() == [-16, -16, 16, 16]  # size-major
    h = math.sqrt(2.0)
    torch.testing.assert_close(mmdetection_cell_anchors((32, 64), (2.0,))[1],
                               torch.tensor([-32 / h, -32 * h, 32 / h, 32 * h], dtype=torch.float64))
    torch.testing.assert_close(cell_anchors("legacy", 16, (128.0, 256.0), (1.0,)),
                               torch.tensor([[-56.0, -56, 71, 71], [-120, -120, 135, 135]], dtype=torch.float64))
    assert cell_strides("image", 64, (224, 256), (4, 4)) == (56, 64)
    assert cell_strides("level", 64, (224, 256), (4, 4)) == (64, 64)


def test_train_init_from_a_coco_torchvision_checkpoint(tmp_path):
    """``frcnn train --init torchvision:...`` onto a 5-class dataset: the recipe and every tensor
    but the predictor come from the checkpoint, and it trains."""
    reference = calibrated("fasterrcnn_mobilenet_v3_large_320_fpn")
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    tiny = ["data.synthetic.num_train=4", "data.synthetic.num_val=2", "data.synthetic.long_side=[64,96]",
            "data.synthetic.object_size=[12,40]", "data.class_names=[circle,cross,ring,square,star]",
            "data.unknown_classes=skip", "model.preprocess.min_size=64", "model.preprocess.max_size=96",
            "train.batch_size=2", "train.max_iters=2", "train.log_every=1", "train.precision=fp32"]
    # FRCNN_NATIVE=0: the anchor targets' PyTorch-op path, so that no kernel is built for this run.
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "FRCNN_NATIVE": "0"}
    result = subprocess.run([sys.executable, "-m", "frcnn", "train", "--init",
                             f"torchvision:fasterrcnn_mobilenet_v3_large_320_fpn:{path}", "--out", "run",
                             "--no-eval", "--set", *tiny], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "new 4 tensors: roi_head.cls_score.weight, roi_head.cls_score.bias, roi_head.bbox_pred.weight, " \
           "roi_head.bbox_pred.bias" in result.stderr
    final = torch.load(tmp_path / "run" / "model_final.pt", weights_only=True)
    assert final["model"]["roi_head.cls_score.weight"].shape == (6, 1024)
    assert final["config"]["model"]["anchors"]["cell_rule"] == "torchvision"
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "frcnn",
            "train",
            "--init",
            f"torchvision:fasterrcnn_resnet50_fpn:{path}",
            "--out",
            "bad",
            "--no-eval",
            "--set",
            *tiny,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    error = bad.stderr.strip().splitlines()[-1]
    assert bad.returncode == 1 and error.startswith("frcnn train: error: ") and "tensor backbone." in error
