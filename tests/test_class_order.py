"""Classes matched by name: evaluation data is read with the model's class names, so the same
names in another order (VOC's sorted set, COCO's category ids, a data.yaml's order) give the
model's labels and evaluate alike; another set is one line listing both, or with
``data.unknown_classes=skip`` the objects of classes the model lacks are left out."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from frcnn.cli.main import main
from frcnn.config import DataConfig
from frcnn.data import DatasetError, open_dataset
from frcnn.engine import load_checkpoint
from test_data_formats import CLASSES, SMALL_SET, write_coco_layout, write_voc_layout, write_yolo_layout

YAML_ORDER = ("washer", "screw", "nut", "cross", "bolt")
TINY_MODEL = ["model.preprocess.min_size=64", "model.preprocess.max_size=96", "train.batch_size=2",
              "train.log_every=1", "train.max_iters=2", "model.test.score_threshold=0.0"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("orders")
    voc, coco = write_voc_layout(root / "voc"), write_coco_layout(root / "coco")
    yolo = write_yolo_layout(root / "yolo", names=YAML_ORDER)
    return {"voc": f"voc:{voc}", "coco": f"coco:{coco / 'instances_val.json'}:{coco / 'images'}",
            "yolo": f"yolo:{yolo / 'data.yaml'}"}


def named_objects(dataset) -> dict[str, list[str]]:
    """Each image's objects as class names, by file stem, read through the dataset's labels."""
    return {Path(a.image_path).stem: [dataset.class_names[int(label) - 1] for label in a.labels]
            for a in dataset.annotations}


@pytest.mark.parametrize("kind", ["voc", "coco", "yolo"])
@pytest.mark.parametrize("order", [CLASSES, YAML_ORDER])
def test_every_layout_reads_with_the_models_labels(specs, kind, order):
    dataset = open_dataset(DataConfig(train=specs[kind]), "val", order)
    assert dataset.class_names == order
    assert named_objects(dataset) == {stem: [name for name, _ in objects]
                                      for stem, (_, _, objects) in SMALL_SET["val"].items()}


def test_another_set_is_one_line_listing_both_or_skipped_on_request(specs):
    fewer = ("screw", "bolt", "cross", "nut")
    with pytest.raises(DatasetError) as caught:
        open_dataset(DataConfig(train=specs["voc"]), "val", fewer)
    assert str(caught.value) == (f"the model detects {list(fewer)}, but the data's classes are {list(CLASSES)} "
                                 "(data.unknown_classes=skip leaves out objects of classes the model lacks)")
    with pytest.warns(UserWarning, match="dropped 1 objects of unknown classes"):
        skipped = open_dataset(DataConfig(train=specs["yolo"], unknown_classes="skip"), "val", fewer)
    assert skipped.class_names == fewer
    assert named_objects(skipped) == {"img_e": ["nut", "bolt"], "img_f": ["screw", "cross"]}
    assert [problem.dropped for problem in skipped.problems] == ["class"]


def test_a_model_trained_in_yaml_order_evaluates_alike_on_every_layout(specs, tmp_path, capsys):
    run = tmp_path / "run"
    # The evaluation during training reads the VOC layout (sorted names) with the model's order.
    assert main(["train", "--data", specs["yolo"], "--val-data", specs["voc"], "--out", str(run),
                 "--set", *TINY_MODEL]) == 0
    assert load_checkpoint(run / "model_final.pt")["class_names"] == list(YAML_ORDER)
    capsys.readouterr()
    metrics = {}
    for kind in ("voc", "coco", "yolo"):
        assert main(["eval", str(run / "model_final.pt"), "--data", specs[kind], "--split", "val", "--json"]) == 0
        metrics[kind] = json.loads(capsys.readouterr().out)
    assert any(f"voc07_ap/{name}" in metrics["voc"] for name in YAML_ORDER)
    for kind in ("coco", "yolo"):
        assert metrics[kind].keys() == metrics["voc"].keys()
        for key, value in metrics["voc"].items():
            assert metrics[kind][key] == pytest.approx(value, abs=1e-3, nan_ok=True), (kind, key)
