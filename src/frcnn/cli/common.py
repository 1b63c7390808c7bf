"""What the commands share: configuration options, output helpers."""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .. import engine
from ..config import RunConfig
from ..model import FasterRCNN
from ..precision import PRECISIONS

CONFIG_NAME = "config.yaml"

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; option help is wrapped."""

def device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda or cuda:N; auto uses the GPU when there is one (default: %(default)s)")

def precision_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--precision", choices=PRECISIONS,
                        help=f"what {what} computes in: fp32, bf16, fp16 (GPUs) or auto, bf16 where the device has "
                             "it natively, else fp32 (default: the configuration's model.test.precision, auto)")

def config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="a YAML file with any part of the configuration (sections model, train, data), "
                             "laid over the defaults (default: none)")
    parser.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override configuration keys by dotted name, after --config, e.g. "
                             "train.lr=0.01 model.head.fc_dim=512 model.preprocess.min_size=480 (default: none)")

def layered_config(base: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``base``, then --config, then --set, then the command's own options."""
    config = base
    if getattr(args, "config", None):
        config = config.with_yaml_file(args.config)
    return config.with_assignments(args.set).with_values(option_values(args))

def option_values(args: argparse.Namespace) -> dict[str, Any]:
    """The command's options that are configuration keys, by dotted key (those given only)."""
    values = {"data.train": getattr(args, "data", None), "data.val": getattr(args, "val_data", None),
              "train.epochs": getattr(args, "epochs", None), "train.batch_size": getattr(args, "batch_size", None),
              "train.seed": getattr(args, "seed", None) if args.command == "train" else None}
    values = {key: value for key, value in values.items() if value is not None}
    minutes = getattr(args, "max_minutes", None)
    if minutes is not None:
        values["train.max_minutes"] = None if minutes == 0 else minutes
    elif "train.epochs" in values:
        values["train.max_minutes"] = None
    return values

def new_model(config: RunConfig, num_classes: int) -> torch.nn.Module:
    return FasterRCNN(num_classes, config=config.model)

def print_metrics(metrics: Mapping[str, float], class_names: Sequence[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(engine.json_safe(metrics)))
    else:
        print(format_metrics(metrics, class_names))

def format_metrics(metrics: Mapping[str, float], class_names: Sequence[str]) -> str:
    """The headline metrics, then the per-class VOC07 and COCO AP, as an aligned text table; the
    classes with neither (no objects in the data, e.g. COCO weights on a few of COCO's classes)
    are counted in one line rather than listed."""
    def shown(value: float | None) -> str:
        return "-" if undefined(value) else f"{value:.4f}"

    def undefined(value: float | None) -> bool:
        return value is None or (isinstance(value, float) and math.isnan(value))

    lines = [f"{'metric':<20} value"]
    lines += [f"{name:<20} {shown(metrics[name])}" for name in engine.HEADLINE if name in metrics]
    if any(f"voc07_ap/{name}" in metrics for name in class_names):
        scores = {name: (metrics.get(f"voc07_ap/{name}"), metrics.get(f"coco_ap/{name}")) for name in class_names}
        listed = [name for name, (voc, coco) in scores.items() if not (undefined(voc) and undefined(coco))]
        lines.append("")
        lines.append(f"{'class':<20} {'voc07_ap':>8} {'coco_ap':>8}")
        lines += [f"{name:<20} {shown(scores[name][0]):>8} {shown(scores[name][1]):>8}" for name in listed]
        if len(listed) < len(class_names):
            lines.append(f"({len(class_names) - len(listed)} more classes of the model have no objects in the data)")
    return "\n".join(lines)

def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
