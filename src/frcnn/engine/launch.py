"""How this process was started: by torchrun, by SLURM's srun, or alone; its rank, the group's
size and where the group meets, read from the launcher's environment variables."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

# The port SLURM jobs meet at when MASTER_PORT is not set: this base plus the job id modulo the span,
# so that two jobs sharing a node rarely collide and a requeued job (same id) meets at the same port.
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class Launch:
    """This process's place in the group its launcher started.

    ``launcher``: "torchrun", "slurm" or "single". ``master_addr`` and ``master_port``: the
    rendezvous store. ``agent_store``: torchrun's agent serves that store (every process is a
    client); otherwise rank 0 serves it. ``attempt``: torchrun's restart count, 0 otherwise.
    """

    launcher: str = "single"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0
    agent_store: bool = False
    attempt: int = 0


def _integer(environ: Mapping[str, str], name: str, minimum: int, default: int | None = None) -> int:
    """The environment variable ``name`` as an integer >= ``minimum``; ValueError naming it otherwise."""
    text = environ.get(name)
    if text is None and default is not None:
        return default
    if text is None or not text.strip().isdigit() or int(text) < minimum:
        raise ValueError(f"environment variable {name}={text!r}: expected an integer >= {minimum}")
    return int(text)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list in its compressed form: ``node[01-04,07]`` gives
    ``node01``, ``a,b`` gives ``a``, ``gpu[3-4]-ib`` gives ``gpu3-ib``. The rule: up to the first
    comma outside brackets; a bracket's first range's start replaces the bracket, zero padding kept."""
    text = nodelist.strip()
    host = re.match(r"[^,\[\]]*(\[[^\[\]]*\][^,\[\]]*)*", text)[0] if text else ""
    if not host or "[]" in host or (len(host) < len(text) and text[len(host)] != ","):
        raise ValueError(f"SLURM node list {nodelist!r}: expected host names such as node[01-04,07] or a,b")
    return re.sub(r"\[([^\]\-,]*)[^\]]*\]", r"\1", host)


def _slurm_launch(environ: Mapping[str, str]) -> Launch:
    world_size = _integer(environ, "SLURM_NTASKS", 1)
    rank = _integer(environ, "SLURM_PROCID", 0)
    if rank >= world_size:
        raise ValueError(f"environment variable SLURM_PROCID={rank} is not below SLURM_NTASKS={world_size}")
    address = environ.get("MASTER_ADDR")
    if not address:
        nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
        if not nodelist:
            raise ValueError("started by SLURM without MASTER_ADDR or SLURM_JOB_NODELIST: cannot tell where "
                             "the processes meet")
        address = first_host(nodelist)
    default_port = SLURM_PORT_BASE + _integer(environ, "SLURM_JOB_ID", 0, 0) % SLURM_PORT_SPAN
    return Launch("slurm", rank, world_size, _integer(environ, "SLURM_LOCALID", 0, 0), address,
                  _integer(environ, "MASTER_PORT", 1, default_port))


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """The launch described by ``environ`` (default: this process's environment).

    torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) come first, so
    torchrun inside a SLURM job is torchrun. Then SLURM's: SLURM_PROCID, SLURM_NTASKS and
    SLURM_LOCALID, meeting at MASTER_ADDR (else the first host of SLURM_JOB_NODELIST) and
    MASTER_PORT (else ``SLURM_PORT_BASE`` + SLURM_JOB_ID mod ``SLURM_PORT_SPAN``). A single
    process otherwise, and for a launch of one process.
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" in environ:
        world_size = _integer(environ, "WORLD_SIZE", 1)
        if world_size == 1:
            return Launch()
        rank = _integer(environ, "RANK", 0)
        if rank >= world_size:
            raise ValueError(f"environment variable RANK={rank} is not below WORLD_SIZE={world_size}")
        address = environ.get("MASTER_ADDR")
        if not address:
            raise ValueError("environment variable MASTER_ADDR is not set: cannot tell where the processes meet")
        return Launch("torchrun", rank, world_size, _integer(environ, "LOCAL_RANK", 0, 0), address,
                      _integer(environ, "MASTER_PORT", 1), environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True",
                      _integer(environ, "TORCHELASTIC_RESTART_COUNT", 0, 0))
    if "SLURM_NTASKS" in environ and "SLURM_PROCID" in environ:
        launch = _slurm_launch(environ)
        return launch if launch.world_size > 1 else Launch()
    return Launch()
