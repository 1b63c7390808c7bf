"""Training and evaluation: the run configuration, the loops, checkpoints and schedules."""
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_atomic, seed_everything
from .distributed import DistContext, barrier, init_distributed, resolve_device, shutdown_distributed
from .inference import HEADLINE, Predictions, evaluate, json_safe, predict
from .sampler import IterationBatchSampler, SeededItems
from .schedule import Budget, Progress, build_optimizer, lr_factor
from .settings import DataConfig, RunConfig, TrainConfig
from .trainer import (CHECKPOINT_NAME, FINAL_NAME, LOG_NAME, LOSS_PLOT_NAME, NonFiniteLossError, Trainer,
                      TrainingError, TrainResult, detector_losses, plot_losses, read_log)

__all__ = [
    "Budget", "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "DataConfig", "DistContext", "FINAL_NAME", "HEADLINE",
    "IterationBatchSampler", "LOG_NAME", "LOSS_PLOT_NAME", "NonFiniteLossError", "Predictions", "Progress",
    "RunConfig", "SeededItems", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "barrier", "build_optimizer",
    "detector_losses", "evaluate", "init_distributed", "json_safe", "load_checkpoint", "lr_factor",
    "plot_losses", "predict", "read_log", "resolve_device", "save_atomic", "seed_everything",
    "shutdown_distributed",
]
