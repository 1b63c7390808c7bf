"""``frcnn anchors``: draw the anchor targets of one image, or (``--fit``) measure how the anchors
fit a whole dataset and (``--suggest``) search better ones (docs/anchors.md)."""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..analysis import anchor_report, format_report, save_report
from ..analysis.anchor_search import SAMPLE_IMAGES
from ..anchor_targets import assign_anchor_targets
from ..anchors import concat_anchors
from ..config import BACKBONES, RunConfig, default_config
from ..data import SPEC_HELP, DetectionDataset, DetectionTransform, collate, open_dataset
from ..draw import draw_anchor_targets, image_to_uint8, save_png
from ..model import FasterRCNN
from ..pretrained import read_checkpoint
from ..weights import run_config
from .common import HelpFormatter, config_options, layered_config, new_model, say

DEFAULT_OUT = "runs/anchors.png"
DEFAULT_FIT_OUT = "runs/anchors"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "anchors", parents=[common], formatter_class=HelpFormatter,
        help="draw the RPN anchor targets of one image, or measure how the anchors fit a dataset",
        description="Draw what the anchor target layer makes of one training image: ground-truth boxes\n"
                    "(green), positive anchors (red), sampled negative anchors (blue) and ignore regions\n"
                    "(gold), with the counts in the title. Anchors and target rules come from the model\n"
                    "configuration (--config, --set model.rpn.targets.positive_overlap=0.6, ...).\n\n"
                    "--fit runs the anchor target layer (sampling off) over every image of the split and\n"
                    "reports which gt boxes some positive anchor covers with IoU >= positive_overlap;\n"
                    "--suggest also searches scales and ratios that cover more and writes anchors.yaml\n"
                    "for 'frcnn train --config'. See docs/anchors.md.")
    parser.add_argument("--data", metavar="SPEC", help=f"{SPEC_HELP} (default: synthetic)")
    parser.add_argument("--split", default="train", help="the split of --data (default: %(default)s)")
    parser.add_argument("--index", type=int, default=0, metavar="I",
                        help="the image's index in the split (default: %(default)s)")
    parser.add_argument("--backbone", choices=BACKBONES,
                        help="the recipe the configuration starts from, as in frcnn train (default: small)")
    parser.add_argument("--fpn", action="store_true", help="the recipe with a feature pyramid (default: off)")
    parser.add_argument("--checkpoint", metavar="CHECKPOINT",
                        help="start from this checkpoint's configuration, weights and class names instead of a "
                             "recipe: a file 'frcnn train' wrote, torchvision:ARCH[:PATH] (default: none)")
    config_options(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the anchor sampling, and of --suggest's sample (default: %(default)s)")
    parser.add_argument("--fit", action="store_true",
                        help="measure the anchors' coverage of every gt box of the split (default: off)")
    parser.add_argument("--suggest", action="store_true",
                        help="with --fit: search better scales and ratios, write anchors.yaml (default: off)")
    parser.add_argument("--anchors-per-cell", type=int, metavar="N",
                        help="--suggest: anchors per feature cell (default: as many as now)")
    parser.add_argument("--sample-images", type=int, default=SAMPLE_IMAGES, metavar="N",
                        help="--suggest: images the search scores candidates on (default: %(default)s)")
    parser.add_argument(
        "--json", action="store_true", help="--fit: print the report as one JSON object (default: a table)"
    )
    parser.add_argument("--out", metavar="PATH",
                        help=f"the picture to write (default: {DEFAULT_OUT}); with --fit the folder for "
                             f"anchors_fit.json, anchors_fit.png and anchors.yaml (default: {DEFAULT_FIT_OUT})")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.suggest or args.json or args.anchors_per_cell is not None:
        if not args.fit:
            raise ValueError("--suggest, --json and --anchors-per-cell need --fit")
    config, model = _configured_model(args)
    class_names = None if model is None else model.class_names
    dataset = open_dataset(replace(config.data, train_split=args.split), "train", class_names)
    if args.fit:
        return run_fit(args, config, dataset)
    if not 0 <= args.index < len(dataset):
        raise ValueError(f"--index {args.index} is outside the {len(dataset)} images of {config.data.train} "
                         f"{args.split}")
    transform = DetectionTransform(config.model.preprocess)
    batch = collate([dataset.with_transform(transform)[args.index]])
    if model is None:
        torch.manual_seed(args.seed)
        model = new_model(config, len(dataset.class_names)).eval()
    with torch.no_grad():
        features = model.backbone(batch.images)
    grids = model.anchor_grids(features, batch.images.shape[-2:])
    targets = assign_anchor_targets(grids, batch.gt_boxes, batch.num_boxes, batch.im_info, config.model.rpn.targets,
                                    torch.Generator().manual_seed(args.seed), batch.ignore_boxes, batch.num_ignore)
    anchors, labels = concat_anchors(grids), targets.labels[0]
    height, width = (int(v) for v in batch.im_info[0, :2])
    image = image_to_uint8(batch.images[0, :, :height, :width], config.model.preprocess.mean,
                           config.model.preprocess.std, 255.0)
    gt = batch.gt_boxes[0, :int(batch.num_boxes[0]), :4]
    ignore = batch.ignore_boxes[0, :int(batch.num_ignore[0])]
    positives, negatives = anchors[labels == 1], anchors[labels == 0]
    title = (f"{config.data.train} {args.split} #{args.index} ({width}x{height}): {len(gt)} gt boxes (green), "
             f"{len(positives)} positive anchors (red), {len(negatives)} sampled negatives (blue), "
             f"{len(ignore)} ignore regions (gold); {len(anchors)} anchors")
    names = [dataset.class_names[int(label) - 1] for label in batch.gt_boxes[0, :len(gt), 4]]
    path = save_png(draw_anchor_targets(image, gt, names, positives, negatives, ignore, title),
                    args.out or DEFAULT_OUT)
    say(title)
    say(f"wrote {path}")
    return 0


def _configured_model(args: argparse.Namespace) -> tuple[RunConfig, FasterRCNN | None]:
    """The configuration (a recipe or ``--checkpoint``'s, then --config, --set and the options)
    and the checkpoint's model (None without one)."""
    if args.checkpoint is None:
        return layered_config(RunConfig(model=default_config(args.backbone or "small", args.fpn)), args), None
    if args.backbone is not None or args.fpn:
        raise ValueError("--checkpoint brings its own model: give it without --backbone and --fpn")
    checkpoint = read_checkpoint(args.checkpoint)
    config = layered_config(run_config(checkpoint), args)
    return config, FasterRCNN.load(checkpoint, "cpu", config.model)


def run_fit(args: argparse.Namespace, config: RunConfig, dataset: DetectionDataset) -> int:
    out = Path(args.out or DEFAULT_FIT_OUT)
    say(f"fitting the anchors to {config.data.train} {args.split} ({len(dataset)} images)")
    report = anchor_report(dataset, config.model, suggest=args.suggest, anchors_per_cell=args.anchors_per_cell,
                           keep_difficult=config.data.keep_difficult, sample_images=args.sample_images,
                           seed=args.seed, progress=say)
    written = save_report(report, config.model, out)
    print(json.dumps(report.summary) if args.json else format_report(report.summary))
    say(f"wrote {', '.join(map(str, written))}")
    return 0
