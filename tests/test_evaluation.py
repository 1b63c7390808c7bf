"""VOC AP, COCO AP, proposal recall and results files, on hand-computed and reference cases."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from frcnn.data import DatasetError, ImageAnnotation, load_coco
from frcnn.data.annotations import box_areas
from frcnn.data.dataset import DetectionDataset
from frcnn.data.voc import internal_to_voc
from frcnn.evaluation import (
    COCO_STAT_NAMES,
    coco_metrics,
    detections_per_image,
    evaluate_detections,
    proposal_recall,
    read_results_json,
    voc_ap,
    voc_metrics,
    voc_pr_curves,
    write_results_json,
)


def annotation(image_id, boxes=(), labels=(), difficult=None, ignore=(), ignore_labels=(),
               size=(100, 100)) -> ImageAnnotation:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return ImageAnnotation(
        image_path=Path(f"{image_id}.jpg"), image_id=image_id, height=size[0], width=size[1],
        boxes=boxes, labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult if difficult is not None else [False] * len(boxes), dtype=bool),
        areas=box_areas(boxes), ignore_boxes=np.asarray(ignore, dtype=np.float64).reshape(-1, 4),
        ignore_labels=np.asarray(ignore_labels, dtype=np.int64))


def voc_dataset(*annotations: ImageAnnotation, class_names=("cat", "dog")) -> DetectionDataset:
    return DetectionDataset(tuple(annotations), class_names, "voc")


def write_image(path: Path, width: int, height: int) -> None:
    """A grey JPEG of the annotated size, for the COCO reader's image checks."""
    Image.new("RGB", (width, height), (128, 128, 128)).save(path, "JPEG")


def dets(boxes=(), scores=(), labels=()) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.tensor(labels, dtype=torch.int64)}


# ---------------------------------------------------------------- VOC AP, by hand


def test_voc_ap_of_hand_computed_curves():
    recall, precision = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    # Precision is interpolated from the right: the dip to 0.25 is bridged by the later 0.4.
    recall, precision = np.array([0.25, 0.25, 0.5]), np.array([1.0, 0.25, 0.4])
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.25 + 0.25 * 0.4)
    assert voc_ap(np.zeros(0), np.zeros(0), use_07_metric=True) == 0.0
    # The devkit's levels come from np.arange(0, 1.1, 0.1): recall 3/10 falls short of its
    # fourth level, 0.30000000000000004.
    assert voc_ap(np.array([0.1, 0.2, 0.3]), np.ones(3), use_07_metric=True) == pytest.approx(3 / 11)


TWO_CATS = annotation("a", [[0, 0, 10, 10], [50, 50, 70, 80]], [1, 1])


def test_perfect_detector_scores_one_everywhere():
    dataset = voc_dataset(TWO_CATS, annotation("b", [[5, 5, 40, 60]], [2]), annotation("c"))
    perfect = [dets([[0, 0, 10, 10], [50, 50, 70, 80]], [0.9, 0.8], [1, 1]), dets([[5, 5, 40, 60]], [0.7], [2]), dets()]
    metrics = evaluate_detections(dataset, perfect)
    for key in ("voc07_map", "voc_map", "voc07_ap/cat", "voc_ap/dog", "coco_ap", "coco_ap50", "coco_ap75",
                "coco_ap/cat", "coco_ap/dog"):
        assert metrics[key] == pytest.approx(1.0), key


def test_a_duplicate_is_a_false_positive():
    dataset = voc_dataset(TWO_CATS)
    # True positive, its duplicate, then the second object: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    detections = [dets([[0, 0, 10, 10], [0, 0, 10, 10.5], [50, 50, 70, 80]], [0.9, 0.8, 0.7], [1, 1, 1])]
    metrics = evaluate_detections(dataset, detections)
    assert metrics["voc_ap/cat"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert metrics["voc07_ap/cat"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert metrics["voc_map"] == metrics["voc_ap/cat"]  # dog has no objects: left out of the mean
    assert math.isnan(metrics["voc_ap/dog"])


def test_a_miss_halves_recall():
    metrics = evaluate_detections(voc_dataset(TWO_CATS), [dets([[50, 50, 70, 80]], [0.9], [1])])
    assert metrics["voc_ap/cat"] == pytest.approx(0.5)
    assert metrics["voc07_ap/cat"] == pytest.approx(6 / 11)
    assert metrics["coco_ap50"] == pytest.approx(0.5, abs=0.01)


def test_a_wrong_class_is_a_false_positive():
    metrics = evaluate_detections(voc_dataset(TWO_CATS), [dets([[0, 0, 10, 10], [50, 50, 70, 80]], [0.9, 0.8], [2, 1])])
    assert metrics["voc_ap/cat"] == pytest.approx(0.5)


def test_difficult_objects_are_neither_true_nor_false_positives():
    dataset = voc_dataset(
        annotation("a", [[0, 0, 10, 10]], [1]),
        annotation("only-difficult", [[20, 20, 60, 60], [0, 0, 30, 30]], [1, 2], difficult=[True, True]))
    detections = [dets([[0, 0, 10, 10]], [0.5], [1]),
                  dets([[20, 20, 60, 60], [0, 0, 30, 30]], [0.9, 0.9], [1, 2])]
    metrics = evaluate_detections(dataset, detections)
    assert metrics["voc_ap/cat"] == 1.0 and metrics["voc07_ap/cat"] == 1.0
    assert math.isnan(metrics["voc_ap/dog"]) and metrics["voc_map"] == 1.0
    assert metrics["coco_ap/cat"] == pytest.approx(1.0)
    # Counted as objects, the difficult ones would lower recall; as false positives, precision.
    plain = voc_dataset(*(annotation(a.image_id, a.boxes, a.labels) for a in dataset.annotations))
    assert evaluate_detections(plain, detections[:1] + [dets()])["voc_ap/cat"] == pytest.approx(0.5)


def test_iou_uses_the_devkit_plus_one_on_one_based_coordinates():
    # Object: VOC pixels 1..10 x 1..10, internal (0, 0, 10, 10), 100 pixels. A detection of internal
    # height 5 covers 50 of them: IoU 0.5 is not above the threshold. (Adding one to the internal
    # coordinates instead would give 66 / 121 = 0.55 and a match.)
    dataset = voc_dataset(annotation("a", [[0, 0, 10, 10]], [1]))
    assert evaluate_detections(dataset, [dets([[0, 0, 10, 5]], [1.0], [1])])["voc_ap/cat"] == 0.0
    assert evaluate_detections(dataset, [dets([[0, 0, 10, 5.25]], [1.0], [1])])["voc_ap/cat"] == 1.0


def test_no_detections_give_zero_and_absent_areas_nan():
    metrics = evaluate_detections(voc_dataset(TWO_CATS), [dets()])
    assert metrics["voc_map"] == 0.0 and metrics["voc07_map"] == 0.0 and metrics["coco_ap"] == 0.0
    assert math.isnan(metrics["coco_ap_large"])  # no object of 96^2 pixels or more
    assert set(COCO_STAT_NAMES) <= set(metrics)


# ---------------------------------------------------------------- VOC AP against the devkit's loop


def devkit_curve(dataset: DetectionDataset, detections: list[dict], label: int) -> tuple[np.ndarray, ...]:
    """The VOC devkit's recall, precision and sorted scores of one class, written as its loops."""
    objects, positives = {}, 0
    for a in dataset.annotations:
        mine = a.labels == label
        objects[a.image_id] = [internal_to_voc(a.boxes[mine]), a.difficult[mine], [False] * int(mine.sum())]
        positives += int((~a.difficult[mine]).sum())
    found = sorted(
        (
            (float(s), a.image_id, internal_to_voc(b[None].numpy())[0])
            for a, d in zip(dataset.annotations, detections)
            for b, s, found_label in zip(d["boxes"].double(), d["scores"], d["labels"])
            if found_label == label
        ),
        key=lambda row: -row[0],
    )
    tp, fp = np.zeros(len(found)), np.zeros(len(found))
    for n, (_, image_id, box) in enumerate(found):
        boxes, difficult, taken = objects[image_id]
        best, best_j = -math.inf, -1
        for j, other in enumerate(boxes):
            width = max(min(box[2], other[2]) - max(box[0], other[0]) + 1, 0)
            height = max(min(box[3], other[3]) - max(box[1], other[1]) + 1, 0)
            union = ((box[2] - box[0] + 1) * (box[3] - box[1] + 1)
                     + (other[2] - other[0] + 1) * (other[3] - other[1] + 1) - width * height)
            if width * height / union > best:
                best, best_j = width * height / union, j
        if best > 0.5:
            if not difficult[best_j]:
                if taken[best_j]:
                    fp[n] = 1
                else:
                    tp[n], taken[best_j] = 1, True
        else:
            fp[n] = 1
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall, precision = tp / positives, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision, np.array([row[0] for row in found])


def devkit_ap(dataset: DetectionDataset, detections: list[dict], label: int, use_07: bool) -> float:
    """The VOC devkit's AP of one class from its curve."""
    recall, precision, _ = devkit_curve(dataset, detections, label)
    if use_07:
        return sum(max(precision[recall >= t], default=0.0) for t in np.arange(0.0, 1.1, 0.1)) / 11
    recall, precision = [0.0, *recall, 1.0], [0.0, *precision, 0.0]
    for i in range(len(precision) - 1, 0, -1):
        precision[i - 1] = max(precision[i - 1], precision[i])
    return sum((recall[i] - recall[i - 1]) * precision[i] for i in range(1, len(recall)) if recall[i] != recall[i - 1])


def random_boxes(rng, count, size=100.0, low=4.0, high=60.0):
    xy = rng.uniform(0, size - high, (count, 2))
    return np.concatenate([xy, xy + rng.uniform(low, high, (count, 2))], axis=1)


def random_voc_case(seed: int) -> tuple[DetectionDataset, list[dict]]:
    """30 images of 0-5 objects of 3 classes (a fifth difficult), jittered and random detections."""
    rng = np.random.default_rng(seed)
    images, detections = [], []
    for n in range(30):
        count = int(rng.integers(0, 6))
        boxes = random_boxes(rng, count)
        labels = rng.integers(1, 4, count)
        images.append(annotation(f"{n:03d}", boxes, labels, difficult=rng.random(count) < 0.2))
        near = boxes + rng.normal(0, 3, boxes.shape)
        extra = random_boxes(rng, int(rng.integers(0, 5)))
        found = np.concatenate([near, extra])
        found_labels = np.concatenate([np.where(rng.random(count) < 0.85, labels, rng.integers(1, 4, count)),
                                       rng.integers(1, 4, len(extra))])
        detections.append(dets(found, rng.random(len(found)), found_labels))
    return voc_dataset(*images, class_names=("a", "b", "c")), detections


@pytest.mark.parametrize("seed", range(4))
def test_voc_ap_equals_the_devkit_loop_on_random_cases(seed):
    dataset, detections = random_voc_case(seed)
    metrics = evaluate_detections(dataset, detections)
    for label, name in enumerate(dataset.class_names, start=1):
        assert metrics[f"voc07_ap/{name}"] == pytest.approx(devkit_ap(dataset, detections, label, True), abs=1e-12)
        assert metrics[f"voc_ap/{name}"] == pytest.approx(devkit_ap(dataset, detections, label, False), abs=1e-12)


@pytest.mark.parametrize("seed", range(2))
def test_voc_pr_curves_are_the_devkit_curves_point_for_point(seed):
    dataset, detections = random_voc_case(seed)
    curves = voc_pr_curves(dataset, detections_per_image(dataset, detections))
    assert set(curves) == {1, 2, 3}
    for label, curve in curves.items():
        recall, precision, scores = devkit_curve(dataset, detections, label)
        np.testing.assert_allclose(curve.recall, recall, rtol=0, atol=1e-12)
        np.testing.assert_allclose(curve.precision, precision, rtol=0, atol=1e-12)
        np.testing.assert_allclose(curve.scores, scores, rtol=1e-6)


def test_a_class_without_countable_objects_has_no_curve():
    dataset = voc_dataset(annotation("a", [[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2], difficult=[False, True]))
    per_image = detections_per_image(dataset, [dets([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8], [1, 2])])
    curves = voc_pr_curves(dataset, per_image)
    assert list(curves) == [1]
    np.testing.assert_array_equal(curves[1].recall, [1.0])
    np.testing.assert_array_equal(curves[1].precision, [1.0])
    assert math.isnan(voc_metrics(dataset, per_image)["voc_ap/dog"])


# ---------------------------------------------------------------- COCO AP against pycocotools


def random_coco(rng) -> dict:
    """Non-contiguous category ids, images out of id order, crowds, an image without objects,
    segment areas below box areas, objects of every COCO size."""
    category_ids = [3, 18, 90]
    images, rows = [], []
    for n in range(24):
        image_id = int(1000 - 37 * n)
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 300, "height": 300})
        for _ in range(0 if n == 5 else int(rng.integers(1, 7))):
            w, h = np.exp(rng.uniform(np.log(4), np.log(250), 2))
            x, y = rng.uniform(0, 300 - w), rng.uniform(0, 300 - h)
            rows.append({"id": len(rows) + 1, "image_id": image_id, "category_id": int(rng.choice(category_ids)),
                         "bbox": [x, y, w, h], "area": w * h * rng.uniform(0.5, 1.0),
                         "iscrowd": int(rng.random() < 0.1)})
    return {"images": images, "annotations": rows,
            "categories": [{"id": c, "name": f"class{c}"} for c in (90, 3, 18)]}


def random_results(rng, content) -> list[dict]:
    """Detections near the objects (some of the wrong class), at random, with tied scores, and
    130 of one class in one image (more than COCOeval keeps)."""
    results = []
    for image in content["images"]:
        objects = [a for a in content["annotations"] if a["image_id"] == image["id"]]
        for a in objects:
            for _ in range(int(rng.integers(0, 3))):
                x, y, w, h = np.array(a["bbox"]) + np.tile(a["bbox"][2:], 2) * rng.normal(0, 0.06, 4)
                category = a["category_id"] if rng.random() < 0.8 else int(rng.choice([3, 18, 90]))
                results.append({"image_id": image["id"], "category_id": category, "bbox": [x, y, w, h],
                                "score": float(rng.random())})
        for _ in range(130 if image["id"] == 1000 else int(rng.integers(0, 8))):
            w, h = rng.uniform(4, 200, 2)
            category = 18 if image["id"] == 1000 else int(rng.choice([3, 18, 90]))
            results.append({"image_id": image["id"], "category_id": category,
                            "bbox": [rng.uniform(0, 290), rng.uniform(0, 290), w, h], "score": float(rng.random())})
        for row in results[-3:]:
            results.append({**row, "bbox": list(np.array(row["bbox"]) + rng.normal(0, 2, 4))})
    return results


def pycocotools_stats(annotation_file: Path, results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats, evaluator.eval["precision"]


@pytest.mark.parametrize("engine", ["fast", "pycocotools"])
@pytest.mark.parametrize("seed", range(3))
def test_coco_metrics_equal_pycocotools_on_the_annotation_file(tmp_path, seed, engine):
    rng = np.random.default_rng(seed)
    content = random_coco(rng)
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(content))
    for image in content["images"]:
        write_image(tmp_path / image["file_name"], image["width"], image["height"])
    results = random_results(rng, content)
    stats, precision = pycocotools_stats(annotation_file, results)

    dataset = load_coco(annotation_file, tmp_path)
    sorted_ids = sorted(c["id"] for c in content["categories"])
    ours = {a.image_id: {"boxes": [], "scores": [], "labels": []} for a in dataset.annotations}
    for row in results:
        x, y, w, h = row["bbox"]
        entry = ours[row["image_id"]]
        entry["boxes"].append([x, y, x + w, y + h])
        entry["scores"].append(row["score"])
        entry["labels"].append(sorted_ids.index(row["category_id"]) + 1)
    metrics = coco_metrics(dataset, detections_per_image(dataset, ours), engine)

    assert stats[0] > 0.05  # the case is not degenerate
    for name, expected in zip(COCO_STAT_NAMES, stats):
        assert (math.isnan(metrics[name]) and expected == -1) or metrics[name] == pytest.approx(expected, abs=1e-12), (
            name
        )
    for k, name in enumerate(dataset.class_names):
        per_class = precision[:, :, k, 0, -1]
        assert metrics[f"coco_ap/{name}"] == pytest.approx(per_class[per_class > -1].mean(), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_fast_coco_engine_equals_pycocotools_on_ties_twins_crowds_and_long_lists(seed):
    """Boxes on a coarse grid (exact IoU ties), twin objects, difficult objects and crowds,
    scores in tenths (score ties), up to 260 detections per image of 2 classes."""
    rng = np.random.default_rng(seed)
    images, detections = [], []
    for n in range(12):
        count = int(rng.integers(0, 12))
        boxes = random_boxes(rng, count, size=160, low=4, high=100).round(-1)
        boxes[:, 2:] += 10
        if count > 1:
            boxes[1] = boxes[0]
        crowds = random_boxes(rng, int(rng.integers(0, 3)), size=160).round(-1) + [0, 0, 10, 10]
        images.append(annotation(f"{n}", boxes, rng.integers(1, 3, count), rng.random(count) < 0.15,
                                 crowds, rng.integers(1, 3, len(crowds)), size=(200, 200)))
        sources = np.concatenate([boxes, crowds, random_boxes(rng, 3, size=160)])
        picked = sources[rng.integers(0, len(sources), int(rng.integers(0, 260)))]
        picked = picked + rng.normal(0, 3, picked.shape).round()
        detections.append({"boxes": picked, "scores": rng.integers(0, 10, len(picked)) / 10,
                           "labels": rng.integers(1, 3, len(picked))})
    dataset = voc_dataset(*images)
    per_image = detections_per_image(dataset, detections)
    fast, reference = coco_metrics(dataset, per_image, "fast"), coco_metrics(dataset, per_image, "pycocotools")
    assert fast.keys() == reference.keys()
    for key in fast:
        assert fast[key] == reference[key] or (math.isnan(fast[key]) and math.isnan(reference[key])), key


def test_fast_coco_engine_breaks_iou_ties_as_pycocotools():
    # The first detection overlaps both objects with IoU 9/11 and takes the later one; the second
    # detection is that object, so it falls back on the first object (IoU 2/3) or on nothing.
    dataset = voc_dataset(annotation("a", [[0, 0, 10, 10], [2, 0, 12, 10]], [1, 1]))
    detections = [dets([[1, 0, 11, 10], [2, 0, 12, 10]], [0.9, 0.8], [1, 1])]
    per_image = detections_per_image(dataset, detections)
    fast, reference = coco_metrics(dataset, per_image, "fast"), coco_metrics(dataset, per_image, "pycocotools")
    assert fast["coco_ap"] == reference["coco_ap"] < 0.9


# ---------------------------------------------------------------- results files


def test_voc_results_name_images_by_stem_and_classes_by_name_in_one_based_pixels(tmp_path):
    dataset = voc_dataset(TWO_CATS, annotation("b", [[5, 5, 40, 60]], [2]))
    detections = [dets([[0, 0, 10, 10], [2.5, 3, 20, 30]], [0.9, 0.25], [1, 2]), dets([[5, 5, 40, 60]], [0.5], [2])]
    path = tmp_path / "results.json"
    write_results_json(path, dataset, detections)
    rows = json.loads(path.read_text())
    assert rows[0] == {
        "image_id": "a",
        "category_id": "cat",
        "bbox": [1.0, 1.0, 10.0, 10.0],
        "score": pytest.approx(0.9),
    }
    assert rows[1]["bbox"] == [3.5, 4.0, 17.5, 27.0] and rows[2]["image_id"] == "b"
    back = read_results_json(path, dataset)
    for original, read in zip(detections, back):
        np.testing.assert_allclose(read["boxes"], original["boxes"].numpy(), atol=1e-5)
        np.testing.assert_allclose(read["scores"], original["scores"].numpy())
        np.testing.assert_array_equal(read["labels"], original["labels"].numpy())
    assert evaluate_detections(dataset, back) == evaluate_detections(dataset, detections)


def test_coco_results_use_the_annotation_files_ids(tmp_path):
    content = {"images": [{"id": 12, "file_name": "x.jpg", "width": 50, "height": 50}],
               "categories": [{"id": 44, "name": "bottle"}, {"id": 7, "name": "cup"}],
               "annotations": [{"id": 1, "image_id": 12, "category_id": 44, "bbox": [1, 2, 3, 4]}]}
    (tmp_path / "ann.json").write_text(json.dumps(content))
    write_image(tmp_path / "x.jpg", 50, 50)
    dataset = load_coco(tmp_path / "ann.json", tmp_path)
    assert dataset.class_names == ("cup", "bottle")
    path = tmp_path / "results.json"
    write_results_json(path, dataset, [dets([[1, 2, 4, 6], [0, 0, 5, 5]], [0.5, 0.25], [2, 1])])
    rows = json.loads(path.read_text())
    assert [(r["image_id"], r["category_id"], r["bbox"]) for r in rows] == [
        (12, 44, [1, 2, 3, 4]),
        (12, 7, [0, 0, 5, 5]),
    ]
    (read,) = read_results_json(path, dataset)
    np.testing.assert_array_equal(read["boxes"], [[1, 2, 4, 6], [0, 0, 5, 5]])
    np.testing.assert_array_equal(read["labels"], [2, 1])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"image_id": "a", "category_id": "cat", "bbox": [1, 1, 2, 2]', "malformed JSON"),
        ('{"image_id": "a"}', "is not a list"),
        (
            '[{"image_id": "zz", "category_id": "cat", "bbox": [1, 1, 2, 2], "score": 1}]',
            "result #0: unknown image_id 'zz'",
        ),
        (
            '[{"image_id": "a", "category_id": "cat", "bbox": [1, 1, 2, 2], "score": 1}, '
            '{"image_id": "a", "category_id": 1, "bbox": [1, 1, 2, 2], "score": 1}]',
            "result #1: unknown category_id 1",
        ),
        ('[{"image_id": "a", "category_id": "cat", "bbox": [1, 1, 2], "score": 1}]', "result #0: bad or missing field"),
    ],
)
def test_bad_results_file_raises_a_dataset_error_naming_it(tmp_path, text, message):
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(DatasetError, match="results.json") as raised:
        read_results_json(path, voc_dataset(TWO_CATS))
    assert message in str(raised.value)


# ---------------------------------------------------------------- inputs


def test_detections_may_be_keyed_by_image_id():
    dataset = voc_dataset(TWO_CATS, annotation("b", [[5, 5, 40, 60]], [2]))
    keyed = evaluate_detections(dataset, {"b": dets([[5, 5, 40, 60]], [0.5], [2])})
    assert keyed == evaluate_detections(dataset, [dets(), dets([[5, 5, 40, 60]], [0.5], [2])])
    with pytest.raises(ValueError, match="not in the dataset"):
        evaluate_detections(dataset, {"zz": dets()})
    with pytest.raises(ValueError, match="labels must be in 1..2"):
        evaluate_detections(dataset, [dets([[0, 0, 1, 1]], [1.0], [3]), dets()])
    with pytest.raises(ValueError, match="1 entries for the 2 images"):
        evaluate_detections(dataset, [dets()])


# ---------------------------------------------------------------- proposal recall


def test_proposal_recall_pairs_proposals_and_objects_one_to_one():
    objects = annotation("a", [[0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60]], [1, 1, 2],
                         difficult=[False, False, True])
    # The first proposal is object 0; the second covers 6.2 of object 1's 10 rows: IoU 0.62.
    proposals = np.array([[0, 0, 10, 10], [20, 0, 30, 6.2], [50, 50, 60, 60]], dtype=np.float64)
    metrics = proposal_recall(voc_dataset(objects), [proposals], limits=(1, 2, 3))
    assert metrics["recall@1_iou0.5"] == 0.5 and metrics["recall@1_iou0.7"] == 0.5
    assert metrics["recall@2_iou0.5"] == 1.0 and metrics["recall@2_iou0.7"] == 0.5
    # AR: object 0 counts at all 10 thresholds, object 1 at 0.5, 0.55 and 0.6.
    assert metrics["ar@2"] == pytest.approx((10 + 3) / 20)
    assert metrics["ar@3"] == metrics["ar@2"]  # the difficult object is not counted
    # Two identical objects, one proposal on them and one elsewhere: only one is recalled.
    twins = annotation("b", [[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1])
    proposals = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60]])
    assert proposal_recall(voc_dataset(twins), [proposals], limits=(5,))["recall@5_iou0.5"] == 0.5
    assert math.isnan(proposal_recall(voc_dataset(annotation("c")), [np.zeros((0, 4))])["ar@100"])
