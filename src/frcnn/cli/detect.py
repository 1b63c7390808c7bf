"""Run a checkpoint on image files: ``frcnn detect``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import engine
from ..data import DetectionDataset, image_annotation
from ..viz import draw_detections, load_image, save_png
from .common import HelpFormatter, device_option, load_model, say, write_json

DEFAULT_OUT = "runs/detect"
DETECTIONS_NAME = "detections.json"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "detect", parents=[common], formatter_class=HelpFormatter,
        help="draw a checkpoint's detections on images",
        description="Run a checkpoint on image files: one PNG per image with the boxes, class names and\n"
                    f"scores drawn, and {DETECTIONS_NAME} with every detection (original pixel coordinates).")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by 'frcnn train'")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--score-threshold", type=float, default=0.5, metavar="T",
                        help="keep detections scoring at least T (default: %(default)s)")
    device_option(parser)
    parser.set_defaults(handler=run)


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, with a numeric suffix where two images share one."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return stems


def run(args: argparse.Namespace) -> int:
    device = engine.resolve_device(args.device)
    model, config, class_names = load_model(args.checkpoint, device)
    paths = [Path(p) for p in args.images]
    images = DetectionDataset(tuple(image_annotation(p, i) for i, p in enumerate(paths)), tuple(class_names),
                              "voc")
    predictions = engine.predict(model, images, config.transform(training=False), device,
                                 config.train.eval_batch_size)
    out = Path(args.out)
    report = []
    for path, stem, found in zip(paths, _unique_stems(paths), predictions.detections):
        keep = found["scores"] >= args.score_threshold
        boxes, scores, labels = (torch.from_numpy(found[key][keep]) for key in ("boxes", "scores", "labels"))
        picture = save_png(draw_detections(load_image(path), boxes, labels, scores, class_names), out / f"{stem}.png")
        report.append({"image": str(path), "picture": str(picture), "detections": [
            {"box": [round(v, 2) for v in box], "score": round(score, 4), "label": label,
             "class": class_names[label - 1]}
            for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist())]})
        say(f"{path}: {len(report[-1]['detections'])} detections -> {picture}")
    write_json(out / DETECTIONS_NAME, report)
    say(f"wrote {out / DETECTIONS_NAME}")
    return 0
