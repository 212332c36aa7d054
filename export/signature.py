"""What an exported model takes and returns: the Keras model's own inputs and outputs.

Every export (SavedModel, ONNX, Triton's ``config.pbtxt``) describes the same tensors,
read from the model: its inputs by their names (an unnamed input by its input layer's
name), its outputs by the keys of the dict it returns or else by the names of the layers
that produce them, each with its shape and dtype.

A *classifier* (one ``[N, k]`` output from a softmax over ``k >= 2`` classes, or a
sigmoid with one unit) whose class names are known also gets the serving extras
``probabilities`` ``[N, classes]`` float32 (a sigmoid ``p`` becomes ``[1 - p, p]``) and
``class_index`` ``[N]`` int64; a model output already named ``probabilities`` is
replaced by the extra. Anything else (regression, dense ``[N, H, W, k]`` maps, several
outputs) is exported as what it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from export.names import CLASS_INDEX, PROBABILITIES
from export.tensor_info import TensorInfo

Outputs = dict[str, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class Signature:
    """A model's exported inputs and outputs, and its class names if it is a classifier."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    class_names: tuple[str, ...] | None = None

    @property
    def input_specs(self) -> list[tf.TensorSpec]:
        return [tf.TensorSpec(info.shape, info.dtype, name=info.name) for info in self.inputs]


def _source_layer(tensor) -> keras.layers.Layer | None:
    """The layer that produced a symbolic Keras tensor (inside nested models too)."""
    history = getattr(tensor, "_keras_history", None)
    layer = history.operation if history else None
    while isinstance(layer, keras.Model) and len(getattr(layer, "outputs", None) or ()) == 1:
        history = getattr(layer.outputs[0], "_keras_history", None)
        layer = history.operation if history else None
    return layer


def _model_inputs(model: keras.Model) -> list:
    try:
        return list(model.inputs)
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"{model.name} has no defined inputs (a subclassed or never-called model): "
            f"build it as a Functional or Sequential model with keras.Input"
        ) from error


def input_infos(model: keras.Model) -> tuple[TensorInfo, ...]:
    """The model's inputs, named by their input layers."""
    infos = []
    for tensor in _model_inputs(model):
        layer = _source_layer(tensor)
        name = layer.name if isinstance(layer, keras.layers.InputLayer) else tensor.name
        # the batch axis is free even in a model built by calling it on one batch
        infos.append(TensorInfo(name, (None, *tensor.shape[1:]), str(tensor.dtype)))
    return tuple(infos)


def _call(model: keras.Model, tensors: Sequence) -> Outputs:
    """Call the model in inference mode on its inputs in order; outputs by name.

    ``tensors`` may be real or symbolic; the inputs are packed as the model takes them (one
    tensor, a list, or a dict by name).
    """
    packed = tensors[0] if len(tensors) == 1 else keras.tree.pack_sequence_as(model.input, tensors)
    result = model(packed, training=False)
    if isinstance(result, dict):
        return dict(result)
    flat = list(result) if isinstance(result, list | tuple) else [result]
    names = [_output_name(model, index) for index in range(len(flat))]
    unique = [name if names.count(name) == 1 else f"{name}_{i}" for i, name in enumerate(names)]
    return dict(zip(unique, flat, strict=True))


def _output_name(model: keras.Model, index: int) -> str:
    layer = _source_layer(model.outputs[index])
    return layer.name if layer is not None else f"output_{index}"


def classifier_units(model: keras.Model, rank: int = 2) -> int | None:
    """Classes of a softmax (``k >= 2``) or one-unit sigmoid head whose one output has
    ``rank`` dimensions (2: ``[N, k]``, a classifier; 4: ``[N, H, W, k]``, a class per
    pixel), else ``None``."""
    outputs = list(model.outputs)
    if len(outputs) != 1 or len(outputs[0].shape) != rank:
        return None
    layer = _source_layer(outputs[0])
    activation = getattr(layer, "activation", None)
    units = outputs[0].shape[-1]
    softmax = isinstance(layer, keras.layers.Softmax) or activation is keras.activations.softmax
    if softmax and units and units >= 2:
        return int(units)
    if activation is keras.activations.sigmoid and units == 1:
        return 2
    return None


def serving_function(model: keras.Model, signature: Signature) -> Callable[..., Outputs]:
    """``fn(*inputs) -> {name: tensor}``: the model's outputs plus the classifier extras."""

    def serve(*tensors: tf.Tensor) -> Outputs:
        outputs = _call(model, tensors)
        if signature.class_names is not None:
            (scores,) = outputs.values()
            outputs.pop(PROBABILITIES, None)  # the extra takes the name, after the others
            probabilities = tf.cast(scores, tf.float32)
            if probabilities.shape[-1] == 1:
                probabilities = tf.concat([1.0 - probabilities, probabilities], axis=-1)
            outputs[PROBABILITIES] = probabilities
            outputs[CLASS_INDEX] = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return outputs

    return serve


def signature_of(model: keras.Model, class_names: Sequence[str] | None = None) -> Signature:
    """The model's export signature; ``class_names`` are used only for a classifier.

    Output shapes and dtypes come from a symbolic call (no graph is traced).

    Raises:
        ValueError: a classifier given a wrong number of class names.
    """
    inputs = input_infos(model)
    classes = classifier_units(model)
    names = tuple(class_names) if class_names is not None and classes else None
    if names is not None and len(names) != classes:
        raise ValueError(f"{len(names)} class names for a {classes}-class model")
    symbolic = [keras.Input(batch_shape=info.shape, dtype=info.dtype) for info in inputs]
    outputs = [
        TensorInfo(name, (None, *tensor.shape[1:]), keras.backend.standardize_dtype(tensor.dtype))
        for name, tensor in _call(model, symbolic).items()
    ]
    if names is not None:
        outputs = [info for info in outputs if info.name != PROBABILITIES]
        outputs += [
            TensorInfo(PROBABILITIES, (None, classes), "float32"),
            TensorInfo(CLASS_INDEX, (None,), "int64"),
        ]
    return Signature(inputs, tuple(outputs), names)
