"""``FasterRCNN``: backbone, RPN, anchor and proposal target layers, RoI head, batched end to end."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .anchor_targets import assign_anchor_targets
from .anchors import AnchorGrid, cell_anchors, cell_strides, concat_anchors, grid_anchors
from .backbones import build_backbone
from .checkpoint import Checkpoint, load_weights
from .config import BackboneConfig, ModelConfig, default_config
from .detection import Detections, detect_boxes, unpad
from .precision import (
    active_precision,
    autocast,
    float32_region,
    memory_format,
    resolve_precision,
    widened,
    widened_dtype,
)
from .preprocess import PreprocessedBatch, as_image_tensor, box_scale, preprocess_images
from .pretrained import read_checkpoint, torchvision_weights
from .roi import RoIHead, RoIPooler, box_head, fast_rcnn_losses, sample_rois
from .rpn import Proposals, RPNHead, generate_proposals, objectness_logit, rpn_losses


def resolve_config(backbone: str | BackboneConfig | None, config: ModelConfig | None,
                   backbone_weights: str | None) -> ModelConfig:
    """The configuration a ``FasterRCNN`` is built from: ``config`` (else the recipe of
    ``backbone``, else the small backbone's), with ``backbone`` and ``backbone_weights``, where
    given, replacing its backbone fields."""
    name = backbone.name if isinstance(backbone, BackboneConfig) else backbone
    if config is None:
        config = default_config(name or "small", isinstance(backbone, BackboneConfig) and backbone.fpn)
    if isinstance(backbone, BackboneConfig):
        config = replace(config, backbone=backbone)
    elif backbone is not None:
        config = replace(config, backbone=replace(config.backbone, name=backbone))
    if backbone_weights is not None:
        config = replace(config, backbone=replace(config.backbone, weights=backbone_weights))
    return config


class FasterRCNN(nn.Module):
    """Faster R-CNN for ``num_classes`` object classes (labels 1..num_classes; 0 is background),
    named ``class_names`` (default class_1 ..).

    Training mode: ``model(images, im_info, gt_boxes, num_boxes)`` (optionally ``ignore_boxes``,
    ``num_ignore``) returns the scalar losses rpn_cls, rpn_box, rcnn_cls, rcnn_box.
    Eval mode: ``model(images, im_info, orig_sizes=None)`` returns one dict per image with
    ``boxes`` (n, 4) in original image coordinates, ``scores`` (n,) and ``labels`` (n,).
    ``propose(images, im_info)`` returns the RPN's proposals per image; ``predict(images)`` runs
    the model, with its own preprocessing, on plain images; ``predict_padded(images)`` is the same
    inference for a batch of one size as one traceable function (the ONNX export's graph).
    Inference computes in the test settings' ``precision`` (or a call's ``precision``); training
    in the autocast region its caller enters (``frcnn.precision``: the trainer's
    ``train.precision``); either way the numerically sensitive parts stay float32.

    images (B, 3, H, W) normalised and zero-padded; im_info (B, 3) rows (height, width, scale) of
    each image's valid region; gt_boxes (B, K, 5) rows (x1, y1, x2, y2, label) in resized
    coordinates, rows past num_boxes[b] ignored; num_boxes (B,) int64; orig_sizes (B, 2) rows
    (height, width) before resizing, needed when ``config.preprocess.box_rescale`` is "per_axis".
    """

    def __init__(self, num_classes: int, backbone: str | BackboneConfig | None = None,
                 config: ModelConfig | None = None, *, backbone_weights: str | None = None,
                 class_names: Sequence[str] | None = None) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names must name the {num_classes} classes, got {len(class_names)} names")
        config = resolve_config(backbone, config, backbone_weights)
        self.num_classes = num_classes
        self.class_names = tuple(class_names or (f"class_{i}" for i in range(1, num_classes + 1)))
        self.config = config
        self.backbone, own_head = build_backbone(config.backbone, own_head=config.head.fc_dim is None)
        channels = self.backbone.out_channels
        anchors = config.anchors
        self.rpn_head = RPNHead(channels, config.rpn.conv_channels or channels, anchors.num_anchors,
                                config.rpn.objectness, config.rpn.conv_depth)
        # Read on the host by grid_anchors, so kept out of the module's buffers.
        self.base_anchors = [cell_anchors(anchors.cell_rule, stride, anchors.level_sizes(stride, level), anchors.ratios)
                             for level, stride in enumerate(self.backbone.strides)]
        roi_strides = self.backbone.strides[:self.backbone.num_roi_levels]
        trunk = own_head or box_head(channels, config.head)
        self.roi_head = RoIHead(RoIPooler(config.head, roi_strides), trunk, num_classes)

    def forward(self, images: Tensor, im_info: Tensor, gt_boxes: Tensor | None = None,
                num_boxes: Tensor | None = None, *, ignore_boxes: Tensor | None = None,
                num_ignore: Tensor | None = None,
                orig_sizes: Tensor | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: the dict of losses. Eval: per-image detections (gt, if given, is unused)."""
        if not self.training:
            return self.detect(images, im_info, orig_sizes)
        _check_batch(images, im_info, gt_boxes, num_boxes, require_gt=True)
        config, device = self.config, images.device
        features, logits, deltas = self._rpn_outputs(images)
        with float32_region(device):
            grids = self.anchor_grids(features, images.shape[-2:])
            proposals = self._propose(logits, deltas, grids, im_info)
            targets = assign_anchor_targets(grids, gt_boxes, num_boxes, im_info, config.rpn.targets,
                                            ignore_boxes=ignore_boxes, num_ignore=num_ignore, validate=False)
            rpn_cls, rpn_box = rpn_losses(logits, deltas, targets, config.rpn.box_loss_sigma)
            sample = sample_rois(proposals, gt_boxes, num_boxes, config.roi_sampling)
        class_logits, box_deltas = self._head_outputs(features, sample.boxes)
        with float32_region(device):
            rcnn_cls, rcnn_box = fast_rcnn_losses(class_logits, box_deltas, sample, config.head.box_loss_sigma)
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "rcnn_cls": rcnn_cls, "rcnn_box": rcnn_box}

    @torch.no_grad()
    def detect(self, images: Tensor, im_info: Tensor, orig_sizes: Tensor | None = None,
               score_threshold: float | None = None, precision: str | None = None) -> list[dict[str, Tensor]]:
        """Detections per image (the eval forward): ``boxes`` (n, 4) in original image
        coordinates, ``scores`` (n,), ``labels`` (n,) in 1..C, best first: ``padded_detections``
        split by image."""
        _check_batch(images, im_info, None, None, require_gt=False)
        return unpad(self.padded_detections(images, im_info, orig_sizes, score_threshold, precision))

    @torch.no_grad()
    def padded_detections(self, images: Tensor, im_info: Tensor, orig_sizes: Tensor | None = None,
                          score_threshold: float | None = None, precision: str | None = None) -> Detections:
        """The inference of a preprocessed batch, traceable: ``Detections`` padded to the test
        settings' ``detections_per_image``, boxes in original image coordinates, with the test
        proposal counts and post-processing (``score_threshold`` replaces the configured one if
        given), in ``inference_precision(precision)``."""
        config, device = self.config, images.device
        test = config.test if score_threshold is None else replace(config.test, score_threshold=score_threshold)
        scale = box_scale(im_info, orig_sizes, config.preprocess)
        with autocast(self.inference_precision(device, precision), device):
            features, logits, deltas = self._rpn_outputs(images)
            with float32_region(device):
                proposals = self._propose(logits, deltas, self.anchor_grids(features, images.shape[-2:]), im_info,
                                          training=False, trim=True)
            class_logits, box_deltas = self._head_outputs(features, proposals.boxes, proposals.valid)
        return detect_boxes(class_logits, box_deltas, proposals.boxes, proposals.valid, im_info,
                            config.roi_sampling.bbox_weights, test, scale)

    @torch.no_grad()
    def propose(self, images: Tensor, im_info: Tensor, orig_sizes: Tensor | None = None,
                precision: str | None = None) -> list[dict[str, Tensor]]:
        """The RPN's proposals per image, best first: ``boxes`` (n, 4) in original image
        coordinates and ``scores`` (n,), with the current mode's (train / test) proposal counts,
        in ``inference_precision(precision)``."""
        _check_batch(images, im_info, None, None, require_gt=False)
        scale = box_scale(im_info, orig_sizes, self.config.preprocess)
        with autocast(self.inference_precision(images.device, precision), images.device):
            features, logits, deltas = self._rpn_outputs(images)
        proposals = self._propose(logits, deltas, self.anchor_grids(features, images.shape[-2:]), im_info)
        sizes = proposals.counts.tolist()
        boxes = proposals.boxes * scale[:, None, :]
        return [{"boxes": b[:n], "scores": s[:n]} for b, s, n in zip(boxes, proposals.scores, sizes)]

    def preprocess(self, images: Sequence[Any]) -> PreprocessedBatch:
        """Plain images (see ``frcnn.preprocess.as_image_tensor``) -> the batch ``detect`` takes,
        on the model's device, by the model's own ``config.preprocess``."""
        device = next(self.parameters()).device
        tensors = [as_image_tensor(image).to(device) for image in images]
        return preprocess_images(tensors, self.config.preprocess)

    @torch.no_grad()
    def predict(self, images: Any, score_threshold: float | None = None,
                precision: str | None = None) -> list[dict[str, Any]]:
        """Detections on plain images of any sizes: PIL images, file paths, (H, W, 3) uint8 numpy
        arrays, (3, H, W) tensors (uint8, or float in [0, 1]); one image or a list.

        One dict per image: ``boxes`` (n, 4) in that image's pixels, ``scores`` (n,), ``labels``
        (n,) in 1..C and ``names`` (n class names), best first. Runs in eval mode (the module's
        mode is restored after), in ``precision`` (fp32, bf16, fp16 or auto; default the test
        settings' ``precision``, see ``inference_precision``).
        """
        single = not isinstance(images, (list, tuple))
        batch = self.preprocess([images] if single else images)
        was_training = self.training
        self.eval()
        try:
            found = unpad(self.padded_detections(*batch, score_threshold, precision), self.class_names)
        finally:
            self.train(was_training)
        return found[0] if single else found

    @torch.no_grad()
    def predict_padded(self, images: Tensor, precision: str | None = None) -> Detections:
        """``predict`` of a batch of plain images of one size, traceable (the ONNX export traces
        it, in fp32): images (B, 3, H, W) float RGB in [0, 1] -> ``Detections`` padded to the test
        settings' ``detections_per_image``, boxes in the images' pixels. Needs eval mode."""
        batch = preprocess_images(images, self.config.preprocess)
        return self.padded_detections(*batch, precision=precision)

    def inference_precision(self, device: torch.device, precision: str | None = None) -> str:
        """The concrete precision (fp32, bf16, fp16) inference runs in on ``device``: ``precision``,
        else the test settings' ``precision``, resolved by ``frcnn.precision.resolve_precision``
        (``auto``: bf16 where the device has it natively, else fp32)."""
        return resolve_precision(precision or self.config.test.precision, device)

    @classmethod
    def load(cls, source: str | Path | Checkpoint, device: torch.device | str | None = None,
             config: ModelConfig | None = None) -> FasterRCNN:
        """The model of a checkpoint: an frcnn checkpoint file, ``torchvision:ARCH:PATH`` (a
        torchvision detector's state dict), ``torchvision:ARCH`` (torchvision's published COCO
        weights, fetched once into torch's hub cache) or weights already read (``Checkpoint``);
        in eval mode on ``device`` (default CPU), with its class names and its configuration
        (``config`` instead, when given, which must take the same weights)."""
        checkpoint = source if isinstance(source, Checkpoint) else read_checkpoint(str(source))
        model = cls(len(checkpoint.class_names), config=config or checkpoint.config,
                    class_names=checkpoint.class_names)
        load_weights(model, checkpoint)
        return model.to(device or "cpu").eval()

    @classmethod
    def from_torchvision(cls, source: Any, arch: str | None = None) -> FasterRCNN:
        """A torchvision Faster R-CNN (the model, its state dict, the path of one, or an ARCH name
        for its published COCO weights; ``arch`` one of ``config.TORCHVISION_ARCHS``, needed for a
        state dict or its path) as an frcnn model
        with the architecture's ``torchvision_config`` recipe, in eval mode."""
        return cls.load(torchvision_weights(source, arch))

    def anchor_grids(self, features: list[Tensor], image_size: Sequence[int] | None = None) -> list[AnchorGrid]:
        """The anchors of each feature map (B, C, H, W), level-major, for a padded batch of
        ``image_size`` (H, W) (needed by the "image" stride rule)."""
        rule = self.config.anchors.stride_rule
        if rule == "image" and image_size is None:
            raise ValueError("anchor_grids needs image_size: the model's anchors.stride_rule is 'image'")
        grids = []
        for base, feature, stride in zip(self.base_anchors, features, self.backbone.strides):
            height, width = feature.shape[-2:]
            strides = cell_strides(rule, stride, image_size, (height, width))
            dtype = widened_dtype(feature.dtype)  # never the features' bf16 / fp16
            if torch.jit.is_tracing():  # sizes are graph values: no cache keyed by them
                grids.append(AnchorGrid(base.to(feature.device, dtype), height, width, strides))
            else:
                grids.append(grid_anchors(base, height, width, strides, feature.device, dtype))
        return grids

    def _rpn_outputs(self, images: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """The backbone's feature maps, in the active autocast precision (images in its
        ``memory_format``), and the RPN head's logits (B, N, K) and deltas (B, N, 4) widened to float32."""
        layout = memory_format(active_precision(images.device), images.device, self.training)
        if layout is not torch.contiguous_format:
            images = images.contiguous(memory_format=layout)
        features = self.backbone(images)
        logits, deltas = self.rpn_head(features)
        return features, widened(logits), widened(deltas)

    def _head_outputs(self, features: list[Tensor], boxes: Tensor,
                      valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The RoI head's class logits and box deltas (``RoIHead``) widened to float32."""
        class_logits, box_deltas = self.roi_head(features, boxes, valid)
        return widened(class_logits), widened(box_deltas)

    def _propose(self, logits: Tensor, deltas: Tensor, grids: list[AnchorGrid], im_info: Tensor,
                 training: bool | None = None, trim: bool = False) -> Proposals:
        config = self.config.proposals
        limits = config.train if (self.training if training is None else training) else config.test
        return generate_proposals(objectness_logit(logits.detach()), deltas.detach(), concat_anchors(grids),
                                  [g.num_anchors for g in grids], im_info.to(deltas.dtype), config, limits, trim)


def _check_batch(images: Tensor, im_info: Tensor, gt_boxes: Tensor | None, num_boxes: Tensor | None,
                 require_gt: bool) -> None:
    """Shape checks only (no host synchronisation); a ValueError names the argument."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {_shape(images)}")
    batch = images.shape[0]
    if not isinstance(im_info, Tensor) or tuple(im_info.shape) != (batch, 3):
        raise ValueError(f"im_info must have shape ({batch}, 3), got {_shape(im_info)}")
    if require_gt and (gt_boxes is None or num_boxes is None):
        raise ValueError("training needs gt_boxes and num_boxes (call model.eval() for detections)")
    if gt_boxes is not None and (not isinstance(gt_boxes, Tensor) or gt_boxes.dim() != 3
                                 or gt_boxes.shape[0] != batch or gt_boxes.shape[2] != 5):
        raise ValueError(f"gt_boxes must have shape ({batch}, K, 5), got {_shape(gt_boxes)}")
    if num_boxes is not None and (not isinstance(num_boxes, Tensor) or tuple(num_boxes.shape) != (batch,)
                                  or num_boxes.is_floating_point()):
        raise ValueError(f"num_boxes must be an integer tensor of shape ({batch},), got {_shape(num_boxes)}")


def _shape(value: object) -> object:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
