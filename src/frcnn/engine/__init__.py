"""Training and evaluation: the run configuration, the loops, callbacks, checkpoints and schedules."""
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
from .checkpoint import CHECKPOINT_FORMAT, RESUME_AUTO, load_checkpoint, resolve_resume, save_atomic, seed_everything
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
from .hooks import Callback
from .inference import HEADLINE, Predictions, evaluate, json_safe, predict
from .launch import Launch, detect_launch, first_host
from .results import RESULTS_COLUMNS, VALIDATION_COLUMNS, read_results
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
from .settings import DataConfig, RunConfig, TrainConfig
from .trainer import NonFiniteLossError, Trainer, TrainingError, TrainingInterrupted, TrainResult, detector_losses
from .validation import Evaluation, Evaluator, training_state_kept, validation_losses

__all__ = [
    "BEST_NAME", "BestCheckpoint", "Budget", "CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "Callback", "DataConfig",
    "DistContext", "EarlyStopping", "Evaluation", "Evaluator", "FINAL_NAME", "HEADLINE", "IterationBatchSampler",
    "JsonLog", "LOG_NAME", "LOSS_PLOT_NAME", "Launch", "METRICS_NAME", "NonFiniteLossError", "PeerLostError",
    "PeriodicCheckpoint", "Predictions", "Progress", "ProgressBar", "RESULTS_COLUMNS", "RESULTS_NAME", "RESUME_AUTO",
    "ResultsTable", "RunConfig", "RunPictures", "SeededItems", "TensorBoard", "TrainConfig", "TrainResult", "Trainer",
    "TrainingError", "TrainingInterrupted", "VALIDATION_COLUMNS", "barrier", "build_optimizer", "check_shared_folder",
    "detect_launch", "detector_losses", "evaluate", "first_host", "init_distributed", "json_safe", "load_checkpoint",
    "lr_factor", "predict", "process_group", "read_log", "read_results", "resolve_device", "resolve_resume",
    "save_atomic", "seed_everything", "shutdown_distributed", "standard_callbacks", "training_state_kept",
    "validation_losses",
]
