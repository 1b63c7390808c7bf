"""Starting from a checkpoint spec (an frcnn checkpoint or ``torchvision:ARCH[:PATH]``): a new model
started from its weights (``init_weights``), and the run configuration a checkpoint carries
(``run_config``). ``FasterRCNN.load`` is the one loader of a whole model."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from .checkpoint import Checkpoint, check_fit, fit_batchnorm_buffers
from .config import RunConfig
from .pretrained import read_checkpoint

# The layers whose shapes depend on the number of classes.
CLASS_SPECIFIC = ("roi_head.cls_score.", "roi_head.bbox_pred.")


@dataclass(frozen=True)
class InitReport:
    """Which of the model's tensors ``init_weights`` loaded and which it left new."""

    loaded: tuple[str, ...]
    new: tuple[str, ...]

    def summary(self) -> str:
        """Two lines: loaded tensors counted by top-level module, new tensors by name."""
        groups: dict[str, int] = {}
        for name in self.loaded:
            key = ".".join(name.split(".")[:2])
            groups[key] = groups.get(key, 0) + 1
        loaded = ", ".join(f"{key} ({count})" for key, count in groups.items())
        return (f"loaded {len(self.loaded)} tensors: {loaded or 'none'}\n"
                f"new {len(self.new)} tensors: {', '.join(self.new) or 'none'}")


def init_weights(model: nn.Module, spec: str) -> InitReport:
    """Start ``model`` from the checkpoint ``spec`` (frcnn or ``torchvision:ARCH[:PATH]``): every
    tensor whose name and shape fit is loaded; the class-specific layers (the box classifier and
    regressor) stay new when their shapes differ; any other missing, unexpected or differently
    shaped tensor is a ValueError naming it and both shapes."""
    checkpoint = read_checkpoint(spec)
    target = model.state_dict()
    state = fit_batchnorm_buffers(checkpoint.state, target)
    new = tuple(name for name in target if name.startswith(CLASS_SPECIFIC)
                and (name not in state or state[name].shape != target[name].shape))
    kept = {name: value for name, value in state.items() if name not in new}
    check_fit(kept, {name: value for name, value in target.items() if name not in new}, checkpoint.origin)
    model.load_state_dict({**target, **kept})
    return InitReport(tuple(kept), new)


def run_config(checkpoint: Checkpoint, assignments: Sequence[str] = ()) -> RunConfig:
    """The run configuration stored in an frcnn checkpoint (the defaults around the model's
    configuration for weights from elsewhere), with the ``key=value`` ``assignments`` applied."""
    base = RunConfig.from_stored(checkpoint.run_config) if checkpoint.run_config else RunConfig(model=checkpoint.config)
    return base.with_assignments(assignments)
