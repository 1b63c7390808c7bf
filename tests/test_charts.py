"""The evaluation's pictures: the PR curve's area is the reported AP, F1 and the confusion matrix
against plain recomputations, and every chart a readable, non-blank PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frcnn.charts import PLOT_NAMES, plot_evaluation, plot_results, pr_figure
from frcnn.data import ImageAnnotation
from frcnn.data.annotations import box_areas
from frcnn.data.dataset import DetectionDataset
from frcnn.evaluation import detections_per_image, evaluate_detections, voc_pr_curves
from frcnn.evaluation.confusion import confusion_matrix, match_one_to_one
from frcnn.evaluation.curves import f1_curves

CLASSES = ("cat", "dog", "fox")


def annotation(image_id: str, boxes, labels, difficult=None, size=(120, 160)) -> ImageAnnotation:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return ImageAnnotation(
        image_path=Path(f"{image_id}.jpg"), image_id=image_id, height=size[0], width=size[1], boxes=boxes,
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult if difficult is not None else [False] * len(boxes), dtype=bool),
        areas=box_areas(boxes), ignore_boxes=np.zeros((0, 4)), ignore_labels=np.zeros(0, dtype=np.int64))


def noisy_detector(seed: int = 0, images: int = 12) -> tuple[DetectionDataset, list[dict[str, np.ndarray]]]:
    """Random objects, and detections that find most of them (jittered, sometimes with the wrong
    class) plus false positives, with overlapping score ranges."""
    rng = np.random.default_rng(seed)
    annotations, detections = [], []
    for n in range(images):
        count = int(rng.integers(1, 5))
        corners = rng.uniform(0, 100, (count, 2))
        boxes = np.concatenate([corners, corners + rng.uniform(15, 50, (count, 2))], axis=1)
        labels = rng.integers(1, len(CLASSES) + 1, count)
        annotations.append(annotation(f"im{n}", boxes, labels, difficult=rng.random(count) < 0.1))
        found = rng.random(count) < 0.8
        det_boxes = boxes[found] + rng.normal(0, 3, (int(found.sum()), 4))
        det_labels = np.where(rng.random(int(found.sum())) < 0.85, labels[found], rng.integers(1, 4, int(found.sum())))
        false = int(rng.integers(0, 4))
        false_corners = rng.uniform(0, 100, (false, 2))
        det_boxes = np.concatenate([det_boxes, np.concatenate([false_corners, false_corners + 20], axis=1)])
        det_labels = np.concatenate([det_labels, rng.integers(1, 4, false)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, int(found.sum())), rng.uniform(0.0, 0.7, false)])
        detections.append({"boxes": det_boxes, "scores": scores, "labels": det_labels})
    return DetectionDataset(tuple(annotations), CLASSES, "voc"), detections


def test_the_pr_curve_encloses_the_reported_voc_ap() -> None:
    dataset, detections = noisy_detector()
    metrics = evaluate_detections(dataset, detections)
    curves = voc_pr_curves(dataset, detections_per_image(dataset, detections))
    aps = {label: metrics[f"voc_ap/{CLASSES[label - 1]}"] for label in curves}
    figure = pr_figure(curves, CLASSES, aps, metrics["voc_map"])
    lines = figure.axes[0].get_lines()
    assert len(lines) == len(curves) + 1
    for line, (label, _) in zip(lines, curves.items()):
        assert line.get_drawstyle() == "steps-pre" and line.get_label().startswith(CLASSES[label - 1])
        recall, precision = line.get_xdata(), line.get_ydata()
        # steps-pre: on (recall[i], recall[i + 1]] the curve is precision[i + 1]
        area = float(np.sum(np.diff(recall) * precision[1:]))
        assert area == pytest.approx(metrics[f"voc_ap/{CLASSES[label - 1]}"], abs=1e-12)
        assert 0.1 < area < 1.0
    assert lines[-1].get_label() == f"all classes {metrics['voc_map']:.3f} mAP"


def test_f1_is_that_of_the_detections_above_each_threshold() -> None:
    dataset, detections = noisy_detector(seed=1)
    f1 = f1_curves(voc_pr_curves(dataset, detections_per_image(dataset, detections)))
    for threshold_index in (0, 250, 480, 700, 990):
        threshold = f1.thresholds[threshold_index]
        kept = [{key: value[d["scores"] >= threshold] for key, value in d.items()} for d in detections]
        curves = voc_pr_curves(dataset, detections_per_image(dataset, kept))
        for label, values in f1.per_class.items():
            curve = curves[label]
            if len(curve.scores) == 0:
                expected = 0.0
            else:
                precision, recall = curve.precision[-1], curve.recall[-1]
                expected = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
            assert values[threshold_index] == pytest.approx(expected, abs=1e-12)
    assert f1.best_f1 == pytest.approx(f1.mean.max()) and f1.mean[f1.thresholds == f1.best_threshold][0] == f1.best_f1
    assert 0.3 < f1.best_threshold < 1.0


def test_one_to_one_matching_takes_the_highest_overlaps_first() -> None:
    iou = np.array([[0.9, 0.8, 0.0], [0.85, 0.3, 0.0], [0.0, 0.0, 0.4]])
    rows, columns = match_one_to_one(iou, 0.5)
    assert sorted(zip(rows.tolist(), columns.tolist())) == [(0, 0)]
    rows, columns = match_one_to_one(iou, 0.2)
    assert sorted(zip(rows.tolist(), columns.tolist())) == [(0, 0), (1, 1), (2, 2)]
    assert match_one_to_one(np.zeros((0, 3)), 0.5)[0].shape == (0,)


def test_confusion_matrix_of_a_hand_made_case() -> None:
    dataset = DetectionDataset((
        annotation("a", [[0, 0, 40, 40], [60, 0, 100, 40], [0, 60, 40, 100], [60, 60, 100, 100]], [1, 2, 3, 1],
                   difficult=[False, False, False, True]),
        annotation("b", [], []),
    ), CLASSES, "voc")
    detections = [
        {"boxes": np.array([[1, 1, 40, 40], [60, 1, 100, 40], [120, 100, 150, 118], [0, 60, 40, 100],
                            [61, 61, 100, 100], [0, 0, 40, 41]]),
         "scores": np.array([0.9, 0.8, 0.7, 0.1, 0.95, 0.6]), "labels": np.array([1, 1, 2, 3, 2, 1])},
        {"boxes": np.array([[10, 10, 30, 30]]), "scores": np.array([0.5]), "labels": np.array([3])},
    ]
    matrix = confusion_matrix(dataset, detections_per_image(dataset, detections), score_threshold=0.5)
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0] = 1  # the cat found as a cat
    expected[1, 0] = 1  # the dog found as a cat
    expected[2, 3] = 1  # the fox: its detection scores under the threshold
    expected[3, 1] = 1  # a dog far from everything
    expected[3, 0] = 1  # the second detection of the first cat (one to one)
    expected[3, 2] = 1  # the fox detection of the empty image
    # the difficult cat and its detection count nowhere
    np.testing.assert_array_equal(matrix, expected)


def assert_png_not_blank(path: Path) -> None:
    """``path`` is a PNG of at least 200 x 200 pixels with some dark ink on it."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 200 and pixels.std() > 5, path
    assert (pixels < 128).mean() > 0.005, path


def test_every_chart_is_a_non_blank_png(tmp_path: Path) -> None:
    dataset, detections = noisy_detector()
    paths, f1 = plot_evaluation(dataset, detections, tmp_path / "plots")
    assert tuple(paths) == PLOT_NAMES and sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(PLOT_NAMES)
    rows = [{"iter": i, "lr": 0.01, "loss": 1.0 / i, "val_loss": 1.2 / i, "voc07_map": 0.1 * i} for i in range(1, 5)]
    paths["results"] = plot_results(rows, tmp_path / "results.png", ("loss",), ("voc07_map",))
    for path in paths.values():
        assert_png_not_blank(path)
