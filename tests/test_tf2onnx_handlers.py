"""The tf2onnx handlers for TensorFlow's 2D real FFTs, against numpy and TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import onnxruntime as ort
import pytest
import tensorflow as tf

import cfconv_tf  # noqa: F401  (registers the handlers)
from export.onnx_export import convert_function

SIZES = [(6, 8), (7, 7), (5, 9), (8, 6)]  # even, odd, non-square both ways
TRANSFORMS = {"matmul": 17, "dft": 20}


def run(function, inputs: dict[str, np.ndarray], transform: str) -> np.ndarray:
    specs = [
        tf.TensorSpec([None, *value.shape[1:]], tf.float32, name=name)
        for name, value in inputs.items()
    ]
    proto = convert_function(function, specs, TRANSFORMS[transform], transform)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)[0]


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
@pytest.mark.parametrize("height,width", SIZES)
def test_rfft2d_gives_numpys_half_spectrum_as_float_pairs(transform, height, width, rng):
    x = rng.standard_normal((2, 3, height, width)).astype(np.float32)
    pairs = run(lambda x: {"y": tf.bitcast(tf.signal.rfft2d(x), tf.float32)}, {"x": x}, transform)
    expected = np.fft.rfft2(x.astype(np.float64))
    np.testing.assert_allclose(pairs[..., 0] + 1j * pairs[..., 1], expected, atol=1e-4)


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
@pytest.mark.parametrize("height,width", SIZES)
def test_irfft2d_equals_tensorflows_even_on_non_hermitian_spectra(transform, height, width, rng):
    """Any half spectrum, its DC and Nyquist columns' imaginary parts included."""
    pairs = rng.standard_normal((2, 3, height, width // 2 + 1, 2)).astype(np.float32)

    def inverse(pairs):
        spectrum = tf.bitcast(pairs, tf.complex64)
        return {"y": tf.signal.irfft2d(spectrum, fft_length=[height, width])}

    expected = inverse(tf.constant(pairs))["y"].numpy()
    np.testing.assert_allclose(run(inverse, {"pairs": pairs}, transform), expected, atol=1e-5)


def test_tf2onnxs_own_rfft_to_complex_abs_conversion_still_works(rng):
    x = rng.standard_normal((2, 6, 8)).astype(np.float32)
    magnitude = run(lambda x: {"y": tf.abs(tf.signal.rfft2d(x))}, {"x": x}, "matmul")
    np.testing.assert_allclose(magnitude, np.abs(np.fft.rfft2(x)), atol=1e-4)


def test_dft_nodes_below_their_opset_are_refused_with_a_message():
    specs = [tf.TensorSpec([None, 4, 4], tf.float32, name="x")]
    function = lambda x: {"y": tf.bitcast(tf.signal.rfft2d(x), tf.float32)}  # noqa: E731
    with pytest.raises(ValueError, match=r"RFFT2D.*the 'dft' transform needs ONNX opset >= 17"):
        convert_function(function, specs, 15, "dft")


@pytest.mark.parametrize(
    "name,function",
    [
        ("exact gelu", lambda x: keras.activations.gelu(x, approximate=False)),
        ("celu", keras.activations.celu),
        ("erfc", tf.math.erfc),
        ("expm1", tf.math.expm1),
        ("log1p of |x|", lambda x: tf.math.log1p(tf.abs(x))),
    ],
)
def test_elementwise_ops_tf2onnx_lacks_convert_exactly(name, function, rng):
    x = (rng.standard_normal((3, 40)) * 4).astype(np.float32)
    x[0, :3] = [0.0, -9.0, 9.0]  # zero, and the far tails
    got = run(lambda x: {"y": function(x)}, {"x": x}, "matmul")
    expected = function(tf.constant(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-6 * np.abs(expected).max()


def test_tf2onnxs_command_line_converts_our_savedmodel(tmp_path, rng):
    """``python -m export.tf2onnx_convert`` (a fresh process) is tf2onnx's CLI with our
    handlers registered."""
    from conftest import small_cf

    from export.freeze import freeze_model
    from export.savedmodel import write_savedmodel
    from export.signature import signature_of

    inputs = keras.Input((6, 7, 1), name="image")
    model = keras.Model(inputs, small_cf(2, activation="gelu")(inputs))
    frozen = freeze_model(model)
    write_savedmodel(frozen, signature_of(frozen), tmp_path / "saved", {})
    output = tmp_path / "model.onnx"
    command = [sys.executable, "-m", "export.tf2onnx_convert", "--saved-model"]
    subprocess.run(
        [*command, str(tmp_path / "saved"), "--output", str(output)], check=True, timeout=300
    )
    session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    images = rng.uniform(0, 1, (2, 6, 7, 1)).astype(np.float32)
    (got,) = session.run(None, {session.get_inputs()[0].name: images})
    expected = model(images, training=False).numpy()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
