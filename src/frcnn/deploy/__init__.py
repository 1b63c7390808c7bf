"""Deployment: the ONNX export of a detector, the check of its detections, its onnxruntime runner
and detection on image files (docs/deploy.md)."""
