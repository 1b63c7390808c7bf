"""How long ``frcnn anchors --fit`` takes: ``frcnn.analysis.anchor_fit`` on N images with K boxes each.

The dataset is made in memory (annotations only: the fit never decodes an image), VOC-like image
sizes (longer side 400-500 px, shorter 0.6-1 of it) and boxes with sqrt(w h) log-uniform in
12-300 px. Prints the wall time of the whole fit (resize of the boxes, the layer over every image,
the per-gt classification and the summary) and of its parts, best of ``--repeat`` runs.

    .venv/bin/python benchmarks/anchor_fit.py                 # 10,000 images x 10 boxes, small recipe
    .venv/bin/python benchmarks/anchor_fit.py --fpn --threads 2
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from frcnn.analysis import anchor_fit, fit_ground_truth, resized_ground_truth
from frcnn.config import default_config
from frcnn.data import DetectionDataset, ImageAnnotation


def make_dataset(images: int, boxes: int, seed: int = 0) -> DetectionDataset:
    rng = np.random.default_rng(seed)
    records = []
    for index in range(images):
        long_side = int(rng.integers(400, 501))
        short_side = int(long_side * rng.uniform(0.6, 1.0))
        height, width = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
        size = np.exp(rng.uniform(np.log(12), np.log(300), boxes))
        aspect = np.exp(rng.uniform(-np.log(3), np.log(3), boxes))
        w = np.minimum(size * np.sqrt(aspect), width - 1)
        h = np.minimum(size / np.sqrt(aspect), height - 1)
        x1 = rng.uniform(0, width - w)
        y1 = rng.uniform(0, height - h)
        corners = np.stack((x1, y1, x1 + w, y1 + h), axis=1)
        records.append(ImageAnnotation(Path(f"{index}.jpg"), index, height, width, corners,
                                       rng.integers(1, 21, boxes), np.zeros(boxes, dtype=bool), w * h,
                                       np.zeros((0, 4)), np.zeros(0, dtype=np.int64)))
    return DetectionDataset(tuple(records), tuple(f"class{i}" for i in range(1, 21)), "voc")


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--boxes", type=int, default=10)
    parser.add_argument("--backbone", default="small")
    parser.add_argument("--fpn", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)
    model = default_config(args.backbone, args.fpn)
    dataset = make_dataset(args.images, args.boxes)
    anchor_fit(make_dataset(8, args.boxes, seed=1), model)  # warm-up: kernel build, caches
    gt = resized_ground_truth(dataset, model.preprocess)
    resize = best_of(args.repeat, lambda: resized_ground_truth(dataset, model.preprocess))
    layer = best_of(args.repeat, lambda: fit_ground_truth(gt, model))
    total = best_of(args.repeat, lambda: anchor_fit(dataset, model))
    load = os.getloadavg()[0]
    print(f"anchor_fit: {args.images} images x {args.boxes} boxes, {args.backbone}{' FPN' if args.fpn else ''} "
          f"recipe, {args.threads} threads, load average {load:.2f} (best of {args.repeat})")
    print(f"  boxes resized       {resize:7.2f} s")
    print(f"  layer + per-gt fit  {layer:7.2f} s")
    print(f"  whole anchor_fit    {total:7.2f} s  ({args.images / total:,.0f} images/s)")


if __name__ == "__main__":
    main()
