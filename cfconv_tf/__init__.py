"""cfconv_tf: Continuous Fourier Convolutions (CF-Convs) for TensorFlow/Keras.

Importing the package registers every serializable class with Keras (so
``keras.models.load_model`` reads trained and frozen models) and the ONNX forms of
TensorFlow's 2D real FFTs with tf2onnx (so Keras' ``model.export(path, format="onnx")``
writes a model onnxruntime runs).
"""

from __future__ import annotations

import export.tf2onnx_handlers  # noqa: F401  (registers the FFT handlers with tf2onnx)
from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.generator import PAPER_HIDDEN_UNITS, CoordinateMLP, FactorizedGenerator
from cfconv_tf.layers import CFConv2D

__all__ = [
    "CFConv2D",
    "CoordinateMLP",
    "FactorizedGenerator",
    "FrozenSpectralConv2D",
    "PAPER_HIDDEN_UNITS",
]
