"""Running an exported detector with onnxruntime (the optional extra ``frcnn[onnx]``)."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..detection import Detections, unpad
from ..preprocess import as_image_tensor

OUTPUTS = ("boxes", "scores", "labels", "counts")
INPUT = "images"
CLASS_NAMES_KEY = "class_names"


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a ValueError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ValueError("onnxruntime is not installed: pip install 'frcnn[onnx]'") from error
    return onnxruntime


def check_images(images: Any) -> np.ndarray:
    """images (B, 3, H, W) float32 RGB in [0, 1] (a numpy array or a tensor) as a numpy array;
    a ValueError names what is wrong otherwise."""
    if isinstance(images, Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a float32 array or tensor (B, 3, H, W), got {type(images).__name__}")
    if images.dtype != np.float32:
        raise ValueError(f"images must be float32 RGB in [0, 1], got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3 or 0 in images.shape:
        raise ValueError(f"images must have shape (B, 3, H, W) with B, H, W >= 1, got {images.shape}")
    return np.ascontiguousarray(images)


class OnnxDetector:
    """An exported frcnn detector run by onnxruntime on the CPU (``threads`` intra-op threads,
    default onnxruntime's choice). ``class_names`` comes from the model's metadata."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        onnxruntime = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such ONNX model")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: onnxruntime cannot load it: {str(error).splitlines()[0]}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        if CLASS_NAMES_KEY not in metadata:
            raise ValueError(f"{path}: not an frcnn export (no '{CLASS_NAMES_KEY}' in its metadata)")
        self.class_names: list[str] = json.loads(metadata[CLASS_NAMES_KEY])
        self.metadata = dict(metadata)

    def __call__(self, images: Any) -> Detections:
        """images (B, 3, H, W) float32 in [0, 1] -> ``Detections`` (torch tensors, padded)."""
        outputs = self.session.run(list(OUTPUTS), {INPUT: check_images(images)})
        return Detections(*(torch.from_numpy(value) for value in outputs))

    def predict(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        """Like ``FasterRCNN.predict`` on a list of plain images: one dict per image with
        ``boxes`` (n, 4), ``scores``, ``labels`` and ``names``. Consecutive images of one size
        run as one batch."""
        tensors = [as_image_tensor(image).cpu() for image in images]
        return [found for start, stop in same_size_runs(tensors)
                for found in unpad(self(torch.stack(tensors[start:stop])), self.class_names)]


def same_size_runs(images: Sequence[Tensor]) -> list[tuple[int, int]]:
    """(start, stop) of each run of consecutive images (3, H, W) of one size: the batches an
    exported model takes (one size per call)."""
    runs: list[tuple[int, int]] = []
    for index, image in enumerate(images):
        if runs and image.shape == images[runs[-1][0]].shape:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs

