"""Training and evaluation: the loops, callbacks, checkpoints and schedules."""
from ..checkpoint import CHECKPOINT_FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from .callback import Callback, Evaluation, Forward, RunView
from .callbacks import (
                        BestCheckpoint,
                        EarlyStopping,
                        JsonLog,
                        PeriodicCheckpoint,
                        ProgressBar,
                        TensorBoard,
                        build_callbacks,
                        read_log,
)
from .distributed import (
                        DistContext,
                        PeerLostError,
                        barrier,
                        check_shared_folder,
                        init_distributed,
                        process_group,
                        resolve_device,
                        shutdown_distributed,
)
from .eval_loop import HEADLINE, Predictions, evaluate, json_safe, predict
from .launch import Launch, detect_launch, first_host
from .outcome import NonFiniteLossError, TrainingError, TrainingInterrupted, TrainResult
from .results import RESULTS_COLUMNS, read_results
from .rng import seed_everything
from .run_folder import (
                        BEST_NAME,
                        CHECKPOINT_NAME,
                        FINAL_NAME,
                        LOG_NAME,
                        LOSS_PLOT_NAME,
                        METRICS_NAME,
                        RESULTS_NAME,
                        RESUME_AUTO,
                        resolve_resume,
)
from .run_reports import ResultsTable, RunPictures
from .sampler import IterationBatchSampler, SeededItems
from .schedule import Budget, Progress, build_optimizer, lr_factor
from .trainer import Trainer, TrainerView, detector_losses
from .validation import Evaluator, training_state_kept, validation_losses

__all__ = [
    "BEST_NAME", "BestCheckpoint", "Budget", "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "Callback", "CheckpointError",
    "DistContext", "EarlyStopping", "Evaluation", "Evaluator", "FINAL_NAME", "Forward", "HEADLINE",
    "IterationBatchSampler", "JsonLog", "LOG_NAME", "LOSS_PLOT_NAME", "Launch", "METRICS_NAME", "NonFiniteLossError",
    "PeerLostError", "PeriodicCheckpoint", "Predictions", "Progress", "ProgressBar", "RESULTS_COLUMNS",
    "RESULTS_NAME", "RESUME_AUTO", "ResultsTable", "RunPictures", "RunView", "SeededItems", "TensorBoard",
    "TrainResult", "Trainer", "TrainerView", "TrainingError", "TrainingInterrupted",
    "barrier", "build_callbacks", "build_optimizer", "check_shared_folder", "detect_launch", "detector_losses",
    "evaluate", "first_host", "init_distributed", "json_safe", "load_checkpoint", "lr_factor", "predict",
    "process_group", "read_log", "read_results", "resolve_device", "resolve_resume", "save_checkpoint",
    "seed_everything", "shutdown_distributed", "training_state_kept", "validation_losses",
]
