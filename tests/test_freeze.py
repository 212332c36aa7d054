"""Freezing: constant kernels from the state or the MLPs, at the trained or a new size."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cf, trained_tiny_model

from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.layers import CFConv2D
from cfconv_tf.spectral import hermitian_project
from export.freeze import freeze_model
from export.signature import signature_of


@pytest.mark.parametrize("shape", [(9, 8, 1), (8, 8, 3), (7, 11, 2)])
def test_state_freeze_computes_the_trained_inference_function(tiny_config, shape, rng):
    model = trained_tiny_model(tiny_config, "cf", shape, 3)
    frozen = freeze_model(model)
    assert not any(isinstance(layer, CFConv2D) for layer in frozen.layers)
    assert not frozen.trainable_weights[: -2 * (len(tiny_config.dense_units) + 1)]
    images = rng.uniform(0, 255, (5, *shape)).astype(np.float32)
    np.testing.assert_allclose(frozen(images).numpy(), model(images).numpy(), rtol=1e-6)
    for layer in frozen.layers:
        if isinstance(layer, FrozenSpectralConv2D):  # stored already Hermitian-projected
            projected = hermitian_project(layer.kernel_real, layer.kernel_imag, shape[1])
            np.testing.assert_array_equal(projected[0].numpy(), layer.kernel_real.numpy())
            np.testing.assert_array_equal(projected[1].numpy(), layer.kernel_imag.numpy())


def test_mlp_freeze_at_training_size_reproduces_the_generated_kernel(tiny_config, rng):
    """With dense updates the state *is* the MLP output: mlp freezing must equal it."""
    model = trained_tiny_model(tiny_config.replace(samples=1.0), "cf", (10, 7, 2), 4)
    frozen = freeze_model(model, source="mlp")
    for layer in model.layers:
        if isinstance(layer, CFConv2D):
            # Equal up to float32 rounding: matmuls blocked differently (chunk size,
            # threads) round differently, by a few units in the last place of the
            # largest partial sums, so the bound is relative to the kernel's magnitude.
            chunked = [
                generator.kernel(layer.kernel_shape, chunk_size=7) * layer.generator_scale
                for generator in (layer.real_generator, layer.imag_generator)
            ]
            assert_equal_to_rounding(chunked[0], layer.state_real)
            assert_equal_to_rounding(chunked[1], layer.state_imag)
            expected = hermitian_project(layer.state_real, layer.state_imag, 7)
            target = frozen.get_layer(layer.name)
            assert_equal_to_rounding(target.kernel_real, expected[0])
            assert_equal_to_rounding(target.kernel_imag, expected[1])
    images = rng.uniform(0, 255, (3, 10, 7, 2)).astype(np.float32)
    assert_equal_to_rounding(frozen(images), model(images))


def assert_equal_to_rounding(actual, expected, units: float = 100) -> None:
    """``actual`` equals ``expected`` up to ``units`` float32 epsilons of its largest
    magnitude (float32 rounding of differently ordered sums)."""
    expected = np.asarray(expected, np.float64)
    bound = units * np.finfo(np.float32).eps * np.abs(expected).max()
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=0, atol=bound)


def test_mlp_freeze_at_a_new_size_samples_the_same_continuous_kernel(tiny_config, rng):
    model = trained_tiny_model(tiny_config, "cf", (9, 9, 1), 3)
    frozen = freeze_model(model, source="mlp", input_size=(21, 16))
    assert tuple(frozen.inputs[0].shape[1:]) == (21, 16, 1)
    assert frozen(rng.uniform(0, 255, (2, 21, 16, 1)).astype(np.float32)).shape == (2, 3)
    layer, target = model.get_layer("cfconv_1"), frozen.get_layer("cfconv_1")
    assert target.kernel_real.shape == (21, 9, 6, 6)
    # The MLP evaluated on a normalized grid built independently with numpy.
    axes = [np.arange(n) / (n - 1) for n in (21, 9, 6, 6)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 4)
    raw_real = layer.real_generator(tf.constant(grid, tf.float32)).numpy().reshape(21, 9, 6, 6)
    raw_imag = layer.imag_generator(tf.constant(grid, tf.float32)).numpy().reshape(21, 9, 6, 6)
    expected = hermitian_project(tf.constant(raw_real), tf.constant(raw_imag), 16)
    np.testing.assert_allclose(target.kernel_real.numpy(), expected[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(target.kernel_imag.numpy(), expected[1].numpy(), atol=1e-6)
    # The far corner has coordinates (1, 1, 1, 1) at every size.
    np.testing.assert_allclose(
        raw_real[-1, -1, -1, -1], layer.generate_kernel()[0].numpy()[-1, -1, -1, -1], rtol=1e-6
    )


def test_mlp_freeze_of_a_factorized_generator_at_a_new_size(tiny_config, rng):
    config = tiny_config.replace(generator="factorized", generator_rank=4, fourier_bands=2)
    model = trained_tiny_model(config, "cf", (9, 9, 1), 3)
    frozen = freeze_model(model, source="mlp", input_size=(21, 16))
    assert frozen(rng.uniform(0, 255, (2, 21, 16, 1)).astype(np.float32)).shape == (2, 3)
    layer, target = model.get_layer("cfconv_1"), frozen.get_layer("cfconv_1")
    raw = [
        generator.kernel((21, 9, 6, 6)) * layer.generator_scale
        for generator in (layer.real_generator, layer.imag_generator)
    ]
    expected = hermitian_project(*raw, 16)
    np.testing.assert_allclose(target.kernel_real.numpy(), expected[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(target.kernel_imag.numpy(), expected[1].numpy(), atol=1e-6)
    # at the trained size, a state freeze computes what the trained model computes
    images = rng.uniform(0, 255, (3, 9, 9, 1)).astype(np.float32)
    np.testing.assert_allclose(
        freeze_model(model)(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-6
    )


def test_frozen_model_saves_and_loads(tiny_config, tmp_path, rng):
    frozen = freeze_model(trained_tiny_model(tiny_config, "cf", (8, 9, 1), 2))
    frozen.save(tmp_path / "frozen.keras")
    loaded = keras.saving.load_model(tmp_path / "frozen.keras")
    images = rng.uniform(0, 255, (3, 8, 9, 1)).astype(np.float32)
    np.testing.assert_array_equal(loaded(images).numpy(), frozen(images).numpy())
    # Frozen models freeze again to themselves (export accepts both kinds).
    np.testing.assert_array_equal(freeze_model(loaded)(images).numpy(), frozen(images).numpy())


def test_spatial_models_freeze_at_any_size(tiny_config, rng):
    model = trained_tiny_model(tiny_config, "spatial", (8, 8, 1), 3)
    frozen = freeze_model(model, input_size=(12, 10))
    assert frozen(rng.uniform(0, 255, (2, 12, 10, 1)).astype(np.float32)).shape == (2, 3)


def test_bad_freeze_requests_are_rejected(tiny_config):
    model = trained_tiny_model(tiny_config, "cf", (8, 8, 1), 3)
    with pytest.raises(ValueError, match="unknown kernel source"):
        freeze_model(model, source="average")
    expected = "cfconv_0: .* 8x8 grid .* now sees 12x12; freeze with source='mlp'"
    with pytest.raises(ValueError, match=expected):
        freeze_model(model, input_size=(12, 12))
    with pytest.raises(ValueError, match="input size"):
        freeze_model(model, source="mlp", input_size=(0, 12))


def pooled_model(head: str = "pool") -> keras.Model:
    """CF at 16x12 -> 2x2 pooling -> CF at 8x6 -> a pooled or a flattened head."""
    inputs = keras.Input((16, 12, 1), name="image")
    x = small_cf(3, name="outer")(inputs)
    x = small_cf(3, name="inner")(keras.layers.MaxPooling2D()(x))
    if head == "pool":
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:
        x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))


def test_each_layer_freezes_on_its_own_grid_at_a_new_input_size(rng):
    model = pooled_model()
    model(rng.uniform(0, 255, (2, 16, 12, 1)).astype(np.float32), training=True)
    same = freeze_model(model)  # at the trained size, from the state: no re-sampling
    assert same.get_layer("inner").input_size == (8, 6)
    frozen = freeze_model(model, source="mlp", input_size=(32, 24))
    assert frozen.get_layer("outer").input_size == (32, 24)
    assert frozen.get_layer("inner").input_size == (16, 12)  # scaled like the input
    for name in ("outer", "inner"):
        grid = frozen.get_layer(name).input_size
        expected = model.get_layer(name).inference_kernel("mlp", grid)
        for got, want in zip(frozen.get_layer(name).get_weights(), expected, strict=True):
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-7)
    assert frozen(rng.uniform(0, 255, (2, 32, 24, 1)).astype(np.float32)).shape == (2, 2)


def test_sizes_a_model_cannot_take_are_refused_naming_the_layer(rng):
    flattened = pooled_model("flatten")
    with pytest.raises(ValueError, match=r"head cannot take the inputs it sees .*\(None, 576\)"):
        freeze_model(flattened, source="mlp", input_size=(32, 24))
    with pytest.raises(ValueError, match="outer: .* 16x12 grid .* now sees 32x24"):
        freeze_model(pooled_model(), input_size=(32, 24))
    image, other = keras.Input((8, 8, 1)), keras.Input((8, 8, 1))
    two = keras.Model([image, other], keras.layers.Add()([small_cf(1)(image), other]))
    with pytest.raises(ValueError, match="one image input"):
        freeze_model(two, source="mlp", input_size=(16, 16))


def test_shared_layers_stay_shared_and_nested_models_freeze(rng):
    shared = small_cf(2, name="shared")
    inner_input = keras.Input((6, 6, 2))
    inner = keras.Model(inner_input, small_cf(2, name="nested")(inner_input), name="block")
    inputs = keras.Input((6, 6, 2), name="image")
    left, right = shared(inputs), shared(inner(inputs))
    model = keras.Model(inputs, keras.layers.Concatenate()([left, right]))
    images = rng.uniform(0, 1, (3, 6, 6, 2)).astype(np.float32)
    frozen = freeze_model(model)
    spectral = [
        layer for layer in frozen._flatten_layers() if isinstance(layer, FrozenSpectralConv2D)
    ]
    assert sorted(layer.name for layer in spectral) == ["nested", "shared"]
    np.testing.assert_allclose(frozen(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-6)


@keras.saving.register_keras_serializable(package="cfconv_tests")
class Block(keras.Model):
    """A subclassed model holding a CF layer (registered, so Keras can copy it)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.spectral = small_cf(2)

    def call(self, inputs):
        return self.spectral(inputs)


class UnregisteredBlock(Block):
    """The same, unknown to Keras' registry."""


def test_subclassed_models_freeze_inside_a_functional_model_not_alone(rng):
    alone = Block()
    alone(np.zeros((1, 6, 6, 1), np.float32))
    with pytest.raises(ValueError, match="subclassed keras.Model.*Functional"):
        freeze_model(alone)
    inputs = keras.Input((6, 6, 1))
    nested = keras.Model(inputs, Block()(inputs))
    frozen = freeze_model(nested)  # checked against the trained model inside
    assert not any(isinstance(layer, CFConv2D) for layer in frozen._flatten_layers())
    assert not any(isinstance(layer, FrozenSpectralConv2D) for layer in nested._flatten_layers())
    images = rng.uniform(0, 1, (2, 6, 6, 1)).astype(np.float32)
    assert_equal_to_rounding(frozen(images), nested(images, training=False))
    unregistered = keras.Model(inputs, UnregisteredBlock()(inputs))
    with pytest.raises(ValueError, match="register_keras_serializable"):
        freeze_model(unregistered)


def test_a_dtype_policy_for_every_layer(rng):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = pooled_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    frozen = freeze_model(model, dtype="float32")
    assert {layer.dtype_policy.name for layer in frozen.layers[1:]} == {"float32"}
    kept = freeze_model(model)
    assert {layer.dtype_policy.name for layer in kept.layers[1:]} == {"mixed_float16"}
    assert kept.outputs[0].dtype == "float16" and frozen.outputs[0].dtype == "float32"


def test_freeze_report_of_a_two_image_model_saves_and_reports_no_sizes(tmp_path):
    from export.pipeline import freeze_and_report

    left, right = keras.Input((8, 8, 1), name="left"), keras.Input((8, 8, 1), name="right")
    merged = keras.layers.Add()([small_cf(1)(left), right])
    keras.Model([left, right], merged).save(tmp_path / "two.keras")
    report = freeze_and_report(tmp_path / "two.keras", tmp_path / "frozen.keras")
    assert "trained_size" not in report and (tmp_path / "frozen.keras").is_file()


def test_every_layer_but_the_cf_layers_is_the_trained_models_own(rng):
    inputs = keras.Input((8, 8, 1), name="image")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(rng.uniform(0, 255, (8, 8, 8, 1)).astype(np.float32))
    x = small_cf(3, name="cf")(norm(inputs))
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.ops.mean(x + small_cf(3, name="cf2")(x), axis=(1, 2))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    frozen = freeze_model(model)
    for name in ("norm", "bn", "head"):
        assert frozen.get_layer(name) is model.get_layer(name)
    assert isinstance(frozen.get_layer("cf"), FrozenSpectralConv2D)
    assert isinstance(model.get_layer("cf"), CFConv2D)  # the trained model is unchanged


def test_a_nested_model_without_cf_layers_follows_a_new_input_size(rng):
    backbone_input = keras.Input((16, 12, 1))
    features = keras.layers.Conv2D(2, 3, padding="same")(backbone_input)
    backbone = keras.Model(backbone_input, features, name="backbone")
    inputs = keras.Input((16, 12, 1), name="image")
    x = keras.layers.GlobalAveragePooling2D()(small_cf(2, name="cf")(backbone(inputs)))
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    frozen = freeze_model(model, source="mlp", input_size=(32, 20))
    assert frozen.get_layer("cf").input_size == (32, 20)
    assert frozen(rng.uniform(0, 255, (2, 32, 20, 1)).astype(np.float32)).shape == (2, 2)


@keras.saving.register_keras_serializable(package="cfconv_tests")
class Branches(keras.layers.Layer):
    """CF layers in a list and a dict of a user's layer, summed."""

    def __init__(self, filters: int = 2, **kwargs) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.listed = [small_cf(filters), small_cf(filters)]
        self.named = {"extra": small_cf(filters)}

    def call(self, inputs, training=None):
        outputs = [layer(inputs, training=training) for layer in self.listed]
        return keras.ops.sum(keras.ops.stack(outputs), 0) + self.named["extra"](inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters}


def test_cf_layers_in_a_users_lists_and_dicts_freeze_and_keep_their_grid(rng):
    inputs = keras.Input((6, 7, 2), name="image")
    x = keras.layers.GlobalAveragePooling2D()(Branches()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    frozen = freeze_model(model)  # checked against the trained model inside
    inner = [layer for layer in frozen._flatten_layers() if isinstance(layer, FrozenSpectralConv2D)]
    assert len(inner) == 3
    assert not any(isinstance(layer, CFConv2D) for layer in frozen._flatten_layers())
    assert [info.name for info in signature_of(frozen).outputs] == ["head"]
    assert isinstance(model.layers[1].listed[0], CFConv2D)  # swapped on a copy
    with pytest.raises(
        ValueError, match=r"branches.* cannot take the inputs .*\(None, 12, 14, 2\)"
    ):
        freeze_model(model, source="mlp", input_size=(12, 14))


def test_a_dtype_policy_rebuilds_each_layers_constants_in_it():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((6, 6, 1), name="image")
        x = keras.layers.Normalization(mean=120.3, variance=9.0, name="norm")(inputs)
        model = keras.Model(inputs, small_cf(2, name="cf")(x))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert float(model.get_layer("norm").mean.numpy().ravel()[0]) == 120.3125  # float16
    frozen = freeze_model(model, dtype="float32")
    mean = frozen.get_layer("norm").mean
    assert mean.dtype == "float32" and float(np.ravel(mean)[0]) == pytest.approx(120.3, abs=1e-5)
