"""The paper's CNN (Fig. 3) in a CF-Conv variant and a spatial-conv baseline."""

from __future__ import annotations

import keras
import numpy as np

from cfconv_tf.config import LAYER_NORMALIZATION, SEPARABLE, ModelConfig
from cfconv_tf.layers import CFConv2D

VARIANTS = ("cf", "spatial")


def build_model(
    config: ModelConfig,
    variant: str,
    input_shape: tuple[int, int, int],
    classes: int,
    seed: int | None = None,
) -> keras.Model:
    """Build the paper's network.

    Input: raw pixel values ``[B, H, W, C]`` float32 in [0, 255] (scaled to [0, 1]
    inside the model, so exported models take pixels as they are). Output:
    probabilities ``[B, 1]`` (sigmoid) when ``classes == 2``, else ``[B, classes]``
    (softmax).

    Args:
        variant: ``"cf"`` for CF-Conv layers, ``"spatial"`` for convolutions of
            ``config.spatial_kernel_size`` with "same" padding: ``Conv2D``, or
            ``SeparableConv2D`` (depthwise, then pointwise) when ``config.spatial_kind``
            is ``"separable"``.

    Each convolution is followed by its ReLU; with ``config.normalization`` ``"layer"``,
    by ``GroupNormalization`` with one group (``norm_<i>``: per image, over height, width
    and channels), then the ReLU (``relu_<i>``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; choose one of {VARIANTS}")
    if classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {classes}")
    normalized = config.normalization == LAYER_NORMALIZATION
    activation = None if normalized else "relu"
    inputs = keras.Input(shape=input_shape, name="image")
    hidden = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for index in range(config.conv_layers):
        if variant == "cf":
            layer = CFConv2D(
                config.filters,
                samples=config.samples,
                generator=config.generator,
                generator_rank=config.generator_rank,
                hidden_units=config.hidden_units,
                fourier_bands=config.fourier_bands,
                generator_initializer=config.generator_initializer,
                update_rate=config.update_rate,
                state_initializer=config.state_initializer,
                kernel_scale=config.kernel_scale,
                recompute_generators=config.recompute_generators,
                activation=activation,
                seed=None if seed is None else seed + index,
                name=f"cfconv_{index}",
            )
        else:
            convolution = (
                keras.layers.SeparableConv2D
                if config.spatial_kind == SEPARABLE
                else keras.layers.Conv2D
            )
            layer = convolution(
                config.filters,
                config.spatial_kernel_size,
                padding="same",
                activation=activation,
                name=f"conv_{index}",
            )
        hidden = layer(hidden)
        if normalized:
            hidden = keras.layers.GroupNormalization(groups=1, name=f"norm_{index}")(hidden)
            hidden = keras.layers.ReLU(name=f"relu_{index}")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D(name="pool")(hidden)
    for index, units in enumerate(config.dense_units):
        hidden = keras.layers.Dense(units, activation="relu", name=f"dense_{index}")(hidden)
    if classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probabilities")(hidden)
    else:
        outputs = keras.layers.Dense(classes, activation="softmax", name="probabilities")(hidden)
    return keras.Model(inputs, outputs, name=f"{config.name}_{variant}")


def parameter_counts(model: keras.Model) -> dict[str, int]:
    """Trainable and non-trainable (spectral state) parameter counts."""
    return {
        "trainable": sum(int(np.prod(w.shape)) for w in model.trainable_weights),
        "non_trainable": sum(int(np.prod(w.shape)) for w in model.non_trainable_weights),
    }
