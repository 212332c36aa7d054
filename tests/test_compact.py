"""Compact kernels: low-rank factors and float16 storage, their errors, and their exports."""

from __future__ import annotations

import json

import keras
import numpy as np
import onnx
import pytest
from conftest import small_cf

from cfconv_tf.cli import main
from cfconv_tf.frozen import FrozenSpectralConv2D
from export.compact import (
    EXACT,
    INT8_LEVELS,
    KernelStorage,
    compact_model,
    compact_parts,
    dequantize,
    quantize,
)
from export.freeze import freeze_model
from export.names import KERNEL_STORAGE_KEY, NATIVE_OP
from export.onnx_export import spectral_layers
from export.onnx_spectral import LOWERINGS
from export.parity import TOLERANCE, keras_runner, random_inputs, relative_error
from export.pipeline import export_model, freeze_and_report, verify_exports
from export.self_check import load_onnx
from export.signature import signature_of


def dense_factorized_model(shape=(12, 10, 2), rank: int = 3) -> keras.Model:
    """Two CF layers whose state is their factorized generators' output (dense updates),
    trained for a step so that the state is no longer the initial one. Width 10: the
    factorized lowering splits it 5 x 2, so part of its spectrum is the Hermitian
    extension of the stored half (gathered with a sign)."""
    inputs = keras.Input(shape, name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    for filters in (5, 4):
        x = small_cf(filters, samples=1.0, generator_rank=rank)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x))
    model.compile("adam", "sparse_categorical_crossentropy")
    images = np.random.default_rng(0).uniform(0, 255, (8, *shape)).astype(np.float32)
    model.fit(images, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
    return model


def test_truncation_keeps_the_best_rank_r_part_and_reports_its_error(rng):
    part = rng.standard_normal((6, 4, 3, 5)).astype(np.float32)
    matrix = part.reshape(24, 15).astype(np.float64)
    singular = np.linalg.svd(matrix, compute_uv=False)
    (kept, _), _ = compact_parts((part, part), KernelStorage(rank=4))
    # Eckart-Young: the error is the discarded singular values' share
    error = np.linalg.norm(kept.astype(np.float64) - matrix.reshape(part.shape))
    assert error == pytest.approx(np.sqrt(np.sum(singular[4:] ** 2)), rel=1e-4)
    assert np.linalg.matrix_rank(kept.reshape(24, 15).astype(np.float64), tol=1e-4) == 4
    (full, _), _ = compact_parts((part, part), KernelStorage(rank=15))  # every singular value kept
    np.testing.assert_allclose(full, part, rtol=0, atol=1e-5 * np.abs(part).max())
    (half, _), _ = compact_parts((part, part), KernelStorage(dtype="float16"))
    np.testing.assert_array_equal(half, part.astype(np.float16).astype(np.float32))


def test_a_dense_factorized_kernel_loses_nothing_at_the_generators_rank(saved_dense_model):
    model = saved_dense_model[0]
    frozen = freeze_model(model)
    errors = compact_model(frozen, KernelStorage(rank=3))
    assert set(errors) == {
        layer.name for layer in frozen.layers if isinstance(layer, FrozenSpectralConv2D)
    }
    assert max(errors.values()) <= 1e-5  # float32 rounding only
    assert max(compact_model(freeze_model(model), KernelStorage(rank=1)).values()) > 1e-3


@pytest.fixture(scope="module")
def saved_dense_model(tmp_path_factory):
    """A trained dense factorized model (rank 3) and its ``.keras`` file."""
    model = dense_factorized_model(rank=3)
    path = tmp_path_factory.mktemp("compact") / "trained.keras"
    model.save(path)
    return model, path


@pytest.mark.parametrize("lowering", sorted(LOWERINGS))
def test_rank_r_exports_are_smaller_and_compute_the_trained_model(
    lowering, saved_dense_model, tmp_path
):
    model, path = saved_dense_model
    full_bytes = 4 * sum(
        np.asarray(weight).size
        for layer in freeze_model(model).layers
        if isinstance(layer, FrozenSpectralConv2D)
        for weight in layer.get_weights()
    )
    signature = signature_of(model)
    inputs = random_inputs(signature.inputs, 3, np.random.default_rng(1))
    expected = keras_runner(model, signature)(inputs)
    for storage, bound in ((KernelStorage(3), TOLERANCE), (KernelStorage(3, "float16"), 1e-3)):
        folder = export_model(
            path, "onnx", tmp_path / storage.dtype, "m", lowering=lowering, storage=storage
        )
        proto = onnx.load(folder / "model.onnx")
        kernel_bytes = sum(
            len(tensor.raw_data)
            for tensor in proto.graph.initializer
            if tensor.name.startswith("cfconv_kernel_")
        )
        assert kernel_bytes * (2 if storage.dtype == "float32" else 4) < full_bytes
        stored = json.loads(
            {prop.key: prop.value for prop in proto.metadata_props}[KERNEL_STORAGE_KEY]
        )
        assert (stored["rank"], stored["dtype"]) == (3, storage.dtype)
        # float32 factors: rounding only; float16: half precision's rounding
        assert max(stored["relative_errors"].values()) <= (1e-5 if bound == TOLERANCE else 2.0**-10)
        run = load_onnx(folder / "model.onnx").run
        assert relative_error(run(inputs), expected) <= bound


@pytest.mark.parametrize(
    "dtype,onnx_type", [("float16", onnx.TensorProto.FLOAT16), ("int8", onnx.TensorProto.INT8)]
)
def test_the_native_lowering_reads_compact_kernels_as_stored(
    dtype, onnx_type, saved_dense_model, tmp_path
):
    model, path = saved_dense_model
    storage = KernelStorage(dtype=dtype)
    folder = export_model(path, "onnx", tmp_path, "m", lowering="native", storage=storage)
    proto = onnx.load(folder / "model.onnx")
    kernels = {t.name: t.data_type for t in proto.graph.initializer}
    native = [node for node in proto.graph.node if node.op_type == NATIVE_OP]
    assert len(native) == 2 and not [node for node in proto.graph.node if node.op_type == "Cast"]
    scales = [onnx.TensorProto.FLOAT] if dtype == "int8" else []
    for node in native:
        assert [kernels[name] for name in node.input[1:]] == [onnx_type] * 2 + scales
    frozen = freeze_model(model)
    compact_model(frozen, storage)  # the kernels the file stores, in float32
    signature = signature_of(model)
    inputs = random_inputs(signature.inputs, 3, np.random.default_rng(1))
    expected = keras_runner(frozen, signature)(inputs)
    assert relative_error(load_onnx(folder / "model.onnx").run(inputs), expected) <= TOLERANCE


def test_int8_keeps_each_value_within_half_a_step_of_its_frequency_and_output_scale(rng):
    shape = (7, 4, 3, 5)  # [H, Wf, Cin, Cout]
    spread = 10.0 ** rng.uniform(-4, 1, (7, 4, 1, 5))  # magnitudes vary by frequency
    real, imag = (rng.standard_normal(shape) * spread for _ in range(2))
    real[2, 1] = imag[2, 1] = 0.0  # a frequency the kernel does not pass
    q_real, q_imag, scale = quantize(real, imag)
    assert q_real.dtype == q_imag.dtype == np.int8 and scale.shape == (7, 4, 5)
    assert np.abs(q_real).max() <= INT8_LEVELS and np.abs(q_imag).max() <= INT8_LEVELS
    peak = np.maximum(np.abs(real).max(axis=2), np.abs(imag).max(axis=2))
    np.testing.assert_allclose(scale, peak / INT8_LEVELS, rtol=1e-6)
    assert (scale[2, 1] == 0).all() and not q_real[2, 1].any() and not q_imag[2, 1].any()
    step = scale[:, :, None, :].astype(np.float64)
    for part, q in ((real, q_real), (imag, q_imag)):
        # nearest integer multiple of the scale (float64: no rounding of the product)
        assert (np.abs(q * step - part) <= 0.5 * step * (1 + 1e-9)).all()
        np.testing.assert_array_equal(
            dequantize(q, scale), q.astype(np.float32) * scale[:, :, None, :]
        )
    (kept, _), stored = compact_parts((real, imag), KernelStorage(dtype="int8"))
    np.testing.assert_array_equal(kept, dequantize(q_real, scale))
    assert all(np.array_equal(a, b) for a, b in zip(stored, (q_real, q_imag, scale), strict=True))
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize(np.full(shape, np.nan), imag)


def test_int8_gives_conjugate_frequencies_conjugate_integers_even_at_ties():
    """Values exactly halfway between two steps (scale 1/8, a power of two): rounding half
    away from zero, or half up, would break the symmetry a Hermitian DC column needs."""
    halves = (np.arange(-127, 127) + 0.5) / 8  # (k + 1/2) steps
    real = np.concatenate([halves, [127 / 8]]).reshape(1, 1, -1, 1)  # peak 127 steps
    imag = real[..., ::-1, :].copy()
    q_real, q_imag, scale = quantize(real, imag)
    assert scale.item() == 1 / 8
    conjugate = quantize(real, -imag)
    np.testing.assert_array_equal(conjugate[0], q_real)
    np.testing.assert_array_equal(conjugate[1], -q_imag)
    negated = quantize(-real, -imag)
    np.testing.assert_array_equal(negated[0], -q_real)


@pytest.mark.parametrize("lowering", sorted(LOWERINGS))
def test_int8_exports_quarter_the_kernel_and_compute_the_compacted_model(
    lowering, saved_dense_model, tmp_path
):
    model, path = saved_dense_model
    storage = KernelStorage(dtype="int8")
    frozen = freeze_model(model)
    layers = spectral_layers(frozen)
    # a byte per value of both parts, and a float32 scale per frequency and output channel
    int8_bytes = sum(2 * layer.kernel_real.shape.num_elements() for layer in layers)
    scale_bytes = sum(
        4 * layer.kernel_real.shape.num_elements() // layer.kernel_real.shape[2] for layer in layers
    )
    errors = compact_model(frozen, storage)
    for layer in layers:
        # each value within half a step, a step at most 1/127 of the largest value over
        # the 2 Cin values sharing its scale: ||error|| <= sqrt(Cin / 2) / 127 ||K||
        bound = np.sqrt(layer.kernel_real.shape[2] / 2) / INT8_LEVELS
        assert 0.0 < errors[layer.name] <= bound
    signature = signature_of(model)
    inputs = random_inputs(signature.inputs, 3, np.random.default_rng(1))
    compacted = keras_runner(frozen, signature)(inputs)
    folder = export_model(path, "onnx", tmp_path, "m", lowering=lowering, storage=storage)
    proto = onnx.load(folder / "model.onnx")
    kernel_bytes = sum(
        len(tensor.raw_data)
        for tensor in proto.graph.initializer
        if tensor.name.startswith("cfconv_kernel_")
    )
    assert kernel_bytes == int8_bytes + scale_bytes
    stored = json.loads({prop.key: prop.value for prop in proto.metadata_props}[KERNEL_STORAGE_KEY])
    assert (stored["rank"], stored["dtype"]) == (None, "int8")
    assert stored["relative_errors"] == pytest.approx(errors)
    assert relative_error(load_onnx(folder / "model.onnx").run(inputs), compacted) <= TOLERANCE


def test_compact_storage_is_an_onnx_option(saved_dense_model, tmp_path):
    path = saved_dense_model[1]
    with pytest.raises(ValueError, match="ONNX storage option"):
        export_model(path, "savedmodel", tmp_path, "m", storage=KernelStorage(2))
    for bad in ({"rank": 0}, {"dtype": "int4"}, {"rank": 2, "dtype": "int8"}):
        with pytest.raises(ValueError, match="kernel"):
            KernelStorage(**bad)
    assert EXACT.is_exact and not KernelStorage(dtype="float16").is_exact


def test_cli_freeze_reports_the_compact_models_accuracy_and_errors(trained_runs, tmp_path, capsys):
    run = trained_runs["cf"]
    report = freeze_and_report(
        run, tmp_path / "frozen.keras", evaluate_limit=64, storage=KernelStorage(rank=2)
    )
    assert set(report) >= {"kernel_errors", "trained_accuracy", "frozen_accuracy"}
    assert all(0.0 < error < 1.0 for error in report["kernel_errors"].values())
    out = str(tmp_path / "out")
    argv = ["export", str(run), "--format", "onnx", "--out", out, "--kernel-rank", "2"]
    assert main([*argv, "--kernel-dtype", "float16"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("kernel stored with relative error") == len(report["kernel_errors"])
    (written,) = (tmp_path / "out").glob("*/1/model.onnx")
    verified = verify_exports(run, [], [str(written)])  # against the model compacted alike
    assert not verified.failures()
    assert any("rank 2, float16" in kind for kind in verified.errors)
