"""Balanced random sampling of positive and negative examples, batched and without host syncs."""
from __future__ import annotations

import torch
from torch import Tensor


def keep_random(candidates: Tensor, keys: Tensor, counts: Tensor, max_count: int) -> Tensor:
    """Keep ``counts[b]`` (at most ``max_count``) of row b's candidates, uniformly at random.

    candidates (B, N) bool, keys (B, N) i.i.d. uniform in [0, 1), counts (B,) -> kept (B, N) bool.
    The candidates with the largest keys are kept: for i.i.d. keys that is a uniformly random
    subset without replacement, and a fixed-size top-k keeps the shapes static.
    """
    k = min(max_count, candidates.shape[1])
    # Candidates keep their key; the others drop below zero (arithmetic is cheaper than where).
    scores = keys - (~candidates).to(keys.dtype)
    top_scores, top_index = scores.topk(k, dim=1, sorted=True)
    rank = torch.arange(k, device=candidates.device)
    chosen = (top_scores >= 0) & (rank[None, :] < counts[:, None])
    return torch.zeros_like(candidates).scatter(1, top_index, chosen)


def sample_balanced(positive: Tensor, negative: Tensor, batch_size: int, fg_fraction: float,
                    keys: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, keep at most int(fg_fraction * batch_size) positives, then fill the rest of
    ``batch_size`` with negatives, each uniformly at random.

    positive, negative (B, N) disjoint bool masks; keys (B, N) uniform in [0, 1).
    Returns the kept positives and kept negatives, (B, N) bool each.
    """
    num_fg = int(fg_fraction * batch_size)
    fg_counts = torch.full(positive.shape[:1], num_fg, device=positive.device)
    keep_pos = keep_random(positive, keys, fg_counts, num_fg)
    bg_counts = batch_size - keep_pos.sum(dim=1)
    keep_neg = keep_random(negative, keys, bg_counts, batch_size)
    return keep_pos, keep_neg
