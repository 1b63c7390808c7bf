"""The forms of ``data.augment``: a recipe's name, or a list of torchvision.transforms.v2 steps
checked when the configuration is made.

A list entry is a v2 class name (``RandomHorizontalFlip``) or a mapping of one class name to its
parameters (``{RandomZoomOut: {side_range: [1, 2]}}``); the containers (``CONTAINERS``) take their
``transforms`` as such a list. ``{MultiScale: {scales: [low, high]}}`` is frcnn's own step (at the
top of the list, once): the model's resize takes ``min_size`` times a factor drawn uniformly from
[low, high] for each image. Each entry is built, and each transform (with p = 1) tried once on a
small image with boxes, so that an unknown name, a bad parameter or a transform that cannot take
an image with its boxes is refused here, in one line naming ``data.augment[i]``, rather than
mid-run.
``frcnn.data.augment`` builds the training pipeline from the checked steps.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchvision.transforms.v2 as v2
from torchvision import tv_tensors

from ..field_checks import ConfigError, is_number

RECIPES = ("none", "flip", "default")
MULTI_SCALE = "MultiScale"
CONTAINERS = ("Compose", "RandomApply", "RandomChoice", "RandomOrder")
# The `default` recipe: these steps, then the flip with probability data.flip_prob. Written in the
# list form, so that a user's own list can start from it (docs/data.md).
DEFAULT_STEPS = (
    {"RandomPhotometricDistort": {"p": 0.5}},
    {"RandomZoomOut": {"side_range": [1.0, 2.0], "p": 0.3}},
    {"RandomApply": {"transforms": [{"RandomIoUCrop": {}}], "p": 0.5}},
    {MULTI_SCALE: {"scales": [0.75, 1.25]}},
)

Step = dict[str, dict[str, Any]]


def recipe_steps(augment: str | Sequence[Step]) -> tuple[Step, ...]:
    """The steps of a checked ``data.augment`` before the model's resize: none for "none" and
    "flip", ``DEFAULT_STEPS`` for "default", a list's own."""
    if isinstance(augment, str):
        return DEFAULT_STEPS if augment == "default" else ()
    return tuple(augment)


def step_name(step: Step) -> str:
    """The class name of a checked step."""
    return next(iter(step))


def multi_scale(steps: Sequence[Step]) -> tuple[float, float] | None:
    """(low, high), the factors of ``min_size`` a ``MultiScale`` step draws from; None without one."""
    scales = [step[MULTI_SCALE]["scales"] for step in steps if step_name(step) == MULTI_SCALE]
    return (float(scales[0][0]), float(scales[0][1])) if scales else None


def v2_transform(step: Step, fill: Sequence[float] | None = None, certain: bool = False) -> v2.Transform:
    """The torchvision.transforms.v2 object of a step other than ``MultiScale`` (containers with
    their ``transforms`` built too); ``fill`` is given to a class that takes one when the step
    does not set it. ``certain``: a transform applied with a probability ``p`` is built with p = 1
    (the trial at configuration time)."""
    name = step_name(step)
    params = dict(step[name])
    if name in CONTAINERS:
        params["transforms"] = [v2_transform(inner, fill) for inner in params.get("transforms", [])]
    cls = getattr(v2, name)
    takes = inspect.signature(cls).parameters
    if fill is not None and "fill" in takes and "fill" not in params:
        params["fill"] = tuple(fill)
    if certain and "p" in takes and name not in CONTAINERS:
        params["p"] = 1.0
    return cls(**params)


def check_augment(owner: object, name: str) -> None:
    """The field ``name`` of ``owner`` is a recipe name or a list of steps (the module's rules);
    a list is stored as a tuple of ``{class name: parameters}`` mappings. ConfigError naming
    ``name`` (and the entry, ``name[i]``) otherwise."""
    value = getattr(owner, name)
    node = type(owner).__name__
    if isinstance(value, str) or not isinstance(value, Sequence):
        if value not in RECIPES:
            raise ConfigError(node, name, value, f"one of {', '.join(map(repr, RECIPES))} or a list of "
                                                 "torchvision.transforms.v2 steps")
        return
    steps = tuple(_checked_step(entry, node, f"{name}[{index}]", top=True) for index, entry in enumerate(value))
    if sum(step_name(step) == MULTI_SCALE for step in steps) > 1:
        raise ConfigError(node, name, value, f"a list with at most one {MULTI_SCALE}")
    object.__setattr__(owner, name, steps)


def _checked_step(entry: object, node: str, where: str, top: bool) -> Step:
    """One list entry in the stored form, checked and tried (``top``: at the top of the list)."""
    def refuse(rule: str) -> ConfigError:
        return ConfigError(node, where, entry, rule)

    if isinstance(entry, str):
        name, params = entry, {}
    elif isinstance(entry, Mapping) and len(entry) == 1:
        name, params = next(iter(entry.items()))
        params = {} if params is None else params
    else:
        raise refuse("a transform's name or a mapping of one name to its parameters")
    if not isinstance(params, Mapping) or not all(isinstance(key, str) for key in params):
        raise refuse(f"{name}'s parameters as a mapping of names to values")
    params = _plain(params)
    if name == MULTI_SCALE:
        scales = params.get("scales")
        if not (top and set(params) == {"scales"} and isinstance(scales, list) and len(scales) == 2
                and all(is_number(s) for s in scales) and 0 < scales[0] <= scales[1]):
            raise refuse(f"{{{MULTI_SCALE}: {{scales: [low, high]}}}} with 0 < low <= high, at the top of the list")
        return {name: params}
    cls = getattr(v2, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, v2.Transform)) or cls is v2.Transform:
        raise refuse(f"a torchvision.transforms.v2 transform or {MULTI_SCALE}")
    if name in CONTAINERS:
        inner = params.get("transforms")
        if not isinstance(inner, list) or not inner:
            raise refuse(f"{name} with a non-empty list of transforms")
        params["transforms"] = [_checked_step(e, node, f"{where}.transforms[{i}]", top=False)
                                for i, e in enumerate(inner)]
    options = params.get("sampler_options")
    if name == "RandomIoUCrop" and options is not None and not (
            isinstance(options, list) and any(is_number(option) and option >= 1 for option in options)):
        raise refuse("RandomIoUCrop with a sampler option >= 1 (no crop): without one, an image whose "
                     "boxes no crop fits is tried forever")
    step = {name: params}
    try:
        v2_transform(step)
    except Exception as error:  # torchvision's own check of its parameters, whatever it raises
        raise refuse(f"{name} with valid parameters ({_first_line(error)})") from None
    if name not in CONTAINERS:  # a container's transforms were tried one by one
        _try(v2_transform(step, certain=True), refuse)
    return step


def _try(transform: v2.Transform, refuse: Any) -> None:
    """Run ``transform`` (built with p = 1) once on a small float image with two boxes and labels
    (the global random stream left as it was); ``refuse(rule)`` unless it keeps a (3, H, W) float
    image in [0, 1] with its boxes."""
    image = tv_tensors.Image(torch.linspace(0, 1, 3 * 48 * 64).reshape(3, 48, 64))
    boxes = tv_tensors.BoundingBoxes([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 44.0]], format="XYXY",
                                     canvas_size=(48, 64))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            out = transform({"image": image, "boxes": boxes, "labels": torch.tensor([1, 2])})
        except Exception as error:  # whatever the transform raises on an image with boxes
            raise refuse(f"a transform of an image with its boxes ({_first_line(error)})") from None
    result = out.get("image") if isinstance(out, Mapping) else None
    keeps = (isinstance(result, torch.Tensor) and result.dim() == 3 and result.shape[0] == 3
             and result.dtype == torch.float32 and result.numel() > 0
             and bool(result.min() >= 0) and bool(result.max() <= 1)
             and isinstance(out.get("boxes"), tv_tensors.BoundingBoxes))
    if not keeps:
        raise refuse("a transform that keeps the image a (3, H, W) float image in [0, 1] with its boxes "
                     "(frcnn augments before the model's own resize and normalisation)")


def _plain(value: Any) -> Any:
    """Mappings as dicts and sequences as lists, all the way down (the YAML form)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
