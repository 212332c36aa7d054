"""SavedModel, ONNX and Triton exports: parity with the trained model, files, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tensorflow as tf
from conftest import trained_tiny_model

from cfconv_tf.cli import main
from export.freeze import freeze_model
from export.names import ONNX_DATA_FILE
from export.onnx_export import build_onnx, export_onnx, save_onnx
from export.onnx_spectral import LOWERINGS
from export.parity import (
    TOLERANCE,
    keras_runner,
    random_inputs,
    relative_error,
)
from export.pipeline import export_model, prepare_export, verify_exports, write_export
from export.self_check import load_onnx, load_savedmodel
from export.signature import signature_of

# The paper network's ops in the factorized lowering (a sigmoid head adds Concat and Sub).
MODEL_OPS = {
    "Transpose",
    "Reshape",
    "MatMul",
    "Sub",
    "Add",
    "Concat",
    "Mul",
    "Relu",
    "ReduceMean",
    "Softmax",
    "Sigmoid",
    "ArgMax",
    "Unsqueeze",  # stacks the factorized kernel's two parts (constants, folded at load)
}


def labels_file(tmp_path, classes: int):
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"class {index}\n" for index in range(classes)))
    return path


@pytest.mark.parametrize("shape,classes", [((9, 8, 1), 2), ((8, 8, 3), 4), ((7, 11, 2), 3)])
def test_every_runtime_computes_the_trained_model(tiny_config, tmp_path, shape, classes, rng):
    model = trained_tiny_model(tiny_config, "cf", shape, classes)
    model.save(tmp_path / "model.keras")
    labels = labels_file(tmp_path, classes)
    signature = signature_of(model, [f"class {index}" for index in range(classes)])
    inputs = random_inputs(signature.inputs, 6, rng)
    expected = keras_runner(model, signature)(inputs)
    assert expected["probabilities"].shape == (6, classes)
    prepared = prepare_export(tmp_path / "model.keras", labels=labels)  # frozen once
    saved = write_export(prepared, "savedmodel", tmp_path / "sm", "m")
    assert relative_error(load_savedmodel(saved).run(inputs), expected) <= 1e-4
    for lowering in sorted(LOWERINGS):
        folder = write_export(prepared, "onnx", tmp_path / lowering, "m", lowering=lowering)
        assert relative_error(load_onnx(folder / "model.onnx").run(inputs), expected) <= 1e-4


def test_dense_models_export_their_per_pixel_maps_to_every_runtime(tmp_path, rng):
    """A dense U-Net with a CF-Conv stage at an odd, non-square size (its decoder
    upsamples and crops): every lowering computes the Keras model's ``[N, H, W, 1]``
    map."""
    from cfconv_tf.config import load_model_config
    from cfconv_tf.models import build_model
    from cfconv_tf.training import compile_model

    config = load_model_config("pathfinder_resnet").replace(
        stage_filters=(4, 6, 8), generator_rank=2, hidden_units=(8,)
    )
    shape = (15, 21, 1)
    model = build_model(config, "cf", shape, 2, seed=1, dense=True)
    compile_model(model, 2, 1e-2, dense=True)
    images = rng.uniform(0, 255, (4, *shape)).astype(np.float32)
    model.fit(images, (images > 200).astype(np.int32), epochs=2, verbose=0)  # BN, CF state
    model.save(tmp_path / "unet.keras")
    signature = signature_of(model)
    assert signature.class_names is None
    inputs = random_inputs(signature.inputs, 3, rng)
    expected = keras_runner(model, signature)(inputs)
    assert next(iter(expected.values())).shape == (3, *shape)
    prepared = prepare_export(tmp_path / "unet.keras")
    for lowering in sorted(LOWERINGS):
        folder = write_export(prepared, "onnx", tmp_path / lowering, "m", lowering=lowering)
        got = load_onnx(folder / "model.onnx").run(inputs)
        assert relative_error(got, expected) <= 1e-4, lowering


def test_real_images_through_every_export_of_a_trained_run(trained_runs, tmp_path):
    run = trained_runs["cf"]
    prepared = prepare_export(run)
    saved = write_export(prepared, "savedmodel", tmp_path / "sm", "cf")
    onnx_files = [
        str(write_export(prepared, "onnx", tmp_path / low, "cf", lowering=low) / "model.onnx")
        for low in sorted(LOWERINGS)
    ]
    report = verify_exports(run, [str(saved)], onnx_files)
    assert set(report.errors) == {"random", "test images"}
    assert len(report.errors["test images"]) == 2 + len(LOWERINGS)  # keras, savedmodel, ONNX
    assert report.tolerance == TOLERANCE
    assert report.failures() == [], report


def test_onnx_files_are_valid_real_valued_and_self_describing(trained_runs, tmp_path):
    prepared = prepare_export(trained_runs["cf"])
    folder = write_export(prepared, "onnx", tmp_path, "cf")
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
    assert [dim.dim_value for dim in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [
        28,
        28,
        1,
    ]
    assert [value.name for value in model.graph.output] == ["probabilities", "class_index"]
    props = {prop.key: prop.value for prop in model.metadata_props}
    assert json.loads(props["class_names"])[0] == "T-shirt/top"
    assert "1/255" in props["preprocessing"] and props["lowering"] == "factorized"
    dft = onnx.load(write_export(prepared, "onnx", tmp_path, "cf", lowering="dft") / "model.onnx")
    assert dft.opset_import[0].version == 20
    dft_ops = {node.op_type for node in dft.graph.node}
    assert "DFT" in dft_ops and dft_ops <= MODEL_OPS | {
        "DFT",
        "Constant",
        "Slice",
        "Split",
    }


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
    assert metadata["class_names"][9] == "Ankle boot"
    assert metadata["inputs"] == [["image", [None, 28, 28, 1], "float32"]]


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


def test_freezing_a_dense_run_reports_the_iou_before_and_after(tiny_config, tmp_path, monkeypatch):
    from cfconv_tf import pathfinder
    from cfconv_tf.training import RunSettings, train
    from export.pipeline import freeze_and_report

    monkeypatch.setenv(pathfinder.CACHE_ENV, str(tmp_path / "cache"))
    dataset = "pathfinder:20:labels=path:train=16:validation=4:test=8"
    settings = RunSettings(tiny_config, "cf", dataset=dataset, steps_per_epoch=2)
    train(settings, tmp_path / "run", verbose=0)
    report = freeze_and_report(tmp_path / "run", tmp_path / "f.keras")
    assert "trained_accuracy" not in report
    assert 0.0 <= report["trained_iou"] <= 1.0
    assert report["frozen_iou"] == pytest.approx(report["trained_iou"], abs=1e-6)


def test_large_weights_go_to_an_external_data_file(tiny_config, tmp_path, rng):
    model = freeze_model(trained_tiny_model(tiny_config, "cf", (8, 8, 1), 3))
    signature = signature_of(model, ["a", "b", "c"])
    path = save_onnx(build_onnx(model, signature), tmp_path, external_threshold=0)
    assert (tmp_path / ONNX_DATA_FILE).stat().st_size > 0
    initializers = onnx.load(path, load_external_data=False).graph.initializer
    external = {t.name for t in initializers if t.data_location == onnx.TensorProto.EXTERNAL}
    assert {"cfconv_kernel_1_real", "cfconv_kernel_1_imag"} <= external  # 5.6 kB each
    inputs = random_inputs(signature.inputs, 3, rng)
    assert (
        relative_error(load_onnx(path).run(inputs), keras_runner(model, signature)(inputs)) <= 1e-4
    )


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
    with pytest.raises(ValueError, match="cfconv_0: .* freeze with source='mlp'"):
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


@keras.saving.register_keras_serializable(package="cfconv_tests")
class LogGamma(keras.layers.Layer):
    """A layer built from an op tf2onnx has no handler for (``Lgamma``)."""

    def call(self, inputs):
        return tf.math.lgamma(inputs + 1.0)


def test_ops_nothing_converts_get_a_message_naming_them(tmp_path, capsys):
    inputs = keras.Input((6, 6, 2), name="image")
    x = keras.layers.GlobalAveragePooling2D()(LogGamma(name="log_gamma")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    for lowering in LOWERINGS:
        with pytest.raises(
            ValueError,
            match=r"cannot convert the TensorFlow ops \['Lgamma'\] in layers \['log_gamma'\]",
        ):
            build_onnx(model, signature_of(model), lowering)
    model.save(tmp_path / "odd.keras")
    assert (
        main(["export", str(tmp_path / "odd.keras"), "--format", "onnx", "--out", str(tmp_path)])
        == 2
    )
    error = capsys.readouterr().err
    assert "Lgamma" in error and "--format savedmodel" in error and "Traceback" not in error
    assert not (tmp_path / "odd").exists() or not any((tmp_path / "odd").iterdir())


def test_trainable_models_are_frozen_before_conversion(tiny_config, tmp_path, rng):
    model = trained_tiny_model(tiny_config, "cf", (8, 8, 1), 3)
    with pytest.raises(ValueError, match="trainable CF-Conv layers: freeze it first"):
        build_onnx(model, signature_of(model))
    path = export_onnx(model, tmp_path, class_names=["a", "b", "c"])
    signature = signature_of(model, ["a", "b", "c"])
    inputs = random_inputs(signature.inputs, 3, rng)
    assert (
        relative_error(load_onnx(path).run(inputs), keras_runner(model, signature)(inputs)) <= 1e-4
    )


def test_regression_models_export_as_what_they_are(tmp_path, capsys):
    inputs = keras.Input((8, 6, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(1, name="value")(x)).save(tmp_path / "reg.keras")
    args = ["export", str(tmp_path / "reg.keras"), "--out", str(tmp_path / "out")]
    assert main([*args, "--format", "triton"]) == 0
    graph = onnx.load(tmp_path / "out" / "reg" / "1" / "model.onnx").graph
    assert [value.name for value in graph.output] == ["value"]
    config = (tmp_path / "out" / "reg" / "config.pbtxt").read_text()
    assert 'name: "value" data_type: TYPE_FP32 dims: [ 1 ]' in config
    assert "probabilities" not in config and not (tmp_path / "out" / "reg" / "labels.txt").exists()
    labels = labels_file(tmp_path, 2)
    assert main([*args, "--format", "onnx", "--labels", str(labels)]) == 2
    assert "not a classifier" in capsys.readouterr().err


def test_keras_model_export_to_onnx_runs_after_importing_the_package(tiny_config, tmp_path, rng):
    """Keras' own ``model.export(..., format="onnx")``, trained and frozen, at tf2onnx's default
    opset: the FFT handlers registered by ``import cfconv_tf`` make a file onnxruntime runs."""
    trained = trained_tiny_model(tiny_config, "cf", (9, 10, 2), 3)
    images = rng.uniform(0, 255, (4, 9, 10, 2)).astype(np.float32)
    for name, model in (("trained", trained), ("frozen", freeze_model(trained))):
        expected = model(images).numpy()  # also marks the model as called, as Keras requires
        path = tmp_path / f"{name}.onnx"
        model.export(path, format="onnx", verbose=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: images})
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), name
        ops = {node.op_type for node in onnx.load(path).graph.node}
        assert not any("FFT" in op or op == "Bitcast" for op in ops), ops


def test_a_plain_import_registers_every_class_for_loading(tiny_config, tmp_path):
    from cfconv_tf.config import load_model_config
    from cfconv_tf.models import build_model
    from cfconv_tf.training import compile_model

    trained = trained_tiny_model(tiny_config.replace(generator="factorized"), "cf", (8, 8, 1), 3)
    trained.save(tmp_path / "trained.keras")
    freeze_model(trained).save(tmp_path / "frozen.keras")
    # a dense U-Net: its crop layer and its compiled loss are the package's own too
    unet_config = load_model_config("pathfinder_resnet").replace(stage_filters=(4, 6, 8))
    unet = build_model(unet_config, "spatial", (9, 11, 1), 2, dense=True)
    compile_model(unet, 2, 1e-3, dense=True)
    unet.save(tmp_path / "unet.keras")
    script = (
        "import sys, keras, cfconv_tf\n"
        "for path in sys.argv[1:]:\n"
        "    model = keras.models.load_model(path)\n"
        "    kinds = [type(layer).__name__ for layer in model.layers]\n"
        "    print(next(k for k in kinds if k.startswith(('CF', 'Frozen', 'Crop'))))\n"
        "    print(getattr(model.loss, '__name__', model.loss))\n"
    )
    paths = [str(tmp_path / f"{name}.keras") for name in ("trained", "frozen", "unet")]
    result = subprocess.run(
        [sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.split()
    assert lines[0::2] == ["CFConv2D", "FrozenSpectralConv2D", "CropToMatch"]
    assert lines[5] == "crossentropy_dice"
