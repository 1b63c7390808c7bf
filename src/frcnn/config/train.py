"""How a run trains: ``TrainConfig``, and the names of what a run records and can be judged by."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..field_checks import check_choice, check_int, check_number, check_numbers, require
from ..precision import PRECISIONS

SCHEDULES = ("cosine", "step")
# The losses and metrics a run records (the columns of results.csv, frcnn.engine.results). Here
# because train.best_metric chooses among them.
TRAIN_LOSSES = ("loss", "rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box")
VALIDATION_LOSSES = tuple(f"val_{name}" for name in TRAIN_LOSSES)
METRIC_COLUMNS = ("voc07_map", "voc_map", "coco_ap", "coco_ap50", "coco_ap75", "rpn_recall@300")
# The columns a run can be judged by (train.best_metric); the losses improve downwards.
VALIDATION_COLUMNS = (*METRIC_COLUMNS, *VALIDATION_LOSSES)


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimiser, schedule, budget, logging, checkpointing and validation.

    The budget is the first reached of ``max_iters``, ``epochs`` (passes over the training set,
    fractions allowed) and ``max_minutes`` of training; null disables a limit, and at least one
    must be set. ``lr_steps`` are the fractions of the budget at which the step schedule
    multiplies the rate by ``gamma``. ``batch_size`` is per process.

    Validation during training (docs/train.md): every ``eval_every`` iterations (null: once per
    epoch) and, with a time budget, at least every ``eval_minutes`` of training (null: no time
    trigger), on the first ``eval_images`` images of the validation split (null: all of them),
    and at the end; metrics.json scores the final weights on the whole split. ``best_metric``
    (a validation column of results.csv; losses count lower as better) chooses model_best.pt;
    ``patience`` evaluations without improvement stop the run (null: never).

    ``precision``: what the training steps compute in (``frcnn.precision``): fp32, bf16 (autocast,
    on CPUs and GPUs that have it), fp16 (autocast with a gradient scaler, GPUs only) or auto
    (bf16 where the device has it natively, else fp32), resolved when the run starts; the
    evaluations use the model's ``test.precision``.

    Distributed runs: ``dist_timeout_s`` bounds every wait for another process (the group
    forming, each collective); a peer silent that long ends the run. It must exceed the longest
    time rank 0 works alone: an evaluation, and the final one of the whole validation split.
    """

    batch_size: int = 4
    epochs: float | None = None
    max_iters: int | None = None
    max_minutes: float | None = 10.5
    lr: float = 0.04
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    schedule: str = "cosine"
    lr_steps: tuple[float, ...] = (0.75, 0.9)
    gamma: float = 0.1
    clip_grad_norm: float | None = None
    precision: str = "auto"
    seed: int = 0
    log_every: int = 20
    checkpoint_every: int = 500
    num_workers: int = 0
    eval_batch_size: int = 2
    eval_every: int | None = None
    eval_minutes: float | None = 4.0
    eval_images: int | None = 100
    best_metric: str = "voc07_map"
    patience: int | None = None
    dist_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("batch_size", "log_every", "checkpoint_every", "eval_batch_size"):
            check_int(self, name, 1)
        for name in ("warmup_iters", "num_workers", "seed"):
            check_int(self, name, 0)
        for name in ("max_iters", "eval_every", "eval_images", "patience"):
            check_int(self, name, 1, optional=True)
        for name in ("epochs", "max_minutes", "clip_grad_norm", "eval_minutes"):
            check_number(self, name, 0.0, open_low=True, optional=True)
        require(self, "max_minutes", not (self.epochs is None and self.max_iters is None and self.max_minutes is None),
                "set when epochs and max_iters are null: a run needs at least one limit")
        for name in ("lr", "weight_decay", "momentum", "warmup_factor", "gamma"):
            check_number(self, name, 0.0)
        check_number(self, "dist_timeout_s", 0.0, open_low=True)
        check_choice(self, "precision", PRECISIONS)
        check_choice(self, "schedule", SCHEDULES)
        check_choice(self, "best_metric", VALIDATION_COLUMNS)
        check_numbers(self, "lr_steps", low=0.0, high=1.0, open_low=True, open_high=True, empty=True)
        require(self, "lr_steps", list(self.lr_steps) == sorted(self.lr_steps), "increasing fractions of the budget")

    @property
    def max_seconds(self) -> float | None:
        return None if self.max_minutes is None else 60.0 * self.max_minutes

    def iteration_budget(self, iterations_per_epoch: int) -> int | None:
        """The iterations ``max_iters`` and ``epochs`` allow; None: no iteration limit."""
        limits = [self.max_iters] if self.max_iters is not None else []
        if self.epochs is not None:
            limits.append(max(1, math.ceil(self.epochs * iterations_per_epoch)))
        return min(limits) if limits else None
