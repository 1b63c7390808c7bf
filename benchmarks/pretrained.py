"""Inference speed of torchvision's Faster R-CNN detectors against their frcnn imports, one process.

    .venv/bin/python benchmarks/pretrained.py [--arch fasterrcnn_resnet50_fpn ...] [--images 4]
        [--min-size 480 --max-size 640] [--rounds 5] [--threads 2]

Each architecture is built with ``weights=None`` (seeded; nothing is downloaded), its BatchNorm
statistics set from one training-mode pass and its box classifier scaled so that detections pass
the score threshold, then imported with ``FasterRCNN.from_torchvision``. Both models run in eval
mode on the same images (random, landscape and portrait sizes), their rounds interleaved:
torchvision's ``model(images)`` against frcnn's ``model.predict(images)``, each with its own
preprocessing. Printed: images/s of the median round (of the fastest), detections per round and
whether both found the same number.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn
from torchvision.models import detection

from frcnn.config import TORCHVISION_ARCHS
from frcnn.model import FasterRCNN


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


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    with torch.no_grad():
        result = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(1)
    sizes = [(480, 640), (640, 480), (375, 500), (500, 333)]
    images = [torch.rand(3, *sizes[i % len(sizes)], generator=generator).to(args.device) for i in range(args.images)]
    print(
        f"{args.images} images of sizes {sorted({tuple(im.shape[-2:]) for im in images})}, resize "
        f"{args.min_size}/{args.max_size}, {args.threads} threads, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, {args.device}, "
        f"{args.rounds} interleaved rounds after one warm-up"
    )
    print("| architecture | torchvision images/s | frcnn images/s | detections per round (tv / frcnn) |")
    print("| --- | --- | --- | --- |")
    for arch in args.arch:
        reference = calibrated(arch, args.min_size, args.max_size)
        model = FasterRCNN.from_torchvision(reference).to(args.device)
        reference.to(args.device)
        runs = {"torchvision": lambda: reference(images), "frcnn": lambda: model.predict(images)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        found = {}
        for round_index in range(args.rounds + 1):
            for name, run in runs.items():
                elapsed, result = timed(run)
                found[name] = sum(len(r["boxes"]) for r in result)
                if round_index:
                    times[name].append(elapsed)

        def rate(name: str) -> str:
            return (f"{len(images) / statistics.median(times[name]):.2f} "
                    f"({len(images) / min(times[name]):.2f})")

        print(f"| {arch} | {rate('torchvision')} | {rate('frcnn')} | {found['torchvision']} / {found['frcnn']} |")


if __name__ == "__main__":
    main()
