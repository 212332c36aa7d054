"""cfconv_tf: Continuous Fourier Convolutions (CF-Convs) for TensorFlow/Keras.

The layers are imported on first use, so ``import cfconv_tf`` (and the ``cfconv``
command's start-up) does not load TensorFlow before it has to.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "CFConv2D": "cfconv_tf.layers",
    "CoordinateMLP": "cfconv_tf.generator",
    "FactorizedGenerator": "cfconv_tf.generator",
    "FrozenSpectralConv2D": "cfconv_tf.frozen",
    "PAPER_HIDDEN_UNITS": "cfconv_tf.generator",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'cfconv_tf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
