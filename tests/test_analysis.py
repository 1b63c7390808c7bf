"""frcnn.analysis: the anchor fit against plain per-gt counts of the layer's own outputs, the
geometry against the real model, the report's keys, the coverage bound, the suggestion."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn.analysis import fit_ground_truth, resized_ground_truth, summarize
from frcnn.analysis.anchor_fit import COVERED, LOW_QUALITY_ONLY, UNMATCHED, anchor_fit, best_anchor_iou
from frcnn.analysis.anchor_search import anchor_shape, iou_kmeans, neighbours, suggest_anchors
from frcnn.analysis.bound import best_possible_iou, level_origins
from frcnn.analysis.geometry import FeatureGeometry, anchor_grids, base_anchors, padded_size
from frcnn.analysis.ground_truth import GroundTruth
from frcnn.anchor_targets import assign_anchor_targets
from frcnn.boxes import box_iou
from frcnn.config import AnchorConfig, ModelConfig, default_config
from frcnn.data import DetectionDataset, DetectionTransform, ImageAnnotation, collate
from frcnn.model import FasterRCNN


def table(images: list[tuple[int, int, list[list[float]]]], class_names=("a", "b")) -> GroundTruth:
    """A GroundTruth of resized images (height, width, boxes), labels alternating 1, 2."""
    boxes = [box for _, _, rows in images for box in rows]
    image = [index for index, (_, _, rows) in enumerate(images) for _ in rows]
    tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    return GroundTruth(tensor, torch.tensor(image, dtype=torch.int64),
                       torch.tensor([1 + i % 2 for i in range(len(boxes))], dtype=torch.int64),
                       ((tensor[:, 2] - tensor[:, 0]) * (tensor[:, 3] - tensor[:, 1])).double(),
                       torch.tensor([(h, w) for h, w, _ in images], dtype=torch.int64),
                       torch.ones(len(images), dtype=torch.float64), tuple(class_names))


def reference_fit(gt: GroundTruth, model: ModelConfig) -> tuple[list[int], list[int], list[float]]:
    """Per gt, one image at a time through the real model's backbone and anchor grids and the
    layer (sampling off): (status, positive count, best IoU over the taking-part anchors)."""
    torch.manual_seed(0)
    net = FasterRCNN(2, config=model).eval()
    config = replace(model.rpn.targets, batch_size=None)
    status, positives, best = [], [], []
    for index, (height, width) in enumerate(gt.image_sizes.tolist()):
        rows = (gt.image == index).nonzero()[:, 0]
        padded = padded_size(height, width, model.preprocess.size_divisible)
        images = torch.zeros(1, 3, *padded)
        with torch.no_grad():
            grids = net.anchor_grids(net.backbone(images), padded)
        boxes = gt.boxes[rows]
        gt_boxes = torch.cat((boxes, torch.ones(len(rows), 1)), dim=1)[None]
        targets = assign_anchor_targets(grids, gt_boxes, torch.tensor([len(rows)]),
                                        torch.tensor([[height, width, 1.0]]), config)
        anchors = torch.cat([g.boxes for g in grids])
        iou = box_iou(anchors.double(), boxes.double())                  # (N, K)
        border = config.allowed_border
        inside = torch.ones(len(anchors), dtype=torch.bool) if border is None else (
            (anchors[:, 0] >= -border) & (anchors[:, 1] >= -border)
            & (anchors[:, 2] < width + border) & (anchors[:, 3] < height + border))
        for k in range(len(rows)):
            mine = (targets.matched_gt[0] == k).nonzero()[:, 0]
            strong = any(float(iou[n, k]) >= config.positive_overlap for n in mine.tolist())
            status.append(COVERED if strong else LOW_QUALITY_ONLY if len(mine) else UNMATCHED)
            positives.append(len(mine))
            best.append(float(iou[inside, k].max()) if inside.any() else 0.0)
    return status, positives, best


SMALL = default_config("small")
HAND_MADE = table([
    # 0: a box at the corner that only border-crossing anchors reach (allowed_border 0): unmatched
    (96, 128, [[0.0, 0.0, 5.0, 5.0]]),
    # 1: a box that is an anchor (covered) and inside it a small box whose best anchors all go to
    #    that bigger neighbour (unmatched)
    (128, 160, [[40.0, 40.0, 71.0, 71.0], [44.0, 44.0, 68.0, 66.0]]),
    # 2: two identical boxes: every tie goes to the lower index, the twin is unmatched
    (100, 100, [[30.0, 30.0, 62.0, 62.0], [30.0, 30.0, 62.0, 62.0]]),
    # 3: a small box away from every anchor centre: low-quality matches only
    (64, 64, [[20.0, 20.0, 30.0, 28.0]]),
])


@pytest.mark.parametrize("model", [SMALL, default_config("small", fpn=True),
                                   replace(SMALL, anchors=AnchorConfig(scales=(1.5, 3.0), ratios=(1.0,)))],
                         ids=["small", "small-fpn", "two-anchors"])
def test_fit_equals_a_plain_per_gt_count_of_the_layer_outputs(model: ModelConfig) -> None:
    status, positives, best = reference_fit(HAND_MADE, model)
    fit = fit_ground_truth(HAND_MADE, model, images_per_batch=3)
    assert fit.status.tolist() == status
    assert fit.positives.tolist() == positives
    assert fit.best_iou.double().numpy() == pytest.approx(best, abs=1e-6)


def test_hand_made_cases_are_what_they_say() -> None:
    fit = fit_ground_truth(HAND_MADE, SMALL)
    assert fit.status.tolist() == [UNMATCHED, COVERED, UNMATCHED, LOW_QUALITY_ONLY, UNMATCHED, LOW_QUALITY_ONLY]
    assert fit.best_iou[0] == 0 and fit.positives[0] == 0
    assert fit.best_iou[1] == 1 and fit.best_iou[2] > 0.5   # it has anchors, but they went to its neighbour
    assert fit.positives[3] > 0 and fit.positives[4] == 0 and fit.best_iou[3] == fit.best_iou[4]


def test_random_batches_match_one_image_at_a_time() -> None:
    generator = torch.Generator().manual_seed(3)
    images = []
    for _ in range(7):
        height, width = (int(v) for v in torch.randint(64, 140, (2,), generator=generator))
        count = int(torch.randint(0, 5, (), generator=generator))
        corner = torch.rand(count, 2, generator=generator) * torch.tensor([width - 8, height - 8])
        side = 4 + torch.rand(count, 2, generator=generator) * 60
        far = torch.minimum(corner + side, torch.tensor([float(width), float(height)]))
        images.append((height, width, torch.cat((corner, far), dim=1).tolist()))
    gt = table(images)
    status, positives, best = reference_fit(gt, SMALL)
    fit = fit_ground_truth(gt, SMALL, images_per_batch=2)
    assert (fit.status.tolist(), fit.positives.tolist()) == (status, positives)
    assert fit.best_iou.double().numpy() == pytest.approx(best, abs=1e-6)


@pytest.mark.parametrize("backbone,fpn", [("small", False), ("small", True), ("vgg16", False), ("resnet50", True)])
def test_feature_sizes_are_the_real_backbones(backbone: str, fpn: bool) -> None:
    model = FasterRCNN(2, config=default_config(backbone, fpn)).eval()
    geometry = FeatureGeometry(model.config.backbone)
    assert geometry.strides == tuple(model.backbone.strides)
    for height, width in ((64, 96), (96, 64), (160, 224)):
        with torch.no_grad():
            features = model.backbone(torch.zeros(1, 3, height, width))
        assert geometry.feature_sizes(height, width) == tuple(tuple(f.shape[-2:]) for f in features)


@pytest.mark.parametrize("anchors", [SMALL.anchors, AnchorConfig(scales=(8.0,)),
                                     AnchorConfig(sizes=((32.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0)),
                                                  cell_rule="torchvision", stride_rule="image")])
def test_anchor_grids_are_the_models(anchors: AnchorConfig) -> None:
    config = replace(default_config("small", fpn=True), anchors=anchors)
    model = FasterRCNN(2, config=config)
    strides = tuple(model.backbone.strides)
    bases = base_anchors(anchors, strides)
    assert all(torch.equal(a, b) for a, b in zip(bases, model.base_anchors))
    padded = (96, 160)
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, *padded))
    expected = model.anchor_grids(features, padded)
    sizes = FeatureGeometry(config.backbone).feature_sizes(*padded)
    for got, want in zip(anchor_grids(bases, anchors, padded, sizes, strides), expected):
        assert torch.equal(got.boxes, want.boxes)


def test_padding_is_collates() -> None:
    items = [(torch.zeros(3, 70, 97), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                                       "difficult": torch.zeros(0, dtype=torch.bool),
                                       "ignore_boxes": torch.zeros(0, 4), "image_id": 0, "orig_size": (70, 97),
                                       "scale": 1.0})]
    assert tuple(collate(items).images.shape[-2:]) == padded_size(70, 97, SMALL.preprocess.size_divisible)


def write_dataset(root: Path) -> DetectionDataset:
    """Three small images with odd sizes; one difficult object."""
    records = []
    rng = np.random.default_rng(0)
    specs = [(75, 113, [[3.2, 4.7, 40.1, 33.3], [0.0, 10.0, 113.0, 75.0]], [False, True]),
             (120, 61, [[10.5, 20.25, 30.0, 119.9]], [False]),
             (50, 50, [], [])]
    for index, (height, width, boxes, difficult) in enumerate(specs):
        path = root / f"{index}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        boxes_array = np.array(boxes, dtype=np.float64).reshape(-1, 4)
        records.append(
            ImageAnnotation(
                path,
                index,
                height,
                width,
                boxes_array,
                np.arange(1, len(boxes) + 1, dtype=np.int64) % 2 + 1,
                np.array(difficult, dtype=bool),
                (boxes_array[:, 2] - boxes_array[:, 0]) * (boxes_array[:, 3] - boxes_array[:, 1]),
                np.zeros((0, 4)),
                np.zeros(0, dtype=np.int64),
            )
        )
    return DetectionDataset(tuple(records), ("a", "b"), "voc")


@pytest.mark.parametrize("keep_difficult", [False, True])
def test_resized_boxes_are_the_transforms(tmp_path: Path, keep_difficult: bool) -> None:
    dataset = write_dataset(tmp_path)
    preprocess = replace(SMALL.preprocess, min_size=77, max_size=131)
    gt = resized_ground_truth(dataset, preprocess, keep_difficult)
    transformed = dataset.with_transform(DetectionTransform(preprocess))
    batch = collate([transformed[i] for i in range(len(dataset))], keep_difficult)
    expected = torch.cat([batch.gt_boxes[b, :int(n), :4] for b, n in enumerate(batch.num_boxes)])
    assert torch.equal(gt.boxes, expected)
    assert gt.image.tolist() == [b for b, n in enumerate(batch.num_boxes.tolist()) for _ in range(n)]
    sizes = [tuple(transformed[i][0].shape[-2:]) for i in range(len(dataset))]
    assert [tuple(s) for s in gt.image_sizes.tolist()] == sizes


def test_report_keys_and_fractions(tmp_path: Path) -> None:
    model = default_config("small", fpn=True)
    report = anchor_fit(write_dataset(tmp_path), model)
    figure_keys = {"gts", "coverage", "low_quality_only", "unmatched", "positives_per_gt", "best_iou"}
    assert figure_keys | {"images", "anchors", "by_size", "by_class", "by_level"} == set(report)
    assert set(report["by_size"]) == {"small", "medium", "large"}
    assert set(report["by_class"]) == {"a", "b"}
    assert set(report["by_level"]) == {"stride_4", "stride_8", "stride_16", "stride_32"}
    groups = [report, *report["by_size"].values(), *report["by_class"].values(), *report["by_level"].values()]
    for figures in groups:
        assert set(figures) >= figure_keys and set(figures["best_iou"]) == {"mean", "p10", "p50", "p90"}
        if figures["gts"]:
            assert figures["coverage"] + figures["low_quality_only"] + figures["unmatched"] == pytest.approx(1)
        else:
            assert figures["coverage"] is None
    assert report["gts"] == 2                       # the difficult object is left out
    assert sum(report["by_level"][key]["gts"] for key in report["by_level"]) == 2


def test_bound_is_exact_for_one_shape() -> None:
    # A box centred dx, dy from an anchor centre: no anchor shape there beats the bound, and a
    # fine search over shapes reaches it.
    generator = torch.Generator().manual_seed(1)
    for _ in range(50):
        w, h = (4 + 40 * torch.rand(2, generator=generator)).tolist()
        dx, dy = (8 * torch.rand(2, generator=generator)).tolist()
        origin = torch.tensor([[7.5, 7.5]])
        box = torch.tensor([[7.5 + dx - w / 2, 7.5 + dy - h / 2, 7.5 + dx + w / 2, 7.5 + dy + h / 2]])
        bound = float(best_possible_iou(box, (16,), [origin]))
        sides = torch.linspace(0.01, 6.0, 600, dtype=torch.float64)
        a, b = torch.meshgrid(w * sides, h * sides, indexing="ij")
        anchors = torch.stack((7.5 - a / 2, 7.5 - b / 2, 7.5 + a / 2, 7.5 + b / 2), dim=-1).reshape(-1, 4)
        searched = float(box_iou(anchors, box.double()).max())
        assert searched <= bound + 1e-9 and searched >= bound - 0.02


def test_bound_covers_every_anchor_set() -> None:
    status_bound = best_possible_iou(HAND_MADE.boxes, (16,), level_origins(base_anchors(SMALL.anchors, (16,))))
    for scales in ((2.0, 4.0, 8.0, 16.0), (0.5, 1.0, 1.7)):
        model = replace(SMALL, anchors=AnchorConfig(scales=scales), rpn=replace(
            SMALL.rpn, targets=replace(SMALL.rpn.targets, allowed_border=None)))
        fit = fit_ground_truth(HAND_MADE, model)
        assert (fit.best_iou.double() <= status_bound + 1e-6).all()


def test_best_anchor_iou_ignores_anchors_outside_the_image() -> None:
    grid = anchor_grids(base_anchors(AnchorConfig(scales=(2.0,), ratios=(1.0,)), (16,)), AnchorConfig(),
                        (64, 64), ((4, 4),), (16,))
    box = torch.tensor([[0.0, 0.0, 24.0, 24.0]])  # the anchor at the corner fits best, but crosses the border
    inside, _ = best_anchor_iou(grid, box, torch.tensor([[64, 64]]), SMALL.rpn.targets)
    everywhere, _ = best_anchor_iou(grid, box, torch.tensor([[64, 64]]), replace(SMALL.rpn.targets,
                                                                                  allowed_border=None))
    assert float(inside) < float(everywhere)


def test_anchor_counts_and_kmeans() -> None:
    assert anchor_shape(4, 3, None) == (4, 3)
    assert anchor_shape(4, 3, 15) == (5, 3)
    assert anchor_shape(4, 3, 8) == (4, 2)
    shapes = torch.tensor([[1.0, 1.0]] * 20 + [[4.0, 2.0]] * 20 + [[10.0, 30.0]] * 20)
    centres = iou_kmeans(shapes, 3, torch.Generator().manual_seed(0))
    assert sorted(map(tuple, centres.tolist())) == [(1.0, 1.0), (4.0, 2.0), (10.0, 30.0)]


def test_suggestion_is_never_worse() -> None:
    gt = table([(96, 128, [[10.0, 10.0, 18.0, 16.0], [50.0, 40.0, 60.0, 52.0], [70.0, 20.0, 79.0, 35.0]]),
                (128, 96, [[5.0, 60.0, 17.0, 70.0], [40.0, 40.0, 47.0, 48.0]])] * 3)
    current = fit_ground_truth(gt, SMALL)
    suggestion = suggest_anchors(gt, SMALL, current, sample_images=4, max_evaluations=25)
    covered = float((suggestion.fit.status == COVERED).double().mean())
    assert covered >= float((current.status == COVERED).double().mean())
    again = fit_ground_truth(gt, replace(SMALL, anchors=suggestion.anchors))
    assert torch.equal(again.status, suggestion.fit.status)
    summary = summarize(gt, suggestion.fit, (16,))
    assert summary["coverage"] == pytest.approx(covered)
    assert not math.isnan(summary["best_iou"]["mean"])


def test_fpn_suggestion_sizes_each_level_and_is_never_worse() -> None:
    """On a pyramid the search sizes each level on its own (one tuple per stride, the same count
    per cell), and what it reports is what a fit with its anchors measures."""
    fpn = default_config("small", fpn=True)
    gt = table([(96, 128, [[10.0, 10.0, 16.0, 15.0], [50.0, 40.0, 90.0, 80.0], [70.0, 20.0, 75.0, 29.0]]),
                (128, 96, [[5.0, 60.0, 11.0, 66.0], [20.0, 10.0, 80.0, 70.0]])] * 3)
    current = fit_ground_truth(gt, fpn)
    suggestion = suggest_anchors(gt, fpn, current, sample_images=4, max_evaluations=40)
    anchors = suggestion.anchors
    assert len(anchors.sizes) == len(FeatureGeometry(fpn.backbone).strides)
    assert anchors.num_anchors == fpn.anchors.num_anchors
    assert len({level for level in anchors.sizes}) > 1  # not one shared scale times the stride
    assert suggestion.sample_suggested.key() >= suggestion.sample_current.key()
    again = fit_ground_truth(gt, replace(fpn, anchors=anchors))
    assert torch.equal(again.status, suggestion.fit.status)
    assert (again.status == COVERED).sum() >= (current.status == COVERED).sum()


def test_per_level_neighbours_move_every_level_at_once_then_each_alone() -> None:
    anchors = AnchorConfig(ratios=(1.0,), sizes=((10.0, 20.0), (40.0, 80.0)))
    sizes = [candidate.sizes for candidate in neighbours(anchors, 2.0)]
    assert ((10.0, 40.0), (40.0, 160.0)) in sizes                     # size 1 of both levels doubled
    assert ((5.0, 20.0), (20.0, 80.0)) in sizes                       # size 0 of both levels halved
    assert ((10.0, 20.0), (40.0, 160.0)) in sizes                     # one level alone
    assert ((20.0, 20.0), (40.0, 80.0)) not in sizes                  # no two equal sizes on a level
    assert ((20.0, 20.0), (80.0, 80.0)) not in sizes
    assert len(sizes) == 2 + 2 + 4  # two ratio moves, two shared moves and two per level keep sizes distinct
