"""The factorized DFT plan against numpy's FFT, and the lowering built on it in onnxruntime."""

from __future__ import annotations

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from conftest import onnx_model_x_to_y

from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.spectral import hermitian_project
from export.factorized_dft import FactorizedDFT
from export.onnx_builder import GraphBuilder
from export.onnx_model import build_onnx
from export.onnx_spectral import LOWERINGS, spectral_conv_factorized

# (height, width, height_first, width_first): odd, even, non-square, prime, trivial splits
SPLITS = [(12, 10, 3, 5), (12, 10, 4, 2), (12, 10, 1, 10), (12, 10, 12, 1), (9, 15, 3, 5),
          (7, 8, 7, 4), (6, 9, 2, 9), (10, 6, 5, 6)]  # fmt: skip


def numpy_spectrum(plan: FactorizedDFT, x: np.ndarray) -> np.ndarray:
    """Apply the forward stages as plain matmuls: ``[W, H, R]`` real -> ``[F, 2, R]``."""
    rest = x.shape[-1]
    t = plan.forward_width_first @ x.reshape(plan.width_first, -1)
    t = plan.forward_width_second @ t.reshape(plan.kept_first, 2 * plan.width_second, -1)
    t = plan.forward_height_first @ t.reshape(plan.width_columns, 2 * plan.height_first, -1)
    t = plan.forward_height_second @ t.reshape(
        plan.width_columns, plan.height_first, 2 * plan.height_second, -1
    )
    return t.reshape(plan.frequencies, 2, rest)


@pytest.mark.parametrize("height,width,height_first,width_first", SPLITS)
def test_forward_stages_give_the_dft_in_the_stated_order(
    height, width, height_first, width_first, rng
):
    plan = FactorizedDFT(height, width, width_first, height_first)
    x = rng.standard_normal((width, height, 3))
    spectrum = numpy_spectrum(plan, x)
    rows, columns = plan.frequency_order()
    expected = np.fft.fft2(x, axes=(1, 0))[columns, rows]  # [F, 3]; axes: W, H
    assert np.allclose(spectrum[:, 0] + 1j * spectrum[:, 1], expected, atol=1e-9)
    # every half-spectrum column appears, itself or as its conjugate's mirror
    assert set(np.minimum(columns, width - columns).tolist()) == set(range(width // 2 + 1))
    assert plan.frequencies == height * plan.width_columns


@pytest.mark.parametrize("height,width,height_first,width_first", SPLITS)
def test_factorized_lowering_equals_numpy_fft_convolution_for_every_split(
    height, width, height_first, width_first, rng
):
    plan = FactorizedDFT(height, width, width_first, height_first)
    cin, cout, batch = 3, 2, 2
    kr, ki = (
        rng.uniform(-1, 1, (height, width // 2 + 1, cin, cout)).astype(np.float32) for _ in range(2)
    )
    kr, ki = (t.numpy() for t in hermitian_project(tf.constant(kr), tf.constant(ki), width))
    g = GraphBuilder()
    g.rename(spectral_conv_factorized(g, "x", kr, ki, width, plan), "y")
    model = onnx_model_x_to_y(g, [width, height, "n", cin], [width, height, "n", cout])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((batch, height, width, cin)).astype(np.float32)
    y = session.run(None, {"x": x.transpose(2, 1, 0, 3)})[0].transpose(2, 1, 0, 3)
    spectrum = np.fft.rfft2(x.astype(np.float64), axes=(1, 2))
    expected = np.fft.irfft2(
        np.einsum("nhwi,hwio->nhwo", spectrum, kr + 1j * ki.astype(np.float64)),
        s=(height, width),
        axes=(1, 2),
    )
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


def test_layers_of_one_size_with_other_splits_keep_their_own_matrices(rng):
    """Two 12x10 layers in one graph, split differently: each must use its own stages."""
    height, width, channels = 12, 10, 2
    kernels = []
    for _ in range(2):
        parts = [rng.uniform(-1, 1, (height, 6, channels, channels)) for _ in range(2)]
        kernels.append([t.numpy() for t in hermitian_project(*parts, width)])
    g = GraphBuilder()
    y = "x"
    for (kr, ki), plan in zip(
        kernels,
        (FactorizedDFT(height, width, 5, 3), FactorizedDFT(height, width, 2, 4)),
        strict=True,
    ):
        y = spectral_conv_factorized(g, y, kr.astype(np.float32), ki.astype(np.float32), 10, plan)
    g.rename(y, "y")
    shape = [width, height, "n", channels]
    model = onnx_model_x_to_y(g, shape, shape)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal((2, height, width, channels))
    got = session.run(None, {"x": x.astype(np.float32).transpose(2, 1, 0, 3)})[0]
    expected = x
    for kr, ki in kernels:
        spectrum = np.fft.rfft2(expected, axes=(1, 2))
        mixed = np.einsum("nhwi,hwio->nhwo", spectrum, kr + 1j * ki)
        expected = np.fft.irfft2(mixed, s=(height, width), axes=(1, 2))
    got = got.transpose(2, 1, 0, 3)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


@pytest.mark.parametrize("height,width,cin,cout", [(12, 10, 3, 2), (9, 15, 1, 4), (7, 8, 2, 2)])
def test_multiply_adds_count_the_lowerings_matmuls(height, width, cin, cout):
    zeros = np.zeros((height, width // 2 + 1, cin, cout), np.float32)
    g = GraphBuilder()
    g.rename(spectral_conv_factorized(g, "x", zeros, zeros, width), "y")
    model = onnx_model_x_to_y(g, [width, height, 1, cin], [width, height, 1, cout])
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {
        value.name: [dim.dim_value for dim in value.type.tensor_type.shape.dim]
        for value in [*inferred.value_info, *inferred.input, *inferred.output]
    }
    shapes.update({init.name: list(init.dims) for init in inferred.initializer})
    counted = sum(
        int(np.prod(shapes[node.output[0]])) * shapes[node.input[0]][-1]
        for node in inferred.node
        if node.op_type == "MatMul"
    )
    assert counted == FactorizedDFT.for_size(height, width, cout).multiply_adds(cin, cout)


def test_kernel_order_extends_the_half_spectrum_hermitian(rng):
    plan = FactorizedDFT(6, 9, 3, 2)
    kr, ki = (rng.standard_normal((6, 5, 2, 3)) for _ in range(2))
    ordered_real, ordered_imag = plan.kernel_order(kr, ki)
    rows, columns = plan.frequency_order()
    for index, (row, column) in enumerate(zip(rows, columns, strict=True)):
        if column <= 4:
            assert np.allclose(ordered_real[index], kr[row, column], atol=1e-6)
            assert np.allclose(ordered_imag[index], ki[row, column], atol=1e-6)
        else:  # conj(K[-h, W - k])
            assert np.allclose(ordered_real[index], kr[(-row) % 6, 9 - column], atol=1e-6)
            assert np.allclose(ordered_imag[index], -ki[(-row) % 6, 9 - column], atol=1e-6)
    assert (columns > 4).any()


def test_cheapest_split_at_the_papers_size_beats_the_dense_transform():
    plan = FactorizedDFT.for_size(150, 150, 32)
    assert 1 < plan.width_first < 150 and 1 < plan.height_first < 150
    # per complex point, the height transform costs N1 + N2 multiply-adds instead of N
    assert plan.height_first + plan.height_second <= 25
    # the redundant columns cost at most a few percent of the half spectrum
    assert 76 <= plan.width_columns <= 80


def test_bad_plans_and_kernels_get_clear_errors():
    with pytest.raises(ValueError, match="width 10 is not split by a first stage of 3"):
        FactorizedDFT(8, 10, 3, 2)
    with pytest.raises(ValueError, match="height 8 is not split by a first stage of 0"):
        FactorizedDFT(8, 10, 2, 0)
    plan = FactorizedDFT(8, 10, 5, 2)
    with pytest.raises(ValueError, match=r"do not match a 8x10 layer \(expected \(8, 6\)"):
        plan.kernel_order(np.zeros((8, 5, 1, 1)), np.zeros((8, 5, 1, 1)))
    with pytest.raises(ValueError, match="a 8x10 plan for a 8x12 layer"):
        spectral_conv_factorized(
            GraphBuilder(), "x", np.zeros((8, 7, 1, 1)), np.zeros((8, 7, 1, 1)), 12, plan
        )


def test_mixed_spatial_and_spectral_model_in_every_lowering(rng):
    """Layouts change between Conv2D (NCHW) and spectral layers; pooling reads either."""
    shape = (10, 9, 2)
    inputs = keras.Input(shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = FrozenSpectralConv2D(3, activation="relu", name="spectral_1")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = FrozenSpectralConv2D(3, activation="relu", name="spectral_2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    for layer in model.layers:
        if isinstance(layer, FrozenSpectralConv2D):
            parts = [rng.uniform(-1, 1, layer.kernel_real.shape) for _ in range(2)]
            width = layer.input_size[1]
            layer.kernel_real.assign(hermitian_project(*parts, width)[0])
            layer.kernel_imag.assign(hermitian_project(*parts, width)[1])
    images = rng.uniform(0, 255, (5, *shape)).astype(np.float32)
    expected = model(images).numpy()
    for lowering in LOWERINGS:
        onnx_model = build_onnx(model, ["a", "b", "c"], lowering)
        session = ort.InferenceSession(
            onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        probabilities = session.run(["probabilities"], {"image": images})[0]
        assert np.abs(probabilities - expected).max() <= 1e-4 * np.abs(expected).max(), lowering
