"""Numeric precision as configuration: the names (``auto``, ``fp32``, ``bf16``, ``fp16``), what
``auto`` is on a device, the autocast region of a precision, the float32 regions inside it, and
the memory format a batch of images takes.

Under a low precision (bf16, fp16) only the layers that gain from it run in it: the convolutions
and matrix products of the backbone, the RPN head, RoIAlign and the box head. Their outputs are
widened to float32 at the boundaries (``widened``) and everything after them runs in a
``float32_region``: anchors, box encoding and decoding, IoU, the anchor and proposal target layers
(whose compiled kernels take float32), proposal selection, NMS scores, detection post-processing
and the losses. Box coordinates of a few hundred pixels have a resolution of 2 to 4 pixels in
bfloat16, and IoU thresholds, score ties and loss sums are decided by the low bits.

fp32 adds nothing: no autocast, the float32 regions are no-ops, so the model computes exactly what
it computes without this module.
"""
from __future__ import annotations

import platform
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}
_X86 = ("x86_64", "amd64", "i386", "i686")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU of compute capability 8 or
    later (or ROCm); a CPU with AVX-512 BF16 or AMX (x86), or with oneDNN's BF16 support (ARM).
    On x86 oneDNN also "supports" bf16 on plain AVX-512 by emulation, which is slower than float32,
    so the instruction set is asked instead."""
    if device.type == "cuda":
        return bool(torch.version.hip) or torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    if platform.machine().lower() in _X86:
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(name: str, device: torch.device) -> str:
    """The concrete precision (fp32, bf16 or fp16) that ``name`` means on ``device``: ``auto`` is
    bf16 where the device has it natively (``native_bf16``), else fp32. fp16 needs a CUDA device
    (its training needs a gradient scaler, and CPUs compute it slower than float32): ValueError
    elsewhere."""
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device, not {device.type}; use bf16 or fp32 there")
    return name


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The region in which the model computes in the concrete ``precision``: autocast to bf16 or
    fp16 on ``device``; nothing at all for fp32."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=_LOW[precision])


def active_precision(device: torch.device) -> str:
    """The precision autocast holds now for ``device``'s type: bf16, fp16, or fp32 when it is off."""
    if not torch.is_autocast_enabled(device.type):
        return "fp32"
    dtype = torch.get_autocast_dtype(device.type)
    return next((name for name, low in _LOW.items() if low == dtype), "fp32")


def float32_region(device: torch.device) -> AbstractContextManager:
    """Autocast off for ``device``'s type while inside (a no-op when it is not on): the numerically
    sensitive parts run in the float32 of their inputs."""
    return torch.autocast(device.type, enabled=False) if torch.is_autocast_enabled(device.type) else nullcontext()


def widened_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for a low precision (bf16, fp16), ``dtype`` itself otherwise: what anchors, box
    coordinates and sampling positions are computed in beside features of ``dtype``."""
    return torch.float32 if dtype in _LOW.values() else dtype


def widened(tensor: Tensor) -> Tensor:
    """``tensor`` in ``widened_dtype`` (itself, uncopied, when that is its own: float32 and
    float64 pass untouched)."""
    return tensor.to(widened_dtype(tensor.dtype))


def memory_format(precision: str, device: torch.device, training: bool) -> torch.memory_format:
    """The memory format the model's images take in the concrete ``precision`` on ``device``, in
    training or inference (a convolution's output follows its input's format, so the whole
    backbone follows): channels last for bf16 inference on a CPU, contiguous (NCHW) otherwise.

    Measured (indicatively: interleaved in one process on a shared 2-core AVX2 CPU, whose bf16 is
    emulated by oneDNN; the small recipe, batch 2 of 320 x 416): bf16 inference 2.7x faster
    channels last, bf16 training 9% slower, fp32 within noise either way. GPUs are not measured
    yet, so they stay contiguous."""
    if device.type == "cpu" and precision == "bf16" and not training:
        return torch.channels_last
    return torch.contiguous_format


def describe(name: str, device: torch.device, training: bool) -> str:
    """How a model computes for the precision ``name`` on ``device``, as run logs and benchmark
    tables say it: the concrete precision, ``name`` in brackets where it differs, and the memory
    format of the images ("bf16 (auto), channels_last")."""
    precision = resolve_precision(name, device)
    named = f" ({name})" if name != precision else ""
    return f"{precision}{named}, {memory_format_name(memory_format(precision, device, training))}"


def memory_format_name(layout: torch.memory_format) -> str:
    """"channels_last" or "contiguous", as run records and benchmark tables name a memory format."""
    return "channels_last" if layout is torch.channels_last else "contiguous"
