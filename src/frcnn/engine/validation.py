"""Validation during training: when to evaluate, the validation losses, and an evaluation that
leaves the training run exactly as it was (weights, buffers, modes, random generators)."""
from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ..config import METRIC_COLUMNS, TrainConfig
from ..data import DetectionDataset, DetectionTransform, build_loader
from ..precision import autocast
from .callback import Callback, Evaluation, Forward, RunView
from .eval_loop import Predictions, predict, prediction_metrics
from .rng import rng_state, set_rng_state


@contextmanager
def training_state_kept(model: nn.Module) -> Iterator[None]:
    """Whatever runs inside leaves ``model``'s buffers (e.g. BatchNorm statistics) and modules'
    train/eval modes, and the global random generators, as they were."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    generators = rng_state()
    try:
        yield
    finally:
        set_rng_state(generators)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes:
            module.training = training


@torch.no_grad()
def validation_losses(model: nn.Module, dataset: DetectionDataset, transform: DetectionTransform,
                      forward: Forward, device: torch.device,
                      batch_size: int, seed: int, precision: str = "fp32") -> dict[str, float]:
    """The training losses of ``model`` on ``dataset``, with gradients off: ``val_loss`` (their
    sum) and ``val_<name>`` for each, averaged over images. The model runs in training mode
    (its sampling of anchors and RoIs drawing from the global generator, seeded with ``seed``),
    in the concrete ``precision`` (the run's training precision, so that the losses compare);
    call it inside ``training_state_kept`` to leave the run's state alone."""
    model.train()
    torch.manual_seed(seed)
    sums: dict[str, float] = {}
    images = 0
    for batch in build_loader(dataset, transform, batch_size, shuffle=False, num_workers=0,
                              size_divisibility=model.config.preprocess.size_divisible):
        with autocast(precision, device):
            losses = forward(model, batch.to(device))
        count = len(batch.image_ids)
        values = {"val_loss": float(sum(losses.values())), **{f"val_{k}": float(v) for k, v in losses.items()}}
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value * count
        images += count
    return {key: total / images for key, total in sums.items()}


class Evaluator(Callback):
    """Evaluates on the validation split (its first ``train.eval_images`` images), the detections
    in the model's inference precision and the losses in the run's training precision, every
    ``train.eval_every`` iterations (default: once per epoch) and, with a time budget, at least
    every ``train.eval_minutes`` of training; then once at the end unless the last evaluation
    was at the last iteration. Each evaluation (``Evaluation``) goes to every callback's
    ``on_evaluation``. At the end, the run's ``final_evaluation`` is the evaluation of the final
    weights on the whole split (the last one, when it was on the whole split). The training run
    is left as it was (``training_state_kept``). Rank 0 only: the other ranks wait at their next
    collective."""

    def __init__(self, dataset: DetectionDataset, transform: DetectionTransform, config: TrainConfig) -> None:
        count = len(dataset) if config.eval_images is None else min(config.eval_images, len(dataset))
        self.whole = dataset
        self.dataset = replace(dataset, annotations=dataset.annotations[:count])
        self.transform = transform
        self.every = config.eval_every
        self.seconds = None if config.eval_minutes is None or config.max_minutes is None else 60 * config.eval_minutes
        self.last_iteration = 0
        self.last_elapsed = 0.0
        self.loss_sums: dict[str, float] = {}
        self.steps = 0
        self.lr = math.nan

    def due(self, run: RunView) -> bool:
        """Whether an evaluation is due now (never at the last step: the final one follows)."""
        if run.iteration == self.last_iteration or run.budget_spent:
            return False
        every = self.every or run.iterations_per_epoch
        late = self.seconds is not None and run.elapsed_s - self.last_elapsed >= self.seconds
        return run.iteration - self.last_iteration >= every or late

    def on_step_start(self, run: RunView, batch: Any) -> None:
        if self.due(run):  # resumed from a run that a signal stopped before this evaluation
            self.evaluate(run)

    def on_step_end(self, run: RunView, losses: Mapping[str, float]) -> None:
        for key, value in losses.items():
            if key != "lr":
                self.loss_sums[key] = self.loss_sums.get(key, 0.0) + value
        self.steps += 1
        self.lr = losses["lr"]
        if not run.interrupted and self.due(run):
            self.evaluate(run)

    def on_train_end(self, run: RunView) -> None:
        whole = None
        if len(self.dataset) < len(self.whole):
            started = time.perf_counter()
            predictions = self._predict(run, self.whole)
            whole = Evaluation(
                run.iteration,
                {},
                prediction_metrics(run.model, self.whole, predictions),
                predictions,
                self.whole,
                time.perf_counter() - started,
            )
        latest = run.last_evaluation
        if latest is None or latest.iteration != run.iteration:
            count = len(self.dataset)
            self.evaluate(run, None if whole is None else Predictions(
                whole.predictions.detections[:count], whole.predictions.proposals[:count]))
        run.report_final_evaluation(whole or run.last_evaluation)

    def _predict(self, run: RunView, dataset: DetectionDataset) -> Predictions:
        with training_state_kept(run.model):
            return predict(run.model, dataset, self.transform, run.device, run.config.eval_batch_size,
                           proposals=True)

    def evaluate(self, run: RunView, predictions: Predictions | None = None) -> Evaluation:
        """Evaluate now (from ``predictions`` on ``self.dataset`` when given), report it to the
        callbacks, and start the next row's loss means."""
        started = time.perf_counter()
        model, config = run.model, run.config
        predictions = predictions or self._predict(run, self.dataset)
        metrics = prediction_metrics(model, self.dataset, predictions)
        with training_state_kept(model):
            losses = validation_losses(model, self.dataset, self.transform, run.forward, run.device,
                                       config.eval_batch_size, config.seed, run.precision)
        means = {key: total / self.steps for key, total in self.loss_sums.items()} if self.steps else {}
        row = {"iter": run.iteration, "epoch": round(run.epoch, 4), "elapsed_s": round(run.elapsed_s, 2),
               "lr": self.lr, **means, **losses, **{name: metrics.get(name, math.nan) for name in METRIC_COLUMNS}}
        evaluation = Evaluation(run.iteration, row, metrics, predictions, self.dataset,
                                time.perf_counter() - started)
        self.last_iteration, self.last_elapsed = run.iteration, run.elapsed_s
        self.loss_sums, self.steps = {}, 0
        run.report_evaluation(evaluation)
        return evaluation

    def state_dict(self) -> dict[str, Any]:
        return {"last_iteration": self.last_iteration, "last_elapsed": self.last_elapsed,
                "loss_sums": dict(self.loss_sums), "steps": self.steps, "lr": self.lr}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last_iteration, self.last_elapsed = state["last_iteration"], state["last_elapsed"]
        self.loss_sums, self.steps, self.lr = dict(state["loss_sums"]), state["steps"], state["lr"]
