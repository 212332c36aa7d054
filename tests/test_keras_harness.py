"""Keras' own layer test harness on both layers, mixed precision, subclassed models."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras.src.testing import TestCase

from cfconv_tf import CFConv2D, FrozenSpectralConv2D

SMALL = {
    "filters": 3,
    "samples": 0.5,
    "generator": "factorized",
    "generator_rank": 4,
    "hidden_units": (8,),
    "kernel_scale": "auto",
    "activation": "relu",
    "seed": 1,
}


class HarnessTest(TestCase):
    """``run_layer_test`` builds, calls (eagerly, symbolically, in training), serializes,
    checks weight counts and, with ``run_mixed_precision_check``, that under
    ``mixed_float16`` the output is float16 and every float weight float32."""

    def test_cfconv2d(self):
        self.run_layer_test(
            CFConv2D,
            init_kwargs=SMALL,
            input_shape=(2, 7, 6, 2),
            expected_output_shape=(2, 7, 6, 3),
            expected_num_trainable_weights=2 * (2 * 2 + 1),  # (8,) + output Dense, factors
            expected_num_non_trainable_weights=4,  # state (2), sampler, scale
            run_mixed_precision_check=True,
            run_training_check=True,
        )

    def test_frozen_spectral_conv2d(self):
        self.run_layer_test(
            FrozenSpectralConv2D,
            init_kwargs={"filters": 4, "activation": "relu"},
            input_shape=(3, 8, 5, 2),
            expected_output_shape=(3, 8, 5, 4),
            expected_num_trainable_weights=0,
            expected_num_non_trainable_weights=2,
            run_mixed_precision_check=True,
            run_training_check=False,  # nothing to train
        )


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_keeps_the_spectrum_in_float32(policy, rng):
    layer = CFConv2D(**SMALL, dtype=policy)
    x = rng.uniform(0, 1, (2, 7, 6, 2)).astype(np.float32)
    trained = layer(x, training=True)
    assert keras.backend.standardize_dtype(trained.dtype) == policy.removeprefix("mixed_")
    assert {str(w.dtype) for w in layer.weights} == {"float32", "int64"}
    reference = CFConv2D.from_config({**layer.get_config(), "dtype": "float32"})
    reference(x)
    reference.set_weights(layer.get_weights())
    inferred = layer(x).numpy().astype(np.float32)
    expected = reference(x).numpy()  # the same layer computing in float32
    tolerance = 1e-2 if policy == "mixed_bfloat16" else 2e-3  # the output's rounding
    assert np.abs(inferred - expected).max() <= tolerance * np.abs(expected).max()


def test_the_layer_builds_inside_a_subclassed_model(rng):
    """Keras traces a subclassed model statelessly to build it; the generator-derived
    initial values (He scale, generated state) must survive that."""

    class Block(keras.Model):
        def __init__(self):
            super().__init__()
            self.spectral = CFConv2D(
                **{**SMALL, "kernel_scale": "auto"}, state_initializer="generator"
            )

        def call(self, inputs):
            return self.spectral(inputs)

    model = Block()
    model(rng.uniform(0, 1, (1, 6, 6, 1)).astype(np.float32))
    layer = model.spectral
    assert float(layer.generator_scale.numpy()) != 1.0
    np.testing.assert_allclose(
        layer.state_real.numpy(), layer.generate_kernel()[0].numpy(), rtol=1e-6, atol=1e-7
    )
