"""Report what a dataset holds and what is wrong with it: ``frcnn data``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..config import RunConfig
from ..data import SPEC_HELP, DetectionTransform, read_options
from ..data.report import LABELS_PLOT_NAME, check_data, format_report, plot_labels, stopping_problems
from .common import HelpFormatter, config_options, layered_config, say

DEFAULT_OUT = "runs/data"
REPORT_NAME = "report.json"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "data", parents=[common], formatter_class=HelpFormatter,
        help="report what a dataset holds and what is wrong with it",
        description="Read a dataset split as 'frcnn train' would and report it: images, objects per class,\n"
                    "background images, objects per image, box sizes (COCO small / medium / large, pixel\n"
                    "quantiles before and after the training resize), duplicate boxes, images listed twice,\n"
                    "and every problem with its file (and line or object). Writes labels.png and\n"
                    f"{REPORT_NAME} to --out. Exit status 1 when training with this configuration would stop\n"
                    "at a problem (data.on_bad / data.unknown_classes error), else 0.")
    parser.add_argument("data", nargs="?", metavar="SPEC",
                        help=f"the dataset: {SPEC_HELP} (default: the configuration's data.train, synthetic)")
    parser.add_argument("--split", help="the split to read (default: the configuration's data.train_split, train)")
    config_options(parser)
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help=f"where {LABELS_PLOT_NAME} and {REPORT_NAME} go (default: %(default)s)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the counts and the problem list (default: text)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = layered_config(RunConfig(), args)
    options = read_options(config.data)
    split = args.split or config.data.train_split
    report = check_data(config.data.train, split, options, config.data.synthetic,
                        DetectionTransform(config.model.preprocess))
    out = Path(args.out)
    write_json_atomic(out / REPORT_NAME, report.to_dict())
    picture = plot_labels(report, out / LABELS_PLOT_NAME)
    print(json.dumps(report.to_dict()) if args.json else format_report(report))
    say(f"wrote {picture} and {out / REPORT_NAME}")
    stopping = stopping_problems(report, options)
    if stopping:
        raise ValueError(f"{len(stopping)} problems would stop training (data.on_bad / data.unknown_classes "
                         f"error); the first: {stopping[0]}")
    return 0
