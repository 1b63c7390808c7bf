"""Distributed data-parallel runs launched by torchrun: the process context and its collectives.

Every helper is a no-op (or the identity) in a single-process run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """The number of processes torchrun started (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group torchrun describes in the environment (gloo on the CPU, nccl on
    GPUs); a single-process context when not launched by torchrun."""
    if launched_world_size() <= 1:
        return DistContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    """"auto" picks the GPU when there is one; a GPU without an index is this process's local
    rank's GPU (torchrun's LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was asked for, but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def all_gather_objects(value: Any, context: DistContext) -> list[Any]:
    """Every rank's ``value``, in rank order."""
    if not context.distributed:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_code(code: int, context: DistContext, device: torch.device) -> int:
    """Rank 0's integer ``code``, on every rank."""
    if not context.distributed:
        return code
    tensor = torch.tensor([code], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor.item())


def average(values: torch.Tensor, context: DistContext) -> torch.Tensor:
    """The mean of ``values`` over ranks."""
    if context.distributed:
        dist.all_reduce(values)
        values = values / context.world_size
    return values


def barrier(context: DistContext) -> None:
    if context.distributed:
        dist.barrier()
