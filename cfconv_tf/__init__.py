"""cfconv_tf: Continuous Fourier Convolutions (CF-Convs) for TensorFlow/Keras.

Importing the package registers every serializable class with Keras (so
``keras.models.load_model`` reads trained and frozen models) and the ONNX forms of
TensorFlow's 2D real FFTs with tf2onnx (so Keras' ``model.export(path, format="onnx")``
writes a model onnxruntime runs). TensorFlow's C++ start-up logs stay off the console
unless ``TF_CPP_MIN_LOG_LEVEL`` is set (:mod:`cfconv_tf.native_logs`).
"""

from __future__ import annotations

from cfconv_tf.native_logs import quiet_tensorflow_import

quiet_tensorflow_import()  # before anything imports TensorFlow

import export.tf2onnx_handlers  # noqa: E402, F401  (registers the FFT handlers with tf2onnx)
import export.tf2onnx_math  # noqa: E402, F401  (and Erfc, Expm1, Log1p)
from cfconv_tf.dense import CropToMatch, crossentropy_dice  # noqa: E402
from cfconv_tf.frozen import FrozenSpectralConv2D  # noqa: E402
from cfconv_tf.generator import (  # noqa: E402
    PAPER_HIDDEN_UNITS,
    CoordinateMLP,
    FactorizedGenerator,
)
from cfconv_tf.layers import CFConv2D  # noqa: E402

__all__ = [
    "CFConv2D",
    "CoordinateMLP",
    "CropToMatch",
    "FactorizedGenerator",
    "FrozenSpectralConv2D",
    "PAPER_HIDDEN_UNITS",
    "crossentropy_dice",
]
