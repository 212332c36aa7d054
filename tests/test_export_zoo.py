"""Models a user builds around CF-Conv layers, each through the whole export path.

Every model: a training step -> ``.keras`` round trip -> freeze -> SavedModel and ONNX in
every lowering -> TensorFlow and onnxruntime, each within 1e-4 of the trained Keras
model in inference mode (float16's epsilon for a float16 model), with the model's own
inputs and outputs in every export.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf
from conftest import fresh_seed, small_cf
from zoo_layers import SpectralBlock
from zoo_worker import EXPORTS

from cfconv_tf import CFConv2D, FrozenSpectralConv2D
from export.freeze import freeze_model
from export.onnx_export import build_onnx, save_onnx
from export.onnx_spectral import LOWERINGS
from export.parity import (
    HALF_PRECISION_EPSILON,
    TOLERANCE,
    keras_runner,
    random_inputs,
    relative_error,
    tolerance_for,
)
from export.savedmodel import write_savedmodel
from export.self_check import load_onnx, load_savedmodel
from export.signature import classifier_units, signature_of
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


def adapted_normalization() -> keras.Model:
    """An adapted ``Normalization`` (its state is finalized after loading) before a CF layer."""
    inputs = keras.Input((9, 8, 2), name="image")
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(0).uniform(0, 255, (16, 9, 8, 2)).astype(np.float32))
    x = cf(4)(norm(inputs))
    return keras.Model(inputs, softmax_head(3)(keras.layers.GlobalAveragePooling2D()(x)))


def fixed_normalization() -> keras.Model:
    """A ``Normalization`` given its mean and variance (eager constants in the graph)."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Normalization(mean=120.0, variance=75.0**2)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(cf(3)(x))
    return keras.Model(inputs, softmax_head(2)(x))


def keras_ops_residual() -> keras.Model:
    """``cf(x) + x``, ``keras.ops.sigmoid`` and ``keras.ops.mean`` on symbolic tensors."""
    inputs = keras.Input((10, 9, 1), name="image")
    x = keras.layers.Conv2D(4, 1)(keras.layers.Rescaling(1 / 255)(inputs))
    x = cf(4)(x) + x
    x = keras.ops.sigmoid(cf(4, activation=None)(x)) * x
    x = keras.ops.mean(x, axis=(1, 2))
    return keras.Model(inputs, softmax_head(3)(x))


def time_distributed() -> keras.Model:
    """A CF layer applied to every frame of a clip (``TimeDistributed``)."""
    inputs = keras.Input((3, 8, 7, 1), name="clip")
    x = keras.layers.TimeDistributed(cf(3))(inputs)
    x = keras.layers.TimeDistributed(keras.layers.GlobalAveragePooling2D())(x)
    return keras.Model(inputs, softmax_head(2)(keras.layers.Flatten()(x)))


def user_layer() -> keras.Model:
    """A registered layer of the user's that creates its own CF layer (zoo_layers)."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = SpectralBlock(3, name="block")(keras.layers.Rescaling(1 / 255)(inputs))
    return keras.Model(inputs, softmax_head(3)(keras.layers.GlobalAveragePooling2D()(x)))


def attention_after_cf() -> keras.Model:
    """CF features as tokens for multi-head self-attention."""
    inputs = keras.Input((6, 5, 2), name="image")
    x = cf(4)(keras.layers.Rescaling(1 / 255)(inputs))
    tokens = keras.layers.Reshape((30, 4))(x)
    x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)(tokens, tokens)
    return keras.Model(inputs, softmax_head(3)(keras.layers.GlobalAveragePooling1D()(x)))


def image_and_features() -> keras.Model:
    """An image and adapted-normalized numeric features, joined after a CF trunk."""
    image = keras.Input((8, 8, 1), name="image")
    features = keras.Input((5,), name="features")
    norm = keras.layers.Normalization()
    norm.adapt(np.random.default_rng(1).normal(3.0, 2.0, (32, 5)).astype(np.float32))
    x = keras.layers.GlobalAveragePooling2D()(cf(3)(keras.layers.Rescaling(1 / 255)(image)))
    x = keras.layers.Concatenate()([x, keras.layers.Dense(4, activation="relu")(norm(features))])
    return keras.Model([image, features], softmax_head(2)(x))


def image_and_category() -> keras.Model:
    """An image and an integer category id (an ``Embedding``), joined after a CF trunk."""
    image = keras.Input((7, 8, 2), name="image")
    category = keras.Input((1,), dtype="int32", name="category")
    x = keras.layers.GlobalAveragePooling2D()(cf(3)(keras.layers.Rescaling(1 / 255)(image)))
    embedded = keras.layers.Flatten()(keras.layers.Embedding(3, 4)(category))
    return keras.Model(
        [image, category], softmax_head(2)(keras.layers.Concatenate()([x, embedded]))
    )


def exact_gelu_and_celu() -> keras.Model:
    """Keras' exact GELU (``Erfc``) and ``celu`` (``Expm1``) as CF activations."""
    inputs = keras.Input((7, 9, 1), name="image")
    x = cf(3, activation="gelu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = cf(3, activation="celu")(x)
    return keras.Model(inputs, softmax_head(3)(keras.layers.GlobalAveragePooling2D()(x)))


def augmentation_in_front() -> keras.Model:
    """``RandomFlip`` before CF layers: a no-op in inference, flips while training."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = cf(3)(keras.layers.Rescaling(1 / 255)(x))
    return keras.Model(inputs, softmax_head(2)(keras.layers.GlobalAveragePooling2D()(x)))


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
    "adapted-normalization": (adapted_normalization, ["image"], CLASSIFIER),
    "fixed-normalization": (fixed_normalization, ["image"], CLASSIFIER),
    "keras-ops-residual": (keras_ops_residual, ["image"], CLASSIFIER),
    "time-distributed": (time_distributed, ["clip"], CLASSIFIER),
    "user-layer": (user_layer, ["image"], CLASSIFIER),
    "attention-after-cf": (attention_after_cf, ["image"], CLASSIFIER),
    "image-and-features": (image_and_features, ["image", "features"], CLASSIFIER),
    "image-and-category": (image_and_category, ["image", "category"], CLASSIFIER),
    "exact-gelu-and-celu": (exact_gelu_and_celu, ["image"], CLASSIFIER),
    "augmentation-in-front": (augmentation_in_front, ["image"], CLASSIFIER),
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
        "savedmodel": relative_error(load_savedmodel(tmp_path / "savedmodel").run(arrays), expected)
    }
    for lowering in sorted(LOWERINGS):
        folder = tmp_path / lowering
        folder.mkdir()
        path = save_onnx(build_onnx(frozen, signature, lowering), folder)
        graph = onnx.load(path).graph
        assert [value.name for value in graph.input] == inputs
        assert [value.name for value in graph.output] == outputs
        errors[lowering] = relative_error(load_onnx(path).run(arrays), expected)
    config = triton_config("m", signature)
    assert pbtxt_names(config, "input") == inputs
    assert pbtxt_names(config, "output") == outputs
    assert max(errors.values()) <= tolerance_for(trained), errors
    return errors


BATCHES = (1, 5)


@pytest.fixture(scope="module")
def zoo_exports(tmp_path_factory) -> tuple[Path, dict]:
    """Every zoo model trained here and saved as ``.keras`` with its sample inputs and
    the trained model's outputs on them; then exported every way by fresh processes
    (zoo_worker.py, one per core). Returns the folder and the workers' results."""
    folder = tmp_path_factory.mktemp("zoo")
    seed = fresh_seed()
    for offset, (name, (build, _, _)) in enumerate(sorted(ZOO.items())):
        rng = np.random.default_rng(seed + offset)
        keras.utils.set_random_seed((seed + offset) % 2**31)
        model = build()
        train_step(model, rng)
        model_dir = folder / name
        model_dir.mkdir()
        model.save(model_dir / "trained.keras")
        classes = classifier_units(model)
        names = [f"c{number}" for number in range(classes)] if classes else None
        if names:
            (model_dir / "labels.txt").write_text("\n".join(names) + "\n")
        signature = signature_of(model, names)
        run = keras_runner(model, signature)
        inputs, expected = {}, {}
        for batch in BATCHES:
            arrays = random_inputs(signature.inputs, batch, rng)
            outputs = run(arrays)
            inputs.update({f"{key}@{batch}": value for key, value in arrays.items()})
            expected.update({f"{key}@{batch}": value for key, value in outputs.items()})
        np.savez(model_dir / "inputs.npz", **inputs)
        np.savez(model_dir / "expected.npz", **expected)
    tests = Path(__file__).parent
    shards = min(2, os.cpu_count() or 1)
    workers = [
        subprocess.Popen(
            [sys.executable, str(tests / "zoo_worker.py"), str(folder), str(shard), str(shards)],
            cwd=tests,
        )
        for shard in range(shards)
    ]
    try:
        assert [worker.wait(timeout=1200) for worker in workers] == [0] * shards
    finally:  # a worker that failed or timed out does not leave the other running
        for worker in workers:
            worker.kill()
    results = {}
    for shard in range(shards):
        results.update(json.loads((folder / f"results-{shard}.json").read_text()))
    assert len(results) == len(ZOO) * len(EXPORTS)
    return folder, results


@pytest.mark.parametrize("export", sorted(EXPORTS))
@pytest.mark.parametrize("name", sorted(ZOO))
def test_model_exports_from_a_fresh_process_with_parity(name, export, zoo_exports):
    """.keras -> a fresh process -> every format and lowering, within the float32 bound."""
    folder, results = zoo_exports
    _, inputs, outputs = ZOO[name]
    result = results[f"{name}/{export}"]
    assert "error" not in result, result.get("error")
    if inputs:  # an in-memory Sequential's input is named by Keras
        assert sorted(result["inputs"]) == sorted(inputs)
    assert sorted(result["outputs"]) == sorted(outputs)
    expected = dict(np.load(folder / name / "expected.npz"))
    got = dict(np.load(folder / name / "outputs" / f"{export}.npz"))
    assert relative_error(got, expected) <= TOLERANCE
    if export == "triton":
        config = (folder / name / "triton" / "m" / "config.pbtxt").read_text()
        assert sorted(pbtxt_names(config, "output")) == sorted(outputs)


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
            relative_error(load_onnx(path).run(inputs), keras_runner(as_float, signature)(inputs))
            <= TOLERANCE
        )
