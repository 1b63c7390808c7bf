"""The same results on a CUDA device as on the CPU, in every precision the GPU has. Skipped
without CUDA; ``benchmarks/gpu.sh`` runs the suite where there is one."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from frcnn import assign_anchor_targets, generate_anchors
from frcnn.anchors import grid_anchors
from frcnn.cli.main import main
from frcnn.config import default_config
from frcnn.engine import load_checkpoint
from frcnn.model import FasterRCNN
from frcnn.precision import native_bf16
from test_anchor_targets import CONFIGS, SMALL_SCALES, STRIDE, make_config, random_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
CUDA = torch.device("cuda")
TINY = ["data.synthetic.num_train=8", "data.synthetic.num_val=4", "data.synthetic.long_side=[64,96]",
        "data.synthetic.object_size=[12,40]", "data.synthetic.max_objects=3", "model.preprocess.min_size=64",
        "model.preprocess.max_size=96", "train.batch_size=2", "train.max_iters=3"]


def gpu_precisions() -> list[str]:
    return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_available() and native_bf16(CUDA) else [])


@pytest.mark.parametrize("name", ["default", "reassign", "ignore-regions", "preset-torchvision"])
def test_anchor_targets_on_cuda_are_the_cpus(name):
    """Labels, matches and targets of every anchor, subsampling off (the draws differ by device)."""
    config = replace(make_config(CONFIGS[name]), batch_size=None)
    rng = np.random.default_rng(11)
    base = generate_anchors(16, (0.5, 1, 2), SMALL_SCALES)
    for _ in range(4):
        height, width = (int(v) for v in rng.integers(2, 7, size=2))
        gt, num, im_info = random_batch(rng, batch=3, height=height, width=width, max_gt=5)
        inputs = [torch.from_numpy(gt).float(), torch.from_numpy(num), torch.from_numpy(im_info).float()]
        on_cpu = assign_anchor_targets(grid_anchors(base, height, width, STRIDE, dtype=torch.float32), *inputs, config)
        on_cuda = assign_anchor_targets(grid_anchors(base.to(CUDA), height, width, STRIDE, dtype=torch.float32),
                                        *(t.to(CUDA) for t in inputs), config)
        torch.testing.assert_close(on_cuda.labels.cpu(), on_cpu.labels)
        torch.testing.assert_close(on_cuda.matched_gt.cpu(), on_cpu.matched_gt)
        torch.testing.assert_close(on_cuda.bbox_targets.cpu(), on_cpu.bbox_targets, rtol=1e-5, atol=1e-5)


def seeded_batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 128, 160, generator=generator)
    gt_boxes = torch.tensor([[[10, 12, 70, 90, 1], [80, 20, 150, 60, 2]],
                             [[30, 40, 100, 120, 3], [0, 0, 0, 0, 0]]], dtype=torch.float32)
    im_info = torch.tensor([[128, 160, 1.0], [128, 160, 1.0]])
    return images, im_info, gt_boxes, torch.tensor([2, 1])


@pytest.mark.parametrize("precision", gpu_precisions())
def test_a_training_step_and_inference_on_cuda(precision):
    """The features agree with the CPU's (to the precision's resolution); a training step's losses
    are float32 and finite and so are its gradients; inference gives float32 boxes inside the
    image and scores in [0, 1]."""
    torch.manual_seed(0)
    model = FasterRCNN(3, config=default_config("small"))
    on_gpu = FasterRCNN(3, config=default_config("small")).to(CUDA)
    on_gpu.load_state_dict(model.state_dict())
    images, im_info, gt_boxes, num_boxes = seeded_batch()
    low = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    with torch.no_grad(), torch.autocast(CUDA.type, dtype=low or torch.float32, enabled=low is not None):
        features = on_gpu.backbone(images.to(CUDA))
    tolerance = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 1e-1}[precision]
    for cpu_level, gpu_level in zip(model.backbone(images), features):
        torch.testing.assert_close(gpu_level.float().cpu(), cpu_level.detach(), rtol=tolerance, atol=tolerance)
    on_gpu.train()
    with torch.autocast(CUDA.type, dtype=low or torch.float32, enabled=low is not None):
        losses = on_gpu(images.to(CUDA), im_info.to(CUDA), gt_boxes.to(CUDA), num_boxes.to(CUDA))
    for key, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), key
    sum(losses.values()).backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in on_gpu.parameters())
    on_gpu.eval()
    for found in on_gpu.predict([image.to(CUDA) for image in images], precision=precision):
        boxes, scores = found["boxes"], found["scores"]
        assert boxes.dtype == scores.dtype == torch.float32
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= 160).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= 128).all()
        assert ((scores >= 0) & (scores <= 1)).all()


@pytest.mark.parametrize("precision", gpu_precisions())
def test_frcnn_train_on_cuda_in_each_precision(precision, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "--device", "cuda", "--out", str(run), "--set", *TINY,
                 f"train.precision={precision}"]) == 0
    stored = load_checkpoint(run / "model_final.pt")
    assert stored["numerics"]["precision"] == precision
    assert main(["eval", str(run / "model_final.pt"), "--device", "cuda", "--precision", precision, "--json"]) == 0
