"""Models a user builds around CF-Conv layers, each through the whole export path.

Every model: a training step -> ``.keras`` round trip -> freeze -> SavedModel and ONNX in
every lowering -> TensorFlow and onnxruntime, each within 1e-4 of the trained Keras
model in inference mode (float16's epsilon for a float16 model), with the model's own
inputs and outputs in every export.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf
from conftest import small_cf

from cfconv_tf import CFConv2D, FrozenSpectralConv2D
from export.freeze import freeze_model
from export.onnx_export import build_onnx, save_onnx
from export.onnx_spectral import LOWERINGS
from export.parity import (
    HALF_PRECISION_EPSILON,
    TOLERANCE,
    keras_runner,
    onnx_runner,
    random_inputs,
    relative_error,
    savedmodel_runner,
    tolerance_for,
)
from export.savedmodel import write_savedmodel
from export.signature import signature_of
from export.triton import triton_config


def cf(filters: int, activation: str | None = "relu", name: str | None = None) -> CFConv2D:
    """A small CF-Conv layer whose state starts at its generated kernel."""
    return small_cf(filters, activation, name, state_initializer="generator")


def softmax_head(units: int) -> keras.layers.Dense:
    # float32 output, as Keras recommends under mixed precision
    return keras.layers.Dense(units, activation="softmax", dtype="float32", name="head")


def pooled_strided(shape=(15, 15, 3)) -> keras.Model:
    """CF at 15x15 -> BatchNormalization -> pooling -> CF at 7x7 -> strided conv -> CF at 4x4."""
    inputs = keras.Input(shape, name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = cf(4)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.MaxPooling2D()(x)
    x = cf(4)(x)
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
    x = cf(3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, softmax_head(3)(x))


def residual_sigmoid() -> keras.Model:
    """``x + CF(x)`` on a non-square grid, binary sigmoid head."""
    inputs = keras.Input((12, 10, 2), name="image")
    x = keras.layers.Conv2D(4, 1)(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Add()([x, cf(4)(x)])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid", name="yes")(x))


def concatenated_branches() -> keras.Model:
    """Grayscale 9x11 with Rescaling: a CF branch and a 3x3 branch, concatenated, then
    CF -> per-image GroupNormalization -> ReLU (as ``normalization: layer`` builds)."""
    inputs = keras.Input((9, 11, 1), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    spectral = cf(3)(x)
    spatial = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(x)
    x = cf(4, activation=None)(keras.layers.Concatenate()([spectral, spatial]))
    x = keras.layers.ReLU()(keras.layers.GroupNormalization(groups=1)(x))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, softmax_head(4)(x))


def dropout_flatten_head() -> keras.Model:
    inputs = keras.Input((8, 8, 1), name="image")
    x = cf(3)(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.Flatten()(keras.layers.Dropout(0.3)(x))
    return keras.Model(inputs, softmax_head(5)(x))


def layer_norm_depthwise() -> keras.Model:
    inputs = keras.Input((10, 10, 3), name="image")
    x = cf(4)(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    x = cf(3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, softmax_head(2)(x))


def two_outputs() -> keras.Model:
    """A class and a score from one trunk: exported as the two outputs, no extras."""
    inputs = keras.Input((12, 12, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(cf(4)(keras.layers.Rescaling(1 / 255)(inputs)))
    kind = keras.layers.Dense(3, activation="softmax", name="kind")(x)
    score = keras.layers.Dense(1, name="score")(x)
    return keras.Model(inputs, [kind, score])


def dense_map() -> keras.Model:
    """A segmentation-like ``[N, H, W, k]`` output straight from a CF layer."""
    inputs = keras.Input((14, 9, 2), name="image")
    x = cf(4)(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, cf(2, activation=None, name="logits")(x))


def regression() -> keras.Model:
    inputs = keras.Input((10, 8, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(cf(3)(keras.layers.Rescaling(1 / 255)(inputs)))
    return keras.Model(inputs, keras.layers.Dense(1, name="value")(x))


def nested_shared_two_inputs() -> keras.Model:
    """Two inputs; a nested Sequential with a CF layer; a CF layer shared by two branches."""
    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((3,), name="meta")
    trunk = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Rescaling(1 / 255), cf(3)], name="trunk"
    )
    shared = cf(3, name="shared")
    features = trunk(image)
    left = keras.layers.GlobalAveragePooling2D()(shared(features))
    mixed = keras.layers.Conv2D(3, 1)(features)
    right = keras.layers.GlobalAveragePooling2D()(shared(mixed))
    x = keras.layers.Concatenate()([left, right, meta])
    return keras.Model([image, meta], softmax_head(2)(x))


def sequential_in_memory() -> keras.Model:
    """A Sequential model without an Input: built by calling it on data."""
    model = keras.Sequential([cf(3), keras.layers.GlobalAveragePooling2D(), softmax_head(3)])
    model(np.zeros((1, 8, 7, 2), np.float32))
    return model


def dict_inputs_embedding() -> keras.Model:
    """Inputs given as a dict; the output an embedding (pooled features, no activation)."""
    image = keras.Input((9, 9, 2), name="image")
    scale = keras.Input((1,), name="scale")
    x = keras.layers.GlobalAveragePooling2D()(cf(4)(keras.layers.Rescaling(1 / 255)(image)))
    embedding = keras.layers.Concatenate(name="embedding")([x, scale])
    return keras.Model({"image": image, "scale": scale}, embedding)


CLASSIFIER = ["head", "probabilities", "class_index"]
# name -> (builder, the export's input names, its output names)
ZOO: dict[str, tuple[Callable[[], keras.Model], list[str], list[str]]] = {
    "bn-pool-strided-odd": (pooled_strided, ["image"], CLASSIFIER),
    "residual-add-sigmoid": (residual_sigmoid, ["image"], ["yes", *CLASSIFIER[1:]]),
    "concatenate-grayscale": (concatenated_branches, ["image"], CLASSIFIER),
    "dropout-flatten": (dropout_flatten_head, ["image"], CLASSIFIER),
    "layernorm-depthwise": (layer_norm_depthwise, ["image"], CLASSIFIER),
    "two-outputs": (two_outputs, ["image"], ["kind", "score"]),
    "dense-output": (dense_map, ["image"], ["logits"]),
    "regression": (regression, ["image"], ["value"]),
    "nested-shared-two-inputs": (nested_shared_two_inputs, ["image", "meta"], CLASSIFIER),
    "dict-inputs-embedding": (dict_inputs_embedding, ["image", "scale"], ["embedding"]),
    "sequential-in-memory": (sequential_in_memory, [], CLASSIFIER),  # inputs named by Keras
}


def train_step(model: keras.Model, rng: np.random.Generator) -> None:
    """One epoch of two batches on random data (class targets for softmax outputs, else
    regression targets)."""
    inputs = random_inputs(signature_of(model).inputs, 8, rng)
    targets, losses = [], []
    for tensor in model.outputs:
        activation = getattr(tensor._keras_history.operation, "activation", None)
        if activation is keras.activations.softmax:
            targets.append(rng.integers(0, tensor.shape[-1], 8))
            losses.append("sparse_categorical_crossentropy")
        else:
            targets.append(rng.standard_normal((8, *tensor.shape[1:])).astype(np.float32))
            losses.append("mse")
    model.compile(optimizer="adam", loss=losses if len(losses) > 1 else losses[0])
    arrays = list(inputs.values())
    x = arrays[0] if len(arrays) == 1 else keras.tree.pack_sequence_as(model.input, arrays)
    y = targets if len(targets) > 1 else targets[0]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)


def pbtxt_names(config: str, section: str) -> list[str]:
    block = re.search(section + r" \[(.*?)\n\]", config, re.S).group(1)
    return re.findall(r'\bname: "([^"]+)"', block)


def check_exports(
    trained: keras.Model,
    tmp_path,
    rng,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
) -> dict:
    """``.keras`` round trip, freeze, every export; the exports take ``inputs`` and return
    ``outputs`` (when given). Returns the relative errors by runtime."""
    trained.save(tmp_path / "trained.keras")
    loaded = keras.models.load_model(tmp_path / "trained.keras")  # registered on import
    frozen = freeze_model(loaded)
    assert not any(isinstance(layer, CFConv2D) for layer in frozen._flatten_layers())
    assert any(isinstance(layer, FrozenSpectralConv2D) for layer in frozen._flatten_layers())
    classes = signature_of(frozen).outputs[0].shape[-1]
    signature = signature_of(frozen, [f"c{index}" for index in range(max(classes or 2, 2))])
    inputs = inputs or [info.name for info in signature.inputs]
    outputs = outputs or [info.name for info in signature.outputs]
    arrays = random_inputs(signature.inputs, 3, rng)
    expected = keras_runner(trained, signature)(arrays)

    write_savedmodel(frozen, signature, tmp_path / "savedmodel", {})
    saved = tf.saved_model.load(str(tmp_path / "savedmodel")).signatures["serving_default"]
    assert sorted(saved.structured_input_signature[1]) == sorted(inputs)
    assert sorted(saved.structured_outputs) == sorted(outputs)
    errors = {
        "savedmodel": relative_error(savedmodel_runner(tmp_path / "savedmodel")(arrays), expected)
    }
    for lowering in sorted(LOWERINGS):
        folder = tmp_path / lowering
        folder.mkdir()
        path = save_onnx(build_onnx(frozen, signature, lowering), folder)
        graph = onnx.load(path).graph
        assert [value.name for value in graph.input] == inputs
        assert [value.name for value in graph.output] == outputs
        errors[lowering] = relative_error(onnx_runner(path)(arrays), expected)
    config = triton_config("m", signature)
    assert pbtxt_names(config, "input") == inputs
    assert pbtxt_names(config, "output") == outputs
    assert max(errors.values()) <= tolerance_for(trained), errors
    return errors


@pytest.mark.parametrize("name", sorted(ZOO))
def test_model_trains_freezes_and_exports_with_parity(name, tmp_path, rng):
    keras.utils.set_random_seed(int(rng.integers(2**31)))
    build, inputs, outputs = ZOO[name]
    model = build()
    train_step(model, rng)
    assert tolerance_for(model) == TOLERANCE  # float32 throughout
    check_exports(model, tmp_path, rng, inputs or None, outputs)


def test_classifier_extras_only_for_classifiers_with_names():
    classifier, scores = pooled_strided(), two_outputs()
    named = signature_of(classifier, ["a", "b", "c"])
    assert [info.name for info in named.outputs] == CLASSIFIER
    assert named.outputs[-1].dtype == "int64" and named.outputs[-1].shape == (None,)
    assert [info.name for info in signature_of(classifier).outputs] == ["head"]
    assert signature_of(dict_inputs_embedding(), ["a", "b"]).class_names is None
    assert [info.name for info in signature_of(scores, ["a", "b", "c"]).outputs] == [
        "kind",
        "score",
    ]
    assert signature_of(regression(), ["a", "b"]).class_names is None
    sigmoid = signature_of(residual_sigmoid(), ["no", "yes"])
    assert sigmoid.outputs[1].name == "probabilities" and sigmoid.outputs[1].shape == (None, 2)
    with pytest.raises(ValueError, match="2 class names for a 3-class model"):
        signature_of(classifier, ["a", "b"])


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_model_trains_freezes_and_exports(policy, tmp_path, rng):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = pooled_strided((12, 11, 3))
        train_step(model, rng)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    spectral = [layer for layer in model.layers if isinstance(layer, CFConv2D)]
    assert {layer.dtype_policy.name for layer in spectral} == {policy}
    assert {layer.state_real.dtype for layer in spectral} == {"float32"}
    frozen = freeze_model(model)
    kept = [layer for layer in frozen.layers if isinstance(layer, FrozenSpectralConv2D)]
    assert {layer.dtype_policy.name for layer in kept} == {policy}
    compute = policy.removeprefix("mixed_")
    assert frozen.get_layer(kept[0].name).output.dtype == compute
    if policy == "mixed_float16":
        # TensorFlow and onnxruntime round the float16 graph at different points
        assert tolerance_for(model) == HALF_PRECISION_EPSILON["float16"] > TOLERANCE
        check_exports(model, tmp_path, rng)
    else:  # onnxruntime has no bfloat16 kernels on CPU: a clear error, then float32
        with pytest.raises(ValueError, match="bfloat16.*dtype='float32'"):
            build_onnx(frozen, signature_of(frozen))
        as_float = freeze_model(model, dtype="float32")
        signature = signature_of(as_float)
        folder = tmp_path / "float32"
        folder.mkdir()
        path = save_onnx(build_onnx(as_float, signature), folder)
        inputs = random_inputs(signature.inputs, 3, rng)
        # against the float32 computation of the same weights
        assert (
            relative_error(onnx_runner(path)(inputs), keras_runner(as_float, signature)(inputs))
            <= TOLERANCE
        )
