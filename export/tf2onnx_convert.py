"""tf2onnx's own command line, with the project's handlers registered.

``python -m export.tf2onnx_convert --saved-model FOLDER --output model.onnx`` takes every
option of ``python -m tf2onnx.convert``; it converts SavedModels with CF-Conv layers
(TensorFlow's ``RFFT2D``/``IRFFT2D``, :mod:`export.tf2onnx_handlers`) and Keras' exact
GELU and ``celu`` (:mod:`export.tf2onnx_math`), which tf2onnx alone refuses.
"""

from __future__ import annotations

from tf2onnx.convert import main

import cfconv_tf  # noqa: F401  (registers the handlers with tf2onnx)

if __name__ == "__main__":
    main()
