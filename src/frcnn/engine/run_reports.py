"""The run folder's tables and pictures, as callbacks: results.csv, results.png and metrics.json;
labels.png, train_batch0.png, the curves and confusion matrices of the final evaluation and the
validation pictures (docs/train.md). Both read the final evaluation in ``on_train_end``, so they
come after the ``Evaluator``."""
from __future__ import annotations

import torch

from ..atomic import write_json_atomic
from ..charts import plot_evaluation, plot_results
from ..data import Batch, DetectionDataset, DetectionTransform
from ..data.report import plot_labels
from ..draw import batch_picture, image_to_uint8, save_png
from .callback import Callback, Evaluation, RunView
from .eval_loop import json_safe
from .results import METRIC_COLUMNS, RESULTS_COLUMNS, TRAIN_LOSSES, read_results, write_results
from .run_folder import (
    FINAL_NAME,
    LABELS_NAME,
    METRICS_NAME,
    RESULTS_NAME,
    RESULTS_PLOT_NAME,
    TRAIN_BATCH_NAME,
    VAL_LABELS_NAME,
    VAL_PREDICTIONS_NAME,
)

# Validation images in val_batch0_labels.png and val_batch0_pred.png.
VAL_PICTURE_IMAGES = 4


class ResultsTable(Callback):
    """results.csv (one row per evaluation, ``RESULTS_COLUMNS``) and results.png, rewritten at
    each evaluation; at the end metrics.json: every metric of the final evaluation (the whole
    validation split), with the checkpoint it scores (model_final.pt), its iteration and the
    number of images. A resumed
    run keeps the rows up to its checkpoint's iteration. Rank 0 only."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_start(self, run: RunView) -> None:
        path = run.out_dir / RESULTS_NAME
        rows = read_results(path) if run.resumed and path.exists() else []
        self.rows = [row for row in rows if row["iter"] <= run.iteration]

    def on_evaluation(self, run: RunView, evaluation: Evaluation) -> None:
        if self.rows and self.rows[-1]["iter"] == evaluation.iteration:  # the same weights again
            self.rows.pop()
        self.rows.append(evaluation.row)
        extra = [key for key in evaluation.row if key not in RESULTS_COLUMNS]
        write_results(run.out_dir / RESULTS_NAME, self.rows, (*RESULTS_COLUMNS, *extra))
        plot_results(self.rows, run.out_dir / RESULTS_PLOT_NAME, TRAIN_LOSSES, METRIC_COLUMNS)

    def on_train_end(self, run: RunView) -> None:
        evaluation = run.final_evaluation
        if evaluation is None:  # no Evaluator among the callbacks
            return
        summary = {"checkpoint": FINAL_NAME, "iteration": evaluation.iteration, "images": len(evaluation.dataset),
                   **json_safe(evaluation.metrics)}
        write_json_atomic(run.out_dir / METRICS_NAME, summary)


class RunPictures(Callback):
    """Pictures of a run. A fresh run: labels.png (the training labels, as ``frcnn data``
    draws them) and train_batch0.png (the first batch after the transform, with its boxes and
    class names). At the end, from the final evaluation (the whole split): PR_curve.png, F1_curve.png,
    confusion_matrix.png and confusion_matrix_normalized.png (``charts.plot_evaluation``), and
    val_batch0_labels.png / val_batch0_pred.png: the first validation images with the ground
    truth, and with the detections scoring at least the F1-best threshold. Rank 0 only."""

    def __init__(self, dataset: DetectionDataset, transform: DetectionTransform) -> None:
        self.class_names = dataset.class_names
        self.mean, self.std = transform.preprocess.mean, transform.preprocess.std

    def on_train_start(self, run: RunView) -> None:
        if not run.resumed:
            plot_labels(run.dataset, run.out_dir / LABELS_NAME)

    def on_step_start(self, run: RunView, batch: Batch) -> None:
        if run.iteration == 0:
            save_png(self.train_batch_picture(batch), run.out_dir / TRAIN_BATCH_NAME)

    def train_batch_picture(self, batch: Batch) -> torch.Tensor:
        """The images of a training batch (their valid regions, normalisation undone) with
        their ground-truth boxes."""
        images, boxes, labels = [], [], []
        for index in range(len(batch.images)):
            height, width = (int(v) for v in batch.im_info[index, :2])
            images.append(image_to_uint8(batch.images[index, :, :height, :width], self.mean, self.std, 255.0))
            rows = batch.gt_boxes[index, :int(batch.num_boxes[index])]
            boxes.append(rows[:, :4])
            labels.append(rows[:, 4].long())
        return batch_picture(images, boxes, labels, self.class_names,
                             title="train batch 0, after the transform: ground truth")

    def on_train_end(self, run: RunView) -> None:
        evaluation = run.final_evaluation
        if evaluation is None:  # no Evaluator among the callbacks
            return
        _, f1 = plot_evaluation(evaluation.dataset, evaluation.predictions.detections, run.out_dir)
        count = min(VAL_PICTURE_IMAGES, len(evaluation.dataset))
        originals = [evaluation.dataset.with_transform(None)[index] for index in range(count)]
        images = [image for image, _ in originals]
        save_png(batch_picture(images, [t["boxes"] for _, t in originals], [t["labels"] for _, t in originals],
                               self.class_names, title="validation images: ground truth"),
                 run.out_dir / VAL_LABELS_NAME)
        detections = [evaluation.predictions.detections[index] for index in range(count)]
        kept = [d["scores"] >= f1.best_threshold for d in detections]
        save_png(batch_picture(images, [torch.from_numpy(d["boxes"][k]) for d, k in zip(detections, kept)],
                               [torch.from_numpy(d["labels"][k]) for d, k in zip(detections, kept)],
                               self.class_names, [torch.from_numpy(d["scores"][k]) for d, k in zip(detections, kept)],
                               title=f"validation images: detections scoring >= {f1.best_threshold:.3f} "
                                     "(the F1-best threshold)"),
                 run.out_dir / VAL_PREDICTIONS_NAME)
