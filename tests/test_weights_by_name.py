"""Published weights by name (``torchvision:ARCH``, ``FasterRCNN.from_torchvision(ARCH)``,
``model.backbone.weights=imagenet``): read from torch's hub cache under the URL's file name with no
network, and one line naming the URL and the path when the file is absent and cannot be fetched.
No test touches the network: the downloader is replaced."""
from __future__ import annotations

import json
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models import detection, get_model_weights

from frcnn import hub
from frcnn.backbones import build_backbone
from frcnn.cli.main import main
from frcnn.config import BackboneConfig, DataConfig, torchvision_config
from frcnn.data import DatasetError, open_dataset
from frcnn.model import FasterRCNN
from frcnn.weights import init_weights

ARCH = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME and a downloader that fails the test if it is called."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch"


def cached_file(torch_home: Path, name: str) -> Path:
    """Where the published weights of torchvision model ``name`` are cached, by the rule torch.hub
    uses: $TORCH_HOME/hub/checkpoints/<the URL's file name>."""
    url = get_model_weights(name).DEFAULT.url
    path = torch_home / "hub" / "checkpoints" / url.split("/")[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def seeded_detector(seed: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(detection, ARCH)(weights=None, weights_backbone=None).eval()


def test_the_cached_coco_weights_are_the_ones_loaded(torch_home):
    reference = seeded_detector()
    torch.save(reference.state_dict(), cached_file(torch_home, ARCH))
    by_spec = FasterRCNN.load(f"torchvision:{ARCH}")
    by_name = FasterRCNN.from_torchvision(ARCH)
    torch.testing.assert_close(by_spec.rpn_head.cls_score.weight, reference.rpn.head.cls_logits.weight)
    torch.testing.assert_close(by_spec.roi_head.bbox_pred.bias, reference.roi_heads.box_predictor.bbox_pred.bias)
    for name, value in by_spec.state_dict().items():
        torch.testing.assert_close(by_name.state_dict()[name], value, msg=name)
    assert len(by_spec.class_names) == 90 and by_spec.class_names[0] == "person"
    model = FasterRCNN(5, config=torchvision_config(ARCH))
    report = init_weights(model, f"torchvision:{ARCH}")
    assert len(report.new) == 4
    torch.testing.assert_close(model.backbone.fpn.lateral[0].weight,
                               reference.backbone.fpn.inner_blocks[0][0].weight)


def test_a_name_and_another_arch_or_a_wrong_name_are_refused(torch_home):
    with pytest.raises(ValueError, match="source names fasterrcnn_mobilenet_v3_large_320_fpn but arch is "
                                         "fasterrcnn_resnet50_fpn"):
        FasterRCNN.from_torchvision(ARCH, "fasterrcnn_resnet50_fpn")
    with pytest.raises(ValueError, match="expected torchvision:ARCH or torchvision:ARCH:PATH"):
        FasterRCNN.load("torchvision:resnet18")


def test_no_network_and_no_file_is_one_line_naming_the_url_and_the_path(torch_home, monkeypatch, capsys):
    timeouts = []

    def unreachable(url, dst, hash_prefix=None, progress=True):
        timeouts.append((socket.getdefaulttimeout(), hash_prefix, progress))
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    before = socket.getdefaulttimeout()
    url = get_model_weights("fasterrcnn_resnet50_fpn").DEFAULT.url
    path = cached_file(torch_home, "fasterrcnn_resnet50_fpn")
    assert main(["eval", "torchvision:fasterrcnn_resnet50_fpn", "--data", "synthetic"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (f"frcnn eval: error: cannot download {url} (<urlopen error [Errno -2] Name or service not known>); "
            f"without network, put the file at {path}") in err
    # The download was bounded by the socket timeout, its hash checked, and the timeout restored.
    assert timeouts == [(hub.DOWNLOAD_TIMEOUT_S, url.split("-")[-1].split(".")[0], True)]
    assert socket.getdefaulttimeout() == before
    assert not path.exists()


def test_imagenet_backbone_weights_by_name(torch_home):
    torch.manual_seed(5)
    reference = torchvision.models.mobilenet_v3_large(weights=None)
    torch.save(reference.state_dict(), cached_file(torch_home, "mobilenet_v3_large"))
    backbone, _ = build_backbone(BackboneConfig(name="mobilenet_v3_large", fpn=True, weights="imagenet"))
    for index in (0, 7, 16):
        for name, value in reference.features[index].state_dict().items():
            if not name.endswith("num_batches_tracked"):
                torch.testing.assert_close(backbone.stages[index].state_dict()[name], value, msg=f"{index}.{name}")
    with pytest.raises(ValueError, match="small backbone"):
        BackboneConfig(name="small", weights="imagenet")


def test_cache_path_is_torch_hubs(torch_home):
    url = get_model_weights("resnet50").DEFAULT.url
    assert hub.cache_path(url) == torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    with pytest.raises(ValueError, match="torchvision publishes no weights for 'small'"):
        hub.published_weights_url("small")


def test_coco_weights_by_name_evaluate_a_folder_of_a_few_coco_classes(torch_home, tmp_path, capsys):
    """torchvision's COCO models name 90 labels, every unused id 'N/A': a dataset of three of
    their classes, in another order and with other category ids, reads with the model's labels."""
    torch.save(seeded_detector().state_dict(), cached_file(torch_home, ARCH))
    categories = [{"id": 7, "name": "dog"}, {"id": 8, "name": "person"}, {"id": 9, "name": "car"}]
    content = {"categories": categories, "images": [], "annotations": []}
    for image_id in (1, 2):
        Image.fromarray(np.full((120, 160, 3), 40 * image_id, np.uint8)).save(tmp_path / f"{image_id}.jpg")
        content["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 160, "height": 120})
        content["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 6 + image_id,
                                       "bbox": [10, 20, 60, 50], "area": 3000, "iscrowd": 0})
    (tmp_path / "val.json").write_text(json.dumps(content))
    spec = f"coco:{tmp_path / 'val.json'}:{tmp_path}"
    model = FasterRCNN.load(f"torchvision:{ARCH}")
    dataset = open_dataset(DataConfig(train=spec), "val", model.class_names)
    assert dataset.class_names == model.class_names
    assert [model.class_names[int(a.labels[0]) - 1] for a in dataset.annotations] == ["dog", "person"]
    assert main(["eval", f"torchvision:{ARCH}", "--data", spec, "--split", "val", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"voc07_ap/dog", "voc07_ap/person", "voc07_ap/car"} <= metrics.keys()
    assert main(["eval", f"torchvision:{ARCH}", "--data", spec, "--split", "val"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table if line.startswith(("person ", "dog ", "car "))] == ["person", "dog"]
    assert table[-1] == "(88 more classes of the model have no objects in the data)"
    with pytest.raises(DatasetError, match="but the data's classes are"):
        open_dataset(DataConfig(train=spec), "val", ("dog", "person", "N/A", "N/A"))
