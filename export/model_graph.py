"""What a Keras model is made of: its layers, its CF layers, its layer graph, its image."""

from __future__ import annotations

import keras

from cfconv_tf.layers import CFConv2D
from export.signature import input_infos


def all_layers(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every layer inside ``model``: in nested models and inside other layers, each once."""
    return list(model._flatten_layers(include_self=False, recursive=True))


def has_cf_layers(layer: keras.layers.Layer) -> bool:
    """Whether ``layer`` is or holds a (trained, unfrozen) :class:`CFConv2D` anywhere."""
    return isinstance(layer, CFConv2D) or any(
        isinstance(inner, CFConv2D) for inner in all_layers(layer)
    )


def is_graph_model(layer) -> bool:
    """A Functional or Sequential model: one whose layer graph can be rebuilt."""
    return isinstance(layer, keras.Sequential) or hasattr(layer, "_run_through_graph")


def as_functional(model: keras.Model) -> keras.Model:
    """A Functional view of ``model`` (a Sequential's layer graph), or a clear error."""
    if isinstance(model, keras.Sequential):
        try:
            return keras.Model(model.inputs, model.outputs, name=model.name)
        except (AttributeError, ValueError) as error:
            raise ValueError(
                f"{model.name} is a Sequential model that was never built: call it on "
                f"data or give it a keras.Input first"
            ) from error
    if not is_graph_model(model):
        raise ValueError(
            f"{model.name} is a subclassed keras.Model: freezing rebuilds the model from its "
            f"layer graph, which only Functional and Sequential models have. Build it "
            f"functionally (keras.Input -> layers -> keras.Model); subclassed models and "
            f"layers of your own may sit inside it."
        )
    return model


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
