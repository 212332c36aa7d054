"""Exports check themselves; verify handles any export it is given; the CLI never shows
a traceback; users' own classes load through ``--import``."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from conftest import small_cf
from zoo_layers import SpectralBlock

from cfconv_tf.cli import main
from export.onnx_export import export_onnx
from export.parity import ReferenceOutputs, check_parity, reference_outputs
from export.pipeline import export_model, freeze_and_report, verify_exports
from export.self_check import LoadedExport, check_export
from export.signature import signature_of
from export.tensor_info import TensorInfo


def block_model() -> keras.Model:
    """A user layer that creates its CF layer in ``__init__``."""
    inputs = keras.Input((8, 8, 2), name="image")
    x = keras.layers.GlobalAveragePooling2D()(SpectralBlock(2, name="block")(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def adapted_model() -> keras.Model:
    inputs = keras.Input((8, 7, 1), name="image")
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(0).uniform(0, 255, (8, 8, 7, 1)).astype(np.float32))
    x = keras.layers.GlobalAveragePooling2D()(small_cf(3)(norm(inputs)))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))


def test_frozen_keras_file_of_an_adapted_normalization_is_exact(tmp_path, rng):
    model = adapted_model()
    model.save(tmp_path / "trained.keras")
    report = freeze_and_report(tmp_path / "trained.keras", tmp_path / "frozen.keras")
    assert report["parity"] <= 1e-6
    frozen = keras.saving.load_model(tmp_path / "frozen.keras")
    images = rng.uniform(0, 255, (3, 8, 7, 1)).astype(np.float32)
    expected = model(images, training=False).numpy()
    np.testing.assert_allclose(frozen(images).numpy(), expected, rtol=0, atol=1e-6)


def test_a_frozen_keras_file_that_would_load_unfrozen_is_refused(tmp_path):
    """The export path freezes in memory; a .keras file of it would rebuild the CF layer."""
    block_model().save(tmp_path / "trained.keras")
    with pytest.raises(
        ValueError, match=r"layers \[.block.\] create their CF layers in their own __init__"
    ):
        freeze_and_report(tmp_path / "trained.keras", tmp_path / "frozen.keras")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["trained.keras"]
    folder = export_model(tmp_path / "trained.keras", "onnx", tmp_path / "out", "block")
    assert (folder / "model.onnx").is_file()


def test_an_export_that_fails_its_check_leaves_nothing(tmp_path, monkeypatch):
    model = adapted_model()
    model.save(tmp_path / "trained.keras")

    def wrong(reference, candidate, what):
        raise ValueError(f"{what} does not compute what the Keras model does")

    monkeypatch.setattr(ReferenceOutputs, "check", wrong)
    for fmt in ("onnx", "savedmodel"):
        with pytest.raises(ValueError, match="does not compute"):
            export_model(tmp_path / "trained.keras", fmt, tmp_path / "out", "m")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    with pytest.raises(ValueError, match="does not compute"):
        export_onnx(model, tmp_path / "python")
    assert not (tmp_path / "python").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) in (
        ["trained.keras"],
        ["out", "trained.keras"],
    )


def test_an_export_with_other_inputs_is_refused(rng):
    model = adapted_model()
    signature = signature_of(model)
    extra = TensorInfo("functional/normalization/Sub/y:0", (1, 1, 1, 1), "float32")
    export = LoadedExport("the ONNX file x.onnx", (*signature.inputs, extra), lambda _: {})
    with pytest.raises(ValueError, match=r"x.onnx takes the inputs .*Sub/y:0.* but the model"):
        check_export(export, reference_outputs(model, signature))


def test_verify_compares_an_export_at_another_size_with_the_model_frozen_there(
    trained_runs, tmp_path
):
    run = trained_runs["cf"]
    folder = export_model(run, "onnx", tmp_path, "cf", source="mlp", input_size=(20, 24))
    report = verify_exports(run, [], [str(folder / "model.onnx")])
    kinds = [kind for kind in report.errors if "20x24" in kind]
    assert len(kinds) == 1 and not report.failures()
    assert set(report.errors[kinds[0]]) == {f"the ONNX file {folder / 'model.onnx'}"}


def test_verify_refuses_exports_of_other_models_and_corrupt_files(trained_runs, tmp_path):
    inputs = keras.Input((5,), name="features")
    other = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = export_onnx(other, tmp_path / "other")
    with pytest.raises(ValueError, match="not the model's .* at any input size"):
        verify_exports(trained_runs["cf"], [], [str(path)])
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07 not a protobuf")
    with pytest.raises(ValueError, match="onnxruntime cannot load the ONNX file"):
        verify_exports(trained_runs["cf"], [], [str(corrupt)])
    with pytest.raises(ValueError, match="TensorFlow cannot load the SavedModel"):
        verify_exports(trained_runs["cf"], [str(tmp_path / "nothing")], [])


def test_model_commands_answer_bad_input_with_a_message(trained_runs, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 not a keras archive")
    (tmp_path / "empty").mkdir()
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage")
    run = str(trained_runs["cf"])
    out = str(tmp_path / "out")
    commands = {
        "missing model": ["export", str(tmp_path / "nope"), "--format", "onnx", "--out", out],
        "corrupt model": ["export", str(corrupt), "--format", "savedmodel", "--out", out],
        "folder without a model": ["freeze", str(tmp_path / "empty"), "--out", out],
        "unimportable module": ["freeze", run, "--out", out, "--import", "no_such_module_x"],
        "state at another size": ["export", run, "--format", "onnx", "--out", out,
                                  "--input-size", "30"],
        "corrupt ONNX": ["verify", run, "--onnx", str(garbage)],
        "missing SavedModel": ["verify", run, "--savedmodel", str(tmp_path / "nothing")],
        "corrupt model to verify": ["verify", str(corrupt)],
        "corrupt model to inspect": ["inspect", str(corrupt), "--out", out],
        "output is a folder": ["freeze", run, "--out", str(tmp_path / "empty")],
    }  # fmt: skip
    for case, argv in commands.items():
        assert main(argv) == 2, case
        error = capsys.readouterr().err
        assert error.startswith(f"cfconv {argv[0]}: error: ") and "Traceback" not in error, case


def test_users_classes_load_through_the_import_option(tmp_path, monkeypatch):
    """In a fresh process, a model of the user's own layer loads only with --import."""
    (tmp_path / "my_layers.py").write_text(
        textwrap.dedent(
            """
            import keras

            @keras.saving.register_keras_serializable(package="mine")
            class Doubled(keras.layers.Layer):
                def call(self, inputs):
                    return 2.0 * inputs
            """
        )
    )
    script = textwrap.dedent(
        """
        import sys, keras
        sys.path.insert(0, ".")
        import cfconv_tf, my_layers
        inputs = keras.Input((6, 6, 1), name="image")
        x = my_layers.Doubled()(cfconv_tf.CFConv2D(2, samples=0.5, hidden_units=(4,))(inputs))
        keras.Model(inputs, x).save("model.keras")
        """
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=300)
    command = [sys.executable, "-m", "cfconv_tf.cli", "export", "model.keras"]
    command += ["--format", "onnx", "--out", "out", "--name", "m"]
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--import MODULE" in refused.stderr
    assert "Traceback" not in refused.stderr
    command += ["--import", "my_layers"]
    subprocess.run(command, cwd=tmp_path, check=True, timeout=300)
    assert (tmp_path / "out" / "m" / "1" / "model.onnx").is_file()


def test_not_a_number_and_wrong_shapes_never_pass_a_check():
    model = adapted_model()
    signature = signature_of(model)
    name = signature.outputs[0].name

    def outputs(fill, shape=None):
        return lambda arrays: {name: np.full(shape or (len(arrays["image"]), 2), fill, np.float32)}

    for fill, shape, match in (
        (np.nan, None, r"relative error inf"),
        (np.inf, None, r"relative error inf"),
        (0.5, (1, 2), r"has shape \(1, 2\), expected \(3, 2\)"),
    ):
        with pytest.raises(ValueError, match=match):
            check_parity(model, signature, outputs(fill, shape), "the candidate")
