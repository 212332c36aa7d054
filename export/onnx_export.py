"""A Keras model with CF-Conv layers -> an ONNX model, through tf2onnx.

The whole model is converted by tf2onnx, so every layer it knows (normalization,
pooling, strides, residuals, several inputs and outputs, ...) converts as usual; the
project contributes only the form of the spectral layers (:mod:`export.onnx_spectral`)
and the handlers for TensorFlow's FFT ops (:mod:`export.tf2onnx_handlers`).

The spectral kernels enter the traced function as extra inputs and become ONNX
initializers after the conversion: tf2onnx copies every constant of a graph several
times while it converts (freezing, rewriting, one deep copy per optimizer pass), which
for large spectral kernels takes more memory than the conversion itself (docs/export.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import keras
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnx import TensorProto, helper, numpy_helper

from cfconv_tf.frozen import FrozenSpectralConv2D, convolution_override
from cfconv_tf.layers import CFConv2D
from export.atomic import remove_if_empty
from export.compact import EXACT, KernelStorage
from export.freeze import freeze_model
from export.model_graph import all_layers
from export.names import (
    CLASS_NAMES_KEY,
    LOWERING_KEY,
    NATIVE_DOMAIN,
    NATIVE_OP,
    NATIVE_OPSET,
    ONNX_DATA_FILE,
    ONNX_FILE,
)
from export.native import require_library
from export.onnx_spectral import (
    LOWERINGS,
    fuse_native_relu,
    kernel_from_operands,
    kernel_operands,
    lowered_convolution,
    native_node,
)
from export.parity import reference_outputs
from export.self_check import check_export, load_onnx
from export.signature import Signature, serving_function, signature_of
from export.tf2onnx_handlers import transforms_as

EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which they go to a side file
CONVERTER_MAX_OPSET = 18  # tf2onnx 1.17's newest; higher opsets come from onnx's converter
COMPLEX_TYPES = {TensorProto.COMPLEX64, TensorProto.COMPLEX128}
_NATIVE_CONVERSION = {  # tf2onnx's arguments that write the native lowering's custom op
    "custom_op_handlers": {"PyFunc": (native_node, [])},
    "extra_opset": [helper.make_opsetid(NATIVE_DOMAIN, NATIVE_OPSET)],
}


def spectral_layers(model: keras.Model) -> list[FrozenSpectralConv2D]:
    """The model's frozen spectral layers."""
    return [layer for layer in all_layers(model) if isinstance(layer, FrozenSpectralConv2D)]


@contextlib.contextmanager
def _converter_errors() -> Iterator[list[str]]:
    """Collect tf2onnx's error messages (and keep its progress chatter off the console)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.exc_info[1] is not None:  # a handler's exception
                message = str(record.exc_info[1]).removeprefix("make_sure failure: ")
            else:
                message = record.getMessage()
            messages.append(message.splitlines()[0])

    logger = logging.getLogger("tf2onnx")
    handler, level, propagate = Collect(logging.ERROR), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


def _convert(
    model: keras.Model, signature: Signature, lowering: str, opset: int, storage: KernelStorage
) -> onnx.ModelProto:
    """Trace ``model`` with its spectral layers in the lowering's form and convert it.

    Returns the checked ONNX model, kernels (as ``storage`` keeps them) as initializers.
    """
    layers = spectral_layers(model)
    operands = {  # layer index -> part name -> constant
        index: kernel_operands(layer, lowering, storage) for index, layer in enumerate(layers)
    }
    kernels = {
        f"cfconv_kernel_{index}_{part}": value
        for index, parts in operands.items()
        for part, value in parts.items()
    }
    specs = signature.input_specs + [
        tf.TensorSpec(value.shape, value.dtype, name=name) for name, value in kernels.items()
    ]
    serve = serving_function(model, signature)
    count = len(signature.inputs)

    def traced(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        constants = iter(tensors[count:])  # in the order of `kernels`
        by_layer = {
            id(layer): {part: next(constants) for part in operands[index]}
            for index, layer in enumerate(layers)
        }

        def convolve(layer: FrozenSpectralConv2D, x: tf.Tensor) -> tf.Tensor:
            kernel = kernel_from_operands(layer, lowering, by_layer[id(layer)])
            return lowered_convolution(lowering, layer, x, *kernel)

        with convolution_override(convolve):
            return serve(*tensors[:count])

    transforms = "dft" if lowering == "dft" else "matmul"
    layer_names = [layer.name for layer in all_layers(model)]
    proto = convert_function(
        traced, specs, opset, transforms, layer_names, native=lowering == "native"
    )
    graph = proto.graph
    if lowering == "native":
        fuse_native_relu(graph)
    inputs = [value for value in graph.input if value.name not in kernels]
    del graph.input[:]
    graph.input.extend(inputs)
    outputs = {value.name: value for value in graph.output}  # tf2onnx sorts them by name
    del graph.output[:]
    graph.output.extend(outputs[info.name] for info in signature.outputs)
    graph.initializer.extend(
        numpy_helper.from_array(value, name) for name, value in kernels.items()
    )
    return proto


def convert_function(
    function: Callable,
    specs: list[tf.TensorSpec],
    opset: int,
    transforms: str = "matmul",
    layer_names: Sequence[str] = (),
    native: bool = False,
) -> onnx.ModelProto:
    """tf2onnx's conversion of ``function`` at ``opset``, FFTs written as ``transforms``,
    checked (:func:`check_converted`, naming the ``layer_names`` unconverted ops sit in).
    ``native``: the native lowering's placeholders become its custom op.

    tf2onnx writes at most :data:`CONVERTER_MAX_OPSET`; onnx's version converter takes
    the checked model the rest of the way.

    Raises:
        ValueError: tf2onnx or the version converter fails, or ops stay unconverted.
    """
    traced = tf.function(function, autograph=False)
    captured = _captured_constants(traced.get_concrete_function(*specs))
    try:
        with transforms_as(transforms), _converter_errors() as errors:
            proto, _ = tf2onnx.convert.from_function(  # reuses the function traced above
                traced,
                input_signature=specs,
                opset=min(opset, CONVERTER_MAX_OPSET),
                **(_NATIVE_CONVERSION if native else {}),
            )
    except Exception as error:  # tf2onnx's own failures, of any type: one clear message
        raise ValueError(
            f"tf2onnx failed to convert the model: {type(error).__name__}: {error}. "
            f"Export it as a SavedModel (--format savedmodel) instead."
        ) from error
    _inputs_to_initializers(proto.graph, captured)
    check_converted(proto, errors, layer_names)
    if opset > CONVERTER_MAX_OPSET:
        try:
            proto = onnx.version_converter.convert_version(proto, opset)
        except Exception as error:  # onnx's converter raises RuntimeError and others
            raise ValueError(
                f"onnx cannot raise the converted model to opset {opset}: {error}"
            ) from error
    return proto


def _captured_constants(concrete) -> dict[str, np.ndarray]:
    """The values of the tensors (not variables) a traced function captured, by the
    name of the placeholder that stands for each inside its graph.

    Layers that keep eager tensors (an adapted or fixed ``Normalization``'s mean and
    variance) are captured this way; tf2onnx turns such placeholders into graph inputs.
    """
    return {
        internal.name: external.numpy()
        for external, internal in concrete.graph.captures
        if external.dtype != tf.resource and hasattr(external, "numpy")
    }


def _inputs_to_initializers(graph: onnx.GraphProto, values: dict[str, np.ndarray]) -> None:
    """Make the graph inputs named in ``values`` initializers holding those values."""
    captured = [value for value in graph.input if value.name in values]
    if not captured:
        return
    kept = [value for value in graph.input if value.name not in values]
    del graph.input[:]
    graph.input.extend(kept)
    graph.initializer.extend(
        numpy_helper.from_array(np.asarray(values[value.name]), value.name) for value in captured
    )


def check_converted(
    proto: onnx.ModelProto, errors: list[str], layer_names: Sequence[str] = ()
) -> None:
    """Refuse a graph with ops that are not standard ONNX or with complex tensors.

    ``layer_names``: the model's layers, to name the layers unconverted ops come from
    (TensorFlow names each op after the layers it sits in).
    """
    unconverted = [
        node
        for node in proto.graph.node
        if not onnx.defs.has(node.op_type, node.domain or "")
        and (node.domain, node.op_type) != (NATIVE_DOMAIN, NATIVE_OP)
    ]
    if unconverted:
        ops = sorted({node.op_type for node in unconverted})
        layers = sorted(
            {layer for node in unconverted if (layer := _layer_of(node.name, layer_names))}
        )
        where = f"in layers {layers}" if layers else f"at nodes {[n.name for n in unconverted[:4]]}"
        reasons = "; ".join(dict.fromkeys(errors)) or "no handler"
        raise ValueError(
            f"tf2onnx cannot convert the TensorFlow ops {ops} {where} to ONNX (tf2onnx: "
            f"{reasons}). Export this model as a SavedModel (--format savedmodel), or build "
            f"those layers from ops tf2onnx converts."
        )
    graph = proto.graph
    typed = [*graph.input, *graph.output, *graph.value_info]
    complex_names = [v.name for v in typed if v.type.tensor_type.elem_type in COMPLEX_TYPES]
    complex_names += [t.name for t in graph.initializer if t.data_type in COMPLEX_TYPES]
    if complex_names:
        raise ValueError(f"the converted graph keeps complex tensors: {complex_names[:5]}")


def _layer_of(node_name: str, layer_names: Sequence[str]) -> str | None:
    """The innermost layer whose name is a scope of ``node_name`` (TensorFlow may add
    ``_<n>`` to a scope name it has seen before), if any."""
    names, found = set(layer_names), None
    for scope in node_name.split("/"):
        if scope in names or re.sub(r"_\d+$", "", scope) in names:
            found = scope if scope in names else re.sub(r"_\d+$", "", scope)
    return found


def build_onnx(
    model: keras.Model,
    signature: Signature,
    lowering: str = "factorized",
    opset: int | None = None,
    metadata: dict[str, str] | None = None,
    storage: KernelStorage = EXACT,
) -> onnx.ModelProto:
    """Convert a model (frozen here if it is not) to an ONNX model (checked, not saved).

    Args:
        signature: the inputs and outputs to export (:func:`export.signature.signature_of`).
        lowering: ``"factorized"`` (opset 17, default), ``"matmul"`` (opset 17) or
            ``"dft"`` (opset 20); see :mod:`export.onnx_spectral`.
        opset: at least the lowering's minimum.
        metadata: extra ``metadata_props`` (the class names and lowering are added).
        storage: how the file keeps the spectral kernels (:mod:`export.compact`; the
            model's own kernels should already be what it keeps, see
            :func:`export.compact.compact_model`).

    Raises:
        ValueError: unknown lowering, too low an opset, the native lowering without its
            library, or ops tf2onnx cannot convert.
    """
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown ONNX lowering {lowering!r}; choose one of {list(LOWERINGS)}")
    opset = opset or LOWERINGS[lowering]
    if opset < LOWERINGS[lowering]:
        raise ValueError(f"the {lowering} lowering needs opset >= {LOWERINGS[lowering]}")
    if lowering == "native":
        require_library()  # before converting: the file could not be loaded or checked
    if _has_trainable_cf_layers(model):
        raise ValueError(
            f"{model.name} has trainable CF-Conv layers: freeze it first "
            f"(export.freeze.freeze_model), or call export_onnx, which does"
        )
    half = sorted({layer.name for layer in all_layers(model) if layer.compute_dtype == "bfloat16"})
    if half:
        raise ValueError(
            f"layers {half[:4]} compute in bfloat16, which onnxruntime's CPU kernels lack; "
            f"freeze with dtype='float32' (cfconv export --dtype float32) to export in float32"
        )
    proto = _convert(model, signature, lowering, opset, storage)
    proto.producer_name = "cfconv-tf (tf2onnx)"
    properties = {LOWERING_KEY: lowering, **(metadata or {})}
    if signature.class_names is not None:
        properties[CLASS_NAMES_KEY] = json.dumps(list(signature.class_names))
    onnx.helper.set_model_props(proto, properties)
    return proto


def _has_trainable_cf_layers(model: keras.Model) -> bool:
    return any(isinstance(layer, CFConv2D) for layer in all_layers(model))


def export_onnx(
    model: keras.Model,
    folder: str | Path,
    lowering: str = "factorized",
    opset: int | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """Freeze (if it has trainable CF-Conv layers), convert and save ``folder/model.onnx``.

    The one call for a Keras model in Python; ``class_names`` make a classifier's export
    add ``probabilities`` and ``class_index``. The file is written only once onnxruntime
    has loaded it and computed what ``model`` does (:mod:`export.self_check`). Returns
    the ``model.onnx`` path.
    """
    trainable = _has_trainable_cf_layers(model)
    frozen = freeze_model(model, check=False) if trainable else model  # the file is checked
    signature = signature_of(frozen, class_names)
    proto = build_onnx(frozen, signature, lowering, opset)
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=folder) as staging:
            loaded = load_onnx(save_onnx(proto, Path(staging)))
            check_export(loaded, reference_outputs(model, signature))
            (folder / ONNX_DATA_FILE).unlink(missing_ok=True)  # an older model's weights
            for written in sorted(Path(staging).iterdir()):
                os.replace(written, folder / written.name)
    except BaseException:
        if created:
            remove_if_empty(folder)
        raise
    return folder / ONNX_FILE


def onnx_metadata(path: str | Path) -> dict[str, str]:
    """An ONNX file's ``metadata_props`` (its weights are not read)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in proto.metadata_props}


def save_onnx(
    onnx_model: onnx.ModelProto, folder: Path, external_threshold: int = EXTERNAL_DATA_THRESHOLD
) -> Path:
    """Check and write ``folder/model.onnx``; weights over the threshold go to a side file.

    Protobuf cannot serialize a message over 2 GB, so large models keep their
    initializers in ``model.onnx.data`` (ONNX external data), which onnxruntime reads
    from beside the model file.
    """
    path = Path(folder) / ONNX_FILE
    weight_bytes = sum(np.prod(t.dims, dtype=np.int64) * 4 for t in onnx_model.graph.initializer)
    if weight_bytes > external_threshold:
        onnx.save_model(
            onnx_model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=ONNX_DATA_FILE,
            size_threshold=1024,
        )
        onnx.checker.check_model(str(path), full_check=True)
    else:
        onnx.checker.check_model(onnx_model, full_check=True)
        onnx.save_model(onnx_model, path)
    return path
