"""Distributed data-parallel runs launched by torchrun or SLURM's srun: joining the group within
a time limit, its collectives, and one clear error when a peer stops answering.

Every helper is a no-op (or the identity) in a single-process run.
"""
from __future__ import annotations

import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..atomic import write_text_atomic
from ..config import TrainConfig
from .launch import Launch, detect_launch

# Rank 0 writes this file into the output folder at start; every rank must read it back.
SHARED_CHECK_NAME = ".frcnn_shared_check"
# After a collective fails, how long the surviving ranks wait for each other to report in.
ROLL_CALL_S = 5.0


class PeerLostError(ConnectionError):
    """A process of the group stopped answering (killed, hung, or never started); the message
    is one line naming the silent ranks when they are known, and the time limit."""


@dataclass(frozen=True)
class DistContext:
    """This process's place in a (possibly single-process) run. ``timeout_s``: how long a
    collective waits for a peer; ``store``: the group's key-value store (None alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    timeout_s: float | None = None
    store: Any = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """The number of processes the launcher (torchrun or srun) started; 1 when run alone."""
    return detect_launch().world_size


def _wait_for_listener(address: str, port: int, deadline: float) -> bool:
    """Whether ``address:port`` accepts a connection before ``deadline`` (time.monotonic)."""
    while True:
        try:
            socket.create_connection((address, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))).close()
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)


def _connect_store(launch: Launch, timeout_s: float) -> dist.Store:
    """The group's store: rank 0 serves it (unless torchrun's agent does) and waits until every
    process has connected; the others first wait in Python until it listens (so that a missing
    rank 0 is one error, not the native client's retries), all within ``timeout_s``."""
    where = f"{launch.master_addr}:{launch.master_port}"
    limit = f"train.dist_timeout_s = {timeout_s:g} s"
    serves = launch.rank == 0 and not launch.agent_store
    if not serves and not _wait_for_listener(launch.master_addr, launch.master_port, time.monotonic() + timeout_s):
        raise PeerLostError(f"rank {launch.rank} could not reach the group's store at {where} within {limit} "
                            "(is rank 0 running, and is MASTER_ADDR / MASTER_PORT right?)")
    try:
        store = dist.TCPStore(launch.master_addr, launch.master_port, launch.world_size, serves,
                              timeout=timedelta(seconds=timeout_s))
    except dist.DistError as error:
        joined = re.search(r"(\d+)/(\d+) clients joined", str(error))
        if joined is None:
            raise PeerLostError(f"rank {launch.rank} could not open the group's store at {where}: "
                                f"{_first_line(error)}") from error
        hint = "; under SLURM, start every task with srun" if launch.launcher == "slurm" else ""
        raise PeerLostError(f"the process group did not form: only {joined[1]} of {joined[2]} processes joined "
                            f"at {where} within {limit}{hint}") from error
    return dist.PrefixStore(f"frcnn/attempt{launch.attempt}", store)


def init_distributed(device: torch.device, timeout_s: float | None = None,
                     launch: Launch | None = None) -> DistContext:
    """Join the process group the launcher describes (``detect_launch``: torchrun or srun; gloo
    on the CPU, nccl on GPUs), every wait bounded by ``timeout_s`` (default
    ``TrainConfig.dist_timeout_s``); a single-process context when run alone. A group that does
    not form in time raises PeerLostError."""
    launch = detect_launch() if launch is None else launch
    if launch.world_size <= 1:
        return DistContext()
    timeout_s = TrainConfig().dist_timeout_s if timeout_s is None else timeout_s
    if dist.is_initialized():  # joined by the caller: its store is not ours to know
        return DistContext(dist.get_rank(), dist.get_world_size(), launch.local_rank, timeout_s)
    store = _connect_store(launch, timeout_s)
    try:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                store=dist.PrefixStore("group", store), rank=launch.rank,
                                world_size=launch.world_size, timeout=timedelta(seconds=timeout_s))
    except (dist.DistError, RuntimeError) as error:
        raise PeerLostError(f"rank {launch.rank} could not join the process group within "
                            f"train.dist_timeout_s = {timeout_s:g} s: {_first_line(error)}") from error
    return DistContext(launch.rank, launch.world_size, launch.local_rank, timeout_s, store)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _first_line(error: BaseException) -> str:
    """An error's first line without the native source location (``[path/file.cc:123] ``)."""
    lines = str(error).strip().splitlines()
    return re.sub(r"^\[[^\]]*:\d+\]\s*", "", lines[0]) if lines else type(error).__name__


def _is_group_failure(error: BaseException) -> bool:
    """Whether ``error`` comes from a collective or the store rather than from the work itself."""
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and re.search(r"gloo|NCCL|c10d|ProcessGroup", str(error)) is not None)


def silent_ranks(context: DistContext, wait_s: float = ROLL_CALL_S) -> list[int] | None:
    """After a failed collective: the ranks that did not report in through the store within
    ``wait_s`` (every surviving rank reports itself); None when the store is gone too."""
    if context.store is None:
        return None
    try:
        context.store.set_timeout(timedelta(seconds=wait_s))
        context.store.set(f"answering/{context.rank}", "1")
        deadline = time.monotonic() + wait_s
        while True:
            missing = [rank for rank in range(context.world_size) if not context.store.check([f"answering/{rank}"])]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.1)
    except (dist.DistError, RuntimeError):
        return None


def _lost_peer_message(error: BaseException, context: DistContext) -> str:
    missing = silent_ranks(context)
    if missing:
        who = f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} stopped answering"
    else:
        who = "a peer stopped answering (which one is unknown: the group's store is gone too)"
    return (f"rank {context.rank} lost the process group: {who} ({_first_line(error)}; "
            f"train.dist_timeout_s = {context.timeout_s:g} s)")


@contextmanager
def process_group(device: torch.device, timeout_s: float | None = None) -> Iterator[DistContext]:
    """Join the group (``init_distributed``) for the block and leave it afterwards. A collective
    that fails inside the block (a peer killed, or silent for ``timeout_s``) raises one
    PeerLostError naming the ranks that stopped answering."""
    context = init_distributed(device, timeout_s)
    try:
        yield context
    except (dist.DistError, RuntimeError) as error:
        if not context.distributed or not _is_group_failure(error):
            raise
        raise PeerLostError(_lost_peer_message(error, context)) from error
    finally:
        shutdown_distributed()


def _wait_for_text(path: Path, text: str, deadline: float) -> bool:
    """Whether ``path`` holds ``text`` before ``deadline`` (a shared file system may show a new
    file to other machines only after a while)."""
    while True:
        try:
            if path.read_text() == text:
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def check_shared_folder(folder: str | Path, context: DistContext) -> None:
    """Make sure every rank sees ``folder`` as rank 0 does: rank 0 writes a file with a random
    token there, every rank reads it back (waiting up to half of ``context.timeout_s``), and
    ValueError names the ranks and hosts that cannot. Every rank must call it."""
    if not context.distributed:
        return
    marker = Path(folder) / SHARED_CHECK_NAME
    token = [secrets.token_hex(16) if context.is_main else None]
    if context.is_main:
        write_text_atomic(marker, token[0])
    dist.broadcast_object_list(token, src=0)
    seen = context.is_main or _wait_for_text(marker, token[0], time.monotonic() + context.timeout_s / 2)
    views = all_gather_objects((seen, socket.gethostname()), context)
    if context.is_main:
        marker.unlink(missing_ok=True)
    blind = [f"rank {rank} on {host}" for rank, (seen, host) in enumerate(views) if not seen]
    if blind:
        raise ValueError(f"the output folder {folder} is not shared storage: {', '.join(blind)} cannot see the "
                         f"files rank 0 ({views[0][1]}) writes there; give a folder every node sees")


def resolve_device(name: str) -> torch.device:
    """"auto" picks the GPU when there is one. A GPU without an index is this process's local
    rank's GPU (torchrun's LOCAL_RANK, SLURM's SLURM_LOCALID), or the only one the process sees."""
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
            count = torch.cuda.device_count()
            local_rank = detect_launch().local_rank
            if local_rank >= count > 1:
                raise ValueError(f"local rank {local_rank} has no GPU of its own: this process sees {count}")
            device = torch.device("cuda", local_rank if count > 1 else 0)
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
