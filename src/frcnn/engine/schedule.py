"""The training budget, the learning-rate schedule and the optimiser."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import TrainConfig


@dataclass
class Progress:
    """Where a run is: iterations done and seconds of training spent (across resumes)."""

    iteration: int = 0
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class Budget:
    """The end of a run: an iteration count, a number of seconds, or both (whichever comes first)."""

    max_iters: int | None
    max_seconds: float | None

    def fraction_used(self, progress: Progress) -> float:
        """How much of the budget is spent, in [0, 1]: the larger of the two fractions."""
        fractions = [0.0]
        if self.max_iters is not None:
            fractions.append(progress.iteration / self.max_iters)
        if self.max_seconds is not None:
            fractions.append(progress.elapsed_s / self.max_seconds)
        return min(1.0, max(fractions))

    def exhausted(self, progress: Progress) -> bool:
        return self.fraction_used(progress) >= 1.0


def lr_factor(config: TrainConfig, iteration: int, fraction_used: float) -> float:
    """The multiplier of ``config.lr`` at an iteration: a linear warm-up from ``warmup_factor``
    over ``warmup_iters`` iterations, times the decay at the fraction of the budget used
    (cosine to zero, or ``gamma`` per step passed)."""
    warmup = 1.0
    if iteration < config.warmup_iters:
        warmup = config.warmup_factor + (1.0 - config.warmup_factor) * iteration / config.warmup_iters
    if config.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * fraction_used))
    else:
        decay = config.gamma ** sum(fraction_used >= step for step in config.lr_steps)
    return warmup * decay


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weight matrices and kernels, none on biases and
    normalisation parameters (the one-dimensional ones)."""
    decayed, exempt = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (exempt if parameter.ndim <= 1 else decayed).append(parameter)
    groups = [{"params": decayed, "weight_decay": config.weight_decay},
              {"params": exempt, "weight_decay": 0.0}]
    return torch.optim.SGD([g for g in groups if g["params"]], lr=config.lr, momentum=config.momentum)
