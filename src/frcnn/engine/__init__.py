"""Training and evaluation: the loops, callbacks, checkpoints and schedules."""
from .callbacks import (
                        BestCheckpoint,
                        EarlyStopping,
                        JsonLog,
                        PeriodicCheckpoint,
                        ProgressBar,
                        TensorBoard,
                        read_log,
                        standard_callbacks,
)
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_atomic, seed_everything
from .distributed import DistContext, barrier, init_distributed, resolve_device, shutdown_distributed
from .hooks import Callback
from .inference import HEADLINE, Predictions, evaluate, json_safe, predict
from .results import RESULTS_COLUMNS, read_results
from .run_folder import (
                        BEST_NAME,
                        CHECKPOINT_NAME,
                        FINAL_NAME,
                        LOG_NAME,
                        LOSS_PLOT_NAME,
                        METRICS_NAME,
                        RESULTS_NAME,
                        ResultsTable,
                        RunPictures,
)
from .sampler import IterationBatchSampler, SeededItems
from .schedule import Budget, Progress, build_optimizer, lr_factor
from .trainer import NonFiniteLossError, Trainer, TrainingError, TrainingInterrupted, TrainResult, detector_losses
from .validation import Evaluation, Evaluator, training_state_kept, validation_losses

__all__ = [
    "BEST_NAME", "BestCheckpoint", "Budget", "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "Callback",
    "DistContext", "EarlyStopping", "Evaluation", "Evaluator", "FINAL_NAME", "HEADLINE", "IterationBatchSampler",
    "JsonLog", "LOG_NAME", "LOSS_PLOT_NAME", "METRICS_NAME", "NonFiniteLossError", "PeriodicCheckpoint",
    "Predictions", "Progress", "ProgressBar", "RESULTS_COLUMNS", "RESULTS_NAME", "ResultsTable",
    "RunPictures", "SeededItems", "TensorBoard", "TrainResult", "Trainer", "TrainingError",
    "TrainingInterrupted", "barrier", "build_optimizer", "detector_losses", "evaluate",
    "init_distributed", "json_safe", "load_checkpoint", "lr_factor", "predict", "read_log", "read_results",
    "resolve_device", "save_atomic", "seed_everything", "shutdown_distributed", "standard_callbacks",
    "training_state_kept", "validation_losses",
]
