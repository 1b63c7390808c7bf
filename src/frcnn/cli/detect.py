"""Run a checkpoint or an exported ONNX model on images: ``frcnn detect``."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from .. import engine
from ..atomic import write_json_atomic
from ..draw import draw_detections, load_image, save_png
from .common import HelpFormatter, device_option, precision_option, say

DEFAULT_OUT = "runs/detect"
DETECTIONS_NAME = "detections.json"
IMAGES_NAME = "images.json"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "detect", parents=[common], formatter_class=HelpFormatter,
        help="run a checkpoint or an exported .onnx model on images",
        description="Run a checkpoint (PyTorch) or a model written by 'frcnn export' (onnxruntime) on images:\n"
                    f"{DETECTIONS_NAME}, a COCO results file (bbox [x, y, w, h] in the images' pixels,\n"
                    f"category_id = label), {IMAGES_NAME} with the COCO image and category lists its ids\n"
                    "refer to, and with --save-images one PNG per image with the detections drawn.")
    parser.add_argument("model", metavar="MODEL",
                        help="a checkpoint written by 'frcnn train', torchvision:ARCH:PATH, torchvision:ARCH "
                             "(torchvision's published COCO weights, downloaded once into torch's hub cache), "
                             "or FILE.onnx")
    parser.add_argument("images", nargs="+", metavar="IMAGES",
                        help="image files, folders (their image files) or glob patterns such as 'photos/**/*.jpg'")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N",
                        help="images per forward pass (default: %(default)s); an ONNX model runs each run of "
                             "equally sized images of a batch as one call")
    parser.add_argument("--score-threshold", type=float, default=0.5, metavar="T",
                        help="keep detections scoring at least T (default: %(default)s)")
    parser.add_argument(
        "--save-images", action="store_true", help="also write the pictures with the detections (default: off)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (default: a bar on stderr)")
    precision_option(parser, "a checkpoint")
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


def _detector(spec: str, device_name: str, precision: str | None) -> tuple[Any, list[str], str]:
    """The predict function of ``spec`` (an .onnx file or a checkpoint) in ``precision`` (None: the
    checkpoint's model.test.precision), its class names, and what it computes in."""
    if spec.endswith(".onnx"):
        from ..deploy.runtime import OnnxDetector

        if precision not in (None, "fp32"):
            raise ValueError(f"--precision {precision} is for checkpoints: {spec}, an exported model, computes in fp32")
        detector = OnnxDetector(spec)
        return detector.predict, detector.class_names, "fp32 (onnxruntime)"
    from ..model import FasterRCNN
    from ..precision import describe

    device = engine.resolve_device(device_name)
    model = FasterRCNN.load(spec, device)
    numerics = f"{describe(precision or model.config.test.precision, device, training=False)} on {device}"
    return partial(model.predict, precision=precision), list(model.class_names), numerics


def run(args: argparse.Namespace) -> int:
    from ..deploy.files import coco_results, detect_files, find_images

    predict, class_names, numerics = _detector(args.model, args.device, args.precision)
    paths = find_images(args.images)
    out = Path(args.out)
    found = []
    for detections, stem in zip(detect_files(predict, paths, args.batch_size, args.score_threshold,
                                             progress_bar=not args.no_progress), _unique_stems(paths)):
        found.append(detections)
        if args.save_images:
            picture = draw_detections(load_image(detections.path), detections.boxes, detections.labels,
                                      detections.scores, class_names)
            save_png(picture, out / f"{stem}.png")
    results, images = coco_results(found, class_names)
    write_json_atomic(out / DETECTIONS_NAME, results)
    write_json_atomic(out / IMAGES_NAME, images)
    pictures = f", {len(found)} pictures" if args.save_images else ""
    say(f"{len(results)} detections on {len(found)} images in {numerics} -> {out / DETECTIONS_NAME} "
        f"({out / IMAGES_NAME}{pictures})")
    return 0
