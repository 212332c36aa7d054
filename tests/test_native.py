"""The native spectral convolution (export/native) in onnxruntime, against numpy's FFT
convolution: odd, even and non-square sizes, batch 1 and many, 1 to 64 channels."""

from __future__ import annotations

import threading

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from test_onnx_lowering import numpy_convolution, random_kernel, single_layer

import export.native
import export.ort_session
from cfconv_tf.frozen import FrozenSpectralConv2D
from export.names import NATIVE_ACTIVATION, NATIVE_DOMAIN, NATIVE_OP, NATIVE_OPSET
from export.native import library_path
from export.onnx_export import build_onnx, save_onnx
from export.ort_session import onnx_session, session_options
from export.signature import signature_of
from serving.backends import OnnxBackend

InvalidArgument = ort.capi.onnxruntime_pybind11_state.InvalidArgument  # the op's error status
RuntimeException = ort.capi.onnxruntime_pybind11_state.RuntimeException  # failed session load


def native_model(
    height: int,
    width: int,
    cin: int,
    cout: int,
    kernel_type: int = TensorProto.FLOAT,
    activation: str | None = None,
) -> bytes:
    """One ``SpectralConv2D`` node; x and both kernel parts ``[W//2+1, H, Cin, Cout]``
    (int8 ones with their scale ``ks``) are graph inputs."""
    kernel = [width // 2 + 1, height, cin, cout]
    attributes = {} if activation is None else {NATIVE_ACTIVATION: activation}
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, height, width, cin]),
        helper.make_tensor_value_info("kr", kernel_type, kernel),
        helper.make_tensor_value_info("ki", kernel_type, kernel),
    ]
    if kernel_type == TensorProto.INT8:
        scale = [width // 2 + 1, height, cout]
        inputs.append(helper.make_tensor_value_info("ks", TensorProto.FLOAT, scale))
    names = [value.name for value in inputs]
    node = helper.make_node(NATIVE_OP, names, ["y"], domain=NATIVE_DOMAIN, **attributes)
    graph = helper.make_graph(
        [node],
        "native",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, height, width, cout])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(NATIVE_DOMAIN, NATIVE_OPSET)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def random_case(
    rng, batch: int, height: int, width: int, cin: int, cout: int, kernel_dtype=np.float32
) -> dict:
    """x and a kernel of ``kernel_dtype`` in the op's layout: int8 parts span the whole
    range, with scales over three orders of magnitude (as a spectrum's)."""
    kernel = (width // 2 + 1, height, cin, cout)
    feed = {"x": rng.standard_normal((batch, height, width, cin)).astype(np.float32)}
    if np.dtype(kernel_dtype) == np.int8:
        for part in ("kr", "ki"):
            feed[part] = rng.integers(-127, 128, kernel, dtype=np.int8)
        feed["ks"] = 10.0 ** rng.uniform(-3, 0, (*kernel[:2], cout)).astype(np.float32)
        return feed
    for part in ("kr", "ki"):
        feed[part] = rng.standard_normal(kernel).astype(kernel_dtype)
    return feed


def relative_error(y: np.ndarray, feed: dict, relu: bool = False) -> float:
    """Against numpy's convolution with the kernel values as stored (float16 ones exactly,
    int8 ones times their scales), then a ReLU where ``relu``."""
    kernel = (feed[part].astype(np.float32) for part in ("kr", "ki"))
    if "ks" in feed:
        kernel = (part * feed["ks"][:, :, None, :] for part in kernel)
    expected = numpy_convolution(feed["x"], *(part.swapaxes(0, 1) for part in kernel))
    if relu:
        expected = np.maximum(expected, 0.0)
    return float(np.abs(y - expected).max() / max(np.abs(expected).max(), 1e-30))


def test_the_library_is_built():
    assert library_path() is not None, "the package build did not make the native library"


@pytest.mark.parametrize(
    "shape",  # batch, height, width, cin, cout
    [
        (1, 1, 1, 1, 1),
        (1, 5, 7, 1, 1),
        (3, 8, 6, 3, 5),
        (2, 9, 9, 17, 33),
        (5, 12, 10, 64, 64),
        (1, 13, 2, 8, 16),
        (7, 16, 16, 32, 32),
        (2, 11, 9, 40, 6),  # cout below cin and below one SIMD vector, odd width
        (2, 7, 2, 3, 10),  # width 2: DC and Nyquist only
        (1, 10, 1, 5, 8),  # width 1: DC only
        (2, 150, 150, 32, 32),  # the paper network's layer
    ],
)
@pytest.mark.parametrize("kernel_dtype", [np.float32, np.float16, np.int8])
def test_equals_numpy_fft_convolution(shape, kernel_dtype, rng):
    feed = random_case(rng, *shape, kernel_dtype)
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(kernel_dtype))
    (y,) = onnx_session(native_model(*shape[1:], onnx_type)).run(None, feed)
    assert y.shape == (*shape[:3], shape[4])
    assert relative_error(y, feed) <= 2e-6


@pytest.mark.parametrize(
    "shape", [(1, 5, 7, 1, 1), (3, 8, 6, 3, 5), (2, 13, 10, 17, 33), (2, 9, 14, 6, 12)]
)
def test_relu_activation_equals_numpy_fft_convolution_then_relu(shape, rng):
    feed = random_case(rng, *shape)
    (y,) = onnx_session(native_model(*shape[1:], activation="relu")).run(None, feed)
    assert (y >= 0).all() and (y == 0).any()
    assert relative_error(y, feed, relu=True) <= 2e-6


def test_relu_keeps_nan_as_onnx_relu_does(rng):
    feed = random_case(rng, 2, 9, 40, 3, 16)
    feed["x"][1, 4, 7, 2] = np.nan  # spreads over image 1's whole output through the transforms
    (y,) = onnx_session(native_model(9, 40, 3, 16, activation="relu")).run(None, feed)
    assert np.isnan(y[1]).all()
    assert not np.isnan(y[0]).any()


def test_an_unknown_activation_is_refused_when_the_session_loads():
    with pytest.raises(RuntimeException, match=r"activation must be .relu. or absent, got .gelu."):
        onnx_session(native_model(4, 4, 1, 1, activation="gelu"))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batch=st.integers(1, 9),
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    cin=st.integers(1, 64),
    cout=st.integers(1, 64),
)
def test_any_shape_equals_numpy(batch, height, width, cin, cout, rng):
    feed = random_case(rng, batch, height, width, cin, cout)
    (y,) = onnx_session(native_model(height, width, cin, cout)).run(None, feed)
    assert relative_error(y, feed) <= 2e-6


def test_same_bits_on_one_or_two_threads_and_from_concurrent_calls(rng):
    shape = (6, 15, 12, 9, 20)
    feeds = [random_case(rng, *shape) for _ in range(4)]
    model = native_model(*shape[1:])
    single = onnx_session(model, threads=1)
    expected = [single.run(None, feed)[0] for feed in feeds]
    shared = onnx_session(model, threads=2)
    results: dict[int, np.ndarray] = {}

    def call(index: int) -> None:
        for _ in range(3):
            results[index] = shared.run(None, feeds[index])[0]

    workers = [threading.Thread(target=call, args=(index,)) for index in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for index, value in enumerate(expected):
        assert np.array_equal(results[index], value)


def test_an_empty_batch_gives_an_empty_answer(rng):
    feed = random_case(rng, 0, 6, 5, 2, 3)
    (y,) = onnx_session(native_model(6, 5, 2, 3)).run(None, feed)
    assert y.shape == (0, 6, 5, 3)


def untyped_model(kernel_real_type: int, kernel_imag_type: int, scale: bool = False) -> bytes:
    """One ``SpectralConv2D`` node whose inputs have these types and any shape (with a
    float32 ``ks`` input where ``scale``)."""
    typed = [("x", TensorProto.FLOAT), ("kr", kernel_real_type), ("ki", kernel_imag_type)]
    if scale:
        typed.append(("ks", TensorProto.FLOAT))
    inputs = [helper.make_tensor_value_info(name, onnx_type, None) for name, onnx_type in typed]
    graph = helper.make_graph(
        [helper.make_node(NATIVE_OP, [name for name, _ in typed], ["y"], domain=NATIVE_DOMAIN)],
        "native",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(NATIVE_DOMAIN, NATIVE_OPSET)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


@pytest.mark.parametrize(
    "kernel_shape,message",
    [
        ((6, 3, 2, 3), r"kernels must both be \[W/2\+1, H, Cin, Cout\] = \[3, 6, 2, 3\]"),
        ((3, 6, 5, 3), r"for x \[1, 6, 5, 2\], got \[3, 6, 5, 3\]"),  # Cin is not x's
    ],
)
def test_mismatched_shapes_are_an_error_not_a_crash(kernel_shape, message, rng):
    session = onnx_session(untyped_model(TensorProto.FLOAT, TensorProto.FLOAT))
    kernel = rng.standard_normal(kernel_shape).astype(np.float32)
    x = rng.standard_normal((1, 6, 5, 2)).astype(np.float32)
    with pytest.raises(InvalidArgument, match=message):
        session.run(None, {"x": x, "kr": kernel, "ki": kernel})
    with pytest.raises(InvalidArgument, match="x must be"):
        session.run(None, {"x": x[0], "kr": kernel, "ki": kernel})
    good = rng.standard_normal((3, 6, 2, 3)).astype(np.float32)
    assert session.run(None, {"x": x, "kr": good, "ki": good})[0].shape == (1, 6, 5, 3)


@pytest.mark.parametrize(
    "real_dtype,imag_dtype",
    [(np.float32, np.float16), (np.int8, np.float32), (np.float64, np.float64)],
)
def test_kernel_types_other_than_float32_float16_or_int8_pairs_are_refused(
    real_dtype, imag_dtype, rng
):
    types = (helper.np_dtype_to_tensor_dtype(np.dtype(d)) for d in (real_dtype, imag_dtype))
    session = onnx_session(untyped_model(*types))
    x = rng.standard_normal((1, 6, 5, 2)).astype(np.float32)
    kernel = rng.standard_normal((3, 6, 2, 3))
    feed = {"x": x, "kr": kernel.astype(real_dtype), "ki": kernel.astype(imag_dtype)}
    with pytest.raises(InvalidArgument, match="must both be float32, both float16 or both int8"):
        session.run(None, feed)


def test_a_kernel_scale_goes_with_int8_kernels_only_and_in_their_shape(rng):
    case = random_case(rng, 1, 6, 5, 2, 3, np.int8)
    int8 = TensorProto.INT8
    with pytest.raises(InvalidArgument, match="int8 kernels need their kernel_scale"):
        onnx_session(untyped_model(int8, int8)).run(None, {k: case[k] for k in ("x", "kr", "ki")})
    floats = {**random_case(rng, 1, 6, 5, 2, 3), "ks": case["ks"]}
    with pytest.raises(InvalidArgument, match="only they take one"):
        onnx_session(untyped_model(TensorProto.FLOAT, TensorProto.FLOAT, scale=True)).run(
            None, floats
        )
    session = onnx_session(untyped_model(int8, int8, scale=True))
    wrong_shape = r"kernel_scale must be .* = \[3, 6, 3\], got \[3, 6\]"
    with pytest.raises(InvalidArgument, match=wrong_shape):
        session.run(None, {**case, "ks": case["ks"][..., 0]})
    (y,) = session.run(None, case)
    assert relative_error(y, case) <= 2e-6


@pytest.mark.parametrize("kernel_dtype", [np.float32, np.int8])
def test_an_omitted_scale_named_empty_is_no_scale(kernel_dtype, rng):
    """ONNX omits an optional input by an empty name: float kernels run, int8 ones need it."""
    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(kernel_dtype))
    model = onnx.load_from_string(native_model(6, 5, 2, 3, onnx_type))
    del model.graph.input[3:]  # int8: the scale is no longer a graph input
    model.graph.node[0].input[3:] = [""]
    session = onnx_session(model.SerializeToString())
    case = random_case(rng, 2, 6, 5, 2, 3, kernel_dtype)
    feed = {name: case[name] for name in ("x", "kr", "ki")}
    if kernel_dtype == np.int8:
        with pytest.raises(InvalidArgument, match="int8 kernels need their kernel_scale"):
            session.run(None, feed)
    else:
        assert relative_error(session.run(None, feed)[0], feed) <= 2e-6


def test_a_file_for_another_version_of_the_op_is_refused_with_a_clear_error():
    model = onnx.load_from_string(native_model(4, 4, 1, 1))
    for opset in model.opset_import:
        if opset.domain == NATIVE_DOMAIN:
            opset.version = NATIVE_OPSET - 1  # its kernel had another layout
    with pytest.raises(ValueError, match=r"another version of the native op.*export it again"):
        onnx_session(model.SerializeToString())


def test_without_the_library_the_error_names_a_stock_lowering(monkeypatch, rng):
    monkeypatch.setattr(export.ort_session, "library_path", lambda: None)
    options = session_options()  # now without the custom op
    with pytest.raises(ValueError, match=r"native lowering.*--lowering factorized"):
        onnx_session(native_model(4, 4, 1, 1), options=options)
    monkeypatch.setattr(export.native, "library_path", lambda: None)
    model = single_layer(*random_kernel(rng, 4, 4, 1, 1), 4)
    with pytest.raises(ValueError, match=r"not built.*--lowering factorized"):
        build_onnx(model, signature_of(model), "native")


def test_the_server_backend_runs_a_native_export(rng, tmp_path):
    kernel_real, kernel_imag = random_kernel(rng, 9, 6, 3, 4)
    model = single_layer(kernel_real, kernel_imag, 6)
    save_onnx(build_onnx(model, signature_of(model), "native"), tmp_path)
    x = rng.standard_normal((2, 9, 6, 3)).astype(np.float32)
    (y,) = OnnxBackend(tmp_path).predict({"x": x}).values()
    expected = numpy_convolution(x, kernel_real, kernel_imag)
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


def native_export(model, x: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The op types of ``model``'s native export and its answer to ``x``."""
    proto = build_onnx(model, signature_of(model), "native")
    (y,) = onnx_session(proto.SerializeToString()).run(None, {"x": x})
    return [node.op_type for node in proto.graph.node], y


def test_export_folds_a_relu_that_alone_reads_the_op(rng):
    kernel_real, kernel_imag = random_kernel(rng, 9, 6, 3, 4)
    inputs = keras.Input((9, 6, 3), name="x")
    layer = FrozenSpectralConv2D(4, activation="relu", name="spectral")
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([kernel_real, kernel_imag])
    x = rng.standard_normal((2, 9, 6, 3)).astype(np.float32)
    op_types, y = native_export(model, x)
    assert "Relu" not in op_types and op_types.count(NATIVE_OP) == 1
    expected = np.maximum(numpy_convolution(x, kernel_real, kernel_imag), 0.0)
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()


def test_export_keeps_a_relu_whose_input_is_read_elsewhere(rng):
    kernel_real, kernel_imag = random_kernel(rng, 7, 10, 2, 3)
    inputs = keras.Input((7, 10, 2), name="x")
    layer = FrozenSpectralConv2D(3, name="spectral")
    convolved = layer(inputs)
    model = keras.Model(inputs, keras.layers.Add()([keras.layers.ReLU()(convolved), convolved]))
    layer.set_weights([kernel_real, kernel_imag])
    x = rng.standard_normal((3, 7, 10, 2)).astype(np.float32)
    op_types, y = native_export(model, x)
    assert "Relu" in op_types
    convolution = numpy_convolution(x, kernel_real, kernel_imag)
    expected = np.maximum(convolution, 0.0) + convolution
    assert np.abs(y - expected).max() <= 1e-5 * np.abs(expected).max()
