"""Compiled CPU kernels, built on first use with torch's C++ extension loader (g++ and ninja).

Where no build is possible the callers fall back to their PyTorch-op paths, which compute the
same values bit for bit; ``FRCNN_NATIVE=0`` in the environment forces that fallback.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = [_CSRC / name for name in ("bindings.cpp", "grid_matching.cpp", "box_matching.cpp", "recognition.cpp",
                                        "sampling.cpp", "targets.cpp")]
# No fused multiply-adds: the kernels must round exactly as the PyTorch-op paths do. OpenMP
# (torch's intra-op threads on Linux) is what makes at::parallel_for parallel in an extension.
_OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []
_FLAGS = ["-O3", "-ffp-contract=off", *_OPENMP]

_lock = threading.Lock()
_state: dict[str, ModuleType | None] = {}


def kernels() -> ModuleType | None:
    """The compiled module (its kernels are bound in csrc/bindings.cpp), or None where
    it is disabled or cannot be built."""
    if "module" not in _state:
        with _lock:
            if "module" not in _state:
                _state["module"] = _build()
    return _state["module"]


def kernels_for(tensor: torch.Tensor) -> ModuleType | None:
    """The compiled module where it applies to ``tensor``: on the CPU, outside torch.compile
    tracing (which sees the PyTorch-op paths); else None."""
    if tensor.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    return kernels()


def _build() -> ModuleType | None:
    if os.environ.get("FRCNN_NATIVE", "1") == "0":
        return None
    try:
        # Its import logs a warning on machines without CUDA, which does not concern CPU kernels.
        logger = logging.getLogger("torch.utils.cpp_extension")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            from torch.utils.cpp_extension import load
        finally:
            logger.setLevel(level)
        _put_ninja_on_path()
        return load(_module_name(), [str(path) for path in _SOURCES], extra_cflags=_FLAGS, extra_ldflags=_OPENMP,
                    verbose=False)
    except Exception as error:  # no compiler, no ninja, an unsupported platform: all mean fallback
        warnings.warn(f"frcnn: compiled CPU kernels unavailable ({type(error).__name__}: {error}); "
                      f"using the PyTorch-op paths", RuntimeWarning, stacklevel=2)
        return None


def _module_name() -> str:
    """The extension's name, with a digest of every file in csrc/: torch's loader rebuilds when a
    source changes but not when only a header does, and a fresh name makes it build from scratch."""
    digest = hashlib.sha256()
    for path in sorted(_CSRC.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"frcnn_native_{digest.hexdigest()[:12]}"


def _put_ninja_on_path() -> None:
    """torch's loader runs ``ninja`` by name; the pip package's lies beside the venv's Python,
    which is not on PATH when that Python is called by its path."""
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
