"""Pictures: detections, the anchor target layer on an image, and loss curves, drawn with PIL.

Images are uint8 tensors (3, H, W); boxes are (x1, y1, x2, y2) in that image's pixels.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor, resize, to_pil_image
from torchvision.utils import draw_bounding_boxes

# Distinct colours for classes (cycled) and for the curves of a plot.
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
    """Write a uint8 image (3, H, W) as PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil_image(image.cpu()).save(path, format="PNG")
    return path


def load_image(path: str | Path) -> Tensor:
    """An image file as uint8 RGB (3, H, W)."""
    with Image.open(path) as image:
        return pil_to_tensor(image.convert("RGB"))


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


def draw_detections(image: Tensor, boxes: Tensor, labels: Tensor, scores: Tensor,
                    class_names: Sequence[str]) -> Tensor:
    """Detections drawn on ``image``: one colour per class, each box captioned "name score".

    ``labels`` are 1..C; ``class_names[label - 1]`` names them.
    """
    label_list = [int(v) for v in labels.tolist()]
    captions = [f"{_class_name(class_names, label)} {float(score):.2f}"
                for label, score in zip(label_list, scores.tolist())]
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


def plot_curves(series: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, title: str = "",
                xlabel: str = "iteration", size: tuple[int, int] = (900, 540)) -> Path:
    """A line plot of named (x, y) series as a PNG: axes with ticks, one colour per series, a legend.

    The y axis starts at 0 (or the smallest value, if negative) and ends at the largest value, but
    at most 1.5 times the largest after the first tenth of the points, so that early spikes do
    not flatten the rest (they are cut at the top).
    """
    series = {name: [(float(x), float(y)) for x, y in points if math.isfinite(y)]
              for name, points in series.items()}
    series = {name: points for name, points in series.items() if points}
    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    text_font = font(13)
    draw.text((left, 12), title, fill="black", font=font(16))
    plot_box = (left, top, width - right, height - bottom)
    draw.rectangle(plot_box, outline="black")
    if not series:
        draw.text((left + 10, top + 10), "no data", fill="black", font=text_font)
        return _save_canvas(canvas, path)
    x_range, y_range = _plot_ranges(series)
    to_px = _mapper(x_range, y_range, plot_box)
    _draw_ticks(draw, x_range, y_range, to_px, plot_box, text_font)
    draw.text(((left + width - right) // 2 - 25, height - 22), xlabel, fill="black", font=text_font)
    for index, (name, points) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        pixels = [to_px(x, min(y, y_range[1])) for x, y in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        else:
            x, y = pixels[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        legend_y = top + 8 + 18 * index
        draw.line((width - right - 150, legend_y + 7, width - right - 125, legend_y + 7), fill=colour, width=3)
        draw.text((width - right - 118, legend_y), name, fill="black", font=text_font)
    return _save_canvas(canvas, path)


def _save_canvas(canvas: Image.Image, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def _plot_ranges(series: Mapping[str, list[tuple[float, float]]]) -> tuple[tuple[float, float], tuple[float, float]]:
    xs = [x for points in series.values() for x, _ in points]
    values = [y for points in series.values() for _, y in points]
    late = [y for points in series.values() for _, y in points[len(points) // 10:]]
    low = min(0.0, min(values))
    high = min(max(values), 1.5 * max(late))
    if high <= low:
        high = low + 1.0
    x_low, x_high = min(xs), max(xs)
    if x_high <= x_low:
        x_high = x_low + 1.0
    return (x_low, x_high), (low, high * 1.05)


def _mapper(x_range: tuple[float, float], y_range: tuple[float, float], box: tuple[int, int, int, int]):
    left, top, right, bottom = box

    def to_px(x: float, y: float) -> tuple[float, float]:
        fx = (x - x_range[0]) / (x_range[1] - x_range[0])
        fy = (y - y_range[0]) / (y_range[1] - y_range[0])
        return left + fx * (right - left), bottom - fy * (bottom - top)

    return to_px


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values in [low, high]: multiples of the step of 1, 2, 2.5 or 5
    times a power of ten closest to (high - low) / count."""
    raw = (high - low) / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = min((power * m for m in (1.0, 2.0, 2.5, 5.0, 10.0)), key=lambda s: abs(math.log(s / raw)))
    first = math.ceil(low / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(high / step + 1e-9) + 1)]


def _draw_ticks(draw: ImageDraw.ImageDraw, x_range: tuple[float, float], y_range: tuple[float, float],
                to_px, box: tuple[int, int, int, int], text_font: ImageFont.ImageFont) -> None:
    """Round ticks with labels on both axes, and faint grid lines."""
    left, top, right, bottom = box
    for x in nice_ticks(*x_range):
        px, _ = to_px(x, y_range[0])
        draw.line((px, top, px, bottom), fill="#e8e8e8")
        draw.line((px, bottom, px, bottom + 4), fill="black")
        draw.text((px - 12, bottom + 6), f"{x:g}", fill="black", font=text_font)
    for y in nice_ticks(*y_range):
        _, py = to_px(x_range[0], y)
        draw.line((left, py, right, py), fill="#e8e8e8")
        draw.line((left - 4, py, left, py), fill="black")
        draw.text((6, py - 7), f"{y:g}", fill="black", font=text_font)
    draw.rectangle(box, outline="black")


def plot_loss_log(records: Sequence[Mapping[str, float]], keys: Sequence[str], path: str | Path) -> Path:
    """The loss curves of a training log (records with "iter" and each of ``keys``) as a PNG."""
    series = {key: [(record["iter"], record[key]) for record in records if key in record] for key in keys}
    return plot_curves(series, path, title="training losses")


def image_to_uint8(image: Tensor, mean: Sequence[float], std: Sequence[float], pixel_scale: float = 1.0) -> Tensor:
    """Undo a per-channel normalisation ``(pixels / pixel_scale - mean) / std`` of a (3, H, W)
    image: the uint8 picture it came from."""
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    pixels = (image.detach().float().cpu() * std_t + mean_t) * pixel_scale
    return pixels.round().clamp(0, 255).to(torch.uint8)
