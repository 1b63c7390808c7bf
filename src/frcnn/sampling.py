"""Balanced random sampling of positive and negative examples, batched and without host syncs."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import native

# splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014; the
# generator of Java's SplittableRandom): the n-th output mixes the state seed + n * GAMMA.
_GAMMA = 0x9E3779B97F4A7C15
_MIXERS = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB))


def _as_int64(value: int) -> int:
    """The signed int64 with the bits of an unsigned 64-bit constant."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _shift_right(values: Tensor, bits: int) -> Tensor:
    """The logical right shift of int64 values (torch's >> is arithmetic)."""
    return (values >> bits) & ((1 << (64 - bits)) - 1)


def splitmix_keys(seed: Tensor, count: int) -> Tensor:
    """Keys 0..count-1 (count,) int32 from a 0-dim int64 CPU ``seed``: the top 31 bits of the
    splitmix64 outputs from state ``seed``, with the lowest bit set. Eager int64 products wrap as
    the algorithm's unsigned arithmetic does; a compiled kernel gives the same keys."""
    kernels = native.kernels_for(seed)
    if kernels is not None:
        return kernels.random_keys(seed, count)
    state = seed + torch.arange(1, count + 1, dtype=torch.int64) * _as_int64(_GAMMA)
    for bits, multiplier in _MIXERS:
        state = (state ^ _shift_right(state, bits)) * _as_int64(multiplier)
    state = state ^ _shift_right(state, 31)
    return _shift_right(state, 33).to(torch.int32) | 1


def random_keys(shape: tuple[int, ...], device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """I.i.d. uniform sampling keys: odd int32 values in [1, 2**31) (odd so that none is zero).

    On the CPU one 64-bit seed is drawn from ``generator`` (or the global one) and the keys are
    the splitmix64 stream from it (``splitmix_keys``), each computed on its own: the CPU generator
    is serial and would spend one word per key, several times the cost of the rest of the
    sampling. Elsewhere the device's generator draws every key (on CUDA, Philox, in parallel).
    """
    # Traced, the keys come from randint: dynamo takes no generator argument, and inductor's code for
    # the splitmix64 products does not wrap as eager int64 ops do (measured: its loop tails differ).
    if torch.compiler.is_compiling():
        return torch.randint(0, 2**31 - 1, shape, dtype=torch.int32, device=device).bitwise_or_(1)
    where = torch.device(device) if device is not None else torch.get_default_device()
    if where.type == "cpu":
        seed = torch.randint(-2**63, 2**63 - 1, (), dtype=torch.int64, generator=generator)
        return splitmix_keys(seed, math.prod(shape)).view(shape)
    # The full-range draw is one generator word per element, half the cost of a bounded draw.
    keys = torch.empty(shape, dtype=torch.int32, device=where)
    return keys.random_(generator=generator).bitwise_or_(1)


def keep_random(candidates: Tensor, keys: Tensor, counts: Tensor, max_count: int) -> tuple[Tensor, Tensor]:
    """Keep ``counts[b]`` (at most ``max_count``) of row b's candidates, uniformly at random.

    candidates (B, N) bool, keys (B, N) from ``random_keys``, counts (B,) -> kept (B, N) bool and
    the number kept per row (B,). The candidates with the largest keys are kept: for i.i.d. keys
    that is a uniformly random subset without replacement, and a fixed-size top-k keeps the
    shapes static.
    """
    k = min(max_count, candidates.shape[1])
    # Non-candidates score 0, below every candidate's (positive) key.
    top_scores, top_index = (keys * candidates).topk(k, dim=1, sorted=True)
    rank = torch.arange(k, device=candidates.device)
    chosen = (top_scores > 0) & (rank[None, :] < counts[:, None])
    return torch.zeros_like(candidates).scatter_(1, top_index, chosen), chosen.sum(dim=1)


def positive_quota(batch_size: int, fg_fraction: float) -> int:
    """The most positives a row keeps: int(fg_fraction * batch_size)."""
    return int(fg_fraction * batch_size)


def sample_balanced(positive: Tensor, negative: Tensor, batch_size: int, fg_fraction: float,
                    keys: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, keep at most int(fg_fraction * batch_size) positives, then fill the rest of
    ``batch_size`` with negatives, each uniformly at random.

    positive, negative (B, N) disjoint bool masks; keys (B, N) from ``random_keys``.
    Returns the kept positives and kept negatives, (B, N) bool each. On the CPU a compiled kernel
    selects in linear time (equal keys at the cut, about one image in 10^5, go to the lower index
    there and to either with the top-k).
    """
    num_fg = positive_quota(batch_size, fg_fraction)
    kernels = native.kernels_for(positive)
    if kernels is not None:
        keep_pos, keep_neg = kernels.sample_balanced(positive, negative, keys, num_fg, batch_size)
        return keep_pos, keep_neg
    fg_counts = torch.full(positive.shape[:1], num_fg, device=positive.device)
    keep_pos, kept_pos = keep_random(positive, keys, fg_counts, num_fg)
    keep_neg, _ = keep_random(negative, keys, batch_size - kept_pos, batch_size)
    return keep_pos, keep_neg
