"""The whole detector: configuration, training losses and gradients, inference output, overfitting."""
from dataclasses import replace

import pytest
import torch
import torchvision

from frcnn.anchor_targets import AnchorTargetConfig
from frcnn.boxes import box_iou
from frcnn.config import (
    BACKBONES,
    BackboneConfig,
    HeadConfig,
    InferenceConfig,
    ModelConfig,
    ProposalLimits,
    RoISamplingConfig,
    RPNConfig,
    default_config,
)
from frcnn.model import FasterRCNN

HEIGHT, WIDTH = 128, 160
COLORS = {1: (1.0, -1.0, -1.0), 2: (-1.0, 1.0, -1.0), 3: (-1.0, -1.0, 1.0)}
OBJECTS = [
    [(12, 14, 60, 70, 1), (90, 30, 140, 76, 2), (40, 86, 110, 120, 3)],
    [(20, 20, 90, 60, 2), (100, 70, 150, 118, 1)],
]


def shapes_batch():
    """Two images of solid rectangles on grey, one colour per class."""
    images = torch.zeros(2, 3, HEIGHT, WIDTH)
    gt_boxes = torch.zeros(2, 3, 5)
    for i, objects in enumerate(OBJECTS):
        for j, (x1, y1, x2, y2, label) in enumerate(objects):
            images[i, :, y1:y2, x1:x2] = torch.tensor(COLORS[label])[:, None, None]
            gt_boxes[i, j] = torch.tensor([x1, y1, x2, y2, label], dtype=torch.float32)
    im_info = torch.tensor([[HEIGHT, WIDTH, 1.0]] * 2)
    return images, im_info, gt_boxes, torch.tensor([3, 2])


def light(config: ModelConfig, rois: int = 16) -> ModelConfig:
    """Fewer RoIs and proposals for tests of big backbones, and no border filter: their anchors
    (128 px and up) do not fit inside the tiny test images."""
    return replace(config, roi_sampling=replace(config.roi_sampling, batch_size_per_image=rois),
                   rpn=replace(config.rpn, targets=replace(config.rpn.targets, allowed_border=None)),
                   proposals=replace(config.proposals, train=ProposalLimits(300, 50), test=ProposalLimits(300, 20)))


# ---------------------------------------------------------------- configuration

@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("fpn", [False, True])
def test_config_yaml_round_trip(backbone, fpn):
    if backbone == "mobilenet_v3_large" and not fpn:
        with pytest.raises(ValueError, match="FPN recipe only"):
            default_config(backbone, fpn)
        return
    config = default_config(backbone, fpn)
    assert ModelConfig.from_yaml(config.to_yaml()) == config


def test_config_defaults_and_partial_yaml():
    assert ModelConfig() == default_config("small")
    config = ModelConfig.from_yaml("head:\n  fc_dim: 128\n"
                                   "proposals:\n  test: {pre_nms_top_n: 500, post_nms_top_n: 100}\n")
    assert config.head.fc_dim == 128 and config.proposals.test == ProposalLimits(500, 100)
    assert config.anchors == ModelConfig().anchors


@pytest.mark.parametrize("make, message", [
    (lambda: HeadConfig(pooler="max"), "HeadConfig.pooler"),
    (lambda: HeadConfig(sampling_ratio=0), "HeadConfig.sampling_ratio"),
    (lambda: RoISamplingConfig(fg_fraction=1.5), "RoISamplingConfig.fg_fraction"),
    (lambda: RoISamplingConfig(bg_threshold_lo=0.6), "RoISamplingConfig.bg_threshold_lo"),
    (lambda: RoISamplingConfig(bbox_weights=(1.0, 2.0)), "RoISamplingConfig.bbox_weights"),
    (lambda: ProposalLimits(0, 10), "ProposalLimits.pre_nms_top_n"),
    (lambda: InferenceConfig(detections_per_image=0), "InferenceConfig.detections_per_image"),
    (lambda: BackboneConfig(name="alexnet"), "BackboneConfig.name"),
    (lambda: RPNConfig(targets=AnchorTargetConfig()), "legacy_plus_one"),
    (lambda: ModelConfig(head=HeadConfig(fc_dim=None)), "head.fc_dim"),
    (lambda: ModelConfig(backbone=BackboneConfig(fpn=True)), "head.align_impl"),
    (lambda: ModelConfig.from_yaml("head:\n  fc_dims: 3\n"), "fc_dims"),
])
def test_invalid_config_is_refused_by_name(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_constructor_arguments_pick_the_config():
    assert FasterRCNN(3).config == default_config("small")
    model = FasterRCNN(3, backbone=BackboneConfig(fpn=True))
    assert model.config == default_config("small", fpn=True)
    with pytest.raises(ValueError, match="num_classes"):
        FasterRCNN(0)


# ---------------------------------------------------------------- training

def trainable_grads_are_finite_and_nonzero(model):
    missing = [name for name, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any())]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("config", [
    default_config("small"),
    default_config("small", fpn=True),
    replace(default_config("small"), rpn=RPNConfig(objectness="sigmoid"), head=HeadConfig(pooler="pool", fc_dim=64)),
    replace(default_config("small"), head=HeadConfig(align_impl="torchvision", fc_dim=64)),
], ids=["small", "small-fpn", "sigmoid-roipool", "torchvision-align"])
def test_gradients_reach_every_trainable_parameter(config):
    torch.manual_seed(0)
    model = FasterRCNN(3, config=config)
    losses = model(*shapes_batch())
    assert set(losses) == {"rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box"}
    assert all(loss.dim() == 0 and torch.isfinite(loss) for loss in losses.values())
    sum(losses.values()).backward()
    trainable_grads_are_finite_and_nonzero(model)


def test_resnet_freezes_stem_res2_and_batchnorm(tmp_path):
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    torch.save(net.state_dict(), tmp_path / "resnet50.pth")
    model = FasterRCNN(3, backbone="resnet50", config=light(default_config("resnet50")),
                       backbone_weights=str(tmp_path / "resnet50.pth"))
    torch.testing.assert_close(model.backbone.stages[2][0].conv1.weight, net.layer2[0].conv1.weight)
    frozen = [p for stage in model.backbone.stages[:2] for p in stage.parameters()]
    assert frozen and not any(p.requires_grad for p in frozen)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    stats = {name: b.clone() for name, b in model.named_buffers()}
    sum(model(*shapes_batch()).values()).backward()
    assert all(p.grad is None for p in frozen)
    trainable_grads_are_finite_and_nonzero(model)
    assert all(torch.equal(b, stats[name]) for name, b in model.named_buffers())
    assert model.roi_head.trunk[0] is not None and model.roi_head.trunk.out_features == 2048  # C5 head


def test_vgg16_uses_its_own_fc_head_and_freezes_conv1_conv2():
    torch.manual_seed(0)
    model = FasterRCNN(3, backbone="vgg16", config=light(default_config("vgg16"), rois=8))
    assert model.roi_head.trunk.out_features == 4096
    frozen = [p for stage in model.backbone.stages[:2] for p in stage.parameters()]
    assert len(frozen) == 8 and not any(p.requires_grad for p in frozen)
    sum(model(*shapes_batch()).values()).backward()
    assert all(p.grad is None for p in frozen)
    assert model.backbone.stages[2][1].weight.grad is not None


def test_small_backbone_weights_load(tmp_path):
    source = FasterRCNN(3)
    torch.save(source.backbone.stages.state_dict(), tmp_path / "small.pth")
    loaded = FasterRCNN(3, backbone_weights=str(tmp_path / "small.pth"))
    torch.testing.assert_close(loaded.backbone.stages[3][1][0].weight, source.backbone.stages[3][1][0].weight)


def test_losses_are_finite_for_empty_images_and_tiny_boxes():
    torch.manual_seed(0)
    model = FasterRCNN(3)
    images, im_info, _, _ = shapes_batch()
    empty = model(images, im_info, torch.zeros(2, 0, 5), torch.zeros(2, dtype=torch.long))
    assert all(torch.isfinite(loss) for loss in empty.values())
    assert empty["rpn_box"] == 0 and empty["rcnn_box"] == 0
    corners = torch.rand(2, 60, 2) * torch.tensor([WIDTH - 4.0, HEIGHT - 4.0])
    sizes = 0.1 + 1.5 * torch.rand(2, 60, 2)
    tiny = torch.cat((corners, corners + sizes, torch.randint(1, 4, (2, 60, 1)).float()), dim=2)
    losses = model(images, im_info, tiny, torch.tensor([60, 37]))
    sum(losses.values()).backward()
    assert all(torch.isfinite(loss) for loss in losses.values())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_ignore_regions_are_accepted():
    model = FasterRCNN(3)
    ignore = torch.tensor([[[0.0, 0.0, 60.0, 60.0]], [[0.0, 0.0, 0.0, 0.0]]])
    losses = model(*shapes_batch(), ignore_boxes=ignore, num_ignore=torch.tensor([1, 0]))
    assert all(torch.isfinite(loss) for loss in losses.values())


def test_bad_calls_are_refused():
    model = FasterRCNN(3)
    images, im_info, gt_boxes, num_boxes = shapes_batch()
    with pytest.raises(ValueError, match="gt_boxes and num_boxes"):
        model(images, im_info)
    with pytest.raises(ValueError, match="im_info"):
        model(images, im_info[:1], gt_boxes, num_boxes)
    with pytest.raises(ValueError, match="gt_boxes"):
        model(images, im_info, gt_boxes[..., :4], num_boxes)


# ---------------------------------------------------------------- inference

def test_eval_output_is_in_original_coordinates():
    torch.manual_seed(0)
    model = FasterRCNN(3, config=replace(default_config("small"), test=InferenceConfig(score_threshold=0.0)))
    model.eval()
    images, _, _, _ = shapes_batch()
    im_info = torch.tensor([[HEIGHT, WIDTH, 2.0], [HEIGHT - 28, WIDTH - 40, 0.5]])
    with torch.no_grad():
        detections = model(images, im_info)
    proposals = model.propose(images, im_info)
    for found, proposed, (height, width, scale) in zip(detections, proposals, im_info.tolist()):
        assert set(found) == {"boxes", "scores", "labels"}
        assert 0 < len(found["boxes"]) <= 100
        assert found["boxes"].shape[1] == 4 and found["labels"].min() >= 1 and found["labels"].max() <= 3
        assert (found["boxes"][:, 2:] <= torch.tensor([width, height]) / scale + 1e-4).all()
        assert (found["scores"][:-1] >= found["scores"][1:]).all()
        assert 0 < len(proposed["boxes"]) <= 300 and (proposed["scores"][:-1] >= proposed["scores"][1:]).all()
        assert (proposed["boxes"][:, 2:] <= torch.tensor([width, height]) / scale + 1e-4).all()


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy shared machine two spin-waiting OpenMP threads stall each
    other (this test took 158 s with two threads against 10 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_overfits_two_tiny_images(one_thread):
    torch.manual_seed(0)
    model = FasterRCNN(3)
    batch = shapes_batch()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    for _ in range(120):
        loss = sum(model(*batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        detections = model(batch[0], batch[1])
    _, _, gt_boxes, num_boxes = batch
    for found, gt, count in zip(detections, gt_boxes, num_boxes):
        for box in gt[:count]:
            same_class = found["labels"] == int(box[4])
            assert same_class.any()
            assert box_iou(box[None, :4], found["boxes"][same_class]).max() > 0.7
            # and the best detection on that object has the right class
            overlapping = box_iou(box[None, :4], found["boxes"])[0] > 0.5
            assert found["labels"][overlapping][0] == int(box[4])
