"""Images per second of a training step and of inference: frcnn against torchvision's FasterRCNN.

Both detectors get the same backbone module (a copy of frcnn's small CNN), image size, anchors,
RPN and RoI sample sizes, proposal counts and heads, on the same synthetic batch, in one process,
with ``--threads`` threads; steps of the models are interleaved and the median is reported. For
inference every model carries the same weights: frcnn's after the timed training steps (copied
into torchvision's layout), so that both see trained-looking scores.

    .venv/bin/python benchmarks/train_step.py            # prints a markdown table

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set): on a machine shared with
other jobs, spinning threads stall each other and the timings become noise.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from dataclasses import replace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

import frcnn.model
from frcnn.config import default_config
from frcnn.model import FasterRCNN


def synthetic_batch(batch: int, height: int, width: int, objects: int, classes: int, seed: int):
    """Noisy images with solid rectangles, one colour per class; (images, im_info, gt, num)."""
    generator = torch.Generator().manual_seed(seed)
    palette = torch.rand(classes + 1, 3, generator=generator) * 2 - 1
    images = 0.2 * torch.randn(batch, 3, height, width, generator=generator)
    gt_boxes = torch.zeros(batch, objects, 5)
    for b in range(batch):
        for k in range(objects):
            w, h = (torch.randint(24, 160, (2,), generator=generator)).tolist()
            x1 = int(torch.randint(0, width - w, (1,), generator=generator))
            y1 = int(torch.randint(0, height - h, (1,), generator=generator))
            label = int(torch.randint(1, classes + 1, (1,), generator=generator))
            images[b, :, y1:y1 + h, x1:x1 + w] = palette[label][:, None, None]
            gt_boxes[b, k] = torch.tensor([x1, y1, x1 + w, y1 + h, label], dtype=torch.float32)
    im_info = torch.tensor([[height, width, 1.0]] * batch)
    return images, im_info, gt_boxes, torch.full((batch,), objects, dtype=torch.long)


class _SingleMap(nn.Module):
    """frcnn's backbone as torchvision expects it: one map and ``out_channels``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.body = backbone
        self.out_channels = backbone.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)[0]


def torchvision_twin(model: FasterRCNN, height: int, width: int) -> TorchvisionFasterRCNN:
    """torchvision's FasterRCNN configured like ``model`` (single level, two-FC head)."""
    config, stride = model.config, model.backbone.strides[0]
    channels, anchors = model.backbone.out_channels, config.anchors.num_anchors
    sizes = tuple(int(scale * stride) for scale in config.anchors.scales)
    head = config.head
    return TorchvisionFasterRCNN(
        _SingleMap(copy.deepcopy(model.backbone)), num_classes=None,
        min_size=height, max_size=width, image_mean=[0.0] * 3, image_std=[1.0] * 3,
        rpn_anchor_generator=AnchorGenerator((sizes,), (config.anchors.ratios,)),
        rpn_head=RPNHead(channels, anchors),
        rpn_pre_nms_top_n_train=config.proposals.train.pre_nms_top_n,
        rpn_post_nms_top_n_train=config.proposals.train.post_nms_top_n,
        rpn_pre_nms_top_n_test=config.proposals.test.pre_nms_top_n,
        rpn_post_nms_top_n_test=config.proposals.test.post_nms_top_n,
        rpn_nms_thresh=config.proposals.nms_threshold,
        rpn_fg_iou_thresh=config.rpn.targets.positive_overlap, rpn_bg_iou_thresh=config.rpn.targets.negative_overlap,
        rpn_batch_size_per_image=config.rpn.targets.batch_size, rpn_positive_fraction=config.rpn.targets.fg_fraction,
        box_roi_pool=MultiScaleRoIAlign(["0"], head.output_size, head.sampling_ratio),
        box_head=TwoMLPHead(channels * head.output_size**2, head.fc_dim),
        box_predictor=FastRCNNPredictor(head.fc_dim, model.num_classes + 1),
        box_score_thresh=config.test.score_threshold, box_nms_thresh=config.test.nms_threshold,
        box_detections_per_img=config.test.detections_per_image,
        box_fg_iou_thresh=config.roi_sampling.fg_threshold, box_bg_iou_thresh=config.roi_sampling.bg_threshold_hi,
        box_batch_size_per_image=config.roi_sampling.batch_size_per_image,
        box_positive_fraction=config.roi_sampling.fg_fraction,
        bbox_reg_weights=config.roi_sampling.bbox_weights,
    )


@torch.no_grad()
def copy_into_torchvision(model: FasterRCNN, twin: TorchvisionFasterRCNN) -> None:
    """frcnn's weights into the twin; the two-way softmax becomes the equivalent sigmoid."""
    twin.backbone.body.load_state_dict(model.backbone.state_dict())
    rpn, anchors = model.rpn_head, model.rpn_head.num_anchors
    twin.rpn.head.conv[0][0].load_state_dict(rpn.conv[0][0].state_dict())
    twin.rpn.head.bbox_pred.load_state_dict(rpn.bbox_pred.state_dict())
    weight, bias = rpn.cls_score.weight, rpn.cls_score.bias
    if rpn.logits_per_anchor == 2:
        weight, bias = weight[anchors:] - weight[:anchors], bias[anchors:] - bias[:anchors]
    twin.rpn.head.cls_logits.weight.copy_(weight)
    twin.rpn.head.cls_logits.bias.copy_(bias)
    trunk = model.roi_head.trunk
    twin.roi_heads.box_head.fc6.load_state_dict(trunk[1].state_dict())
    twin.roi_heads.box_head.fc7.load_state_dict(trunk[3].state_dict())
    twin.roi_heads.box_predictor.cls_score.load_state_dict(model.roi_head.cls_score.state_dict())
    twin.roi_heads.box_predictor.bbox_pred.load_state_dict(model.roi_head.bbox_pred.state_dict())


class TargetTimer:
    """Wall time spent in frcnn's anchor and proposal target layers, patched in place."""

    def __init__(self) -> None:
        self.seconds = 0.0
        for name in ("assign_anchor_targets", "sample_rois"):
            setattr(frcnn.model, name, self._timed(getattr(frcnn.model, name)))

    def _timed(self, function):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            return result
        return timed


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch, torchvision_style: bool) -> None:
    images, im_info, gt_boxes, num_boxes = batch
    if torchvision_style:
        targets = [{"boxes": g[:n, :4], "labels": g[:n, 4].long()} for g, n in zip(gt_boxes, num_boxes)]
        losses = model(list(images), targets)
    else:
        losses = model(images, im_info, gt_boxes, num_boxes)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()


@torch.no_grad()
def infer(model: nn.Module, batch, torchvision_style: bool) -> int:
    images, im_info = batch[:2]
    detections = model(list(images)) if torchvision_style else model(images, im_info)
    return sum(len(d["boxes"]) for d in detections)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--objects", type=int, default=5, help="gt boxes per image")
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = synthetic_batch(args.batch, args.height, args.width, args.objects, args.classes, seed=0)

    config = default_config("small")
    ours = FasterRCNN(args.classes, config=config)
    torchvision_align = replace(config, head=replace(config.head, align_impl="torchvision"))
    ours_tv_align = FasterRCNN(args.classes, config=torchvision_align)
    ours_tv_align.load_state_dict(ours.state_dict())
    twin = torchvision_twin(ours, args.height, args.width)
    copy_into_torchvision(ours, twin)
    models = {"frcnn (dense RoIAlign)": (ours, False), "frcnn (torchvision RoIAlign)": (ours_tv_align, False),
              "torchvision FasterRCNN": (twin, True)}
    optimizers = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
                  for name, (m, _) in models.items()}
    timer = TargetTimer()

    train_times = {name: [] for name in models}
    for round_index in range(args.rounds + 2):
        for name, (model, tv_style) in models.items():
            model.train()
            timer.seconds = 0.0
            seconds = timed(lambda: train_step(model, optimizers[name], batch, tv_style))
            if round_index >= 2:  # warm-up
                train_times[name].append((seconds, timer.seconds))

    ours_tv_align.load_state_dict(ours.state_dict())
    copy_into_torchvision(ours, twin)
    infer_times = {name: [] for name in models}
    detections = {}
    for round_index in range(args.rounds + 2):
        for name, (model, tv_style) in models.items():
            model.eval()
            seconds = timed(lambda: detections.__setitem__(name, infer(model, batch, tv_style)))
            if round_index >= 2:
                infer_times[name].append(seconds)

    print(f"batch {args.batch} x 3 x {args.height} x {args.width}, {args.objects} objects per image, "
          f"{args.classes} classes, {args.threads} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), "
          f"{args.rounds} interleaved steps per model; images/s of the median step (of the fastest step)\n")
    print("| model | training images/s | target layers, share of the step | inference images/s "
          "| detections per batch |")
    print("| --- | --- | --- | --- | --- |")
    for name, (_, tv_style) in models.items():
        steps = [t for t, _ in train_times[name]]
        share = "-" if tv_style else f"{statistics.median(s / t for t, s in train_times[name]):.1%}"
        print(f"| {name} | {_rate(args.batch, steps)} | {share} | {_rate(args.batch, infer_times[name])} "
              f"| {detections[name]} |")


def _rate(images: int, seconds: list[float]) -> str:
    return f"{images / statistics.median(seconds):.2f} ({images / min(seconds):.2f})"

if __name__ == "__main__":
    main()
