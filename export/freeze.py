"""Freezing: a trained model -> an inference model with constant spectral kernels.

Freezing changes the CF layers and nothing else. Every :class:`CFConv2D` becomes a
:class:`FrozenSpectralConv2D` holding one kernel, taken either from the layer's stored
state (``source="state"``, the default: what the trained model computes at inference)
or from its generators evaluated at every position (``source="mlp"``), which also works
on another grid because the generators read normalized coordinates. The DC/Nyquist
columns are projected onto Hermitian form, as the trained layer's forward pass does.

Every other layer and op node of the model keeps its own object, weights and state
(an adapted ``Normalization``, a ``BatchNormalization``'s statistics, ``keras.ops``
nodes such as ``x + cf(x)``): the frozen model's graph is the trained one's with the CF
layers swapped (``keras.models.clone_model`` with a clone function that touches CF
layers only), so the two models share those layers. CF layers are found wherever they
are: in the graph, in nested Functional or Sequential models, and inside other layers
(wrappers such as ``TimeDistributed``, users' own layers). Swapping a CF layer inside
another layer changes that layer, so it happens on an independent copy of the model
made by Keras' own saving (as does a change of dtype policy).

At another input size the model is called on new inputs, so each CF layer is frozen on
the grid it sees there: every grid follows the input through the pooling and strides
between (a 32x32 model with a CF layer after 2x2 pooling, frozen at 64x64, has that
layer on 32x32), and a layer that cannot take the new size is named.

A frozen model that should compute what the trained one does (stored kernels, trained
size, the layers' own dtypes) is checked against it before it is returned, unless the
caller checks what it makes of the frozen model against the trained one anyway (as
every export does with the file it writes).
"""

from __future__ import annotations

import re

import keras
import numpy as np

from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.layers import KERNEL_SOURCES, CFConv2D
from export.model_files import independent_copy
from export.model_graph import (
    all_layers,
    as_functional,
    has_cf_layers,
    image_input_size,
    is_graph_model,
)
from export.parity import check_parity, keras_runner
from export.signature import input_infos, signature_of

# symbolic inputs, structured as the model's ``input``
Inputs = keras.KerasTensor | list[keras.KerasTensor] | dict[str, keras.KerasTensor]
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


def _holders(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers of the graph (of nested graph models too) that hold CF layers inside them."""
    found = []
    for layer in model.layers:  # op nodes such as keras.ops.add hold no layers
        if isinstance(layer, CFConv2D):
            continue
        if is_graph_model(layer):
            found += _holders(layer)
        elif has_cf_layers(layer):
            found.append(layer)
    return found


class _Freezer:
    """Swaps the CF layers of one model (and its nested models) for frozen ones.

    A CF layer shared by several places becomes one shared frozen layer; a nested
    graph model is frozen once, on the inputs it first sees.
    """

    def __init__(self, dtype: str | None) -> None:
        self.dtype = dtype
        self.frozen: dict[int, FrozenSpectralConv2D] = {}
        self.pairs: list[tuple[CFConv2D, FrozenSpectralConv2D]] = []
        self.models: dict[int, keras.Model] = {}

    def frozen_layer(self, layer: CFConv2D) -> FrozenSpectralConv2D:
        """The one frozen layer that stands for ``layer`` (unbuilt until first called)."""
        if id(layer) not in self.frozen:
            frozen = FrozenSpectralConv2D(
                layer.filters,
                activation=layer.activation,
                name=layer.name,
                dtype=self.dtype or layer.dtype_policy,
            )
            self.frozen[id(layer)] = frozen
            self.pairs.append((layer, frozen))
        return self.frozen[id(layer)]

    def frozen_graph(self, model: keras.Model, tensors) -> keras.Model:
        """The frozen form of a nested graph model, rebuilt once on inputs shaped as
        ``tensors`` (so it follows a new input size whether or not it holds CF layers)."""
        if id(model) not in self.models:
            functional = as_functional(model)
            self.models[id(model)] = self.freeze_graph(
                functional, _inputs_like(functional, tensors)
            )
        return self.models[id(model)]

    def clone(self, operation):
        """The operation the frozen graph uses in place of ``operation``."""
        if isinstance(operation, CFConv2D):
            return self.frozen_layer(operation)
        if isinstance(operation, keras.layers.Layer) and not is_graph_model(operation):
            if has_cf_layers(operation):
                self.swap_inside(operation)
        return operation  # graph models are frozen in `call`, where their inputs are known

    def call(self, operation, *args, **kwargs):
        """Call ``operation`` (a nested graph model: its frozen form) in the frozen graph;
        a failure names the operation and the shapes it was given."""
        if is_graph_model(operation):
            operation = self.frozen_graph(operation, args[0])
        try:
            return operation(*args, **kwargs)
        except Exception as error:
            name = getattr(operation, "name", type(operation).__name__)
            raise ValueError(
                f"{name} cannot take the inputs it sees in the frozen model "
                f"({_shapes(args)}): {_first_line(error)}"
            ) from error

    def freeze_graph(self, model: keras.Model, inputs: Inputs) -> keras.Model:
        """``model`` (Functional) rebuilt on ``inputs`` with its CF layers swapped."""
        return keras.models.clone_model(
            model, input_tensors=inputs, clone_function=self.clone, call_function=self.call
        )

    def swap_inside(self, holder: keras.layers.Layer) -> None:
        """Replace the CF layers that ``holder`` (a layer of a model copy) refers to.

        The frozen layers are built on their CF layers' grids here: a wrapper such as
        ``TimeDistributed`` calls its layer's ``call`` directly, which builds nothing.
        A CF layer inside another layer therefore keeps its trained grid.
        """
        for layer in [holder, *all_layers(holder)]:
            if isinstance(layer, CFConv2D) or not has_cf_layers(layer):
                continue
            for name, value in list(vars(layer).items()):
                replaced = self.replaced(value)
                if replaced is not value:
                    object.__setattr__(layer, name, replaced)  # no re-tracking: built layers

    def replaced(self, value):
        """``value`` with its CF layers (also in lists, tuples, dicts) swapped: lists and
        dicts are changed in place, tuples and single layers replaced."""
        if isinstance(value, CFConv2D):
            frozen = self.frozen_layer(value)
            if not frozen.built:
                frozen.build((None, *value.input_size, value.kernel_shape[2]))
            return frozen
        if is_graph_model(value) and has_cf_layers(value):
            return self.frozen_graph(value, as_functional(value).inputs)
        if isinstance(value, list | tuple):
            items = [self.replaced(item) for item in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            if isinstance(value, tuple):  # a namedtuple takes its fields one by one
                return type(value)(*items) if hasattr(value, "_fields") else tuple(items)
            list.__setitem__(value, slice(None), items)  # in place, past Keras' tracking
        elif isinstance(value, dict):
            for key, item in list(value.items()):
                new = self.replaced(item)
                if new is not item:
                    dict.__setitem__(value, key, new)
        return value


def _first_line(error: Exception) -> str:
    """An exception's first line, without the terminal colours Keras adds."""
    text = ANSI_CODES.sub("", str(error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Exception encountered")]
    return lines[0] if lines else type(error).__name__


def _shapes(args) -> str:
    """The shapes of a call's tensor arguments (other arguments as they are)."""
    return ", ".join(
        str(tuple(value.shape)) if hasattr(value, "shape") else repr(value)
        for value in keras.tree.flatten(args)
    )


def _inputs_like(model: keras.Model, tensors) -> Inputs:
    """Fresh symbolic inputs for ``model`` shaped as ``tensors``, named as its inputs."""
    flat = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=info.name)
        for tensor, info in zip(keras.tree.flatten(tensors), input_infos(model), strict=True)
    ]
    return keras.tree.pack_sequence_as(model.input, flat)


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


def _set_kernels(pairs: list[tuple[CFConv2D, FrozenSpectralConv2D]], source: str) -> None:
    """Give each frozen layer its CF layer's inference kernel on the grid it was built on."""
    for original, frozen in pairs:
        if not frozen.built:
            raise ValueError(
                f"{original.name}: the frozen model never calls this CF layer, so its grid "
                f"is unknown"
            )
        kernel = original.inference_kernel(source, frozen.input_size)
        frozen.set_weights([np.asarray(part) for part in kernel])


def _check_no_cf_layers(frozen: keras.Model) -> None:
    """Refuse a frozen model that still holds CF layers (somewhere swapping cannot reach)."""
    left = sorted({layer.name for layer in all_layers(frozen) if isinstance(layer, CFConv2D)})
    if left:
        raise ValueError(
            f"CF layers {left} could not be frozen: they are held where freezing cannot "
            f"reach (not an attribute, list or dict of a layer)"
        )


def freeze_model(
    model: keras.Model,
    source: str = "state",
    input_size: tuple[int, int] | None = None,
    dtype: str | None = None,
    check: bool = True,
) -> keras.Model:
    """Return the inference model of ``model`` (Functional; same inputs and outputs).

    Args:
        source: ``"state"`` or ``"mlp"`` (see the module docstring).
        input_size: ``(H, W)`` of the model's image input; default the trained size.
            Any other size needs ``source="mlp"`` when the model has CF-Conv layers.
        dtype: a dtype policy for every layer (e.g. ``"float32"`` to deploy a
            mixed-precision model where a runtime lacks its compute dtype's kernels);
            default: each layer keeps its own.
        check: compare the frozen model with ``model`` on sample inputs where the two
            should compute the same function (:func:`computes_the_trained_model`).
            ``False`` for a caller that checks the frozen model (or what it writes of
            it) against ``model`` itself, or that has no use for the check (a
            benchmark timing a model with random weights).

    Raises:
        ValueError: unknown source; a subclassed model; an input size the model cannot
            take (the message names the layer); a frozen model that does not compute
            what the trained one does (when checked).
    """
    if source not in KERNEL_SOURCES:
        raise ValueError(f"unknown kernel source {source!r}; choose one of {KERNEL_SOURCES}")
    if input_size is not None:
        input_size = tuple(int(size) for size in input_size)
        if len(input_size) != 2 or min(input_size) <= 0:
            raise ValueError(f"input size must be (height, width) > 0, got {input_size}")
    functional = as_functional(model)
    if dtype is not None or _holders(functional):
        functional = as_functional(independent_copy(functional, dtype))
    freezer = _Freezer(dtype)
    frozen = freezer.freeze_graph(functional, _new_inputs(functional, input_size))
    _set_kernels(freezer.pairs, source)
    _check_no_cf_layers(frozen)
    if check and computes_the_trained_model(model, source, input_size, dtype):
        signature = signature_of(model)
        check_parity(model, signature, keras_runner(frozen, signature), "the frozen model")
    return frozen


def computes_the_trained_model(
    model: keras.Model, source: str, input_size: tuple[int, int] | None, dtype: str | None
) -> bool:
    """Whether ``model`` frozen with these settings computes what ``model`` does: stored
    kernels, at the trained input size, every layer in its own dtype policy."""
    images = [tuple(info.shape[1:3]) for info in input_infos(model) if len(info.shape) == 4]
    same_size = input_size is None or images == [tuple(input_size)]
    return source == "state" and same_size and dtype is None
