"""Exported model files (ONNX, TorchScript): written, checked and loaded."""
