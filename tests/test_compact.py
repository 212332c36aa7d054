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
from export.compact import EXACT, KernelStorage, compact_model, compact_part
from export.freeze import freeze_model
from export.names import KERNEL_STORAGE_KEY, NATIVE_OP
from export.onnx_spectral import LOWERINGS
from export.parity import TOLERANCE, keras_runner, random_inputs, relative_error
from export.pipeline import export_model, freeze_and_report, verify_exports
from export.self_check import load_onnx
from export.signature import signature_of


def dense_factorized_model(shape=(12, 9, 2), rank: int = 3) -> keras.Model:
    """Two CF layers whose state is their factorized generators' output (dense updates),
    trained for a step so that the state is no longer the initial one."""
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
    kept = compact_part(part, KernelStorage(rank=4))
    # Eckart-Young: the error is the discarded singular values' share
    error = np.linalg.norm(kept.astype(np.float64) - matrix.reshape(part.shape))
    assert error == pytest.approx(np.sqrt(np.sum(singular[4:] ** 2)), rel=1e-4)
    assert np.linalg.matrix_rank(kept.reshape(24, 15).astype(np.float64), tol=1e-4) == 4
    full = compact_part(part, KernelStorage(rank=15))  # every singular value kept
    np.testing.assert_allclose(full, part, rtol=0, atol=1e-5 * np.abs(part).max())
    half = compact_part(part, KernelStorage(dtype="float16"))
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


def test_the_native_lowering_reads_float16_kernels_as_stored(saved_dense_model, tmp_path):
    model, path = saved_dense_model
    storage = KernelStorage(dtype="float16")
    folder = export_model(path, "onnx", tmp_path, "m", lowering="native", storage=storage)
    proto = onnx.load(folder / "model.onnx")
    kernels = {t.name: t.data_type for t in proto.graph.initializer}
    native = [node for node in proto.graph.node if node.op_type == NATIVE_OP]
    assert len(native) == 2 and not [node for node in proto.graph.node if node.op_type == "Cast"]
    for node in native:
        assert [kernels[name] for name in node.input[1:]] == [onnx.TensorProto.FLOAT16] * 2
    signature = signature_of(model)
    inputs = random_inputs(signature.inputs, 3, np.random.default_rng(1))
    expected = keras_runner(model, signature)(inputs)
    assert relative_error(load_onnx(folder / "model.onnx").run(inputs), expected) <= 1e-3


def test_compact_storage_is_an_onnx_option(saved_dense_model, tmp_path):
    path = saved_dense_model[1]
    with pytest.raises(ValueError, match="ONNX storage option"):
        export_model(path, "savedmodel", tmp_path, "m", storage=KernelStorage(2))
    for bad in ({"rank": 0}, {"dtype": "int4"}):
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
