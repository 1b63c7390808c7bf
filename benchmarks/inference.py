"""Images per second of inference: frcnn (PyTorch), frcnn exported to ONNX and run by
onnxruntime, and torchvision's FasterRCNN, on the same plain images.

The configuration is the one ``benchmarks/train_step.py`` matches between frcnn and torchvision
(the small recipe: one stride-16 map, 12 anchors per cell, 300 proposals, two 256-wide FC layers),
with the images' own size as the resize target and identity normalisation in both. frcnn trains
for ``--train-steps`` steps on the images first (their weights then copied into torchvision's
layout), so that every model sees trained-looking scores. Every model takes RGB images in [0, 1]
and does its own preprocessing (``FasterRCNN.predict``, the exported graph, torchvision's
transform). Calls are interleaved, in one process, with ``--threads`` threads for PyTorch and for
onnxruntime; the median call is reported, and the fastest in brackets.

    .venv/bin/python benchmarks/inference.py             # markdown table, batch 1 and 4
    .venv/bin/python benchmarks/inference.py --profile   # and where frcnn's and torchvision's time goes
    .venv/bin/python benchmarks/inference.py --precision bf16   # frcnn and torchvision under bf16

Each row says its precision and memory format; frcnn at its default precision (``auto``) is
compared with torchvision at its default fp32 in rows of their own where those differ from
``--precision``.

OpenMP threads wait passively (``OMP_WAIT_POLICY=PASSIVE`` unless set), as in train_step.py.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP
import torch
from torch.profiler import profile

from frcnn.config import default_config
from frcnn.deploy.export import export_onnx
from frcnn.deploy.runtime import OnnxDetector
from frcnn.model import FasterRCNN
from frcnn.precision import autocast, describe, resolve_precision
from train_step import copy_into_torchvision, synthetic_batch, torchvision_twin


def trained_model(images: torch.Tensor, batch, classes: int, steps: int) -> FasterRCNN:
    """The small recipe with the images' size as its resize target and no normalisation, trained
    for ``steps`` SGD steps on ``images`` (B, 3, H, W) in [0, 1] and the batch's boxes."""
    height, width = images.shape[-2:]
    config = default_config("small")
    config = replace(config, preprocess=replace(config.preprocess, min_size=height, max_size=width,
                                                mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)))
    model = FasterRCNN(classes, config=config).to(images.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _, im_info, gt_boxes, num_boxes = batch
    for _ in range(steps):
        losses = model(images, im_info, gt_boxes, num_boxes)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return model.eval()


class Runner(NamedTuple):
    """A row: a function of images (B, 3, H, W) in [0, 1] returning the detections per image,
    the precision and memory format it computes in, and the row it is compared with."""

    function: Callable[[torch.Tensor], list[int]]
    numerics: str
    reference: str


def runners(model: FasterRCNN, onnx_model: OnnxDetector | None, twin: torch.nn.Module, precision: str,
            device: torch.device) -> dict[str, Runner]:
    """name -> ``Runner``: frcnn (PyTorch) and torchvision at ``precision`` (torchvision under the
    same autocast), frcnn's ONNX graph (fp32, on the CPU only: None elsewhere); then frcnn at its
    default precision and torchvision at its default fp32, where those differ from ``precision``,
    each compared with the other."""
    def frcnn(at: str):
        return lambda images: [len(found["scores"]) for found in model.predict(list(images), precision=at)]

    def torchvision(at: str):
        def run(images):
            with autocast(at, device):
                return [len(found["scores"]) for found in twin(list(images))]
        return run

    def onnxruntime(images):
        return onnx_model(images.numpy()).counts.tolist()

    same = "torchvision FasterRCNN"
    rows = {"frcnn (PyTorch)": Runner(frcnn(precision), describe(precision, device, training=False), same)}
    if onnx_model is not None:
        rows["frcnn (ONNX, onnxruntime)"] = Runner(onnxruntime, "fp32, contiguous", same)
    rows[same] = Runner(torchvision(precision), f"{precision}, contiguous", same)
    default = resolve_precision("auto", device)
    theirs = same if precision == "fp32" else "torchvision FasterRCNN, default"
    ours = "frcnn (PyTorch)" if default == precision else "frcnn (PyTorch), default"
    if ours not in rows:
        rows[ours] = Runner(frcnn(default), describe("auto", device, training=False), theirs)
    if theirs not in rows:
        rows[theirs] = Runner(torchvision("fp32"), "fp32, contiguous", ours)
    return rows


def measure(rows: dict[str, Runner], images: torch.Tensor,
            rounds: int) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
    """Seconds per call of each row, interleaved, after two warm-up rounds; detection counts."""
    seconds = {name: [] for name in rows}
    counts = {}
    with torch.no_grad():
        for round_index in range(rounds + 2):
            for name, (function, _, _) in rows.items():
                start = time.perf_counter()
                counts[name] = function(images)  # the counts are on the host: the device's work is done
                if round_index >= 2:
                    seconds[name].append(time.perf_counter() - start)
    return seconds, counts


def print_profile(runs: dict[str, Runner], images: torch.Tensor, rows: int) -> None:
    """torch.profiler's table of the PyTorch models' ops (self CPU time), per call."""
    with torch.no_grad():
        for name, (function, _, _) in runs.items():
            if "onnxruntime" in name:
                continue
            function(images)
            with profile() as profiler:
                for _ in range(3):
                    function(images)
            print(f"\n{name}, batch {images.shape[0]}, 3 calls\n")
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--objects", type=int, default=5, help="gt boxes per image")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15, help="timed calls per model and batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print the op profiles at the largest batch")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda; the ONNX row runs on the CPU only (default: %(default)s)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                        help="the precision of frcnn's and torchvision's rows, torchvision's under the same autocast; "
                             "rows of frcnn's default (auto) and torchvision's default (fp32) are added where they "
                             "differ (the ONNX graph is fp32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    largest = max(args.batches)
    device = torch.device(args.device)
    batch = tuple(t.to(device) for t in synthetic_batch(largest, args.height, args.width, args.objects,
                                                        args.classes, seed=0))
    images = (0.5 + 0.5 * batch[0]).clamp(0, 1)
    model = trained_model(images, batch, args.classes, args.train_steps)
    twin = torchvision_twin(model, args.height, args.width).to(device).eval()
    copy_into_torchvision(model, twin)
    onnx_model = None
    if device.type == "cpu":
        with tempfile.TemporaryDirectory() as folder:
            onnx_model = OnnxDetector(export_onnx(model, Path(folder) / "model.onnx"), threads=args.threads)
    rows = runners(model, onnx_model, twin, args.precision, device)

    print(f"3 x {args.height} x {args.width} images, {args.classes} classes, {args.train_steps} training steps, "
          f"{args.threads} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), {args.rounds} interleaved "
          f"calls per model; images/s of the median call (of the fastest call)\n")
    print("| batch | model | precision, memory format | images/s | vs torchvision (the row compared) "
          "| detections per image |")
    print("| --- | --- | --- | --- | --- | --- |")
    for size in args.batches:
        seconds, counts = measure(rows, images[:size], args.rounds)
        for name, (_, numerics, reference) in rows.items():
            median = statistics.median(seconds[name])
            ratio = statistics.median(seconds[reference]) / median
            print(f"| {size} | {name} | {numerics} | {size / median:.2f} ({size / min(seconds[name]):.2f}) "
                  f"| {ratio:.2f}x ({reference}) | {counts[name]} |")
    if args.profile:
        print_profile(rows, images[:largest], rows=15)


if __name__ == "__main__":
    main()
