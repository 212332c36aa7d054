"""A frozen Keras classifier -> an ONNX model, written node by node.

The graph takes ``image`` ``[N, H, W, C]`` float32 pixels (as the Keras model and the
SavedModel do), moves activations into whichever layout the next layer reads (NCHW for
Conv2D, the lowering's own for spectral layers; elementwise layers keep theirs), and
returns ``probabilities`` ``[N, classes]`` and ``class_index`` ``[N]`` int64. Supported
layers are those of the paper's network family: Rescaling (scalar), FrozenSpectralConv2D,
Conv2D (stride 1), ReLU/Activation, GlobalAveragePooling2D and Dense; anything else is a
clear error, never a silently wrong graph (tf2onnx cannot convert RFFT2D/IRFFT2D, so
no converter is used).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import onnx
from onnx import TensorProto, helper

from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.layers import CFConv2D
from export.onnx_builder import GraphBuilder
from export.onnx_spectral import LAYOUTS, LOWERINGS, spectral_conv

ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "softmax": "Softmax"}
EXTERNAL_DATA_THRESHOLD = 1 << 30  # bytes of weights above which they go to a side file
ONNX_FILE, ONNX_DATA_FILE = "model.onnx", "model.onnx.data"


def _activation(g: GraphBuilder, x: str, activation, where: str) -> str:
    name = keras.activations.serialize(activation)
    name = name if isinstance(name, str) else name.get("config", {}).get("name", str(name))
    if name == "linear":
        return x
    if name not in ACTIVATIONS:
        raise ValueError(f"{where}: activation {name!r} has no ONNX lowering here")
    return g.op(ACTIVATIONS[name], [x], **({"axis": -1} if name == "softmax" else {}))


def _conv2d(g: GraphBuilder, x: str, layer: keras.layers.Conv2D) -> str:
    if (tuple(layer.strides), tuple(layer.dilation_rate), layer.groups) != ((1, 1), (1, 1), 1):
        raise ValueError(f"{layer.name}: only stride 1, dilation 1, groups 1 are exported")
    kernel = np.asarray(layer.kernel).transpose(3, 2, 0, 1)  # -> [Cout, Cin, kh, kw]
    kh, kw = kernel.shape[2:]
    if layer.padding == "same":  # Keras pads the extra row/column at the end
        pads = [(kh - 1) // 2, (kw - 1) // 2, kh - 1 - (kh - 1) // 2, kw - 1 - (kw - 1) // 2]
    else:
        pads = [0, 0, 0, 0]
    inputs = [x, g.constant(kernel, f"{layer.name}_kernel")]
    if layer.use_bias:
        inputs.append(g.constant(np.asarray(layer.bias), f"{layer.name}_bias"))
    return g.op("Conv", inputs, kernel_shape=[kh, kw], pads=pads)


def _to_layout(g: GraphBuilder, x: str, have: str, want: str) -> str:
    """Transpose an image tensor between layouts named by their axes, e.g. ``"NCHW"``."""
    return x if have == want else g.transpose(x, [have.index(axis) for axis in want])


def _global_average(
    g: GraphBuilder, x: str, layout: str, height: int, width: int, channels: int
) -> str:
    """Mean over H and W -> ``[N, C]``; other layouts than NCHW as ``1 / (H W)`` MatMul in WHNC."""
    if layout == "NCHW":
        return g.op("Flatten", [g.op("GlobalAveragePool", [x])])
    spatial_first = g.reshape(_to_layout(g, x, layout, "WHNC"), [height * width, -1])
    means = np.full((1, height * width), 1.0 / (height * width), np.float32)
    pooled = g.op("MatMul", [g.constant(means, "mean", f"mean{height}x{width}"), spatial_first])
    return g.reshape(pooled, [-1, channels])


def _layer(
    g: GraphBuilder, x: str, layout: str, layer: keras.layers.Layer, lowering: str
) -> tuple[str, str]:
    """Lower one layer: ``(tensor, layout)`` in, ``(tensor, layout)`` out.

    Image tensors are in the named layout; after pooling the layout is ``"NF"``.
    """
    if isinstance(layer, keras.layers.InputLayer):
        return x, layout
    if isinstance(layer, CFConv2D):
        raise ValueError(f"{layer.name} is a trainable CF-Conv layer: freeze the model first")
    if isinstance(layer, keras.layers.Rescaling):
        if np.ndim(layer.scale) or np.ndim(layer.offset):
            raise ValueError(f"{layer.name}: only a scalar scale and offset are exported")
        x = g.op("Mul", [x, g.constant(np.array(layer.scale, np.float32), "scale")])
        if layer.offset != 0:
            x = g.op("Add", [x, g.constant(np.array(layer.offset, np.float32), "offset")])
        return x, layout
    if isinstance(layer, FrozenSpectralConv2D):
        want = LAYOUTS[lowering]
        y = spectral_conv(
            g,
            lowering,
            _to_layout(g, x, layout, want),
            np.asarray(layer.kernel_real),
            np.asarray(layer.kernel_imag),
            layer.input_size[1],
        )
        return _activation(g, y, layer.activation, layer.name), want
    if isinstance(layer, keras.layers.Conv2D) and type(layer) is keras.layers.Conv2D:
        y = _conv2d(g, _to_layout(g, x, layout, "NCHW"), layer)
        return _activation(g, y, layer.activation, layer.name), "NCHW"
    if isinstance(layer, keras.layers.GlobalAveragePooling2D) and not layer.keepdims:
        height, width, channels = (int(size) for size in layer.input.shape[1:])
        return _global_average(g, x, layout, height, width, channels), "NF"
    if isinstance(layer, keras.layers.Dense):
        if layout != "NF":
            raise ValueError(f"{layer.name}: Dense is exported only after pooling")
        y = g.op("MatMul", [x, g.constant(np.asarray(layer.kernel), f"{layer.name}_kernel")])
        if layer.use_bias:
            y = g.op("Add", [y, g.constant(np.asarray(layer.bias), f"{layer.name}_bias")])
        return _activation(g, y, layer.activation, layer.name), layout
    if isinstance(layer, keras.layers.ReLU):
        return g.op("Relu", [x]), layout
    if isinstance(layer, keras.layers.Activation):
        return _activation(g, x, layer.activation, layer.name), layout
    raise ValueError(f"{layer.name}: layer type {type(layer).__name__} has no ONNX lowering")


def _chain(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers, checked to form a single chain (the paper's network family)."""
    layers = model.layers
    for previous, layer in zip(layers, layers[1:], strict=False):
        if layer.input is not previous.output:
            raise ValueError(
                f"{model.name}: only single-chain models are exported ({layer.name} does not "
                f"read {previous.name})"
            )
    return layers


def build_onnx(
    model: keras.Model,
    class_names: list[str],
    lowering: str = "factorized",
    opset: int | None = None,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """Lower a frozen classifier to an ONNX model (not yet checked or saved).

    Args:
        lowering: ``"factorized"`` (opset 17, default), ``"matmul"`` (opset 17) or ``"dft"``
            (opset 20); see :mod:`export.onnx_spectral`.
        opset: at least the lowering's minimum.
        metadata: extra ``metadata_props`` (class names and input size are added).
    """
    if lowering not in LOWERINGS:
        raise ValueError(f"unknown ONNX lowering {lowering!r}; choose one of {list(LOWERINGS)}")
    opset = opset or LOWERINGS[lowering]
    if opset < LOWERINGS[lowering]:
        raise ValueError(f"the {lowering} lowering needs opset >= {LOWERINGS[lowering]}")
    height, width, channels = (int(size) for size in model.inputs[0].shape[1:])
    g = GraphBuilder()
    x, layout = "image", "NHWC"
    for layer in _chain(model):
        x, layout = _layer(g, x, layout, layer, lowering)
    if layout != "NF":
        raise ValueError(f"{model.name}: the model must end in pooling and Dense layers")
    final = model.layers[-1]
    if getattr(final, "units", None) == 1:  # sigmoid head: P(class 1) -> [P0, P1]
        one = g.constant(np.ones((1, 1), np.float32), "one", key="one")
        x = g.op("Concat", [g.op("Sub", [one, x]), x], axis=1)
    classes = int(model.outputs[0].shape[-1]) if final.units != 1 else 2
    if len(class_names) != classes:
        raise ValueError(f"{len(class_names)} class names for a {classes}-class model")
    g.rename(x, "probabilities")
    g.nodes.append(
        helper.make_node("ArgMax", ["probabilities"], ["class_index"], axis=1, keepdims=0)
    )
    graph = helper.make_graph(
        g.nodes,
        model.name,
        [
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, ["batch", height, width, channels]
            )
        ],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("class_index", TensorProto.INT64, ["batch"]),
        ],
        g.initializers,
    )
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="cfconv-tf"
    )
    onnx_model.ir_version = min(onnx_model.ir_version, 10)  # loadable by older runtimes
    properties = {
        "class_names": json.dumps(list(class_names)),
        "input_size": json.dumps([height, width, channels]),
        "lowering": lowering,
        **(metadata or {}),
    }
    helper.set_model_props(onnx_model, properties)
    return onnx_model


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
