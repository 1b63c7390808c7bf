"""Train a detector: ``frcnn train``."""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from .. import engine
from ..atomic import write_text_atomic
from ..config import BACKBONES, RunConfig, TrainConfig, default_config
from ..data import SPEC_HELP, DetectionDataset, DetectionTransform, collate, open_dataset, training_transform
from ..data.report import data_report, summary
from ..precision import describe
from ..pretrained import read_checkpoint
from ..weights import init_weights
from .common import (
    CONFIG_NAME,
    HelpFormatter,
    config_options,
    device_option,
    format_metrics,
    layered_config,
    new_model,
    say,
)

DEFAULT_OUT = "runs/train"


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "train", parents=[common], formatter_class=HelpFormatter,
        help="train a detector (default: on the synthetic data)",
        description="Train a Faster R-CNN, evaluating it on the validation split while it trains and at the\n"
                    "end, and print the final metrics. Writes to --out: checkpoint.pt (resumable), model_final.pt,\n"
                    "model_best.pt, config.yaml, log.jsonl, loss.png, results.csv, results.png, metrics.json,\n"
                    "TensorBoard events and the pictures of docs/train.md. Ctrl-C (or SIGTERM) stops after the\n"
                    "current step with a checkpoint (exit 130 / 143). Distributed: torchrun --nproc_per_node N\n"
                    "-m frcnn train ..., several nodes with torchrun's --nnodes and --rdzv-endpoint, or srun under\n"
                    "SLURM; --resume auto makes one command serve the first start and every restart (docs/train.md).")
    parser.add_argument("--data", metavar="SPEC",
                        help=f"training data: {SPEC_HELP} (default: synthetic, or the configuration's "
                             "data.train)")
    parser.add_argument("--val-data", metavar="SPEC",
                        help="evaluation data, same forms; a COCO spec names its split by its annotation "
                             "file, so give the validation file here (default: the training spec, split "
                             "data.val_split)")
    config_options(parser)
    parser.add_argument("--backbone", choices=BACKBONES,
                        help="the model recipe to start from (default: --init's, else small)")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="start from these weights: an frcnn checkpoint, torchvision:ARCH:PATH (a "
                             "torchvision Faster R-CNN state dict) or torchvision:ARCH (its published COCO "
                             "weights, downloaded once into torch's hub cache); its recipe unless --backbone is given; "
                             "tensors that fit are loaded, the class-specific ones made new (default: none)")
    parser.add_argument("--fpn", action="store_true", help="add a feature pyramid to the recipe (default: off)")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="output folder (default: %(default)s)")
    parser.add_argument("--epochs", type=float, metavar="N",
                        help="train N passes over the training set, with no time limit unless --max-minutes "
                             "is given (default: the configuration's train.epochs, none)")
    parser.add_argument("--max-minutes", type=float, metavar="M",
                        help="stop training after M minutes, the learning rate decaying to that deadline; "
                             f"0: no time limit (default: {TrainConfig().max_minutes:g}, "
                             "or none when --epochs is given)")
    parser.add_argument("--batch-size", type=int, metavar="B",
                        help=f"images per iteration and process (default: {TrainConfig().batch_size})")
    parser.add_argument("--seed", type=int, help=f"random seed (default: {TrainConfig().seed})")
    parser.add_argument("--resume", nargs="?", const=True, default=False, choices=[engine.RESUME_AUTO],
                        help="continue the run in --out from its checkpoint.pt, with the configuration "
                             "stored there (options given here still apply); --resume auto: the same when "
                             "checkpoint.pt exists, else start afresh, for restarted jobs (default: start afresh)")
    parser.add_argument("--no-eval", action="store_true",
                        help="skip the evaluations while training and at the end (default: evaluate, see "
                             "train.eval_every, train.eval_minutes, train.eval_images)")
    device_option(parser)
    parser.set_defaults(handler=run)


def _train_config(args: argparse.Namespace, resume: bool) -> RunConfig:
    """The run's configuration: the stored one when resuming, else the chosen recipe; then the
    command line."""
    checkpoint = Path(args.out) / engine.CHECKPOINT_NAME
    if resume:
        base = RunConfig.from_stored(engine.load_checkpoint(checkpoint)["config"])
    else:
        base = RunConfig(model=read_checkpoint(args.init).config if args.init and args.backbone is None
                         else default_config(args.backbone or "small", args.fpn))
    return layered_config(base, args)


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    device = engine.resolve_device(args.device)
    out = Path(args.out)
    resume = engine.resolve_resume(args.resume, out / engine.CHECKPOINT_NAME)
    config = _train_config(args, resume)
    numerics = (f"training in {describe(config.train.precision, device, training=True)}, "
                f"evaluating in {describe(config.model.test.precision, device, training=False)}")
    with engine.process_group(device, config.train.dist_timeout_s) as context:
        engine.check_shared_folder(out, context)
        train_set, val_set = _datasets_rank0_first(config, context, need_val=not args.no_eval)
        eval_transform = DetectionTransform(config.model.preprocess)
        if context.is_main:
            say(summary(data_report(train_set, config.data.train, config.data.train_split, eval_transform)))
        engine.seed_everything(config.train.seed)
        model = new_model(config, len(train_set.class_names))
        if args.init and not resume:
            report = init_weights(model, args.init)
            if context.is_main:
                say(f"initialised from {args.init}: {report.summary()}")
        if context.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out / CONFIG_NAME, f"# on {device}: {numerics}\n{config.to_yaml()}")
            say(f"training on {config.data.train} ({len(train_set)} images, {len(train_set.class_names)} classes) "
                 f"on {device}" + (f" x {context.world_size} processes" if context.distributed else "")
                 + f"; {numerics}; writing to {out}")
        callbacks = engine.build_callbacks(config.train, val_set, eval_transform,
                                           main_process=context.is_main)
        trainer = engine.Trainer(
            model, train_set.with_transform(training_transform(config.data, config.model.preprocess)),
            _collate_for(config), config.train, out, device=device, context=context,
            metadata={"config": config.to_dict(), "class_names": list(train_set.class_names)},
            callbacks=callbacks)
        if resume and context.is_main:
            say(f"resuming from {out / engine.CHECKPOINT_NAME}")
        try:
            result = trainer.run(resume=resume)
        except engine.TrainingInterrupted as stopped:
            if context.is_main:
                say(f"frcnn train: {stopped}")
            return stopped.exit_status
        if not context.is_main:
            return 0
        if result.stop_reason:
            say(result.stop_reason)
        say(f"trained {result.iterations} iterations in {result.elapsed_s / 60:.1f} min; wrote {out}")
        if result.metrics is not None:
            print(format_metrics(result.metrics, train_set.class_names))
        say(f"total time {(time.perf_counter() - started) / 60:.1f} min")
        return 0


def _datasets_rank0_first(config: RunConfig, context: engine.DistContext,
                          need_val: bool) -> tuple[DetectionDataset, DetectionDataset | None]:
    """The training and evaluation sets; rank 0 reads (or generates) them before the others."""
    def load() -> tuple[DetectionDataset, DetectionDataset | None]:
        train_set = open_dataset(config.data, "train")
        val_set = open_dataset(config.data, "val", train_set.class_names) if need_val and context.is_main else None
        return train_set, val_set

    if context.is_main:
        loaded = load()
        engine.barrier(context)
        return loaded
    engine.barrier(context)
    return load()


def _collate_for(config: RunConfig) -> Callable:
    return partial(collate, keep_difficult=config.data.keep_difficult,
                   size_divisibility=config.model.preprocess.size_divisible)
