"""Export a checkpoint for deployment: ``frcnn export``."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..model import FasterRCNN
from .common import HelpFormatter, say


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    from ..deploy.export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    parser = commands.add_parser(
        "export", parents=[common], formatter_class=HelpFormatter,
        help="export a checkpoint as an ONNX model that onnxruntime runs",
        description="Write a checkpoint as one ONNX graph: float32 RGB images (B, 3, H, W) in [0, 1] in, any\n"
                    "batch size and image size, the model's preprocessing inside; boxes (B, D, 4) in the\n"
                    "input pixels, scores, labels and counts out; the class names in the metadata. Before\n"
                    "reporting success it runs the export with onnxruntime and the checkpoint with PyTorch\n"
                    "on a few images and checks that the detections agree (docs/deploy.md).")
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a checkpoint written by 'frcnn train', torchvision:ARCH:PATH, or torchvision:ARCH "
                             "(torchvision's published COCO weights, downloaded once into torch's hub cache)")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="(default: %(default)s)")
    parser.add_argument("--out", metavar="FILE.onnx",
                        help="where to write the model (default: the checkpoint's path with .onnx)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..deploy.export import check_parity, export_onnx, parity_images
    from ..deploy.runtime import OnnxDetector

    model = FasterRCNN.load(args.checkpoint)
    default = Path(args.checkpoint.split(":")[-1]).with_suffix(".onnx")
    out = Path(args.out) if args.out else default
    try:
        export_onnx(model, out, args.opset)
    except ValueError as error:
        raise ValueError(f"{args.checkpoint}: {error}") from error
    parity = check_parity(model, OnnxDetector(out), parity_images(model))
    if not parity.ok:
        out.unlink()
        raise ValueError(f"{args.checkpoint}: onnxruntime's detections differ from PyTorch's ({parity.describe()}); "
                         "nothing written")
    say(f"checked against PyTorch: {parity.describe()}")
    say(f"wrote {out} (opset {args.opset}, {len(model.class_names)} classes)")
    return 0
