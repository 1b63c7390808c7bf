"""Images per second of a training step and of inference: frcnn against torchvision's FasterRCNN.

Both detectors get the same backbone module (a copy of frcnn's small CNN), image size, anchors,
RPN and RoI sample sizes, proposal counts and heads, on the same synthetic batch, in one process,
with ``--threads`` threads; steps of the models are interleaved and the median is reported. For
inference every model carries the same weights: frcnn's after the timed training steps (copied
into torchvision's layout), so that both see trained-looking scores.

    .venv/bin/python benchmarks/train_step.py            # prints a markdown table
    .venv/bin/python benchmarks/train_step.py --precision bf16   # every model under bf16 autocast
    .venv/bin/python benchmarks/train_step.py --profile          # and where frcnn's step spends its time
    .venv/bin/python benchmarks/train_step.py --device cuda --precision fp16

Each row says the precision and memory format it runs in; rows of frcnn's default precision
(``auto``: bf16 where the CPU has it natively) and torchvision's default (fp32) are added where
they differ from ``--precision``, and the last line compares those two defaults.

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
from typing import NamedTuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
import torch
from torch import nn
from torch.profiler import profile
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import MultiScaleRoIAlign

import frcnn.model
from frcnn.config import default_config
from frcnn.model import FasterRCNN
from frcnn.precision import autocast, describe, resolve_precision

CPU = torch.device("cpu")
# The ops whose arithmetic a step cannot do without: convolutions (forward and backward, every
# backend's kernel) and matrix products. --profile prints their share of the step.
ARITHMETIC_OPS = ("conv", "aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm")


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


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch, torchvision_style: bool,
               precision: str = "fp32", device: torch.device = CPU) -> None:
    """One SGD step; fp16 scales the loss as training does (the scaler is off otherwise)."""
    images, im_info, gt_boxes, num_boxes = batch
    with autocast(precision, device):
        if torchvision_style:
            targets = [{"boxes": g[:n, :4], "labels": g[:n, 4].long()} for g, n in zip(gt_boxes, num_boxes)]
            losses = model(list(images), targets)
        else:
            losses = model(images, im_info, gt_boxes, num_boxes)
    optimizer.zero_grad()
    scaler = _scalers.setdefault(id(optimizer), torch.amp.GradScaler(device.type, enabled=precision == "fp16"))
    scaler.scale(sum(losses.values())).backward()
    scaler.step(optimizer)
    scaler.update()


_scalers: dict[int, torch.amp.GradScaler] = {}


@torch.no_grad()
def infer(model: nn.Module, batch, torchvision_style: bool, precision: str = "fp32", device: torch.device = CPU) -> int:
    images, im_info = batch[:2]
    if torchvision_style:
        with autocast(precision, device):
            detections = model(list(images))
    else:
        detections = model.detect(images, im_info, precision=precision)
    return sum(len(d["boxes"]) for d in detections)


class Contender(NamedTuple):
    """A row of the tables: a model, whether it takes torchvision's inputs, and its precision."""

    name: str
    model: nn.Module
    torchvision_style: bool
    precision: str
    device: torch.device

    def numerics(self, training: bool) -> str:
        """The precision and memory format it computes in: frcnn's own rule; torchvision converts
        nothing, so contiguous."""
        if self.torchvision_style:
            return f"{self.precision}, contiguous"
        return describe(self.precision, self.device, training)


def contenders(ours: FasterRCNN, ours_tv_align: FasterRCNN, twin: nn.Module, precision: str,
               device: torch.device) -> list[Contender]:
    """The three models at ``precision``; then frcnn at its default precision (``auto`` on this
    machine) and torchvision at its default fp32, where those differ from ``precision``."""
    rows = [Contender("frcnn (dense RoIAlign)", ours, False, precision, device),
            Contender("frcnn (torchvision RoIAlign)", ours_tv_align, False, precision, device),
            Contender("torchvision FasterRCNN", twin, True, precision, device)]
    default = resolve_precision("auto", device)
    if default != precision:
        rows.append(Contender("frcnn (dense RoIAlign), default", copy.deepcopy(ours), False, default, device))
    if precision != "fp32":
        rows.append(Contender("torchvision FasterRCNN, default", copy.deepcopy(twin), True, "fp32", device))
    return rows


def default_against_default(rows: list[Contender]) -> tuple[str, str]:
    """The names of frcnn's dense row at its default precision and of torchvision's fp32 row."""
    default = resolve_precision("auto", rows[0].device)
    ours = next(r.name for r in rows if r.name.startswith("frcnn (dense") and r.precision == default)
    theirs = next(r.name for r in rows if r.torchvision_style and r.precision == "fp32")
    return ours, theirs


def timed(function, device: torch.device = CPU) -> float:
    """Seconds ``function()`` takes, the device's queued work included."""
    start = time.perf_counter()
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def arithmetic_profile(step, device: torch.device, rows: int) -> str:
    """torch.profiler's table of three calls of ``step`` (self time, the device's on CUDA), then the
    share of that time spent in ``ARITHMETIC_OPS``."""
    step()
    with profile() as profiler:
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = profiler.key_averages()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(event, key) for event in events)
    arithmetic = sum(getattr(event, key) for event in events
                     if any(name in event.key for name in ARITHMETIC_OPS))
    return (f"{events.table(sort_by=key, row_limit=rows)}\n"
            f"convolutions and matrix products: {arithmetic / max(total, 1e-9):.1%} of the self "
            f"{'device' if device.type == 'cuda' else 'CPU'} time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--objects", type=int, default=5, help="gt boxes per image")
    parser.add_argument("--rounds", type=int, default=15, help="timed steps per model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--profile", action="store_true",
                        help="also print where frcnn's training step spends its time, and the share of it in "
                             "convolutions and matrix products")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="the precision of every model's row, torchvision's under the same autocast; rows of "
                             "frcnn's default (auto) and torchvision's default (fp32) are added where they differ")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    batch = tuple(t.to(device) for t in synthetic_batch(args.batch, args.height, args.width, args.objects,
                                                        args.classes, seed=0))

    config = default_config("small")
    ours = FasterRCNN(args.classes, config=config)
    torchvision_align = replace(config, head=replace(config.head, align_impl="torchvision"))
    ours_tv_align = FasterRCNN(args.classes, config=torchvision_align)
    ours_tv_align.load_state_dict(ours.state_dict())
    twin = torchvision_twin(ours, args.height, args.width)
    copy_into_torchvision(ours, twin)
    for model in (ours, ours_tv_align, twin):
        model.to(device)
    rows = contenders(ours, ours_tv_align, twin, args.precision, device)
    optimizers = {row.name: torch.optim.SGD([p for p in row.model.parameters() if p.requires_grad], lr=0.01,
                                            momentum=0.9) for row in rows}
    timer = TargetTimer()

    train_times = {row.name: [] for row in rows}
    for round_index in range(args.rounds + 2):
        for row in rows:
            row.model.train()
            timer.seconds = 0.0
            seconds = timed(lambda: train_step(row.model, optimizers[row.name], batch, row.torchvision_style,
                                               row.precision, device), device)
            if round_index >= 2:  # warm-up
                train_times[row.name].append((seconds, timer.seconds))

    for row in rows:  # every model with the weights of frcnn's first row
        if row.torchvision_style:
            copy_into_torchvision(ours, row.model)
        elif row.model is not ours:
            row.model.load_state_dict(ours.state_dict())
    infer_times = {row.name: [] for row in rows}
    detections = {}
    for round_index in range(args.rounds + 2):
        for row in rows:
            row.model.eval()
            seconds = timed(lambda: detections.__setitem__(
                row.name, infer(row.model, batch, row.torchvision_style, row.precision, device)), device)
            if round_index >= 2:
                infer_times[row.name].append(seconds)

    print(f"batch {args.batch} x 3 x {args.height} x {args.width}, {args.objects} objects per image, "
          f"{args.classes} classes, {args.threads} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), "
          f"{args.rounds} interleaved steps per model; images/s of the median step (of the fastest step)\n")
    print("| model | precision, memory format (training / inference) | training images/s "
          "| target layers, share of the step | inference images/s | detections per batch |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        steps = [t for t, _ in train_times[row.name]]
        share = "-" if row.torchvision_style else f"{statistics.median(s / t for t, s in train_times[row.name]):.1%}"
        print(f"| {row.name} | {row.numerics(True)} / {row.numerics(False)} | {_rate(args.batch, steps)} | {share} "
              f"| {_rate(args.batch, infer_times[row.name])} | {detections[row.name]} |")
    ours_name, theirs_name = default_against_default(rows)
    train_ratio = _median([t for t, _ in train_times[theirs_name]]) / _median([t for t, _ in train_times[ours_name]])
    infer_ratio = _median(infer_times[theirs_name]) / _median(infer_times[ours_name])
    print(f"\ndefault against default ({ours_name} against {theirs_name}): training {train_ratio:.2f}x, "
          f"inference {infer_ratio:.2f}x")
    if args.profile:
        dense = rows[0]
        dense.model.train()
        print(f"\n{dense.name}, training step at {dense.numerics(True)}, 3 steps\n")
        print(arithmetic_profile(lambda: train_step(dense.model, optimizers[dense.name], batch, False,
                                                    dense.precision, device), device, rows=20))


def _median(seconds: list[float]) -> float:
    return statistics.median(seconds)


def _rate(images: int, seconds: list[float]) -> str:
    return f"{images / statistics.median(seconds):.2f} ({images / min(seconds):.2f})"

if __name__ == "__main__":
    main()
