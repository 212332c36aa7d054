"""Keras model files: loading a trained model, copying one through Keras' own saving,
and telling whether a frozen model survives being saved."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import keras

from cfconv_tf.frozen import FrozenSpectralConv2D
from export.model_graph import all_layers, is_graph_model

CONFIG_ENTRY = "config.json"  # the model's config inside a .keras archive
POLICY_CLASSES = ("DTypePolicy", "FloatDTypePolicy")


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
        raise ValueError(
            f"{path} is not a readable Keras model: {error}. If it uses classes of your "
            f"own, import the module that registers them (--import MODULE)"
        ) from error


def _with_policy(config, policy: dict):
    """A model config with every layer's dtype policy replaced by ``policy``."""
    if isinstance(config, dict):
        if config.get("class_name") in POLICY_CLASSES and "config" in config:
            return policy
        return {key: _with_policy(value, policy) for key, value in config.items()}
    if isinstance(config, list):
        return [_with_policy(value, policy) for value in config]
    return config


def _set_policy(archive: Path, dtype: str) -> None:
    """Rewrite a ``.keras`` archive so that every layer loads with the ``dtype`` policy."""
    policy = keras.saving.serialize_keras_object(keras.DTypePolicy(dtype))
    with zipfile.ZipFile(archive) as source:
        entries = {name: source.read(name) for name in source.namelist()}
    config = _with_policy(json.loads(entries[CONFIG_ENTRY]), policy)
    entries[CONFIG_ENTRY] = json.dumps(config).encode()
    with zipfile.ZipFile(archive, "w") as target:
        for name, data in entries.items():
            target.writestr(name, data)


def independent_copy(model: keras.Model, dtype: str | None = None) -> keras.Model:
    """A copy of ``model`` that shares nothing with it, made by Keras' own saving.

    Layers keep their names (Keras renames a loaded layer whose name is taken in this
    process and whose config does not carry it). ``dtype``: load every layer with that
    dtype policy instead of its own, so layers build their constants in it.

    Raises:
        ValueError: the model cannot go through a ``.keras`` round trip (the message
            says why; usually a class of the user's that is not registered).
    """
    with tempfile.TemporaryDirectory(prefix="cfconv-copy-") as folder:
        path = Path(folder) / "model.keras"
        try:
            model.save(path)
            if dtype is not None:
                _set_policy(path, dtype)
            # our own file, written just now: Lambda layers may load
            copy = keras.saving.load_model(path, safe_mode=False)
        except Exception as error:
            raise ValueError(
                f"{model.name} must be copied to freeze CF layers held inside other layers "
                f"(or to change its dtype policy), and Keras cannot save and load it: "
                f"{error}. Register your own classes with "
                f"keras.saving.register_keras_serializable and give them get_config."
            ) from error
    originals, copies = all_layers(model), all_layers(copy)
    if [type(layer) for layer in originals] == [type(layer) for layer in copies]:
        for original, copied in zip(originals, copies, strict=True):
            copied.name = original.name
    return copy


def _serialized(layer: keras.layers.Layer) -> str:
    return json.dumps(keras.saving.serialize_keras_object(layer), default=str)


def unsaveable_layers(frozen: keras.Model) -> list[str]:
    """Layers of a frozen model whose config does not carry their frozen sublayers.

    A user's layer that creates its CF layer in ``__init__`` (rather than taking it
    through its config, as Keras' wrappers do) computes the right thing in memory, but a
    ``.keras`` file of it would load with a new, trainable CF layer.
    """
    found = []
    for layer in all_layers(frozen):
        inner = [sub for sub in layer._layers if isinstance(sub, FrozenSpectralConv2D)]
        if inner and not is_graph_model(layer):
            config = _serialized(layer)
            if any(_serialized(sub) not in config for sub in inner):
                found.append(layer.name)
    return found
