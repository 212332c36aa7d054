"""One frozen spectral layer through each ONNX lowering, against numpy's FFT convolution."""

from __future__ import annotations

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf

from cfconv_tf import FrozenSpectralConv2D
from cfconv_tf.bench.onnx_profile import matmul_flops
from cfconv_tf.spectral import hermitian_project
from export.factorized_dft import FactorizedDFT
from export.names import NATIVE_DOMAIN, NATIVE_OP
from export.onnx_export import COMPLEX_TYPES, build_onnx
from export.onnx_spectral import LOWERINGS
from export.ort_session import onnx_session
from export.signature import signature_of

# Every op a lowering may use; the DFT op only in the "dft" lowering.
ALLOWED_OPS = {
    "Transpose",
    "Reshape",
    "MatMul",
    "Add",
    "Sub",
    "Concat",
    "Split",
    "Slice",
    "Unsqueeze",
    "Squeeze",
    "Identity",
}
DFT_OPS = {"DFT", "Constant"}
LOWERING_OPS = {  # what each lowering adds to ALLOWED_OPS
    "factorized": set(),
    "matmul": set(),
    "dft": DFT_OPS,
    "native": {NATIVE_OP},
}
SHAPES = [  # batch, height, width, cin, cout: odd, even, non-square, prime, one channel
    (2, 7, 7, 3, 5),
    (1, 8, 8, 1, 2),
    (3, 6, 9, 2, 3),
    (2, 9, 6, 4, 1),
    (1, 16, 10, 3, 3),
    (2, 15, 12, 2, 2),
    (1, 11, 13, 2, 3),
]


def random_kernel(rng, height: int, width: int, cin: int, cout: int):
    """A random half-spectrum kernel with Hermitian DC (and Nyquist) columns."""
    parts = [rng.uniform(-1, 1, (height, width // 2 + 1, cin, cout)) for _ in range(2)]
    return [
        t.numpy() for t in hermitian_project(*(tf.constant(p, tf.float32) for p in parts), width)
    ]


def single_layer(kernel_real: np.ndarray, kernel_imag: np.ndarray, width: int) -> keras.Model:
    height, _, cin, cout = kernel_real.shape
    inputs = keras.Input((height, width, cin), name="x")
    layer = FrozenSpectralConv2D(cout, name="spectral")
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([kernel_real, kernel_imag])
    return model


def numpy_convolution(x: np.ndarray, kernel_real: np.ndarray, kernel_imag: np.ndarray):
    """``irfft2(sum_i rfft2(x_i) K_io)`` in float64, ``x`` ``[N, H, W, Cin]``."""
    height, width = x.shape[1:3]
    spectrum = np.fft.rfft2(x.astype(np.float64), axes=(1, 2))
    kernel = kernel_real.astype(np.float64) + 1j * kernel_imag
    return np.fft.irfft2(
        np.einsum("nhwi,hwio->nhwo", spectrum, kernel), s=(height, width), axes=(1, 2)
    )


@pytest.mark.parametrize("lowering", sorted(LOWERINGS))
@pytest.mark.parametrize("shape", SHAPES)
def test_lowering_equals_numpy_fft_convolution(lowering, shape, rng):
    batch, height, width, cin, cout = shape
    kernel_real, kernel_imag = random_kernel(rng, height, width, cin, cout)
    model = single_layer(kernel_real, kernel_imag, width)
    proto = build_onnx(model, signature_of(model), lowering)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == LOWERINGS[lowering]
    ops = {node.op_type for node in proto.graph.node}
    assert ops <= ALLOWED_OPS | LOWERING_OPS[lowering], ops
    assert ("DFT" in ops) == (lowering == "dft")
    native = [node for node in proto.graph.node if node.domain == NATIVE_DOMAIN]
    assert [node.op_type for node in native] == ([NATIVE_OP] if lowering == "native" else [])
    typed = [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]
    assert not {value.type.tensor_type.elem_type for value in typed} & COMPLEX_TYPES
    assert not {init.data_type for init in proto.graph.initializer} & COMPLEX_TYPES
    session = onnx_session(proto.SerializeToString())
    x = rng.standard_normal((batch, height, width, cin)).astype(np.float32)
    (y,) = session.run(None, {"x": x})
    expected = numpy_convolution(x, kernel_real, kernel_imag)
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("height,width,cin,cout", [(12, 10, 3, 2), (9, 15, 1, 4), (7, 8, 2, 2)])
def test_factorized_graph_does_the_multiply_adds_the_plan_counts(height, width, cin, cout, rng):
    model = single_layer(*random_kernel(rng, height, width, cin, cout), width)
    proto = build_onnx(model, signature_of(model), "factorized")
    flops = matmul_flops(proto, batch=1)  # every MatMul of the graph, for one image
    assert len(flops) == sum(node.op_type == "MatMul" for node in proto.graph.node)
    plan = FactorizedDFT.for_size(height, width, cout)
    assert sum(flops.values()) // 2 == plan.multiply_adds(cin, cout)


def test_bad_lowering_requests_are_refused(rng):
    model = single_layer(*random_kernel(rng, 4, 4, 1, 1), 4)
    with pytest.raises(ValueError, match="unknown ONNX lowering 'fftw'"):
        build_onnx(model, signature_of(model), "fftw")
    with pytest.raises(ValueError, match="the dft lowering needs opset >= 20"):
        build_onnx(model, signature_of(model), "dft", opset=18)
