"""Precision as configuration: what ``auto`` resolves to, the float32 parts under bf16 autocast,
bf16 training and inference against fp32, fp32 against the plain pipeline, and the ONNX export."""
from __future__ import annotations

import io
from dataclasses import replace

import onnx
import pytest
import torch

import frcnn.model
import frcnn.precision
from frcnn.anchors import AnchorGrid, concat_anchors
from frcnn.boxes import box_iou
from frcnn.config import ModelConfig, default_config
from frcnn.deploy.export import export_onnx
from frcnn.detection import detect_boxes
from frcnn.model import FasterRCNN
from frcnn.precision import (
    active_precision,
    autocast,
    describe,
    float32_region,
    memory_format,
    native_bf16,
    resolve_precision,
    widened,
)
from frcnn.roi import fast_rcnn_losses, sample_rois
from frcnn.rpn import generate_proposals, objectness_logit, rpn_losses
from test_model import HEIGHT, WIDTH, shapes_batch

CPU = torch.device("cpu")
# bf16 keeps 8 significant bits: a loss summed over hundreds of terms, and the proposals whose
# boxes the second stage samples, move by a few tenths of a percent; 3% leaves room for the
# RoIs sampled from proposals ranked in another order.
LOSS_TOLERANCE = 0.03


def tiny_config() -> ModelConfig:
    config = default_config("small")
    return replace(config, preprocess=replace(config.preprocess, min_size=HEIGHT, max_size=WIDTH))


@pytest.fixture(scope="module")
def trained() -> FasterRCNN:
    """The small recipe after 25 fp32 SGD steps on two images of coloured rectangles."""
    torch.manual_seed(0)
    model = FasterRCNN(3, config=tiny_config())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    batch = shapes_batch()
    for _ in range(25):
        losses = model(*batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    return model.eval()


# ---------------------------------------------------------------- resolution


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_is_bf16_exactly_where_the_device_has_it_natively(monkeypatch, native: bool, expected: str) -> None:
    monkeypatch.setattr(frcnn.precision, "native_bf16", lambda device: native)
    assert resolve_precision("auto", CPU) == expected
    assert describe("auto", CPU, training=False) == f"{expected} (auto), " + (
        "channels_last" if native else "contiguous")
    assert [resolve_precision(name, CPU) for name in ("fp32", "bf16")] == ["fp32", "bf16"]


@pytest.mark.parametrize("machine, avx512_bf16, amx, oneDNN, expected", [
    ("x86_64", True, False, True, True),
    ("x86_64", False, True, True, True),
    ("x86_64", False, False, True, False),  # oneDNN's bf16 on plain AVX-512 is emulated: not native
    ("aarch64", False, False, True, True),
    ("aarch64", False, False, False, False),
])
def test_native_bf16_on_a_cpu_asks_the_instruction_set(monkeypatch, machine, avx512_bf16, amx, oneDNN,
                                                       expected) -> None:
    monkeypatch.setattr(frcnn.precision.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: oneDNN)
    assert native_bf16(CPU) is expected
    assert native_bf16(torch.device("meta")) is False


def test_fp16_on_a_cpu_and_unknown_names_are_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^precision fp16 needs a CUDA device, not cpu; use bf16 or fp32 there$"):
        resolve_precision("fp16", CPU)
    with pytest.raises(ValueError, match=r"^precision must be one of auto, fp32, bf16, fp16, got 'half'$"):
        resolve_precision("half", CPU)
    model = FasterRCNN(3, config=tiny_config()).eval()
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        model.predict(torch.rand(3, 40, 50), precision="fp16")


def test_fp32_adds_no_region_and_the_float32_region_turns_autocast_off() -> None:
    assert active_precision(CPU) == "fp32"
    with autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bf16", CPU):
        assert active_precision(CPU) == "bf16"
        with float32_region(CPU):
            assert active_precision(CPU) == "fp32"
        assert active_precision(CPU) == "bf16"
    half = torch.ones(2, dtype=torch.bfloat16)
    double = torch.ones(2, dtype=torch.float64)
    assert widened(half).dtype == torch.float32 and widened(double) is double


def test_the_memory_format_rule() -> None:
    assert memory_format("bf16", CPU, training=False) == torch.channels_last
    assert memory_format("bf16", CPU, training=True) == torch.contiguous_format
    assert memory_format("fp32", CPU, training=False) == torch.contiguous_format


# ---------------------------------------------------------------- fp32: the plain pipeline


def plain_detections(model: FasterRCNN, images: torch.Tensor, im_info: torch.Tensor):
    """The inference of ``model`` composed from its parts with no precision handling at all."""
    config = model.config
    features = model.backbone(images)
    logits, deltas = model.rpn_head(features)
    grids = model.anchor_grids(features, images.shape[-2:])
    proposals = generate_proposals(objectness_logit(logits), deltas, concat_anchors(grids),
                                   [g.num_anchors for g in grids], im_info, config.proposals, config.proposals.test,
                                   trim=True)
    class_logits, box_deltas = model.roi_head(features, proposals.boxes, proposals.valid)
    scale = torch.ones(images.shape[0], 4)
    return detect_boxes(class_logits, box_deltas, proposals.boxes, proposals.valid, im_info,
                        config.roi_sampling.bbox_weights, config.test, scale)


def plain_losses(model: FasterRCNN, images, im_info, gt_boxes, num_boxes) -> dict[str, torch.Tensor]:
    """The training losses of ``model`` composed from its parts with no precision handling."""
    config = model.config
    features = model.backbone(images)
    logits, deltas = model.rpn_head(features)
    grids = model.anchor_grids(features, images.shape[-2:])
    proposals = generate_proposals(objectness_logit(logits.detach()), deltas.detach(),
                                   concat_anchors(grids), [g.num_anchors for g in grids], im_info,
                                   config.proposals, config.proposals.train)
    targets = frcnn.model.assign_anchor_targets(grids, gt_boxes, num_boxes, im_info, config.rpn.targets,
                                                validate=False)
    rpn_cls, rpn_box = rpn_losses(logits, deltas, targets, config.rpn.box_loss_sigma)
    sample = sample_rois(proposals, gt_boxes, num_boxes, config.roi_sampling)
    class_logits, box_deltas = model.roi_head(features, sample.boxes)
    rcnn_cls, rcnn_box = fast_rcnn_losses(class_logits, box_deltas, sample, config.head.box_loss_sigma)
    return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "rcnn_cls": rcnn_cls, "rcnn_box": rcnn_box}


def test_fp32_is_the_plain_pipeline_bit_for_bit(trained: FasterRCNN) -> None:
    images, im_info, gt_boxes, num_boxes = shapes_batch()
    with torch.no_grad():
        found = trained.padded_detections(images, im_info, precision="fp32")
        expected = plain_detections(trained, images, im_info)
    assert int(found.counts.sum()) > 0
    for got, want in zip(found, expected):
        assert torch.equal(got, want)
    trained.train()
    try:
        torch.manual_seed(5)
        losses = trained(images, im_info, gt_boxes, num_boxes)
        torch.manual_seed(5)
        want = plain_losses(trained, images, im_info, gt_boxes, num_boxes)
    finally:
        trained.eval()
    assert {key: value.item() for key, value in losses.items()} == {key: value.item() for key, value in want.items()}


# ---------------------------------------------------------------- bf16


class DtypeSpy:
    """Wraps the functions of ``frcnn.model`` that must compute in float32: records the dtypes of
    their floating tensor arguments (and of the tensors inside NamedTuple arguments) and whether
    autocast was on."""

    NAMES = ("assign_anchor_targets", "sample_rois", "rpn_losses", "fast_rcnn_losses", "generate_proposals",
             "detect_boxes")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[str, list[tuple[set[torch.dtype], bool]]] = {name: [] for name in self.NAMES}
        for name in self.NAMES:
            monkeypatch.setattr(frcnn.model, name, self._spy(name, getattr(frcnn.model, name)))

    def _spy(self, name: str, function):
        def spied(*args, **kwargs):
            self.calls[name].append((_float_dtypes([*args, *kwargs.values()]), torch.is_autocast_enabled("cpu")))
            return function(*args, **kwargs)
        return spied

    def assert_float32(self, names: tuple[str, ...]) -> None:
        for name in names:
            assert self.calls[name], f"{name} was not called"
            for dtypes, autocast_on in self.calls[name]:
                assert dtypes == {torch.float32} and not autocast_on, (name, dtypes, autocast_on)


def _float_dtypes(values) -> set[torch.dtype]:
    found = set()
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            found.add(value.dtype)
        elif isinstance(value, (tuple, list)):  # NamedTuples (proposals, targets, samples) and lists
            found |= _float_dtypes(value)
        elif isinstance(value, AnchorGrid):
            found.add(value.base.dtype)
    return found


def test_the_sensitive_parts_compute_in_float32_under_bf16_training(monkeypatch) -> None:
    torch.manual_seed(0)
    model = FasterRCNN(3, config=tiny_config())
    spy = DtypeSpy(monkeypatch)
    feature_dtypes = []
    model.backbone.register_forward_hook(lambda module, inputs, output: feature_dtypes.append(output[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(*shapes_batch())
    assert feature_dtypes == [torch.bfloat16]
    spy.assert_float32(("assign_anchor_targets", "sample_rois", "rpn_losses", "fast_rcnn_losses",
                        "generate_proposals"))
    assert all(loss.dtype == torch.float32 for loss in losses.values())


def test_the_sensitive_parts_compute_in_float32_under_bf16_inference(trained: FasterRCNN, monkeypatch) -> None:
    spy = DtypeSpy(monkeypatch)
    inputs = []
    trained.backbone.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    found = trained.predict(list(shapes_batch()[0]), precision="bf16")
    spy.assert_float32(("generate_proposals", "detect_boxes"))
    assert inputs[0].is_contiguous(memory_format=torch.channels_last)  # the rule for bf16 inference on a CPU
    assert all(d["boxes"].dtype == torch.float32 and d["scores"].dtype == torch.float32 for d in found)
    proposals = trained.propose(*shapes_batch()[:2], precision="bf16")
    assert all(p["boxes"].dtype == torch.float32 and p["scores"].dtype == torch.float32 for p in proposals)


def test_a_bf16_training_step_is_close_to_fp32_and_keeps_float32_weights() -> None:
    losses, models = {}, {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = FasterRCNN(3, config=tiny_config())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        torch.manual_seed(1)
        with autocast(precision, CPU):
            step = model(*shapes_batch())
        optimizer.zero_grad()
        sum(step.values()).backward()
        optimizer.step()
        losses[precision], models[precision] = {k: v.item() for k, v in step.items()}, model
    for key, value in losses["fp32"].items():
        assert losses["bf16"][key] == pytest.approx(value, rel=LOSS_TOLERANCE, abs=1e-3), key
    for (name, fp32), bf16 in zip(models["fp32"].named_parameters(), models["bf16"].parameters()):
        assert bf16.dtype == torch.float32 and torch.isfinite(bf16.grad).all(), name
        assert torch.allclose(bf16, fp32, atol=1e-3), name


def test_bf16_inference_finds_the_fp32_detections(trained: FasterRCNN) -> None:
    """Every fp32 detection scoring 0.5 or more has a bf16 one of its class at IoU >= 0.9,
    scoring within 0.03."""
    images = list(shapes_batch()[0])
    reference = trained.predict(images, precision="fp32")
    found = trained.predict(images, precision="bf16")
    confident = 0
    for want, got in zip(reference, found):
        for box, score, label in zip(want["boxes"], want["scores"], want["labels"]):
            if score < 0.5:
                continue
            confident += 1
            same_class = got["labels"] == label
            overlap = box_iou(box[None], got["boxes"][same_class])[0]
            best = int(overlap.argmax())
            assert overlap[best] >= 0.9
            assert abs(float(got["scores"][same_class][best]) - float(score)) <= 0.03
    assert confident >= 3


def test_the_test_precision_is_the_default_and_predict_overrides_it(trained: FasterRCNN) -> None:
    bf16 = FasterRCNN(3, config=replace(trained.config, test=replace(trained.config.test, precision="bf16")))
    bf16.load_state_dict(trained.state_dict())
    bf16.eval()
    images = list(shapes_batch()[0])
    as_configured, overridden = bf16.predict(images), bf16.predict(images, precision="fp32")
    by_default = trained.predict(images, precision="bf16")
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(as_configured, by_default))
    reference = trained.predict(images, precision="fp32")
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(overridden, reference))
    assert bf16.inference_precision(CPU) == "bf16" and bf16.inference_precision(CPU, "fp32") == "fp32"


def test_the_onnx_export_is_float32_whatever_the_test_precision(tmp_path) -> None:
    config = tiny_config()
    config = replace(config, preprocess=replace(config.preprocess, min_size=64, max_size=96),
                     test=replace(config.test, precision="bf16"))
    torch.manual_seed(0)
    model = FasterRCNN(2, config=config).eval()
    path = export_onnx(model, tmp_path / "model.onnx")
    proto = onnx.load(io.BytesIO(path.read_bytes()))
    casts = {attribute.i for node in proto.graph.node if node.op_type == "Cast" for attribute in node.attribute
             if attribute.name == "to"}
    assert onnx.TensorProto.BFLOAT16 not in casts and onnx.TensorProto.FLOAT16 not in casts
    assert {init.data_type for init in proto.graph.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64,
                                                                     onnx.TensorProto.BOOL, onnx.TensorProto.INT32}
