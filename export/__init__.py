"""Freezing trained CF-Conv models and writing SavedModel / ONNX / model repositories."""
