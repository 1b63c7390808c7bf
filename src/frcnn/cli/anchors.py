"""Draw the anchor targets of one image: ``frcnn anchors``."""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

import torch

from ..anchor_targets import assign_anchor_targets
from ..anchors import concat_anchors
from ..data import SPEC_HELP, collate
from ..engine import RunConfig
from ..viz import draw_anchor_targets, image_to_uint8, save_png
from .common import HelpFormatter, config_options, layered_config, new_model, say

DEFAULT_OUT = "runs/anchors.png"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "anchors", parents=[common], formatter_class=HelpFormatter,
        help="draw the RPN anchor targets of one image",
        description="Draw what the anchor target layer makes of one training image: ground-truth boxes\n"
                    "(green), positive anchors (red), sampled negative anchors (blue) and ignore regions\n"
                    "(gold), with the counts in the title. Anchors and target rules come from the model\n"
                    "configuration (--config, --set model.rpn.targets.positive_overlap=0.6, ...).")
    parser.add_argument("--data", metavar="SPEC", help=f"{SPEC_HELP} (default: synthetic)")
    parser.add_argument("--split", default="train", help="the split of --data (default: %(default)s)")
    parser.add_argument("--index", type=int, default=0, metavar="I",
                        help="the image's index in the split (default: %(default)s)")
    config_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the anchor sampling (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="FILE.png",
                        help="the picture to write (default: %(default)s)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = layered_config(RunConfig(), args)
    dataset = replace(config.data, train_split=args.split).dataset("train")
    if not 0 <= args.index < len(dataset):
        raise ValueError(f"--index {args.index} is outside the {len(dataset)} images of {config.data.train} "
                         f"{args.split}")
    transform = config.transform(training=False)
    batch = collate([dataset.with_transform(transform)[args.index]])
    torch.manual_seed(args.seed)
    model = new_model(config, len(dataset.class_names)).eval()
    with torch.no_grad():
        features = model.backbone(batch.images)
    grids = model.anchor_grids(features)
    targets = assign_anchor_targets(grids, batch.gt_boxes, batch.num_boxes, batch.im_info, config.model.rpn.targets,
                                    torch.Generator().manual_seed(args.seed), batch.ignore_boxes, batch.num_ignore)
    anchors, labels = concat_anchors(grids), targets.labels[0]
    height, width = (int(v) for v in batch.im_info[0, :2])
    image = image_to_uint8(batch.images[0, :, :height, :width], transform.mean, transform.std, 255.0)
    gt = batch.gt_boxes[0, :int(batch.num_boxes[0]), :4]
    ignore = batch.ignore_boxes[0, :int(batch.num_ignore[0])]
    positives, negatives = anchors[labels == 1], anchors[labels == 0]
    title = (f"{config.data.train} {args.split} #{args.index} ({width}x{height}): {len(gt)} gt boxes (green), "
             f"{len(positives)} positive anchors (red), {len(negatives)} sampled negatives (blue), "
             f"{len(ignore)} ignore regions (gold); {len(anchors)} anchors")
    names = [dataset.class_names[int(label) - 1] for label in batch.gt_boxes[0, :len(gt), 4]]
    path = save_png(draw_anchor_targets(image, gt, names, positives, negatives, ignore, title), args.out)
    say(title)
    say(f"wrote {path}")
    return 0
