"""CFConv2D: the sparse scatter update, its gradients, serialization, bad input."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from cfconv_tf.generator import CoordinateMLP
from cfconv_tf.layers import CFConv2D
from cfconv_tf.sampling import draw_positions
from cfconv_tf.spectral import hermitian_project, spectral_conv2d

INPUT_SHAPE = (2, 9, 8, 3)  # odd height, even width, Cin != Cout
GENERATORS = ("coordinate_mlp", "factorized")


def make_layer(**overrides) -> CFConv2D:
    options = {"filters": 4, "samples": 50, "hidden_units": (8, 8), "seed": 3}
    options.update(overrides)
    layer = CFConv2D(**options)
    layer.build(INPUT_SHAPE)
    return layer


def next_positions(layer: CFConv2D) -> tuple[np.ndarray, np.ndarray]:
    """The positions the layer's next training call will draw (its current seed)."""
    seed = tf.convert_to_tensor(layer.sampler_state)
    positions, is_first = draw_positions(layer.sample_count, layer.kernel_size, seed)
    return positions.numpy(), is_first.numpy()


def generated_values(layer: CFConv2D, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both generators' unscaled values at ``positions``."""
    positions = tf.constant(positions, tf.int64)
    return tuple(
        generator.values(positions, layer.kernel_shape).numpy()
        for generator in (layer.real_generator, layer.imag_generator)
    )


def state(layer: CFConv2D) -> tuple[np.ndarray, np.ndarray]:
    return layer.state_real.numpy().copy(), layer.state_imag.numpy().copy()


@pytest.mark.parametrize("generator", GENERATORS)
def test_training_step_writes_exactly_the_sampled_positions(generator, rng):
    layer = make_layer(generator=generator)
    x = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    before = state(layer)
    positions, _ = next_positions(layer)
    layer(x, training=True)
    after = state(layer)
    sampled = np.zeros(layer.kernel_size, bool)
    sampled[positions] = True
    expected = generated_values(layer, np.flatnonzero(sampled))
    for old, new, values in zip(before, after, expected, strict=True):
        old, new = old.reshape(-1), new.reshape(-1)
        changed = np.flatnonzero(old != new)
        assert len(changed) <= layer.sample_count
        assert set(changed) <= set(np.flatnonzero(sampled))
        np.testing.assert_array_equal(new[~sampled], old[~sampled])
        np.testing.assert_allclose(new[sampled], values, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("samples", [50, 1.0])  # sparse (scatter) and dense (no scatter)
def test_update_rate_blends_towards_generated_values(samples, rng):
    layer = make_layer(update_rate=0.25, samples=samples)
    before = state(layer)
    positions, _ = next_positions(layer)
    layer(rng.standard_normal(INPUT_SHAPE).astype(np.float32), training=True)
    unique = np.unique(positions)
    for old, new, values in zip(before, state(layer), generated_values(layer, unique), strict=True):
        expected = old.reshape(-1)[unique] + 0.25 * (values - old.reshape(-1)[unique])
        np.testing.assert_allclose(new.reshape(-1)[unique], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("generator", GENERATORS)
def test_dense_samples_regenerate_the_whole_kernel(generator, rng):
    layer = make_layer(samples=1.0, generator=generator)
    assert layer.sample_count == layer.kernel_size
    layer(rng.standard_normal(INPUT_SHAPE).astype(np.float32), training=True)
    values = generated_values(layer, np.arange(layer.kernel_size))
    for current, expected in zip(state(layer), values, strict=True):
        np.testing.assert_allclose(current.reshape(-1), expected, rtol=1e-6, atol=1e-7)


def test_inference_call_changes_nothing_and_uses_the_state(rng):
    layer = make_layer()
    x = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    before = state(layer)
    sampler_before = layer.sampler_state.numpy().copy()
    y = layer(x, training=False).numpy()
    for old, new in zip(before, state(layer), strict=True):
        np.testing.assert_array_equal(old, new)
    np.testing.assert_array_equal(layer.sampler_state.numpy(), sampler_before)
    kr, ki = hermitian_project(tf.constant(before[0]), tf.constant(before[1]), INPUT_SHAPE[2])
    np.testing.assert_allclose(y, spectral_conv2d(tf.constant(x), kr, ki).numpy(), atol=1e-5)


@pytest.mark.parametrize("generator", GENERATORS)
@pytest.mark.parametrize("kernel_gradient", ["full", "sampled"])
def test_gradient_reaches_the_mlps_only_through_the_sampled_values(kernel_gradient, generator, rng):
    """The layer's gradient == dL/dK at the sampled positions, chained through the
    generators, with the full kernel gradient and with the one taken only at the sampled
    entries."""
    # duplicates are likely among 60 draws of 540
    layer = make_layer(samples=60, kernel_gradient=kernel_gradient, generator=generator)
    x = tf.constant(rng.standard_normal(INPUT_SHAPE).astype(np.float32))
    target = tf.constant(rng.standard_normal(INPUT_SHAPE[:3] + (4,)).astype(np.float32))
    positions, _ = next_positions(layer)
    old_real, old_imag = (tf.constant(s) for s in state(layer))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((layer(x, training=True) - target) ** 2)
    weights = layer.trainable_weights
    grads = tape.gradient(loss, weights)
    assert all(g is not None for g in grads)
    for part in (layer.real_generator, layer.imag_generator):
        norms = [
            float(tf.norm(tf.convert_to_tensor(g)))
            for g, w in zip(grads, weights, strict=True)
            if w.path.startswith(part.path)
        ]
        assert norms and sum(norms) > 0

    # Reference: gradient of the loss w.r.t. a full kernel tensor, gathered at the
    # distinct sampled positions and pulled back through the MLPs.
    unique = tf.constant(np.unique(positions), tf.int64)
    new_real = tf.tensor_scatter_nd_update(
        tf.reshape(old_real, [-1]),
        unique[:, None],
        layer.real_generator.values(unique, layer.kernel_shape),
    )
    new_imag = tf.tensor_scatter_nd_update(
        tf.reshape(old_imag, [-1]),
        unique[:, None],
        layer.imag_generator.values(unique, layer.kernel_shape),
    )
    kernels = [tf.reshape(new_real, layer.kernel_shape), tf.reshape(new_imag, layer.kernel_shape)]
    with tf.GradientTape() as kernel_tape:
        kernel_tape.watch(kernels)
        projected = hermitian_project(*kernels, INPUT_SHAPE[2])
        reference_loss = tf.reduce_sum((spectral_conv2d(x, *projected) - target) ** 2)
    kernel_grads = kernel_tape.gradient(reference_loss, kernels)
    np.testing.assert_allclose(float(reference_loss), float(loss), rtol=1e-5)
    for part, kernel_grad in zip(
        (layer.real_generator, layer.imag_generator), kernel_grads, strict=True
    ):
        with tf.GradientTape() as mlp_tape:
            values = part.values(unique, layer.kernel_shape)
        expected = mlp_tape.gradient(
            values,
            part.trainable_weights,
            output_gradients=tf.gather(tf.reshape(kernel_grad, [-1]), unique),
        )
        actual = [g for g, w in zip(grads, weights, strict=True) if w.path.startswith(part.path)]
        assert len(actual) == len(expected)
        for got, want in zip(actual, expected, strict=True):
            got = tf.convert_to_tensor(got)  # a gathered table's gradient is sparse
            want = tf.convert_to_tensor(want)
            np.testing.assert_allclose(
                got.numpy(),
                want.numpy(),
                rtol=1e-4,
                atol=1e-5 * float(tf.reduce_max(tf.abs(want))) + 1e-7,
            )


@pytest.mark.parametrize(
    "options",
    [
        {"update_rate": 0.5, "activation": "relu"},
        {"kernel_scale": "auto", "state_initializer": "generator"},
        {"fourier_bands": 3, "kernel_scale": 0.5},
        {"generator_initializer": "he_normal", "kernel_scale": "auto"},
        {"kernel_gradient": "sampled", "update_rate": 0.5},
        {"recompute_generators": True},
        {"generator": "factorized", "generator_rank": 3, "fourier_bands": 2},
        {"generator": "factorized", "samples": 1.0, "kernel_scale": "auto"},
    ],
)
def test_config_round_trip_gives_same_outputs(options, rng):
    layer = make_layer(**options)
    x = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    layer(x, training=True)
    config = layer.get_config()
    clone = CFConv2D.from_config(config)
    clone.build(INPUT_SHAPE)
    assert clone.get_config() == config
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())


@pytest.mark.parametrize("generator", GENERATORS)
def test_symbolic_and_eager_calls_and_keras_save_load(generator, tmp_path, rng):
    inputs = keras.Input(INPUT_SHAPE[1:])
    outputs = CFConv2D(
        4, samples=30, generator=generator, hidden_units=(8,), activation="relu", name="cf"
    )(inputs)
    assert tuple(outputs.shape) == (None, 9, 8, 4)
    model = keras.Model(inputs, outputs)
    x = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    model(x, training=True)  # move the state away from its initial values
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        loaded.get_layer("cf").state_real.numpy(), model.get_layer("cf").state_real.numpy()
    )
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())


@pytest.mark.parametrize(
    ("kernel_gradient", "generator"),
    [("auto", "coordinate_mlp"), ("sampled", "coordinate_mlp"), ("auto", "factorized")],
)
def test_fit_step_updates_state_and_weights(kernel_gradient, generator, rng):
    model = keras.Sequential(
        [
            keras.Input(INPUT_SHAPE[1:]),
            CFConv2D(
                4,
                samples=30,
                hidden_units=(8,),
                activation="relu",
                kernel_gradient=kernel_gradient,
                generator=generator,
                name="cf",
            ),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1),
        ]
    )
    model.compile("adam", "mse")
    layer = model.get_layer("cf")
    before = state(layer)
    weights_before = [w.numpy().copy() for w in layer.trainable_weights]
    x = rng.standard_normal((8,) + INPUT_SHAPE[1:]).astype(np.float32)
    model.fit(x, rng.standard_normal((8, 1)), batch_size=4, epochs=1, verbose=0)
    changed = np.count_nonzero(layer.state_real.numpy() != before[0])
    assert 0 < changed <= 2 * layer.sample_count  # two steps of at most 30 writes
    assert any(
        not np.array_equal(a, w.numpy())
        for a, w in zip(weights_before, layer.trainable_weights, strict=True)
    )


def test_a_non_trainable_layer_keeps_its_state_under_fit(rng):
    """``trainable = False`` (a frozen backbone) stops sampling and writes; the trainable
    CF layer beside it still trains."""
    frozen, trained = (
        CFConv2D(3, samples=30, hidden_units=(8,), activation="relu", name=name)
        for name in ("backbone", "trained")
    )
    model = keras.Sequential(
        [
            keras.Input(INPUT_SHAPE[1:]),
            frozen,
            trained,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(1),
        ]
    )
    frozen.trainable = False
    model.compile("adam", "mse")
    kept = [w.numpy().copy() for w in frozen.weights]  # state, sampler, generators
    before = state(trained)
    x = rng.standard_normal((8,) + INPUT_SHAPE[1:]).astype(np.float32)
    model.fit(x, rng.standard_normal((8, 1)), batch_size=4, epochs=1, verbose=0)
    for old, new in zip(kept, frozen.weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())
    assert np.count_nonzero(trained.state_real.numpy() != before[0]) > 0


def test_augmentation_in_front_makes_a_bare_call_a_training_call(rng):
    """Keras resolves ``training`` from the first layer whose call defaults it: behind
    ``RandomFlip`` a bare ``model(x)`` writes the state, ``training=False`` does not."""
    layer = CFConv2D(3, samples=30, hidden_units=(8,), name="cf")
    model = keras.Sequential(
        [keras.Input(INPUT_SHAPE[1:]), keras.layers.RandomFlip("horizontal"), layer]
    )
    x = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    before = state(layer)
    model(x, training=False)
    np.testing.assert_array_equal(layer.state_real.numpy(), before[0])
    model(x)
    assert np.count_nonzero(layer.state_real.numpy() != before[0]) > 0


def test_paper_initialization_is_uniform_minus_one_to_one():
    layer = CFConv2D(8, samples=10, seed=0)
    layer.build((None, 16, 16, 8))
    for part in (layer.state_real, layer.state_imag):
        values = part.numpy()
        assert values.shape == (16, 9, 8, 8)
        assert -1.0 <= values.min() < -0.95 and 0.95 < values.max() <= 1.0
        assert abs(values.mean()) < 0.05 and abs(values.var() - 1 / 3) < 0.02
        assert not part.trainable and part.dtype == "float32"
    # Real and imaginary parts are independent draws (a correlation of a few 1e-2 at
    # most for 9216 entries), not one seeded initializer called twice.
    real, imag = layer.state_real.numpy().ravel(), layer.state_imag.numpy().ravel()
    assert abs(np.corrcoef(real, imag)[0, 1]) < 0.05


def test_saved_model_continues_the_same_sequence_of_draws(tmp_path, rng):
    """The sampler's step counter is a weight: a reloaded model draws what it would have."""
    inputs = keras.Input(INPUT_SHAPE[1:])
    outputs = CFConv2D(4, samples=30, hidden_units=(8,), seed=int(rng.integers(2**20)))(inputs)
    model = keras.Model(inputs, outputs)
    x = rng.standard_normal(INPUT_SHAPE).astype(np.float32)
    for _ in range(3):
        model(x, training=True)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    layer, clone = model.layers[-1], loaded.layers[-1]
    assert clone.sampler_state.numpy()[1] == 3
    np.testing.assert_array_equal(next_positions(clone)[0], next_positions(layer)[0])
    model(x, training=True)
    loaded(x, training=True)
    np.testing.assert_array_equal(clone.state_real.numpy(), layer.state_real.numpy())


def test_fraction_and_count_resolve_against_kernel_size():
    assert make_layer(samples=0.1).sample_count == round(0.1 * 9 * 5 * 3 * 4)
    assert make_layer(samples=10**9).sample_count == 9 * 5 * 3 * 4


@pytest.mark.parametrize("samples", [0, -5, 0.0, 1.5, True, "many"])
def test_bad_samples_are_rejected(samples):
    with pytest.raises(ValueError, match="samples"):
        CFConv2D(4, samples=samples)


def test_bad_shapes_are_rejected(rng):
    with pytest.raises(ValueError, match=r"\[batch, height, width, channels\]"):
        CFConv2D(4).build((None, 8, 8))
    with pytest.raises(ValueError, match="fixed height, width"):
        CFConv2D(4).build((None, None, None, 3))
    layer = make_layer()
    with pytest.raises(ValueError, match=r"built for 9x8 inputs"):
        layer(rng.standard_normal((2, 10, 8, 3)).astype(np.float32))
    with pytest.raises(ValueError, match="axis -1"):
        layer(rng.standard_normal((2, 9, 8, 2)).astype(np.float32))
    with pytest.raises(ValueError, match="filters"):
        CFConv2D(0)
    with pytest.raises(ValueError, match="update_rate"):
        CFConv2D(4, update_rate=0.0)


@pytest.mark.parametrize("generator", GENERATORS)
def test_auto_kernel_scale_gives_he_power_and_scales_every_write(generator, rng):
    layer = make_layer(kernel_scale="auto", samples=1.0, hidden_units=(32, 32), generator=generator)
    kernel_real, kernel_imag = layer.generate_kernel()
    power = float(tf.reduce_mean(kernel_real**2 + kernel_imag**2))
    assert power == pytest.approx(2.0 / INPUT_SHAPE[3], rel=0.15)
    scale = float(layer.generator_scale)
    assert scale != pytest.approx(1.0)
    # A dense training step writes the scaled MLP output at every position.
    layer(rng.standard_normal(INPUT_SHAPE).astype(np.float32), training=True)
    everywhere = np.arange(layer.kernel_size)
    for written, raw in zip(state(layer), generated_values(layer, everywhere), strict=True):
        np.testing.assert_allclose(written.reshape(-1), scale * raw, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("generator", GENERATORS)
def test_generator_initialization_starts_the_state_at_the_generated_kernel(generator):
    layer = make_layer(state_initializer="generator", kernel_scale=3.0, generator=generator)
    kernel = layer.generate_kernel()
    for variable, expected in zip(state(layer), kernel, strict=True):
        np.testing.assert_array_equal(variable, expected.numpy())
    raw = generated_values(layer, np.arange(layer.kernel_size))[0]
    # a factorized generator's whole kernel is one matmul, its values dot products
    np.testing.assert_allclose(kernel[0].numpy().reshape(-1), 3.0 * raw, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("kernel_gradient", "generator", "samples"),
    [
        ("full", "coordinate_mlp", 50),
        ("sampled", "coordinate_mlp", 50),
        ("sampled", "factorized", 50),
        ("full", "factorized", 1.0),
    ],
)
def test_recomputed_generators_give_the_same_gradients(kernel_gradient, generator, samples, rng):
    x = tf.constant(rng.standard_normal(INPUT_SHAPE).astype(np.float32))
    options = {"kernel_gradient": kernel_gradient, "generator": generator, "samples": samples}
    plain = make_layer(**options)
    recomputed = make_layer(**options, recompute_generators=True)
    recomputed.set_weights(plain.get_weights())  # same MLPs, state and sampler position
    gradients = []
    for layer in (plain, recomputed):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x, training=True) ** 2)
        gradients.append(
            [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, layer.trainable_weights)]
        )
    for want, got in zip(*gradients, strict=True):
        assert np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_bad_recompute_generators_is_rejected():
    with pytest.raises(ValueError, match="recompute_generators must be true or false"):
        CFConv2D(4, recompute_generators="yes")


def test_bad_generator_settings_are_rejected():
    with pytest.raises(ValueError, match="generator must be one of"):
        CFConv2D(4, generator="siren")
    with pytest.raises(ValueError, match="generator_rank must be a positive integer"):
        CFConv2D(4, generator="factorized", generator_rank=0)


def test_bad_kernel_gradient_is_rejected():
    with pytest.raises(ValueError, match="kernel_gradient must be one of"):
        CFConv2D(4, kernel_gradient="dense")


@pytest.mark.parametrize("scale", [0, -1.0, True, "big"])
def test_bad_kernel_scales_are_rejected(scale):
    with pytest.raises(ValueError, match="kernel_scale"):
        CFConv2D(4, kernel_scale=scale)


def test_fourier_features_feed_sines_and_cosines_of_every_coordinate():

    mlp = CoordinateMLP((8,), fourier_bands=2)
    mlp.build((None, 4))
    assert mlp.dense_layers[0].kernel.shape == (4 + 8 * 2, 8)
    coordinates = tf.constant([[0.0, 0.25, 0.5, 1.0]])
    # Zero every first-layer weight except the one reading sin(2 pi u_1) (band 1 of
    # coordinate 1: after the 4 raw inputs, sines are ordered coordinate-major).
    kernel = np.zeros((20, 8), np.float32)
    kernel[4 + 1 * 2 + 1, 0] = 1.0
    mlp.dense_layers[0].kernel.assign(kernel)
    mlp.dense_layers[0].bias.assign(np.zeros(8, np.float32))
    mlp.dense_layers[1].kernel.assign(np.eye(8, 1, dtype=np.float32))
    mlp.dense_layers[1].bias.assign(np.zeros(1, np.float32))
    expected = max(np.sin(2 * np.pi * 0.25), 0.0)
    np.testing.assert_allclose(mlp(coordinates).numpy(), [expected], atol=1e-6)


def test_he_initialized_generators_keep_their_output_scale(rng):
    """Glorot init shrinks the paper's 10-layer ReLU MLP's output; He init does not."""
    coordinates = tf.constant(rng.uniform(0, 1, (4096, 4)).astype(np.float32))
    stds = {}
    for initializer in ("glorot_uniform", "he_normal"):
        values = []
        for seed in range(4):
            keras.utils.set_random_seed(seed)
            mlp = CoordinateMLP(hidden_initializer=initializer)
            mlp.build((None, 4))
            values.append(float(np.std(mlp(coordinates).numpy())))
        stds[initializer] = np.mean(values)
    assert stds["he_normal"] > 5 * stds["glorot_uniform"], stds
    with pytest.raises(ValueError, match="hidden_initializer"):
        CoordinateMLP(hidden_initializer="zeros")


@pytest.mark.parametrize("bands", [-1, 1.5, True])
def test_bad_fourier_bands_are_rejected(bands):
    with pytest.raises(ValueError, match="fourier_bands"):
        CFConv2D(4, fourier_bands=bands)


@pytest.mark.parametrize("total", [7, 10, 1000])
def test_drawn_positions_are_sorted_uniform_and_mark_first_copies(total, rng):
    layer_seed = int(rng.integers(2**31))
    draws = []
    for step in range(40):
        seed = tf.constant([layer_seed, step], tf.int64)
        positions, is_first = (t.numpy() for t in draw_positions(2**14, total, seed))
        assert positions.min() >= 0 and positions.max() < total
        assert np.all(np.diff(positions) >= 0)
        np.testing.assert_array_equal(is_first, np.r_[True, positions[1:] != positions[:-1]])
        draws.append(positions)
    counts = np.bincount(np.concatenate(draws), minlength=total)
    expected = counts.sum() / total
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    dof = total - 1
    # Uniform draws give chi^2 ~ dof +- sqrt(2 dof); 6 standard deviations never flake.
    assert chi_square < dof + 6 * np.sqrt(2 * dof)
