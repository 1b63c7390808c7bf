"""Inference and training speed of torchvision's Faster R-CNN detectors against their frcnn imports, one process.

    .venv/bin/python benchmarks/pretrained.py [--arch fasterrcnn_resnet50_fpn ...] [--images 4]
        [--min-size 480 --max-size 640] [--rounds 5] [--threads 2] [--precision fp32|bf16]

Each architecture is built with ``weights=None`` (seeded; nothing is downloaded), its BatchNorm
statistics set from one training-mode pass and its box classifier scaled so that detections pass
the score threshold, then imported with ``FasterRCNN.from_torchvision``. Both models run in eval
mode on the same images (random, landscape and portrait sizes), their rounds interleaved:
torchvision's ``model(images)`` against frcnn's ``model.predict(images)``, each with its own
preprocessing. Printed: images/s of the median round (of the fastest), detections per round and
whether both found the same number.

Then a training step (forward, backward, SGD with rate 0, so that the weights stay) of each on the
same images with two boxes each: torchvision's ``model(images, targets)`` against frcnn's import of
the same weights with torchvision's from-scratch settings (BatchNorm training, nothing frozen) on
its own preprocessing of the images. Each row gives both models' precision and memory format: both
at ``--precision`` (torchvision under the same autocast), then, where it differs, each model at its
default (torchvision fp32, frcnn ``auto``).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP, as in train_step.py
import torch
from torch import nn
from torchvision.models import detection

from frcnn.config import TORCHVISION_ARCHS
from frcnn.model import FasterRCNN
from frcnn.precision import autocast, describe, resolve_precision
from frcnn.preprocess import box_scale
from frcnn.pretrained import torchvision_weights


def calibrated(arch: str, min_size: int, max_size: int) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(detection, arch)(weights=None, weights_backbone=None, min_size=min_size, max_size=max_size)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    generator = torch.Generator().manual_seed(7)
    model.train()
    with torch.no_grad():
        model([torch.rand(3, min_size, min_size, generator=generator)],
              [{"boxes": torch.tensor([[10.0, 20, 80, 90]]), "labels": torch.tensor([1])}])
    model.eval()
    model.roi_heads.box_predictor.cls_score.weight.data *= 15.0
    return model


def trainable_twin(reference: nn.Module) -> FasterRCNN:
    """frcnn's import of ``reference`` as torchvision builds a detector without pretrained weights
    (its BatchNorm in training mode, no stage frozen), so that a training step does the same work."""
    checkpoint = torchvision_weights(reference)
    backbone = replace(checkpoint.config.backbone, norm="batch", frozen_stages=0)
    return FasterRCNN.load(checkpoint, config=replace(checkpoint.config, backbone=backbone))


def box_targets(images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Two boxes per image, in its pixels, labels 1 and 2 (torchvision's targets)."""
    targets = []
    for image in images:
        height, width = image.shape[-2:]
        boxes = torch.tensor([[0.1 * width, 0.2 * height, 0.5 * width, 0.6 * height],
                              [0.5 * width, 0.4 * height, 0.9 * width, 0.9 * height]], device=image.device)
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2], device=image.device)})
    return targets


def frcnn_training_batch(model: FasterRCNN, images: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]):
    """``model``'s training inputs for ``images`` and ``targets``: its own preprocessing, the boxes
    taken to the resized images."""
    batch = model.preprocess(images)
    scale = box_scale(batch.im_info, batch.orig_sizes, model.config.preprocess)
    gt_boxes = torch.stack([torch.cat((t["boxes"] / s, t["labels"][:, None].to(s.dtype)), dim=1)
                            for t, s in zip(targets, scale)])
    num_boxes = torch.tensor([len(t["labels"]) for t in targets], device=gt_boxes.device)
    return batch.images, batch.im_info, gt_boxes, num_boxes


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, losses_of, precision: str,
                  device: torch.device) -> None:
    model.train()
    with autocast(precision, device):
        losses = losses_of()
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def interleaved(runs: dict[str, Callable[[], object]], rounds: int) -> tuple[dict[str, list[float]], dict]:
    """Seconds of each run per round, the runs interleaved, after one warm-up round; the last results."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    found = {}
    for round_index in range(rounds + 1):
        for name, run in runs.items():
            elapsed, found[name] = timed(run)
            if round_index:
                times[name].append(elapsed)
    return times, found


def pairings(precision: str, device: torch.device) -> list[tuple[str, str, str]]:
    """(label, torchvision's precision, frcnn's): both at ``precision``, then each at its default
    (torchvision fp32, frcnn ``auto`` on ``device``) when that is another pair."""
    pairs = [("same precision", precision, precision)]
    default = ("default against default", "fp32", resolve_precision("auto", device))
    if default[1:] != pairs[0][1:]:
        pairs.append(default)
    else:
        pairs[0] = ("same precision, both defaults", precision, precision)
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch",
        nargs="+",
        default=["fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn"],
        choices=TORCHVISION_ARCHS,
    )
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--min-size", type=int, default=480)
    parser.add_argument("--max-size", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="both models' precision, torchvision's under the same autocast; a row of each "
                             "model's default (torchvision fp32, frcnn auto) follows where it differs "
                             "(default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(1)
    sizes = [(480, 640), (640, 480), (375, 500), (500, 333)]
    images = [torch.rand(3, *sizes[i % len(sizes)], generator=generator).to(device) for i in range(args.images)]
    targets = box_targets(images)
    print(
        f"{args.images} images of sizes {sorted({tuple(im.shape[-2:]) for im in images})}, resize "
        f"{args.min_size}/{args.max_size}, {args.threads} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, {args.device}, "
        f"{args.rounds} interleaved rounds after one warm-up; images/s of the median round (of the fastest); "
        "training: one SGD step (lr 0) on the same images with two boxes each, BatchNorm training in both"
    )
    print("| architecture | rows | torchvision precision, memory format | frcnn precision, memory format "
          "| torchvision images/s | frcnn images/s | detections per round (tv / frcnn) "
          "| training: torchvision images/s | training: frcnn images/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arch in args.arch:
        reference = calibrated(arch, args.min_size, args.max_size)
        model = FasterRCNN.from_torchvision(reference).to(device)
        trainable = trainable_twin(reference).to(device)
        reference.to(device)
        frcnn_batch = frcnn_training_batch(trainable, images, targets)
        optimizers = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.0)
                      for name, m in (("torchvision", reference), ("frcnn", trainable))}
        for label, theirs, ours in pairings(args.precision, device):
            reference.eval()

            def reference_inference(at: str = theirs) -> object:
                with torch.no_grad(), autocast(at, device):
                    return reference(images)

            times, found = interleaved({"torchvision": reference_inference,
                                        "frcnn": lambda at=ours: model.predict(images, precision=at)}, args.rounds)
            runs = {"torchvision": lambda at=theirs: training_step(reference, optimizers["torchvision"],
                                                                   lambda: reference(images, targets), at, device),
                    "frcnn": lambda at=ours: training_step(trainable, optimizers["frcnn"],
                                                           lambda: trainable(*frcnn_batch), at, device)}
            kept = copy.deepcopy(reference.state_dict())  # training updates BatchNorm's statistics
            train_times, _ = interleaved(runs, args.rounds)
            reference.load_state_dict(kept)

            def rate(seconds: list[float]) -> str:
                return f"{len(images) / statistics.median(seconds):.2f} ({len(images) / min(seconds):.2f})"

            counts = {name: sum(len(r["boxes"]) for r in result) for name, result in found.items()}
            print(f"| {arch} | {label} | {theirs}, contiguous | {describe(ours, device, training=False)} "
                  f"| {rate(times['torchvision'])} | {rate(times['frcnn'])} "
                  f"| {counts['torchvision']} / {counts['frcnn']} | {rate(train_times['torchvision'])} "
                  f"| {rate(train_times['frcnn'])} ({describe(ours, device, training=True)}) |")


if __name__ == "__main__":
    main()
