"""Pictures of images, drawn with PIL: detections, the anchor target layer on an image, and
mosaics of a batch with its boxes (charts are in ``frcnn.charts``).

Images are uint8 tensors (3, H, W); boxes are (x1, y1, x2, y2) in that image's pixels.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor, resize, to_pil_image
from torchvision.utils import draw_bounding_boxes

from .atomic import write_atomic
from .data.images import read_rgb

# Distinct colours for classes (cycled), in pictures and charts.
PALETTE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324",
           "#800000", "#469990", "#000075", "#808000")
# The anchor picture: one colour per role.
ANCHOR_COLOURS = {"gt": "#00ff00", "positive": "#ff2020", "negative": "#3070ff", "ignore": "#ffd700"}


def font(size: int = 14) -> ImageFont.ImageFont:
    """PIL's built-in font at ``size`` pixels (the bitmap default where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def save_png(image: Tensor, path: str | Path) -> Path:
    """Write a uint8 image (3, H, W) as PNG, atomically (its folder created)."""
    picture = to_pil_image(image.cpu())
    return write_atomic(path, lambda handle: picture.save(handle, format="PNG"))


def load_image(path: str | Path) -> Tensor:
    """An image file as uint8 RGB (3, H, W)."""
    return torch.from_numpy(read_rgb(Path(path))).permute(2, 0, 1)


def draw_boxes(image: Tensor, boxes: Tensor, colours: str | Sequence[str], labels: Sequence[str] | None = None,
               width: int = 2) -> Tensor:
    """``image`` with ``boxes`` (n, 4) outlined; an empty set of boxes leaves it unchanged."""
    if boxes.numel() == 0:
        return image
    return draw_bounding_boxes(image, boxes.detach().float().cpu(), labels=labels,
                               colors=colours if isinstance(colours, str) else list(colours),
                               width=width, fill_labels=labels is not None)


def with_title(image: Tensor, title: str, size: int = 14) -> Tensor:
    """``image`` below a white band holding ``title`` (wrapped to the image's width)."""
    pil = to_pil_image(image.cpu())
    text_font = font(size)
    lines = _wrap(title, text_font, max(pil.width - 8, 40))
    band = (size + 4) * len(lines) + 6
    canvas = Image.new("RGB", (pil.width, pil.height + band), "white")
    canvas.paste(pil, (0, band))
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(lines):
        draw.text((4, 3 + row * (size + 4)), line, fill="black", font=text_font)
    return pil_to_tensor(canvas)


def _wrap(text: str, text_font: ImageFont.ImageFont, width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``width`` pixels."""
    lines: list[str] = []
    for word in text.split(" "):
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and text_font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def draw_detections(image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor | None,
                    class_names: Sequence[str]) -> Tensor:
    """Boxes drawn on ``image``: one colour per class, each captioned "name score" (or "name"
    when ``scores`` is None, for ground truth).

    ``labels`` are 1..C; ``class_names[label - 1]`` names them.
    """
    label_list = [int(v) for v in labels.tolist()]
    names = [_class_name(class_names, label) for label in label_list]
    captions = (
        names if scores is None else [f"{name} {float(score):.2f}" for name, score in zip(names, scores.tolist())]
    )
    colours = [PALETTE[(label - 1) % len(PALETTE)] for label in label_list]
    return draw_boxes(image, boxes, colours, captions)


def _class_name(class_names: Sequence[str], label: int) -> str:
    return class_names[label - 1] if 1 <= label <= len(class_names) else str(label)


def draw_anchor_targets(image: Tensor, gt_boxes: Tensor, gt_names: Sequence[str], positives: Tensor,
                        negatives: Tensor, ignore_boxes: Tensor, title: str, min_side: int = 800) -> Tensor:
    """The anchor target layer on one image, enlarged so that its longer side is at least
    ``min_side``: sampled negatives (faint blue) under positive anchors (red) under ignore
    regions (gold) and gt boxes (green, captioned with ``gt_names``), with ``title`` above."""
    factor = max(1.0, min_side / max(image.shape[-2:]))
    if factor > 1.0:
        size = [round(image.shape[-2] * factor), round(image.shape[-1] * factor)]
        image = resize(image, size, antialias=True)
    drawn = draw_boxes(image, negatives * factor, ANCHOR_COLOURS["negative"], width=1)
    drawn = (0.4 * drawn.float() + 0.6 * image.float()).round().to(torch.uint8)
    drawn = draw_boxes(drawn, positives * factor, ANCHOR_COLOURS["positive"], width=2)
    drawn = draw_boxes(drawn, ignore_boxes * factor, ANCHOR_COLOURS["ignore"], width=3)
    drawn = draw_boxes(drawn, gt_boxes * factor, ANCHOR_COLOURS["gt"], list(gt_names), width=3)
    return with_title(drawn, title, size=16)


def image_to_uint8(image: Tensor, mean: Sequence[float], std: Sequence[float], pixel_scale: float = 1.0) -> Tensor:
    """Undo a per-channel normalisation ``(pixels / pixel_scale - mean) / std`` of a (3, H, W)
    image: the uint8 picture it came from."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    pixels = (image.detach().float().cpu() * std_t + mean_t) * pixel_scale
    return pixels.round().clamp(0, 255).to(torch.uint8)


def batch_picture(images: Sequence[Tensor], boxes: Sequence[Tensor], labels: Sequence[Tensor],
                  class_names: Sequence[str], scores: Sequence[Tensor] | None = None, title: str = "",
                  height: int = 256, columns: int = 4, gap: int = 4) -> Tensor:
    """Images with their boxes (``draw_detections``), each resized to ``height`` pixels high,
    in rows of ``columns`` on white, below ``title``. Per image: boxes (n, 4) in its pixels,
    labels (n,), scores (n,) or none."""
    tiles = []
    for index, image in enumerate(images):
        factor = height / image.shape[-2]
        resized = resize(image, [height, max(1, round(image.shape[-1] * factor))], antialias=True)
        tiles.append(draw_detections(resized, boxes[index].float() * factor, labels[index],
                                     None if scores is None else scores[index], class_names))
    rows = [tiles[start:start + columns] for start in range(0, len(tiles), columns)]
    width = max(sum(tile.shape[-1] for tile in row) + gap * (len(row) - 1) for row in rows)
    canvas = torch.full((3, len(rows) * height + gap * (len(rows) - 1), width), 255, dtype=torch.uint8)
    for row_index, row in enumerate(rows):
        x, y = 0, row_index * (height + gap)
        for tile in row:
            canvas[:, y:y + height, x:x + tile.shape[-1]] = tile
            x += tile.shape[-1] + gap
    return with_title(canvas, title) if title else canvas
