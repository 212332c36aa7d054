"""Freezing: a trained model -> an inference model with constant spectral kernels.

Every :class:`CFConv2D` becomes a :class:`FrozenSpectralConv2D` holding one kernel,
taken either from the layer's stored state (``source="state"``, the default: what the
trained model computes at inference) or from its MLPs evaluated at every position
(``source="mlp"``), which also works on another input size because the MLPs read
normalized coordinates. The DC/Nyquist columns are projected onto Hermitian form, as
the trained layer's forward pass does. Other layers are copied with their weights.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.layers import KERNEL_SOURCES, CFConv2D


def load_trained_model(path: str | Path) -> keras.Model:
    """Load a ``.keras`` model, or a run directory's ``model.keras``, with clear errors."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(f"no trained model at {path}")
    try:
        return keras.saving.load_model(path)
    except Exception as error:  # zip, h5 and deserialization errors of any kind
        raise ValueError(f"{path} is not a readable Keras model: {error}") from error


def model_input_size(model: keras.Model) -> tuple[int, int, int]:
    """``(H, W, C)`` of a model's single image input."""
    shape = model.inputs[0].shape
    return int(shape[1]), int(shape[2]), int(shape[3])


def freeze_model(
    model: keras.Model,
    source: str = "state",
    input_size: tuple[int, int] | None = None,
) -> keras.Model:
    """Return the inference model of ``model``.

    Args:
        source: ``"state"`` or ``"mlp"`` (see the module docstring).
        input_size: ``(H, W)`` of the frozen model; default the trained size. Another
            size needs ``source="mlp"`` when the model has CF-Conv layers.

    Raises:
        ValueError: unknown source, or an input size the kernels cannot take.
    """
    if source not in KERNEL_SOURCES:
        raise ValueError(f"unknown kernel source {source!r}; choose one of {KERNEL_SOURCES}")
    height, width, channels = model_input_size(model)
    new_size = tuple(int(size) for size in (input_size or (height, width)))
    if len(new_size) != 2 or min(new_size) <= 0:
        raise ValueError(f"input size must be (height, width) > 0, got {input_size}")

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, CFConv2D):
            return FrozenSpectralConv2D(layer.filters, activation=layer.activation, name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    inputs = keras.Input((*new_size, channels), name=model.inputs[0].name)
    frozen = keras.models.clone_model(model, input_tensors=inputs, clone_function=clone)
    for layer in model.layers:
        target = frozen.get_layer(layer.name)
        if isinstance(layer, CFConv2D):
            kernel = layer.inference_kernel(source, new_size)
            target.set_weights([np.asarray(part) for part in kernel])
        elif layer.weights:
            target.set_weights(layer.get_weights())
    return frozen
