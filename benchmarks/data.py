"""The data path and the evaluation: loader throughput and evaluation time.

    .venv/bin/python benchmarks/data.py [--workers 2] [--images 600] [--eval-images 5000]

Loader: images/s through ``build_loader`` (JPEG decode, resize, random flip, normalise, batch
of 2, aspect-ratio grouping) over the default synthetic dataset (generated afresh in a temporary
folder, timed), at the classic size (shorter side 600, longer at most 1000) and at the images' own
scale (shorter side 256). Evaluation: VOC AP, COCO AP with either engine (equal
numbers), faster-coco-eval's C++ ``COCOeval_faster`` on the same ground truth and results rows
(the comparison that kept the fast engine), ``evaluate_detections`` (VOC 2007 + all-point AP and
fast COCO AP) and ``proposal_recall``, on synthetic-like ground truth with 100 detections and 1000
proposals per image.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from faster_coco_eval import COCO as FasterCOCO
from faster_coco_eval import COCOeval_faster

from frcnn.config import PreprocessConfig, SyntheticConfig
from frcnn.data import (
    SHAPE_NAMES,
    DetectionTransform,
    ImageAnnotation,
    build_dataset,
    build_loader,
    ensure_synthetic,
)
from frcnn.data.annotations import box_areas
from frcnn.data.dataset import DetectionDataset
from frcnn.evaluation import (
    ImageDetections,
    coco_ground_truth,
    coco_metrics,
    detections_per_image,
    evaluate_detections,
    proposal_recall,
    voc_metrics,
)
from frcnn.evaluation.results import evaluation_naming, result_rows


def loader_rate(dataset: DetectionDataset, transform: DetectionTransform, workers: int, images: int) -> float:
    """Images per second over ``images`` images, after the workers have started."""
    loader = build_loader(dataset, transform, batch_size=2, shuffle=True, num_workers=workers,
                          group_by_aspect_ratio=True, seed=0)
    batches = iter(loader)
    next(batches)
    start, seen = time.perf_counter(), 0
    for batch in batches:
        seen += len(batch.image_ids)
        if seen >= images:
            break
    return seen / (time.perf_counter() - start)


def random_boxes(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    sizes = np.exp(rng.uniform(np.log(12), np.log(min(height, width)), (count, 2)))
    corners = rng.uniform(0, 1, (count, 2)) * ([width, height] - sizes)
    return np.concatenate([corners, corners + sizes], axis=1)


def evaluation_case(rng: np.random.Generator, num_images: int, per_image: int, num_proposals: int):
    """Synthetic-like ground truth; detections and proposals near it and at random."""
    annotations, detections, proposals = [], [], []
    for n in range(num_images):
        height, width = rng.integers(256, 401, 2)
        boxes = random_boxes(rng, int(rng.integers(0, 7)), height, width)
        labels = rng.integers(1, len(SHAPE_NAMES) + 1, len(boxes))
        annotations.append(ImageAnnotation(Path(f"{n}.jpg"), f"{n:06d}", int(height), int(width), boxes, labels,
                                           np.zeros(len(boxes), bool), box_areas(boxes), np.zeros((0, 4)),
                                           np.zeros(0, np.int64)))
        near = np.repeat(boxes, 4, axis=0) + rng.normal(0, 4, (4 * len(boxes), 4))
        found = np.concatenate([near, random_boxes(rng, per_image - len(near), height, width)])[:per_image]
        found_labels = np.concatenate([np.repeat(labels, 4), rng.integers(1, len(SHAPE_NAMES) + 1, per_image)])
        detections.append({"boxes": found, "scores": rng.random(per_image), "labels": found_labels[:per_image]})
        proposals.append(np.concatenate([near, random_boxes(rng, num_proposals - len(near), height, width)]))
    return DetectionDataset(tuple(annotations), SHAPE_NAMES, "voc"), detections, proposals


def silent(*_: object) -> None:
    """faster-coco-eval's progress lines go nowhere."""


def faster_coco_eval_ap(dataset: DetectionDataset, per_image: list[ImageDetections]) -> float:
    """COCO AP by faster-coco-eval from the rows the "pycocotools" engine hands to COCOeval."""
    ground_truth = FasterCOCO(coco_ground_truth(dataset).dataset, print_function=silent)
    results = ground_truth.loadRes(result_rows(per_image, evaluation_naming(dataset)))
    evaluator = COCOeval_faster(ground_truth, results, "bbox", print_function=silent)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return float(evaluator.stats[0])


def seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=600, help="images timed per loader row")
    parser.add_argument("--eval-images", type=int, default=5000)
    args = parser.parse_args()

    rows = []
    config = SyntheticConfig()
    with tempfile.TemporaryDirectory() as folder:
        generation = seconds(lambda: ensure_synthetic(config, Path(folder) / "synthetic"))[0]
        rows.append((f"synthetic generation ({config.num_train} + {config.num_val} images)", f"{generation:.1f} s"))
        dataset = build_dataset(f"synthetic:{folder}/synthetic", "train")
        for min_size, max_size in ((600, 1000), (256, 400)):
            transform = DetectionTransform(PreprocessConfig(min_size=min_size, max_size=max_size), flip_prob=0.5)
            rate = loader_rate(dataset, transform, args.workers, args.images)
            rows.append((f"loader, {args.workers} workers, shorter side {min_size}, longer <= {max_size}",
                         f"{rate:.0f} images/s"))

    dataset, detections, proposals = evaluation_case(np.random.default_rng(0), args.eval_images, 100, 1000)
    per_image = detections_per_image(dataset, detections)
    case = f"{args.eval_images} images x 100 detections"
    rows.append((f"VOC AP, {case}", f"{seconds(lambda: voc_metrics(dataset, per_image))[0]:.2f} s"))
    for engine in ("fast", "pycocotools"):
        elapsed = seconds(lambda: coco_metrics(dataset, per_image, engine))[0]
        rows.append((f"COCO AP, engine {engine!r}, {case}", f"{elapsed:.2f} s"))
    elapsed, faster_ap = seconds(lambda: faster_coco_eval_ap(dataset, per_image))
    rows.append((f"COCO AP, faster-coco-eval COCOeval_faster, {case}", f"{elapsed:.2f} s"))
    total, metrics = seconds(lambda: evaluate_detections(dataset, detections))
    rows.append((f"evaluate_detections (both, fast COCO), {case}", f"{total:.2f} s"))
    recall_time = seconds(lambda: proposal_recall(dataset, proposals))[0]
    rows.append((f"proposal_recall, {args.eval_images} images x 1000 proposals", f"{recall_time:.2f} s"))

    width = max(len(name) for name, _ in rows)
    print(f"{'measure':<{width}}  result")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"(evaluation case: voc_map {metrics['voc_map']:.3f}, coco_ap {metrics['coco_ap']:.3f}; "
          f"faster-coco-eval's coco_ap differs by {abs(faster_ap - metrics['coco_ap']):.1e})")


if __name__ == "__main__":
    main()
