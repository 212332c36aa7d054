"""Freezing: a trained model -> an inference model with constant spectral kernels.

Every :class:`CFConv2D` becomes a :class:`FrozenSpectralConv2D` holding one kernel,
taken either from the layer's stored state (``source="state"``, the default: what the
trained model computes at inference) or from its generators evaluated at every position
(``source="mlp"``), which also works on another grid because the generators read
normalized coordinates. The DC/Nyquist columns are projected onto Hermitian form, as
the trained layer's forward pass does. Other layers are copied with their weights and
dtype policies.

Any Functional or Sequential model freezes, with branches, merges, shared layers, several
inputs and outputs, and models nested in it. The model is rebuilt on new inputs, so
each CF layer is frozen on the grid it sees there: at another input size every grid
follows the input through the pooling and strides between (a 32x32 model with a CF
layer after 2x2 pooling, frozen at 64x64, has that layer on 32x32).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.layers import KERNEL_SOURCES, CFConv2D
from export.signature import input_infos

# symbolic inputs, structured as the model's ``input``
Inputs = keras.KerasTensor | list[keras.KerasTensor] | dict[str, keras.KerasTensor]


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


def image_input_size(model: keras.Model) -> tuple[int, int, int]:
    """``(H, W, C)`` of a model's one image input (``[N, H, W, C]``).

    Raises:
        ValueError: the model has no or several rank-4 inputs, or free spatial sizes.
    """
    images = [info for info in input_infos(model) if len(info.shape) == 4]
    if len(images) != 1 or None in images[0].shape[1:]:
        raise ValueError(
            f"{model.name} needs one image input [N, H, W, C] of fixed size here; its inputs "
            f"are {[list(info.shape) for info in input_infos(model)]}"
        )
    height, width, channels = images[0].shape[1:]
    return int(height), int(width), int(channels)


def _as_functional(model: keras.Model) -> keras.Model:
    """A Functional view of ``model`` (a Sequential's layer graph), or a clear error."""
    if isinstance(model, keras.Sequential):
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not hasattr(model, "_run_through_graph"):
        raise ValueError(
            f"{model.name} is a subclassed keras.Model: freezing rebuilds the model from its "
            f"layer graph, which only Functional and Sequential models have. Build it "
            f"functionally (keras.Input -> layers -> keras.Model)."
        )
    return model


def _new_inputs(model: keras.Model, input_size: tuple[int, int] | None) -> Inputs:
    """Fresh inputs for ``model`` (same names and dtypes); the image input resized."""
    infos = input_infos(model)
    shapes = [info.shape for info in infos]
    if input_size is not None:
        channels = image_input_size(model)[2]
        shapes = [
            (shape[0], *input_size, channels) if len(shape) == 4 else shape for shape in shapes
        ]
    tensors = [
        keras.Input(batch_shape=shape, dtype=info.dtype, name=info.name)
        for shape, info in zip(shapes, infos, strict=True)
    ]
    return keras.tree.pack_sequence_as(model.input, tensors)


def _copy_weights(original: keras.layers.Layer, copy: keras.layers.Layer, source: str) -> None:
    if isinstance(original, CFConv2D):
        kernel = original.inference_kernel(source, copy.input_size)
        copy.set_weights([np.asarray(part) for part in kernel])
        return
    try:
        copy.set_weights(original.get_weights())
    except ValueError as error:
        raise ValueError(
            f"{original.name}: its weights do not fit the input size this layer sees now "
            f"({error}); the model cannot run at that input size"
        ) from error


def _freeze(model: keras.Model, inputs: Inputs, source: str, dtype: str | None) -> keras.Model:
    """Rebuild the Functional ``model`` on ``inputs`` with frozen CF layers and copied weights."""
    copies: dict[int, keras.layers.Layer] = {}
    pairs: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []
    nested: dict[int, keras.Model] = {}

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Model):
            return layer  # rebuilt in `call`, where the inputs it sees are known
        if id(layer) not in copies:  # a shared layer stays shared
            if isinstance(layer, CFConv2D):
                copy = FrozenSpectralConv2D(
                    layer.filters,
                    activation=layer.activation,
                    name=layer.name,
                    dtype=dtype or layer.dtype_policy,
                )
            else:
                config = layer.get_config()
                if dtype is not None:
                    config["dtype"] = dtype
                copy = layer.__class__.from_config(config)
            copies[id(layer)] = copy
            pairs.append((layer, copy))
        return copies[id(layer)]

    def call(layer: keras.layers.Layer, *args, **kwargs):
        if isinstance(layer, keras.Model):
            if id(layer) not in nested:
                inner = _as_functional(layer)
                tensors = [
                    keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=info.name)
                    for tensor, info in zip(
                        keras.tree.flatten(args[0]), input_infos(inner), strict=True
                    )
                ]
                inner_inputs = keras.tree.pack_sequence_as(inner.input, tensors)
                nested[id(layer)] = _freeze(inner, inner_inputs, source, dtype)
            layer = nested[id(layer)]
        return layer(*args, **kwargs)

    try:
        frozen = keras.models.clone_model(
            model, input_tensors=inputs, clone_function=clone, call_function=call
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"{model.name} cannot be rebuilt for inference: {error}") from error
    for original, copy in pairs:
        _copy_weights(original, copy, source)
    return frozen


def freeze_model(
    model: keras.Model,
    source: str = "state",
    input_size: tuple[int, int] | None = None,
    dtype: str | None = None,
) -> keras.Model:
    """Return the inference model of ``model`` (Functional; same inputs and outputs).

    Args:
        source: ``"state"`` or ``"mlp"`` (see the module docstring).
        input_size: ``(H, W)`` of the model's image input; default the trained size.
            Any other size needs ``source="mlp"`` when the model has CF-Conv layers.
        dtype: a dtype policy for every layer (e.g. ``"float32"`` to deploy a
            mixed-precision model where a runtime lacks its compute dtype's kernels);
            default: each layer keeps its own.

    Raises:
        ValueError: unknown source; a subclassed model; an input size the model cannot
            take (the message names the layer).
    """
    if source not in KERNEL_SOURCES:
        raise ValueError(f"unknown kernel source {source!r}; choose one of {KERNEL_SOURCES}")
    if input_size is not None:
        input_size = tuple(int(size) for size in input_size)
        if len(input_size) != 2 or min(input_size) <= 0:
            raise ValueError(f"input size must be (height, width) > 0, got {input_size}")
    functional = _as_functional(model)
    return _freeze(functional, _new_inputs(functional, input_size), source, dtype)
