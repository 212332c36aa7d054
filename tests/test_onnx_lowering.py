"""The ONNX lowerings of one spectral convolution against numpy's FFT convolution."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from conftest import onnx_model_x_to_y

from cfconv_tf.spectral import hermitian_project
from export.onnx_builder import GraphBuilder
from export.onnx_spectral import LAYOUTS, LOWERINGS, spectral_conv

# Every op a lowering may use; the DFT op only in the "dft" lowering.
ALLOWED_OPS = {"Transpose", "Reshape", "MatMul", "Slice", "Sub", "Add", "Concat"}


def _shape(layout: str, sizes: dict[str, int | str]) -> list[int | str]:
    return [sizes[axis] for axis in layout]


def single_layer_model(lowering: str, kernel_real, kernel_imag, width: int) -> onnx.ModelProto:
    """One spectral layer; input and output in the lowering's own layout."""
    g = GraphBuilder()
    y = spectral_conv(g, lowering, "x", kernel_real, kernel_imag, width)
    g.rename(y, "y")
    height, _, cin, cout = kernel_real.shape
    layout = LAYOUTS[lowering]
    sizes = {"N": "n", "H": height, "W": width}
    x_shape, y_shape = (_shape(layout, {**sizes, "C": channels}) for channels in (cin, cout))
    return onnx_model_x_to_y(g, x_shape, y_shape, LOWERINGS[lowering])


@pytest.mark.parametrize("lowering", sorted(LOWERINGS))
@pytest.mark.parametrize(
    "shape",
    [
        (2, 7, 7, 3, 5),
        (1, 8, 8, 1, 2),
        (3, 6, 9, 2, 3),
        (2, 9, 6, 4, 1),
        (1, 16, 10, 3, 3),
        (2, 15, 12, 2, 2),
        (1, 11, 13, 2, 3),
    ],
)
def test_lowering_equals_numpy_fft_convolution(lowering, shape, rng):
    batch, height, width, cin, cout = shape
    x = rng.standard_normal((batch, cin, height, width)).astype(np.float32)
    kr, ki = (
        rng.uniform(-1, 1, (height, width // 2 + 1, cin, cout)).astype(np.float32) for _ in range(2)
    )
    kr, ki = (t.numpy() for t in hermitian_project(tf.constant(kr), tf.constant(ki), width))
    model = single_layer_model(lowering, kr, ki, width)
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert ops <= ALLOWED_OPS | ({"DFT"} if lowering == "dft" else set()), ops
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    to_layout = ["NCHW".index(axis) for axis in LAYOUTS[lowering]]
    y = session.run(None, {"x": x.transpose(to_layout)})[0].transpose(np.argsort(to_layout))
    spectrum = np.fft.rfft2(x.astype(np.float64), axes=(2, 3))  # [N, Cin, H, Wf]
    mixed = np.einsum("nihw,hwio->nohw", spectrum, kr + 1j * ki.astype(np.float64))
    expected = np.fft.irfft2(mixed, s=(height, width), axes=(2, 3))
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


def test_unknown_lowering_is_rejected():
    with pytest.raises(ValueError, match="unknown ONNX lowering 'fftw'"):
        spectral_conv(
            GraphBuilder(),
            "fftw",
            "x",
            np.zeros((2, 2, 1, 1), np.float32),
            np.zeros((2, 2, 1, 1), np.float32),
            2,
        )
