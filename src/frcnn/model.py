"""``FasterRCNN``: backbone, RPN, anchor and proposal target layers, RoI head, batched end to end."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from .anchor_targets import assign_anchor_targets
from .anchors import AnchorGrid, concat_anchors, generate_anchors, grid_anchors
from .backbones import build_backbone
from .config import BackboneConfig, ModelConfig, default_config
from .roi import RoIHead, RoIPooler, detect, fast_rcnn_losses, sample_rois, two_fc_head
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
    """Faster R-CNN for ``num_classes`` object classes (labels 1..num_classes; 0 is background).

    Training mode: ``model(images, im_info, gt_boxes, num_boxes)`` (optionally ``ignore_boxes``,
    ``num_ignore``) returns the scalar losses rpn_cls, rpn_box, rcnn_cls, rcnn_box.
    Eval mode: ``model(images, im_info)`` returns one dict per image with ``boxes`` (n, 4) in
    original image coordinates, ``scores`` (n,) and ``labels`` (n,).
    ``propose(images, im_info)`` returns the RPN's proposals per image.

    images (B, 3, H, W) normalised and zero-padded; im_info (B, 3) rows (height, width, scale) of
    each image's valid region; gt_boxes (B, K, 5) rows (x1, y1, x2, y2, label) in resized
    coordinates, rows past num_boxes[b] ignored; num_boxes (B,) int64.
    """

    def __init__(self, num_classes: int, backbone: str | BackboneConfig | None = None,
                 config: ModelConfig | None = None, *, backbone_weights: str | None = None) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        config = resolve_config(backbone, config, backbone_weights)
        self.num_classes = num_classes
        self.config = config
        self.backbone, own_head = build_backbone(config.backbone, own_head=config.head.fc_dim is None)
        channels = self.backbone.out_channels
        anchors = config.anchors
        self.rpn_head = RPNHead(channels, config.rpn.conv_channels or channels, anchors.num_anchors,
                                config.rpn.objectness)
        # Read on the host by grid_anchors, so kept out of the module's buffers.
        self.base_anchors = [generate_anchors(stride, anchors.ratios, anchors.scales)
                             for stride in self.backbone.strides]
        roi_strides = self.backbone.strides[:self.backbone.num_roi_levels]
        trunk = own_head or two_fc_head(channels, config.head.output_size, config.head.fc_dim)
        self.roi_head = RoIHead(RoIPooler(config.head, roi_strides), trunk, num_classes)

    def forward(self, images: Tensor, im_info: Tensor, gt_boxes: Tensor | None = None,
                num_boxes: Tensor | None = None, *, ignore_boxes: Tensor | None = None,
                num_ignore: Tensor | None = None) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """Training: the dict of losses. Eval: per-image detections (gt, if given, is unused)."""
        _check_batch(images, im_info, gt_boxes, num_boxes, require_gt=self.training)
        features = self.backbone(images)
        logits, deltas = self.rpn_head(features)
        grids = self.anchor_grids(features)
        proposals = self._propose(logits, deltas, grids, im_info)
        if not self.training:
            proposals = proposals.trimmed()
            class_logits, box_deltas = self.roi_head(features, proposals.boxes)
            return detect(class_logits, box_deltas, proposals, im_info, self.config.roi_sampling.bbox_weights,
                          self.config.test)

        config = self.config
        targets = assign_anchor_targets(grids, gt_boxes, num_boxes, im_info, config.rpn.targets,
                                        ignore_boxes=ignore_boxes, num_ignore=num_ignore, validate=False)
        rpn_cls, rpn_box = rpn_losses(logits, deltas, targets, config.rpn.box_loss_sigma)
        sample = sample_rois(proposals, gt_boxes, num_boxes, config.roi_sampling)
        class_logits, box_deltas = self.roi_head(features, sample.boxes)
        rcnn_cls, rcnn_box = fast_rcnn_losses(class_logits, box_deltas, sample, config.head.box_loss_sigma)
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "rcnn_cls": rcnn_cls, "rcnn_box": rcnn_box}

    @torch.no_grad()
    def propose(self, images: Tensor, im_info: Tensor) -> list[dict[str, Tensor]]:
        """The RPN's proposals per image, best first: ``boxes`` (n, 4) in original image
        coordinates and ``scores`` (n,), with the current mode's (train / test) proposal counts."""
        _check_batch(images, im_info, None, None, require_gt=False)
        features = self.backbone(images)
        logits, deltas = self.rpn_head(features)
        proposals = self._propose(logits, deltas, self.anchor_grids(features), im_info)
        sizes = proposals.counts.tolist()
        boxes = proposals.boxes / im_info[:, None, 2:3]
        return [{"boxes": b[:n], "scores": s[:n]} for b, s, n in zip(boxes, proposals.scores, sizes)]

    def anchor_grids(self, features: list[Tensor]) -> list[AnchorGrid]:
        """The anchors of each feature map (B, C, H, W), level-major."""
        return [grid_anchors(base, f.shape[-2], f.shape[-1], stride, f.device, f.dtype)
                for base, f, stride in zip(self.base_anchors, features, self.backbone.strides)]

    def _propose(self, logits: Tensor, deltas: Tensor, grids: list[AnchorGrid], im_info: Tensor) -> Proposals:
        config = self.config.proposals
        limits = config.train if self.training else config.test
        return generate_proposals(objectness_logit(logits.detach()), deltas.detach(), concat_anchors(grids),
                                  [g.num_anchors for g in grids], im_info.to(deltas.dtype), config, limits)


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
