"""Evaluate a checkpoint or a results file: ``frcnn eval``."""
from __future__ import annotations

import argparse
from dataclasses import replace
from typing import Any

from .. import engine
from ..charts import PLOT_NAMES, plot_evaluation
from ..config import RunConfig, TrainConfig
from ..data import SPEC_HELP, DetectionDataset, DetectionTransform, open_dataset
from ..evaluation import Detections, evaluate_detections, read_results_json, write_results_json
from ..model import FasterRCNN
from ..precision import describe
from ..pretrained import read_checkpoint
from ..weights import run_config
from .common import HelpFormatter, device_option, precision_option, print_metrics, say


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "eval", parents=[common], formatter_class=HelpFormatter,
        help="evaluate a checkpoint or a results file",
        description="Evaluate a checkpoint on a dataset (VOC and COCO AP, RPN recall), or score a COCO-style\n"
                    "results file (--detections) against a dataset.")
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                        help="a checkpoint written by 'frcnn train' (model_final.pt or checkpoint.pt), "
                             "torchvision:ARCH:PATH or torchvision:ARCH (torchvision's published COCO weights)")
    parser.add_argument("--detections", metavar="RESULTS.json",
                        help="score this COCO-style results file instead of a checkpoint; needs --data "
                             "(default: none)")
    parser.add_argument("--data", metavar="SPEC",
                        help=f"evaluation data: {SPEC_HELP} (default: the checkpoint's validation data)")
    parser.add_argument("--split", help="the split of --data (default: the checkpoint's data.val_split, or val)")
    parser.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override keys of the checkpoint's configuration (or, with --detections, of "
                             "the default one), e.g. model.test.score_threshold=0.01 (default: none)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with every metric instead of the table (default: table)")
    parser.add_argument("--save-detections", metavar="RESULTS.json",
                        help="also write the checkpoint's detections as a COCO-style results file "
                             "(default: none)")
    parser.add_argument("--plots", metavar="DIR",
                        help="also write the precision-recall and F1 curves and the confusion matrices "
                             f"({', '.join(PLOT_NAMES)}) to DIR (default: none)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="images per batch (default: the "
                        f"configuration's train.eval_batch_size, {TrainConfig().eval_batch_size})")
    precision_option(parser, "the model")
    device_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.detections:
        return _eval_results_file(args)
    if not args.checkpoint:
        raise ValueError("give a CHECKPOINT, or --detections RESULTS.json with --data")
    device = engine.resolve_device(args.device)
    checkpoint = read_checkpoint(args.checkpoint)
    config = run_config(checkpoint, args.set)
    if args.precision:
        config = config.with_values({"model.test.precision": args.precision})
    model = FasterRCNN.load(checkpoint, device, config.model)
    data = config.data
    if args.data:
        data = replace(data, val=args.data)
    if args.split:
        data = replace(data, val_split=args.split)
    dataset = open_dataset(data, "val", model.class_names)
    batch_size = args.batch_size or config.train.eval_batch_size
    transform = DetectionTransform(config.model.preprocess)
    say(f"evaluating on {device} in {describe(config.model.test.precision, device, training=False)}")
    metrics, predictions = engine.evaluate(model, dataset, transform, device, batch_size, progress_bar=not args.json)
    if args.save_detections:
        write_results_json(args.save_detections, dataset, predictions.detections)
    print_metrics(metrics, dataset.class_names, args.json)
    if args.plots:
        _write_plots(args.plots, dataset, predictions.detections)
    return 0


def _eval_results_file(args: argparse.Namespace) -> int:
    if not args.data:
        raise ValueError("--detections needs --data, the dataset the results are of")
    if args.checkpoint:
        raise ValueError("give either a CHECKPOINT or --detections, not both")
    data = RunConfig().with_assignments(args.set).data
    dataset = open_dataset(replace(data, val=args.data, val_split=args.split or data.val_split), "val")
    detections = read_results_json(args.detections, dataset)
    metrics = evaluate_detections(dataset, detections)
    print_metrics(metrics, dataset.class_names, args.json)
    if args.plots:
        _write_plots(args.plots, dataset, detections)
    return 0


def _write_plots(folder: str, dataset: DetectionDataset, detections: Detections) -> None:
    paths, f1 = plot_evaluation(dataset, detections, folder)
    say(f"wrote {', '.join(map(str, paths.values()))} (the confusion matrices at the F1-best score threshold "
        f"{f1.best_threshold:.3f})")
