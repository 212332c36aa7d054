"""SavedModel, ONNX and Triton exports: parity with the trained model, files, errors."""

from __future__ import annotations

import json

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from conftest import trained_tiny_model

from cfconv_tf.cli import main
from export.onnx_model import ONNX_DATA_FILE, build_onnx, save_onnx
from export.onnx_spectral import LOWERINGS
from export.pipeline import export_model, parity_failures, verify_exports
from export.savedmodel import class_probabilities

MODEL_OPS = {
    "Transpose",
    "Reshape",
    "MatMul",
    "Slice",
    "Sub",
    "Add",
    "Concat",
    "Mul",
    "Relu",
    "Conv",
    "GlobalAveragePool",
    "Flatten",
    "Softmax",
    "Sigmoid",
    "ArgMax",
}


def onnx_probabilities(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"image": images})[0]


def savedmodel_probabilities(folder, images: np.ndarray) -> np.ndarray:
    signature = tf.saved_model.load(str(folder)).signatures["serving_default"]
    return signature(image=tf.constant(images))["probabilities"].numpy()


def relative(candidate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(candidate - reference).max() / np.abs(reference).max())


@pytest.mark.parametrize("shape,classes", [((9, 8, 1), 2), ((8, 8, 3), 4), ((7, 11, 2), 3)])
def test_every_runtime_computes_the_trained_model(tiny_config, tmp_path, shape, classes, rng):
    model = trained_tiny_model(tiny_config, "cf", shape, classes)
    model.save(tmp_path / "model.keras")
    images = rng.uniform(0, 255, (6, *shape)).astype(np.float32)
    expected = class_probabilities(model, tf.constant(images)).numpy()
    assert expected.shape == (6, max(classes, 2))
    saved = export_model(tmp_path / "model.keras", "savedmodel", tmp_path / "sm", "m")
    assert relative(savedmodel_probabilities(saved, images), expected) <= 1e-4
    for lowering in sorted(LOWERINGS):
        folder = export_model(
            tmp_path / "model.keras", "onnx", tmp_path / lowering, "m", lowering=lowering
        )
        assert relative(onnx_probabilities(folder / "model.onnx", images), expected) <= 1e-4


def test_real_images_through_every_export_of_a_trained_run(trained_runs, tmp_path):
    run = trained_runs["cf"]
    saved = export_model(run, "savedmodel", tmp_path / "sm", "cf")
    onnx_files = [
        str(export_model(run, "onnx", tmp_path / lowering, "cf", lowering=lowering) / "model.onnx")
        for lowering in sorted(LOWERINGS)
    ]
    report = verify_exports(run, [str(saved)], onnx_files)
    assert set(report) == {"random", "test images"}
    assert len(report["test images"]) == 2 + len(LOWERINGS)  # frozen keras, savedmodel, ONNX
    assert parity_failures(report) == [], report


def test_onnx_files_are_valid_real_valued_and_self_describing(trained_runs, tmp_path):
    folder = export_model(trained_runs["cf"], "onnx", tmp_path, "cf")
    model = onnx.load(folder / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    ops = {node.op_type for node in model.graph.node}
    assert ops <= MODEL_OPS, ops - MODEL_OPS
    assert not any("FFT" in op or op == "DFT" for op in ops)
    real_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    assert {init.data_type for init in model.graph.initializer} <= real_types
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        assert value.type.tensor_type.elem_type in real_types
    props = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(props["class_names"])[0] == "T-shirt/top"
    assert json.loads(props["input_size"]) == [28, 28, 1]
    assert "1/255" in props["preprocessing"] and props["lowering"] == "factorized"
    dft = onnx.load(
        export_model(trained_runs["cf"], "onnx", tmp_path, "cf", lowering="dft") / "model.onnx"
    )
    assert dft.opset_import[0].version == 20
    assert {node.op_type for node in dft.graph.node} <= MODEL_OPS | {"DFT"}


def test_savedmodel_has_a_named_serving_signature_with_spectral_ops(trained_runs, tmp_path, rng):
    folder = export_model(trained_runs["cf"], "savedmodel", tmp_path, "cf", version=3)
    assert folder == tmp_path / "cf" / "3" and (folder / "saved_model.pb").is_file()
    loaded = tf.saved_model.load(str(folder))
    signature = loaded.signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["image"]
    images = rng.uniform(0, 255, (4, 28, 28, 1)).astype(np.float32)
    outputs = signature(image=tf.constant(images))
    assert set(outputs) == {"probabilities", "class_index"}
    assert outputs["class_index"].dtype == tf.int64
    np.testing.assert_array_equal(
        outputs["class_index"].numpy(), outputs["probabilities"].numpy().argmax(1)
    )
    ops = {
        node.op
        for function in signature.graph.as_graph_def().library.function
        for node in function.node_def
    }
    assert {"RFFT2D", "IRFFT2D"} <= ops
    metadata = json.loads((folder / "assets.extra" / "cfconv.json").read_text())
    assert metadata["class_names"][9] == "Ankle boot" and metadata["input_size"] == [28, 28, 1]


def test_spatial_baseline_exports_and_verifies_through_the_cli(trained_runs, tmp_path, capsys):
    run = trained_runs["spatial"]
    for fmt in ("savedmodel", "triton"):
        assert (
            main(
                [
                    "export",
                    str(run),
                    "--format",
                    fmt,
                    "--out",
                    str(tmp_path / fmt),
                    "--name",
                    "spatial",
                ]
            )
            == 0
        )
    entry = tmp_path / "triton" / "spatial"
    config = (entry / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "dims: [ 28, 28, 1 ]" in config
    assert "dims: [ 10 ]" in config
    assert (entry / "labels.txt").read_text().splitlines()[1] == "Trouser"
    assert (entry / "1" / "model.onnx").is_file()
    assert "Conv" in {node.op_type for node in onnx.load(entry / "1" / "model.onnx").graph.node}
    assert (
        main(
            [
                "verify",
                str(run),
                "--savedmodel",
                str(tmp_path / "savedmodel/spatial/1"),
                "--onnx",
                str(entry / "1" / "model.onnx"),
            ]
        )
        == 0
    )
    assert "all exports within" in capsys.readouterr().out


def test_freeze_cli_reports_accuracy_next_to_the_trained_model(trained_runs, tmp_path, capsys):
    run = trained_runs["cf"]
    assert (
        main(
            [
                "freeze",
                str(run),
                "--out",
                str(tmp_path / "g.keras"),
                "--source",
                "mlp",
                "--input-size",
                "32x30",
                "--evaluate-limit",
                "300",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{") :])
    assert report["frozen_size"] == [32, 30] and report["trained_size"] == [28, 28]
    assert 0.0 <= report["frozen_accuracy"] <= 1.0 and 0.0 <= report["trained_accuracy"] <= 1.0
    assert (tmp_path / "g.keras").is_file()


def test_state_freeze_reports_identical_accuracy(trained_runs, tmp_path):
    from export.pipeline import freeze_and_report

    report = freeze_and_report(trained_runs["cf"], tmp_path / "f.keras", evaluate_limit=300)
    assert report["frozen_accuracy"] == report["trained_accuracy"]


def test_large_weights_go_to_an_external_data_file(tiny_config, tmp_path, rng):
    from export.freeze import freeze_model

    model = freeze_model(trained_tiny_model(tiny_config, "cf", (8, 8, 1), 3))
    path = save_onnx(build_onnx(model, ["a", "b", "c"]), tmp_path, external_threshold=0)
    assert (tmp_path / ONNX_DATA_FILE).stat().st_size > 0
    assert path.stat().st_size < (tmp_path / ONNX_DATA_FILE).stat().st_size
    images = rng.uniform(0, 255, (3, 8, 8, 1)).astype(np.float32)
    expected = class_probabilities(model, tf.constant(images)).numpy()
    assert relative(onnx_probabilities(path, images), expected) <= 1e-4


def staged_or_versions(base) -> list[str]:
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_dir())


def test_bad_export_requests_fail_clearly_and_leave_nothing_behind(
    trained_runs, tmp_path, monkeypatch
):
    run, out = trained_runs["cf"], tmp_path / "out"
    with pytest.raises(ValueError, match="unknown export format 'pdf'"):
        export_model(run, "pdf", out, "cf")
    with pytest.raises(FileNotFoundError, match="no trained model"):
        export_model(tmp_path / "missing.keras", "onnx", out, "cf")
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a keras archive")
    with pytest.raises(ValueError, match="not a readable Keras model"):
        export_model(corrupt, "onnx", out, "cf")
    with pytest.raises(ValueError, match="source='mlp'"):
        export_model(run, "onnx", out, "cf", input_size=(40, 40))
    with pytest.raises(ValueError, match="invalid model name"):
        export_model(run, "onnx", out, "../cf")
    assert not out.exists() or staged_or_versions(out) in ([], ["cf"])

    first = export_model(run, "onnx", out, "cf", version=1)
    before = (first / "model.onnx").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a model"):
        export_model(run, "onnx", out, "cf", version=1)
    assert (first / "model.onnx").read_bytes() == before

    def crash(onnx_model, folder, *args):  # dies half-way through writing
        (folder / "model.onnx").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("export.pipeline.save_onnx", crash)
    with pytest.raises(OSError, match="disk full"):
        export_model(run, "onnx", out, "cf")
    assert staged_or_versions(out) == ["cf", "cf/1"]


def test_cli_export_errors_are_messages_not_tracebacks(trained_runs, tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "no trained model" in capsys.readouterr().err
    assert main(["verify", str(tmp_path / "nope")]) == 2


def test_models_outside_the_exported_family_get_clear_errors():
    inputs = keras.Input((6, 6, 2))
    per_channel = keras.layers.Rescaling([0.5, 2.0])(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(per_channel)
    scaled = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    with pytest.raises(ValueError, match="only a scalar scale and offset are exported"):
        build_onnx(scaled, ["a", "b"])
    unpooled = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs))
    with pytest.raises(ValueError, match="must end in pooling and Dense layers"):
        build_onnx(unpooled, ["a", "b"])
    dense_on_images = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="Dense is exported only after pooling"):
        build_onnx(dense_on_images, ["a", "b"])
    flattened = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="layer type Flatten has no ONNX lowering"):
        build_onnx(flattened, ["a", "b"])
    with pytest.raises(ValueError, match="unknown ONNX lowering 'fft'"):
        build_onnx(scaled, ["a", "b"], "fft")
