"""The ONNX lowerings of a frozen spectral convolution: rfft2 -> multiply-accumulate -> irfft2.

The whole model goes through tf2onnx; a lowering decides only what the frozen spectral
layers look like to it. No lowering leaves a complex tensor in the ONNX graph:

- ``factorized`` (default, opset 17): while the model is traced for conversion, each
  frozen layer computes its convolution with :func:`factorized_spectral_conv2d`, plain
  TensorFlow MatMuls and Reshapes that tf2onnx converts one to one. The transforms are
  two short DFT stages per axis (:mod:`export.factorized_dft`) on activations laid out
  ``[W, H, N, C]``; the spectrum stays in the stages' digit-reversed order and the kernel
  is stored in that order, so nothing is reordered.
- ``matmul`` (opset 17): the layer's ordinary TensorFlow graph (``RFFT2D``, ``IRFFT2D``);
  :mod:`export.tf2onnx_handlers` writes each transform as dense real DFT matrices.
- ``dft`` (opset 20): the same graph, each transform written as ONNX ``DFT`` nodes, for
  runtimes that implement them well.
- ``native`` (opset 17): each layer is one ``ai.cfconv.SpectralConv2D`` node, the
  package's compiled kernel (:mod:`export.native`); only onnxruntime with that library
  registered runs it (:func:`export.ort_session.onnx_session` registers it). A ``Relu``
  that alone reads a node's output is folded into it (:func:`fuse_native_relu`).
"""

from __future__ import annotations

import numpy as np
import onnx
import tensorflow as tf

from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.spectral import spectral_conv2d
from export.compact import EXACT, KernelStorage, layer_stored, stored
from export.factorized_dft import FactorizedDFT
from export.names import NATIVE_ACTIVATION, NATIVE_DOMAIN, NATIVE_OP

LOWERINGS = {"factorized": 17, "matmul": 17, "dft": 20, "native": 17}  # -> minimum opset
NATIVE_PLACEHOLDER = "cfconv_native_spectral_conv"  # TF name of the op tf2onnx rewrites


def kernel_operands(
    layer: FrozenSpectralConv2D, lowering: str, storage: KernelStorage = EXACT
) -> dict[str, np.ndarray]:
    """The kernel constants a lowering's graph reads for ``layer``, as ``storage`` keeps
    them, by part name (:func:`kernel_from_operands` turns them back into the kernel).

    Kernel layout: ``factorized``: ``[F, Cin, Cout]`` in the plan's digit-reversed
    frequency order (:meth:`FactorizedDFT.kernel_order`); ``native``: the half spectrum
    with the width frequency outermost, ``[W//2+1, H, Cin, Cout]`` (the op's layout); the
    others: the half spectrum ``[H, W//2+1, Cin, Cout]`` as the layer holds it. With a rank,
    each part ``real`` / ``imag`` is stored as ``<part>_frequencies`` ``[F or H * Wf, r]``
    and ``<part>_channels`` ``[r, Cin * Cout]``; int8 parts come with their ``scale``, the
    kernel's layout without ``Cin`` (:mod:`export.compact`).
    """
    if storage.rank is None:
        scale = None
        if storage.dtype == "int8":
            kernel_real, kernel_imag, scale = layer_stored(layer, storage)
        else:
            kernel_real, kernel_imag = (np.asarray(part) for part in layer.get_weights())
        parts = {"real": kernel_real, "imag": kernel_imag}
        if lowering == "factorized":
            plan = _plan(layer)
            parts = dict(zip(parts, plan.kernel_order(kernel_real, kernel_imag), strict=True))
            if scale is not None:  # a gather of frequencies: the scales follow it
                rows, columns, _ = plan.half_spectrum_sources()
                scale = scale[rows, columns]
        elif lowering == "native":
            parts = {name: _width_first(value) for name, value in parts.items()}
            scale = None if scale is None else _width_first(scale)
        operands = {name: stored(value, storage) for name, value in parts.items()}
        return operands if scale is None else {**operands, "scale": scale}
    (u_real, v_real), (u_imag, v_imag) = layer_stored(layer, storage)
    if lowering == "factorized":  # a gather of frequencies (and a sign): rows of U follow it
        rows, columns, sign = _plan(layer).half_spectrum_sources()
        u_real, u_imag = u_real[rows, columns], u_imag[rows, columns] * sign[:, None]
    elif lowering == "native":
        u_real, u_imag = _width_first(u_real), _width_first(u_imag)
    operands = {}
    for part, u, v in (("real", u_real, v_real), ("imag", u_imag, v_imag)):
        operands[f"{part}_frequencies"] = stored(u.reshape(-1, u.shape[-1]), storage)
        operands[f"{part}_channels"] = stored(v.reshape(v.shape[0], -1), storage)
    return operands


def kernel_from_operands(
    layer: FrozenSpectralConv2D, lowering: str, operands: dict[str, tf.Tensor]
) -> tuple[tf.Tensor, ...]:
    """The kernel a lowering convolves with, from the tensors holding
    :func:`kernel_operands` (a MatMul of the factors, or int8 values times their scales,
    which a runtime folds at load): the float32 parts, but for the native lowering, which
    reads float16 or int8 parts as stored (int8 ones followed by their scales)."""
    height, width = layer.input_size
    cin, cout = layer.kernel_real.shape[2:]
    if lowering == "factorized":
        rows = [_plan(layer).frequencies]
    elif lowering == "native":
        rows = [width // 2 + 1, height]
    else:
        rows = [height, width // 2 + 1]
    scale = operands.get("scale")
    kernel = []
    for part in ("real", "imag"):
        if part in operands:
            value = operands[part]
            if lowering != "native":
                value = tf.cast(value, tf.float32)
                if scale is not None:
                    value = value * tf.expand_dims(scale, -2)  # over the input channels
        else:
            frequencies, channels = (
                tf.cast(operands[f"{part}_{name}"], tf.float32)
                for name in ("frequencies", "channels")
            )
            value = tf.reshape(tf.matmul(frequencies, channels), [*rows, cin, cout])
        kernel.append(value)
    if lowering == "native" and scale is not None:
        kernel.append(scale)
    return tuple(kernel)


def lowered_convolution(
    lowering: str, layer: FrozenSpectralConv2D, x: tf.Tensor, *kernel: tf.Tensor
) -> tf.Tensor:
    """``layer``'s convolution of ``x [N, H, W, Cin]`` as the lowering writes it.

    ``kernel``: the tensors :func:`kernel_from_operands` gives (the real and imaginary
    parts, and for the native lowering's int8 parts their scales).
    """
    if lowering == "factorized":
        return factorized_spectral_conv2d(x, *kernel, _plan(layer))
    if lowering == "native":
        return native_placeholder(x, *kernel)
    return spectral_conv2d(x, *kernel)


def native_placeholder(x: tf.Tensor, *kernel: tf.Tensor) -> tf.Tensor:
    """A stand-in op in the traced graph that the converter turns into one
    ``SpectralConv2D`` node (:func:`native_node`): ``x [N, H, W, Cin]`` and the half-spectrum
    kernel parts ``[W//2+1, H, Cin, Cout]`` (int8 ones followed by their scales
    ``[W//2+1, H, Cout]``) in, ``[N, H, W, Cout]`` out. It is only traced, never run."""

    def not_run(*_: np.ndarray) -> np.ndarray:
        raise RuntimeError("the native spectral convolution runs only in its ONNX file")

    y = tf.numpy_function(not_run, [x, *kernel], tf.float32, name=NATIVE_PLACEHOLDER)
    # The converter sees no shape on a PyFunc's output; without one, later layers convert
    # wrongly (a Conv after it would lose its NHWC -> NCHW transposes).
    return tf.ensure_shape(y, [*x.shape[:3], kernel[0].shape[-1]])


def native_node(ctx, node, name: str, args) -> None:
    """tf2onnx handler (old-style ``custom_op_handlers`` signature) turning the placeholder
    ``PyFunc`` into ``ai.cfconv.SpectralConv2D``; any other ``PyFunc`` is refused."""
    if NATIVE_PLACEHOLDER not in name:
        raise ValueError(f"{name}: tf.numpy_function / tf.py_function cannot be exported")
    node.type, node.domain = NATIVE_OP, NATIVE_DOMAIN
    for key in list(node.attr):  # PyFunc's token and types: the custom op takes none
        del node.attr[key]
    x_shape, kernel_shape = (ctx.get_shape(tensor) for tensor in node.input[:2])
    ctx.set_shape(node.output[0], [*x_shape[:3], kernel_shape[-1]])  # ONNX cannot infer it
    ctx.set_dtype(node.output[0], ctx.get_dtype(node.input[0]))


def _width_first(array: np.ndarray) -> np.ndarray:
    """A half-spectrum array ``[H, W//2+1, ...]`` in the native op's layout ``[W//2+1, H,
    ...]``."""
    return np.ascontiguousarray(np.swapaxes(array, 0, 1))


def _plan(layer: FrozenSpectralConv2D) -> FactorizedDFT:
    height, width = layer.input_size
    return FactorizedDFT.for_size(height, width, layer.filters)


def factorized_spectral_conv2d(
    x: tf.Tensor, ordered_real: tf.Tensor, ordered_imag: tf.Tensor, plan: FactorizedDFT
) -> tf.Tensor:
    """Circular convolution of ``x [N, H, W, Cin]`` with a spectral kernel, as MatMuls.

    ``ordered_real``/``ordered_imag`` are the kernel ``[F, Cin, Cout]`` in ``plan``'s
    frequency order (:meth:`FactorizedDFT.kernel_order` of a half spectrum with
    Hermitian DC and Nyquist columns). Returns ``[N, H, W, Cout]``: the same function as
    :func:`cfconv_tf.spectral.spectral_conv2d`.

    Inside, activations are ``[W, H, N, C]``: every stage contracts the axis right after
    the slow ones, so it is a plain (broadcast) MatMul ``M @ t`` with the batch and
    channels in the trailing columns, and the reshapes between stages are free. The two
    transposes at the ends cancel against the next spectral layer's once tf2onnx's
    optimizer pushes them through the elementwise layers between. The mixing's four
    real products are not combined elementwise: one MatMul computes ``X Kr`` and ``X Ki``
    side by side, and the first inverse stage reads both (:func:`_mixed_inverse`).
    """
    _, height, width, cin = x.shape
    if (plan.height, plan.width) != (height, width):
        raise ValueError(f"a {plan.height}x{plan.width} plan for a {height}x{width} layer")
    cout = ordered_real.shape[-1]
    columns, kept = plan.width_columns, plan.kept_first
    hfirst, hsecond = plan.height_first, plan.height_second
    wfirst, wsecond = plan.width_first, plan.width_second

    def stage(matrix: np.ndarray, name: str, t: tf.Tensor) -> tf.Tensor:
        return tf.matmul(tf.constant(matrix, tf.float32, name=name), t, name=f"{name}_stage")

    t = tf.transpose(x, [2, 1, 0, 3])  # [W, H, N, Cin]; W = (n1, n2) slowest
    t = stage(plan.forward_width_first, "rfft_w1", tf.reshape(t, [wfirst, -1]))
    t = stage(plan.forward_width_second, "dft_w2", tf.reshape(t, [kept, 2 * wsecond, -1]))
    t = stage(plan.forward_height_first, "dft_h1", tf.reshape(t, [columns, 2 * hfirst, -1]))
    t = stage(
        plan.forward_height_second, "dft_h2", tf.reshape(t, [columns, hfirst, 2 * hsecond, -1])
    )
    spectrum = tf.reshape(t, [plan.frequencies, 1, -1, cin])  # [F, 1, 2N (part, n), Cin]
    kernel = tf.stack([ordered_real, ordered_imag], axis=1)  # [F, 2, Cin, Cout]; folded at load
    products = tf.matmul(spectrum, kernel, name="kernel_stage")  # [F, 2, 2N, Cout]
    products = tf.reshape(products, [columns, hfirst, 4 * hsecond, -1])  # (k2h, kernel part, part)
    t = stage(_mixed_inverse(plan.inverse_height_second), "idft_h2", products)
    t = stage(plan.inverse_height_first, "idft_h1", tf.reshape(t, [columns, 2 * hfirst, -1]))
    t = stage(plan.inverse_width_second, "idft_w2", tf.reshape(t, [kept, 2 * wsecond, -1]))
    t = stage(plan.inverse_width_first, "irfft_w1", tf.reshape(t, [2 * kept, -1]))
    return tf.transpose(tf.reshape(t, [width, height, -1, cout]), [2, 1, 0, 3])


def _mixed_inverse(inverse: np.ndarray) -> np.ndarray:
    """``M [.., O, 2 K]`` acting on ``(k, part)`` -> ``[.., O, 4 K]`` acting on
    ``(k, kernel part, part)``: the products ``P = X Kr`` and ``Q = X Ki`` side by side.

    ``M [Yr; Yi] = M P + M' Q``, where ``M'`` takes ``M``'s imaginary-part column for
    ``Q``'s real part and minus its real-part column for ``Q``'s imaginary part (``Y = X K``
    with ``Yr = Pr - Qi`` and ``Yi = Pi + Qr``), so one MatMul both mixes the products and
    starts the inverse transform.
    """
    swapped = np.empty_like(inverse)
    swapped[..., 0::2], swapped[..., 1::2] = inverse[..., 1::2], -inverse[..., 0::2]
    both = np.stack([inverse, swapped], axis=-2)  # [.., O, kernel part, (k, part)]
    *leading, outputs, _, width = both.shape
    both = both.reshape(*leading, outputs, 2, width // 2, 2).swapaxes(-3, -2)
    return both.reshape(*leading, outputs, 2 * width)


def fuse_native_relu(graph: onnx.GraphProto) -> int:
    """Fold each ``Relu`` that is the only reader of a ``SpectralConv2D`` output into that
    node (``activation="relu"``), so the op applies it while its output rows are in cache
    instead of the graph making a pass of its own over them. An output that anything else
    reads, or that the graph returns, keeps its ``Relu``.

    Returns:
        the number of ``Relu`` nodes folded.
    """
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    returned = {value.name for value in graph.output}
    folded = []
    for node in graph.node:
        if node.domain != NATIVE_DOMAIN or node.op_type != NATIVE_OP:
            continue
        (output,) = node.output
        found = readers.get(output, [])
        if output in returned or len(found) != 1 or found[0].op_type != "Relu":
            continue
        (relu,) = found
        node.attribute.append(onnx.helper.make_attribute(NATIVE_ACTIVATION, "relu"))
        node.output[0] = relu.output[0]
        folded.append(relu)
        stale = [info for info in graph.value_info if info.name == output]
        for info in stale:
            graph.value_info.remove(info)
    for relu in folded:
        graph.node.remove(relu)
    return len(folded)
