"""The files of a run folder (docs/train.md), by name, and whether a run resumes from its checkpoint."""
from __future__ import annotations

from pathlib import Path

CHECKPOINT_NAME = "checkpoint.pt"
FINAL_NAME = "model_final.pt"
BEST_NAME = "model_best.pt"
LOG_NAME = "log.jsonl"
LOSS_PLOT_NAME = "loss.png"
RESULTS_NAME = "results.csv"
RESULTS_PLOT_NAME = "results.png"
METRICS_NAME = "metrics.json"
LABELS_NAME = "labels.png"
TRAIN_BATCH_NAME = "train_batch0.png"
VAL_LABELS_NAME = "val_batch0_labels.png"
VAL_PREDICTIONS_NAME = "val_batch0_pred.png"

# The resume mode that continues from the checkpoint when there is one and starts afresh otherwise.
RESUME_AUTO = "auto"


def resolve_resume(resume: bool | str, checkpoint: str | Path) -> bool:
    """Whether a run resumes from ``checkpoint``: never for False; always for True (FileNotFoundError
    when it does not exist); for ``RESUME_AUTO``, when it exists, so that one command serves a
    run's first start and every restart."""
    if resume == RESUME_AUTO:
        return Path(checkpoint).is_file()
    if resume is True:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"nothing to resume: {checkpoint} does not exist")
        return True
    if resume is False:
        return False
    raise ValueError(f"resume must be True, False or {RESUME_AUTO!r}, got {resume!r}")
