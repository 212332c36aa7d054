"""tf2onnx's own command line, with the project's handlers registered.

``python -m export.tf2onnx_convert --saved-model FOLDER --output model.onnx`` takes every
option of ``python -m tf2onnx.convert``; it converts SavedModels with CF-Conv layers
(TensorFlow's ``RFFT2D``/``IRFFT2D``, :mod:`export.tf2onnx_handlers`) and Keras' exact
GELU and ``celu`` (:mod:`export.tf2onnx_math`), which tf2onnx alone refuses.
"""

from __future__ import annotations

import cfconv_tf  # noqa: F401  (first: quiets TensorFlow, registers the handlers)


def main() -> None:
    """Run tf2onnx's command line on ``sys.argv``."""
    from tf2onnx.convert import main as convert

    convert()


if __name__ == "__main__":
    main()
