"""Deployment: the detector as one graph of plain images, its ONNX export and onnxruntime runner
(docs/deploy.md)."""
from .graph import Detections, DetectorGraph, unsupported_reason

__all__ = ["Detections", "DetectorGraph", "unsupported_reason"]
