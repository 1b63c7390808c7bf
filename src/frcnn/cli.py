"""The ``frcnn`` command line: train, eval, detect, anchors.

Every command reports an error as one line (``frcnn COMMAND: error: ...``) and exits with
status 1; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from . import engine
from .anchor_targets import assign_anchor_targets
from .anchors import concat_anchors
from .config import BACKBONES, default_config
from .data import SPEC_HELP, DatasetError, DetectionDataset, ImageAnnotation, collate
from .engine import RunConfig
from .evaluation import evaluate_detections, read_results_json, write_results_json
from .model import FasterRCNN
from .viz import draw_anchor_targets, draw_detections, image_to_uint8, load_image, save_png

DEFAULT_TRAIN_OUT = "runs/train"
DEFAULT_DETECT_OUT = "runs/detect"
DEFAULT_ANCHORS_OUT = "runs/anchors.png"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "config.yaml"
DETECTIONS_NAME = "detections.json"


# ----------------------------------------------------------------------------- the parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions keep their line breaks; option help is wrapped."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frcnn", formatter_class=_HelpFormatter,
        description="Faster R-CNN: train a detector, evaluate it, run it on images, and look at the "
                    "anchor target layer.",
        epilog="Run 'frcnn COMMAND --help' for a command's options. 'frcnn train' with no options trains "
               "on the embedded synthetic data and prints the metrics.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error (default: one line)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, add in (("train", _add_train), ("eval", _add_eval), ("detect", _add_detect),
                      ("anchors", _add_anchors)):
        add(commands, common)
    return parser


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cpu, cuda or cuda:N; auto uses the GPU when there is one (default: %(default)s)")


def _config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="a YAML file with any part of the configuration (sections model, train, data), "
                             "laid over the defaults (default: none)")
    parser.add_argument("--set", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override configuration keys by dotted name, after --config, e.g. "
                             "train.lr=0.01 model.head.fc_dim=512 data.min_size=480 (default: none)")


def _add_train(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "train", parents=[common], formatter_class=_HelpFormatter,
        help="train a detector (default: on the synthetic data)",
        description="Train a Faster R-CNN, evaluate it on the validation split and print the metrics.\n"
                    "Writes to --out: checkpoint.pt (resumable), model_final.pt, config.yaml, log.jsonl,\n"
                    "loss.png and metrics.json. Distributed: torchrun --nproc_per_node N -m frcnn train ...")
    parser.add_argument("--data", metavar="SPEC",
                        help=f"training data: {SPEC_HELP} (default: synthetic, or the configuration's "
                             "data.train)")
    parser.add_argument("--val-data", metavar="SPEC",
                        help="evaluation data, same forms; a COCO spec names its split by its annotation "
                             "file, so give the validation file here (default: the training spec, split "
                             "data.val_split)")
    _config_options(parser)
    parser.add_argument("--backbone", choices=BACKBONES, default="small",
                        help="the model recipe to start from (default: %(default)s)")
    parser.add_argument("--fpn", action="store_true", help="add a feature pyramid to the recipe (default: off)")
    parser.add_argument("--out", default=DEFAULT_TRAIN_OUT, metavar="DIR",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--epochs", type=float, metavar="N",
                        help="train N passes over the training set, with no time limit unless --max-minutes "
                             "is given (default: the configuration's train.epochs, none)")
    parser.add_argument("--max-minutes", type=float, metavar="M",
                        help="stop training after M minutes, the learning rate decaying to that deadline; "
                             f"0: no time limit (default: {engine.TrainConfig().max_minutes:g}, "
                             "or none when --epochs is given)")
    parser.add_argument("--batch-size", type=int, metavar="B",
                        help=f"images per iteration and process (default: {engine.TrainConfig().batch_size})")
    parser.add_argument("--seed", type=int, help=f"random seed (default: {engine.TrainConfig().seed})")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its checkpoint.pt, with the configuration "
                             "stored there (options given here still apply) (default: start afresh)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the evaluation at the end (default: evaluate)")
    _device_option(parser)
    parser.set_defaults(handler=run_train)


def _add_eval(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "eval", parents=[common], formatter_class=_HelpFormatter,
        help="evaluate a checkpoint or a results file",
        description="Evaluate a checkpoint on a dataset (VOC and COCO AP, RPN recall), or score a COCO-style\n"
                    "results file (--detections) against a dataset.")
    parser.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                        help="a checkpoint written by 'frcnn train' (model_final.pt or checkpoint.pt)")
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
    parser.add_argument("--batch-size", type=int, metavar="B", help="images per batch (default: the "
                        f"configuration's train.eval_batch_size, {engine.TrainConfig().eval_batch_size})")
    _device_option(parser)
    parser.set_defaults(handler=run_eval)


def _add_detect(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "detect", parents=[common], formatter_class=_HelpFormatter,
        help="draw a checkpoint's detections on images",
        description="Run a checkpoint on image files: one PNG per image with the boxes, class names and\n"
                    f"scores drawn, and {DETECTIONS_NAME} with every detection (original pixel coordinates).")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint written by 'frcnn train'")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--out", default=DEFAULT_DETECT_OUT, metavar="DIR",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--score-threshold", type=float, default=0.5, metavar="T",
                        help="keep detections scoring at least T (default: %(default)s)")
    _device_option(parser)
    parser.set_defaults(handler=run_detect)


def _add_anchors(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "anchors", parents=[common], formatter_class=_HelpFormatter,
        help="draw the RPN anchor targets of one image",
        description="Draw what the anchor target layer makes of one training image: ground-truth boxes\n"
                    "(green), positive anchors (red), sampled negative anchors (blue) and ignore regions\n"
                    "(gold), with the counts in the title. Anchors and target rules come from the model\n"
                    "configuration (--config, --set model.rpn.targets.positive_overlap=0.6, ...).")
    parser.add_argument("--data", metavar="SPEC", help=f"{SPEC_HELP} (default: synthetic)")
    parser.add_argument("--split", default="train", help="the split of --data (default: %(default)s)")
    parser.add_argument("--index", type=int, default=0, metavar="I",
                        help="the image's index in the split (default: %(default)s)")
    _config_options(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the anchor sampling (default: %(default)s)")
    parser.add_argument("--out", default=DEFAULT_ANCHORS_OUT, metavar="FILE.png",
                        help="the picture to write (default: %(default)s)")
    parser.set_defaults(handler=run_anchors)


# ----------------------------------------------------------------------------- configuration


def _layered_config(base: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``base``, then --config, then --set, then the command's own options."""
    config = base
    if getattr(args, "config", None):
        config = config.with_yaml_file(args.config)
    return config.with_assignments(args.set).with_values(_option_values(args))


def _option_values(args: argparse.Namespace) -> dict[str, Any]:
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


def _train_config(args: argparse.Namespace) -> RunConfig:
    """The run's configuration: the stored one when resuming, else the chosen recipe; then the
    command line."""
    checkpoint = Path(args.out) / engine.CHECKPOINT_NAME
    if args.resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint} does not exist")
        base = RunConfig.from_dict(engine.load_checkpoint(checkpoint)["config"])
    else:
        base = RunConfig(model=default_config(args.backbone, args.fpn))
    return _layered_config(base, args)


# ----------------------------------------------------------------------------- train


def run_train(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    device = engine.resolve_device(args.device)
    context = engine.init_distributed(device)
    try:
        config = _train_config(args)
        out = Path(args.out)
        train_set, val_set = _datasets_rank0_first(config, context, need_val=not args.no_eval)
        engine.seed_everything(config.train.seed)
        model = _new_model(config, len(train_set.class_names))
        if context.is_main:
            out.mkdir(parents=True, exist_ok=True)
            (out / CONFIG_NAME).write_text(config.to_yaml())
            _say(f"training on {config.data.train} ({len(train_set)} images, {len(train_set.class_names)} classes) "
                 f"on {device}" + (f" x {context.world_size} processes" if context.distributed else "")
                 + f"; writing to {out}")
        trainer = engine.Trainer(
            model, train_set.with_transform(config.data.transform(training=True)),
            _collate_for(config), config.train, out, device=device, context=context,
            metadata={"config": config.to_dict(), "class_names": list(train_set.class_names)})
        result = trainer.run(resume=args.resume)
        if not context.is_main:
            return 0
        _say(f"trained {result.iterations} iterations in {result.elapsed_s / 60:.1f} min; "
             f"wrote {result.final_model}, {result.log}, {result.loss_plot}")
        if not args.no_eval:
            metrics, _ = engine.evaluate(model, val_set, config.data.transform(training=False),
                                         device, config.train.eval_batch_size, progress_bar=True)
            _write_json(out / METRICS_NAME, engine.json_safe(metrics))
            print(format_metrics(metrics, val_set.class_names))
            _say(f"wrote {out / METRICS_NAME}")
        _say(f"total time {(time.perf_counter() - started) / 60:.1f} min")
        return 0
    finally:
        engine.shutdown_distributed()


def _datasets_rank0_first(config: RunConfig, context: engine.DistContext,
                          need_val: bool) -> tuple[DetectionDataset, DetectionDataset | None]:
    """The training and evaluation sets; rank 0 reads (or generates) them before the others."""
    def load() -> tuple[DetectionDataset, DetectionDataset | None]:
        train_set = config.data.dataset("train")
        val_set = config.data.dataset("val") if need_val and context.is_main else None
        if val_set is not None and tuple(val_set.class_names) != tuple(train_set.class_names):
            raise ValueError(f"the evaluation data's classes {list(val_set.class_names)} differ from the "
                             f"training data's {list(train_set.class_names)}")
        return train_set, val_set

    if context.is_main:
        loaded = load()
        engine.barrier(context)
        return loaded
    engine.barrier(context)
    return load()


def _collate_for(config: RunConfig) -> Callable:
    return partial(collate, keep_difficult=config.data.keep_difficult)


def _new_model(config: RunConfig, num_classes: int) -> torch.nn.Module:
    return FasterRCNN(num_classes, config=config.model)


# ----------------------------------------------------------------------------- eval


def _load_model(path: str, device: torch.device,
                assignments: Sequence[str] = ()) -> tuple[torch.nn.Module, RunConfig, list[str]]:
    """The model of a checkpoint, in eval mode on ``device``, its configuration and class names."""
    payload = engine.load_checkpoint(path)
    config = RunConfig.from_dict(payload["config"]).with_assignments(assignments)
    class_names = list(payload["class_names"])
    model = _new_model(config, len(class_names))
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as error:
        raise ValueError(f"{path}: the weights do not fit the model its configuration describes "
                         f"({str(error).splitlines()[0]})") from error
    return model.to(device).eval(), config, class_names


def run_eval(args: argparse.Namespace) -> int:
    if args.detections:
        return _eval_results_file(args)
    if not args.checkpoint:
        raise ValueError("give a CHECKPOINT, or --detections RESULTS.json with --data")
    device = engine.resolve_device(args.device)
    model, config, class_names = _load_model(args.checkpoint, device, args.set)
    data = config.data
    if args.data:
        data = replace(data, val=args.data)
    if args.split:
        data = replace(data, val_split=args.split)
    dataset = data.dataset("val")
    if list(dataset.class_names) != class_names:
        raise ValueError(f"the checkpoint detects {class_names}, but the data's classes are "
                         f"{list(dataset.class_names)}")
    batch_size = args.batch_size or config.train.eval_batch_size
    metrics, predictions = engine.evaluate(model, dataset, data.transform(training=False), device, batch_size,
                                           progress_bar=not args.json)
    if args.save_detections:
        write_results_json(args.save_detections, dataset, predictions.detections)
    _print_metrics(metrics, dataset.class_names, args.json)
    return 0


def _eval_results_file(args: argparse.Namespace) -> int:
    if not args.data:
        raise ValueError("--detections needs --data, the dataset the results are of")
    if args.checkpoint:
        raise ValueError("give either a CHECKPOINT or --detections, not both")
    data = RunConfig().with_assignments(args.set).data
    dataset = replace(data, val=args.data, val_split=args.split or data.val_split).dataset("val")
    metrics = evaluate_detections(dataset, read_results_json(args.detections, dataset))
    _print_metrics(metrics, dataset.class_names, args.json)
    return 0


def _print_metrics(metrics: Mapping[str, float], class_names: Sequence[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(engine.json_safe(metrics)))
    else:
        print(format_metrics(metrics, class_names))


def format_metrics(metrics: Mapping[str, float], class_names: Sequence[str]) -> str:
    """The headline metrics, then the per-class VOC07 and COCO AP, as an aligned text table."""
    def shown(value: float | None) -> str:
        return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"

    lines = [f"{'metric':<20} value"]
    lines += [f"{name:<20} {shown(metrics[name])}" for name in engine.HEADLINE if name in metrics]
    if any(f"voc07_ap/{name}" in metrics for name in class_names):
        lines.append("")
        lines.append(f"{'class':<20} {'voc07_ap':>8} {'coco_ap':>8}")
        lines += [f"{name:<20} {shown(metrics.get(f'voc07_ap/{name}')):>8} {shown(metrics.get(f'coco_ap/{name}')):>8}"
                  for name in class_names]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- detect


def _image_annotation(path: Path, index: int) -> ImageAnnotation:
    """An image file as an annotation with no objects (its size read from the header)."""
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(f"{path}: cannot read the image: {error}") from error
    empty = np.zeros((0, 4), dtype=np.float32)
    no_labels = np.zeros(0, dtype=np.int64)
    return ImageAnnotation(path, index, height, width, empty, no_labels, np.zeros(0, dtype=bool),
                           np.zeros(0), empty, no_labels)


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, with a numeric suffix where two images share one."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}_{count}")
    return stems


def run_detect(args: argparse.Namespace) -> int:
    device = engine.resolve_device(args.device)
    model, config, class_names = _load_model(args.checkpoint, device)
    paths = [Path(p) for p in args.images]
    images = DetectionDataset(tuple(_image_annotation(p, i) for i, p in enumerate(paths)), tuple(class_names),
                              "voc")
    predictions = engine.predict(model, images, config.data.transform(training=False), device,
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
        _say(f"{path}: {len(report[-1]['detections'])} detections -> {picture}")
    _write_json(out / DETECTIONS_NAME, report)
    _say(f"wrote {out / DETECTIONS_NAME}")
    return 0


# ----------------------------------------------------------------------------- anchors


def run_anchors(args: argparse.Namespace) -> int:
    config = _layered_config(RunConfig(), args)
    dataset = replace(config.data, train_split=args.split).dataset("train")
    if not 0 <= args.index < len(dataset):
        raise ValueError(f"--index {args.index} is outside the {len(dataset)} images of {config.data.train} "
                         f"{args.split}")
    transform = config.data.transform(training=False)
    batch = collate([dataset.with_transform(transform)[args.index]])
    torch.manual_seed(args.seed)
    model = _new_model(config, len(dataset.class_names)).eval()
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
    _say(title)
    _say(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- entry point


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n")


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    message = text[0] if text else type(error).__name__
    expected = (ValueError, OSError, engine.TrainingError, DatasetError)
    return message if isinstance(error, expected) else f"{type(error).__name__}: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status: 0 done, 1 error, 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        hint = "; --resume continues from the last checkpoint in --out" if args.command == "train" else ""
        print(f"frcnn {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
    except Exception as error:  # every error ends as one line unless --debug
        if args.debug:
            raise
        print(f"frcnn {args.command}: error: {_one_line(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
