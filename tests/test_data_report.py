"""The data report's counts against a plain recount, and 'frcnn train' / 'frcnn eval' end to end on
folders in the VOC, COCO and YOLO layouts with their own class names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frcnn.cli.main import main
from frcnn.config import PreprocessConfig
from frcnn.data import DetectionTransform, build_dataset
from frcnn.data.report import data_report, plot_labels, summary
from frcnn.engine import load_checkpoint
from test_data_formats import CLASSES, SMALL_SET, write_coco_layout, write_voc_layout, write_yolo_layout

TINY_MODEL = ["model.preprocess.min_size=64", "model.preprocess.max_size=96", "train.batch_size=2",
              "train.log_every=1", "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("own")
    voc, coco, yolo = write_voc_layout(root / "voc"), write_coco_layout(root / "coco"), write_yolo_layout(root / "yolo")
    return {"voc": f"voc:{voc}", "coco": f"coco:{coco / 'instances_val.json'}:{coco / 'images'}",
            "yolo": f"yolo:{yolo / 'data.yaml'}", "root": str(root)}


def test_report_counts_and_sizes_match_a_plain_recount(folders, tmp_path):
    transform = DetectionTransform(PreprocessConfig(min_size=50, max_size=60))
    dataset = build_dataset(folders["voc"], "train")
    report = data_report(dataset, folders["voc"], "train", transform)
    objects = [(name, box, w, h) for w, h, objs in SMALL_SET["train"].values() for name, box in objs]
    assert report.objects_per_class == {name: sum(o[0] == name for o in objects) for name in CLASSES}
    assert (report.num_images, report.background_images, report.objects_per_image["max"]) == (4, 1, 3)
    sizes = np.array([(b[2] - b[0], b[3] - b[1]) for _, b, _, _ in objects], dtype=float)
    areas = sizes.prod(axis=1)
    assert report.coco_sizes == {"small": int((areas < 1024).sum()), "medium": int((areas >= 1024).sum()), "large": 0}
    assert report.box_sizes["original"]["sqrt_area"]["median"] == pytest.approx(np.median(np.sqrt(areas)), abs=1e-3)
    scales = np.array([min(50 / min(h, w), 60 / max(h, w)) for _, _, w, h in objects])
    assert report.box_sizes["resized"]["width"]["p95"] == pytest.approx(
        np.quantile(sizes[:, 0] * scales, 0.95), abs=1e-3
    )
    assert report.duplicate_boxes == 0 and report.problems == ()
    text = summary(report)
    assert text.startswith(f"{folders['voc']} train: 4 images (1 without objects), 7 objects") and "\n" not in text
    json.dumps(report.to_dict())
    assert plot_labels(dataset, tmp_path / "labels.png").read_bytes()[:4] == b"\x89PNG"


def test_own_classes_train_from_voc_and_evaluate_alike_on_every_layout(folders, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", folders["voc"], "--out", str(run), "--no-eval",
                 "--set", *TINY_MODEL, "train.max_iters=2"]) == 0
    err = capsys.readouterr().err
    assert f"{folders['voc']} train: 4 images (1 without objects), 7 objects" in err
    assert load_checkpoint(run / "model_final.pt")["class_names"] == list(CLASSES)
    metrics = {}
    for kind in ("voc", "coco", "yolo"):
        assert main(["eval", str(run / "model_final.pt"), "--data", folders[kind], "--split", "val", "--json",
                     "--set", "model.test.score_threshold=0.0"]) == 0
        metrics[kind] = json.loads(capsys.readouterr().out)
    for kind in ("coco", "yolo"):
        for key, value in metrics["voc"].items():
            assert metrics[kind][key] == pytest.approx(value, abs=1e-3, nan_ok=True), (kind, key)
    other = Path(folders["root"]) / "other"
    write_yolo_layout(other, names=("bolt", "cross", "nut", "screw", "washer", "spring"))
    assert main(["eval", str(run / "model_final.pt"), "--data", f"yolo:{other / 'data.yaml'}", "--split", "val"]) == 1
    err = capsys.readouterr().err
    assert "frcnn eval: error: the model detects ['bolt', 'cross', 'nut', 'screw', 'washer'], but the data's " \
           "classes are ['bolt', 'cross', 'nut', 'screw', 'washer', 'spring']" in err


def test_train_on_a_yolo_data_yaml_with_names_in_the_configuration_order(folders, tmp_path, capsys):
    run = tmp_path / "run"
    order = "[washer,screw,nut,cross,bolt]"
    assert main(["train", "--data", folders["yolo"], "--out", str(run), "--set", *TINY_MODEL,
                 "train.max_iters=2", f"data.class_names={order}"]) == 0
    assert load_checkpoint(run / "model_final.pt")["class_names"] == ["washer", "screw", "nut", "cross", "bolt"]
    assert "voc07_map" in json.loads((run / "metrics.json").read_text())
