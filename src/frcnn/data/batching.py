"""Batches of transformed items: zero-padded images, padded ground truth, batches of one
orientation each (the one aspect-ratio batcher), and the loader."""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler

from .dataset import DetectionDataset, Target, Transform


class Batch(NamedTuple):
    """A training or inference batch.

    images (B, 3, H, W) float32, zero-padded at the bottom and right; im_info (B, 3) rows
    (height, width, scale) of each image's valid region; gt_boxes (B, K, 5) rows
    (x1, y1, x2, y2, label) in resized coordinates, rows >= num_boxes[b] zero; num_boxes (B,)
    int64; ignore_boxes (B, J, 4) crowd regions, rows >= num_ignore[b] zero; num_ignore (B,)
    int64; image_ids (B,); orig_sizes (B, 2) int64 rows (height, width) before resizing.
    """

    images: Tensor
    im_info: Tensor
    gt_boxes: Tensor
    num_boxes: Tensor
    ignore_boxes: Tensor
    num_ignore: Tensor
    image_ids: tuple[str | int, ...]
    orig_sizes: Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The batch with every tensor on ``device``."""
        return Batch(*(value.to(device, non_blocking=non_blocking) if isinstance(value, Tensor) else value
                       for value in self))


def collate(items: Sequence[tuple[Tensor, Target]], keep_difficult: bool = False,
            size_divisibility: int = 32) -> Batch:
    """Stack transformed items (float images, targets with ``scale``) into a Batch.

    The padded size is the batch's largest height and width rounded up to a multiple of
    ``size_divisibility`` (1 for none). Difficult objects are left out unless ``keep_difficult``.
    """
    images = [image for image, _ in items]
    targets = [target for _, target in items]
    height = _round_up(max(image.shape[-2] for image in images), size_divisibility)
    width = _round_up(max(image.shape[-1] for image in images), size_divisibility)
    padded = images[0].new_zeros((len(images), 3, height, width), dtype=torch.float32)
    for slot, image in zip(padded, images):
        slot[:, :image.shape[-2], :image.shape[-1]] = image
    im_info = torch.tensor([(image.shape[-2], image.shape[-1], target["scale"])
                            for image, target in items], dtype=torch.float32)
    gt_rows = [_gt_rows(target, keep_difficult) for target in targets]
    gt_boxes, num_boxes = _pad_rows(gt_rows, 5)
    ignore_boxes, num_ignore = _pad_rows([target["ignore_boxes"] for target in targets], 4)
    return Batch(
        images=padded,
        im_info=im_info,
        gt_boxes=gt_boxes,
        num_boxes=num_boxes,
        ignore_boxes=ignore_boxes,
        num_ignore=num_ignore,
        image_ids=tuple(target["image_id"] for target in targets),
        orig_sizes=torch.tensor([target["orig_size"] for target in targets], dtype=torch.int64),
    )


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple


def _gt_rows(target: Target, keep_difficult: bool) -> Tensor:
    """(n, 5) rows (x1, y1, x2, y2, label) of the objects to train on."""
    rows = torch.cat([target["boxes"].float(), target["labels"].float()[:, None]], dim=1)
    return rows if keep_difficult else rows[~target["difficult"]]


def _pad_rows(rows: Sequence[Tensor], width: int) -> tuple[Tensor, Tensor]:
    """Zero-pad per-image (n_b, width) rows to (B, max n_b, width); counts (B,) int64."""
    counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    padded = torch.zeros((len(rows), int(counts.max()), width), dtype=torch.float32)
    for slot, r in zip(padded, rows):
        slot[:len(r)] = r
    return padded, counts


def orientations(aspect_ratios: Iterable[float]) -> list[int]:
    """The batching group of each image: 1 landscape (width / height >= 1), 0 portrait."""
    return [int(ratio >= 1.0) for ratio in aspect_ratios]


def orientation_groups(dataset: Dataset) -> list[int]:
    """``orientations`` of a dataset's images; one group (all 0) for a dataset that cannot tell
    (no ``aspect_ratios``)."""
    if hasattr(dataset, "aspect_ratios"):
        return orientations(dataset.aspect_ratios())
    return [0] * len(dataset)


def grouped_batches(indices: Iterable[int], groups: Sequence[int], batch_size: int,
                    keep_partial: bool = False) -> Iterator[list[int]]:
    """Cut ``indices``, in their order, into batches of ``batch_size`` indices of one group each
    (``groups[index]``, e.g. ``orientations``, so that a batch pads little). A batch is yielded
    as soon as it is full, so ``indices`` may be endless; when they end, the unfilled batches
    follow in the order they were started if ``keep_partial``."""
    pending: dict[int, list[int]] = {}
    for index in indices:
        batch = pending.setdefault(groups[index], [])
        batch.append(index)
        if len(batch) == batch_size:
            yield pending.pop(groups[index])
    if keep_partial:
        yield from pending.values()


class AspectRatioBatchSampler(Sampler[list[int]]):
    """Batches whose images are all landscape (width >= height) or all portrait, so padding
    wastes little (``grouped_batches`` of ``orientations``). Indices come from ``sampler`` in its
    order; each group's last, short batch is yielded at the end unless ``drop_last``.
    ``sampler`` must visit every index once per epoch.
    """

    def __init__(self, sampler: Iterable[int], aspect_ratios: Sequence[float], batch_size: int,
                 drop_last: bool = False) -> None:
        self.sampler = sampler
        self.groups = orientations(aspect_ratios)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        return grouped_batches(self.sampler, self.groups, self.batch_size, keep_partial=not self.drop_last)

    def __len__(self) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(size / self.batch_size) for size in Counter(self.groups).values())


def build_loader(
    dataset: DetectionDataset,
    transform: Transform,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int = 2,
    group_by_aspect_ratio: bool = False,
    keep_difficult: bool = False,
    size_divisibility: int = 32,
    seed: int | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader of Batch over ``dataset`` transformed by ``transform``.

    ``seed`` fixes the shuffling and the workers' random streams (hence the flips when the
    transform draws from the global generator); with num_workers=0 flips follow torch.manual_seed.
    """
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    sampler = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    if group_by_aspect_ratio:
        batching = dict(batch_sampler=AspectRatioBatchSampler(sampler, dataset.aspect_ratios(),
                                                              batch_size, drop_last))
    else:
        batching = dict(sampler=sampler, batch_size=batch_size, drop_last=drop_last)
    return DataLoader(
        dataset.with_transform(transform),
        collate_fn=partial(collate, keep_difficult=keep_difficult, size_divisibility=size_divisibility),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
        generator=generator,
        **batching,
    )
