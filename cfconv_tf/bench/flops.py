"""Floating-point operation counts per image (a multiply-add counts as 2 FLOPs).

Counts are analytic, per implementation, so achieved GFLOP/s can be set against the
machine's peak:

- ``conv``: a k x k "same" convolution, ``2 k^2 Cin Cout H W``.
- ``fft``: the spectral layer with FFTs (TF's RFFT2D/IRFFT2D; the ONNX DFT op),
  ``2.5 N log2 N`` per real 2D transform of ``N = H W`` points per channel, plus the
  complex multiply-accumulate ``8 H Wf Cin Cout``.
- ``dft-matmul``: the ONNX matmul lowering: the exact MatMul sizes it runs.
- ``dft-factorized``: the ONNX factorized lowering: the exact MatMul sizes it runs
  (:meth:`export.factorized_dft.FactorizedDFT.multiply_adds`).
"""

from __future__ import annotations

import math

import keras

from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.layers import CFConv2D
from export.factorized_dft import FactorizedDFT


def spectral_flops(height: int, width: int, cin: int, cout: int, implementation: str) -> int:
    half = width // 2 + 1
    mixing = 8 * height * half * cin * cout
    if implementation == "fft":
        transform = 2.5 * height * width * math.log2(height * width)
        return int(mixing + transform * (cin + cout))
    if implementation == "dft-matmul":
        forward = 2 * height * width * 2 * half + 2 * (2 * height) ** 2 * half
        inverse = 2 * (2 * height) ** 2 * half + 2 * height * 2 * half * width
        return int(mixing + forward * cin + inverse * cout)
    if implementation == "dft-factorized":
        return 2 * FactorizedDFT.for_size(height, width, cout).multiply_adds(cin, cout)
    raise ValueError(f"unknown spectral implementation {implementation!r}")


def model_flops(model: keras.Model, spectral_implementation: str = "fft") -> int:
    """FLOPs per image of a model of the paper's family."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, CFConv2D | FrozenSpectralConv2D):
            _, height, width, cin = layer.input.shape
            total += spectral_flops(height, width, cin, layer.filters, spectral_implementation)
        elif isinstance(layer, keras.layers.Conv2D):
            _, height, width, cin = layer.input.shape
            kh, kw = layer.kernel_size
            total += 2 * kh * kw * cin * layer.filters * height * width
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(layer.input.shape[-1]) * layer.units
    return total
