"""tf2onnx handlers for TensorFlow's 2D real FFTs: CF-Conv graphs convert without complex tensors.

tf2onnx converts ``RFFT2D`` only when its sole consumer is ``ComplexAbs`` and has no
handler for ``IRFFT2D`` or for the ``Bitcast`` that views a complex tensor as float
pairs; left alone it writes a file onnxruntime rejects. Importing this module (which
``import cfconv_tf`` does) registers handlers for the three ops at every opset, so any
tf2onnx conversion of a graph that uses them in the way :mod:`cfconv_tf.spectral` does
(``rfft2d -> bitcast to float pairs -> real arithmetic -> bitcast to complex -> irfft2d``)
gives a correct ONNX model, Keras' own ``model.export(path, format="onnx")`` included.

A complex tensor ``[..., H, Wf]`` is carried as float ``[..., H, Wf, 2]`` (real,
imaginary), exactly TensorFlow's float view of it after ``Bitcast``, so the bitcasts
become ``Identity``. Each transform is written as (see :func:`transforms_as`):

- ``"matmul"`` (the default, any opset): real MatMuls with constant DFT matrices, a
  dense ``O(N^2)`` transform per axis;
- ``"dft"`` (opset 17): ONNX ``DFT`` nodes in their opset-17 form (an inverse one-sided
  ``DFT``, i.e. irfft, runs correctly in onnxruntime only in its opset-20 form, so an
  exporter converts the model to opset 20 afterwards, see :mod:`export.onnx_export`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import numpy as np
import tf2onnx.onnx_opset  # noqa: F401  (tf2onnx's own handlers, registered first so ours replace them)
from onnx import TensorProto
from tf2onnx import constants, utils
from tf2onnx.handler import tf_op

TRANSFORMS = {"matmul": 1, "dft": 17}  # how transforms are written -> minimum opset
_TRANSFORM: ContextVar[str] = ContextVar("cfconv_onnx_transform", default="matmul")
_COMPLEX_PARTS = {
    TensorProto.COMPLEX64: TensorProto.FLOAT,
    TensorProto.COMPLEX128: TensorProto.DOUBLE,
}


@contextlib.contextmanager
def transforms_as(kind: str) -> Iterator[None]:
    """Write the FFTs of conversions run inside this block as ``kind`` (:data:`TRANSFORMS`)."""
    if kind not in TRANSFORMS:
        raise ValueError(f"unknown transform {kind!r}; choose one of {sorted(TRANSFORMS)}")
    token = _TRANSFORM.set(kind)
    try:
        yield
    finally:
        _TRANSFORM.reset(token)


def _angles(rows: int, cols: int, length: int) -> np.ndarray:
    """``2 pi r c / length`` in float64 (exact integer products before the division)."""
    return 2.0 * np.pi * (np.outer(np.arange(rows), np.arange(cols)) % length) / length


def _const(ctx, value: np.ndarray, hint: str) -> str:
    return ctx.make_const(utils.make_name(hint), value).output[0]


def _node(ctx, op_type: str, inputs: list[str], shape: list[int], dtype: int, **attrs) -> str:
    return ctx.make_node(op_type, inputs, attr=attrs, shapes=[shape], dtypes=[dtype]).output[0]


def _fft_size(node) -> tuple[int, int]:
    """``(H, W)`` of a 2D transform: its constant ``fft_length``."""
    length = node.inputs[1]
    utils.make_sure(length.is_const(), "%s: fft_length must be a constant", node.name)
    height, width = (int(size) for size in length.get_tensor_value(as_list=True))
    return height, width


def _replace(ctx, node, output: str) -> None:
    ctx.replace_all_inputs(node.output[0], output)
    ctx.remove_node(node.name)


def _swap_parts(width: int) -> np.ndarray:
    """``[2 Wf, 2 Wf]``: pairs ``(re, im) -> (im, -re)``, i.e. multiplication by ``-j``."""
    swap = np.zeros((2 * width, 2 * width), np.float32)
    swap[1::2, 0::2] = np.eye(width)
    swap[0::2, 1::2] = -np.eye(width)
    return swap


def _complex_matmul_rows(ctx, z: str, shape: list[int], real: np.ndarray, imag: np.ndarray) -> str:
    """``(R + j I) @ z`` over the second-to-last axis of interleaved pairs ``z [..., N, 2 M]``.

    ``(R + j I) z = R z + I (j z) = R z - I (-j z)``: one MatMul by ``[R | -I]`` of ``z``
    stacked over ``-j z`` along that axis.
    """
    rank, length = len(shape), shape[-1]
    turned = _node(
        ctx, "MatMul", [z, _const(ctx, _swap_parts(length // 2), "swap")], shape, TensorProto.FLOAT
    )
    stacked_shape = shape[:-2] + [2 * shape[-2], length]
    stacked = _node(ctx, "Concat", [z, turned], stacked_shape, TensorProto.FLOAT, axis=rank - 2)
    matrix = np.concatenate([real, -imag], axis=1).astype(np.float32)
    out_shape = shape[:-2] + [real.shape[0], length]
    return _node(
        ctx, "MatMul", [_const(ctx, matrix, "dft_rows"), stacked], out_shape, TensorProto.FLOAT
    )


def _rfft2d_matmul(ctx, x: str, shape: list[int], height: int, width: int) -> str:
    """``x [..., H, W]`` -> interleaved ``[..., H, 2 Wf]``: rfft along W, then a DFT along H."""
    half = width // 2 + 1
    theta = _angles(width, half, width)
    forward_w = np.stack([np.cos(theta), -np.sin(theta)], axis=2).reshape(width, 2 * half)
    rows = _node(
        ctx,
        "MatMul",
        [x, _const(ctx, forward_w.astype(np.float32), "rfft_w")],
        shape[:-1] + [2 * half],
        TensorProto.FLOAT,
    )
    theta_h = _angles(height, height, height)  # exp(-j theta) = cos - j sin
    return _complex_matmul_rows(
        ctx, rows, shape[:-1] + [2 * half], np.cos(theta_h), -np.sin(theta_h)
    )


def _irfft2d_matmul(ctx, z: str, shape: list[int], height: int, width: int) -> str:
    """Interleaved ``z [..., H, 2 Wf]`` -> ``[..., H, W]``: inverse DFT along H, then c2r along W.

    c2r counts interior columns twice (once for their conjugate mirror), the DC (and
    Nyquist) column once, and reads only the real part of those two, as every irfft does.
    """
    half = width // 2 + 1
    theta_h = _angles(height, height, height)  # exp(+j theta) / H
    rows = _complex_matmul_rows(ctx, z, shape, np.cos(theta_h) / height, np.sin(theta_h) / height)
    weights = np.full(half, 2.0)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    theta = _angles(half, width, width)
    inverse_w = np.stack([weights[:, None] * np.cos(theta), -weights[:, None] * np.sin(theta)], 1)
    inverse_w = (inverse_w.reshape(2 * half, width) / width).astype(np.float32)
    return _node(
        ctx,
        "MatMul",
        [rows, _const(ctx, inverse_w, "irfft_w")],
        shape[:-1] + [width],
        TensorProto.FLOAT,
    )


def _reshape(ctx, x: str, shape: list[int]) -> str:
    """Reshape to a static ``shape`` (``-1`` for the one unknown axis, the batch).

    The shape is spelled out: tf2onnx's optimizer merges consecutive Reshapes, which is
    wrong for ONNX's "copy this axis" zeros.
    """
    utils.make_sure(
        sum(size < 0 for size in shape) <= 1, "cannot reshape to %s: several unknown axes", shape
    )
    dims = _const(ctx, np.array([max(size, -1) for size in shape], np.int64), "shape")
    return _node(ctx, "Reshape", [x, dims], shape, TensorProto.FLOAT)


def _check_opset(ctx, node) -> str:
    kind = _TRANSFORM.get()
    utils.make_sure(
        ctx.opset >= TRANSFORMS[kind],
        "%s: the %r transform needs ONNX opset >= %d, this conversion targets %d",
        node.name,
        kind,
        TRANSFORMS[kind],
        ctx.opset,
    )
    return kind


def _rfft2d(ctx, node, **kwargs) -> None:
    """``RFFT2D(x [..., H, W])`` -> float ``[..., H, W//2+1, 2]``.

    A transform read only by ``ComplexAbs`` is left to tf2onnx's own handler, which
    converts exactly that pattern.
    """
    consumers = ctx.find_output_consumers(node.output[0])
    if consumers and all(consumer.type == "ComplexAbs" for consumer in consumers):
        _tf2onnx_handler("RFFT2D", ctx.opset)(ctx, node, **kwargs)
        return
    kind = _check_opset(ctx, node)
    height, width = _fft_size(node)
    x, shape = node.input[0], ctx.get_shape(node.input[0])
    utils.make_sure(
        shape is not None and shape[-2:] == [height, width],
        "%s: RFFT2D of shape %s with fft_length %s (padding or cropping) is not supported",
        node.name,
        shape,
        [height, width],
    )
    rank, half = len(shape), width // 2 + 1
    spectrum_shape = shape[:-1] + [half, 2]
    if kind == "dft":
        real = _reshape(ctx, x, shape + [1])
        length = _const(ctx, np.array(width, np.int64), "dft_length")
        rows = _node(
            ctx, "DFT", [real, length], spectrum_shape, TensorProto.FLOAT, axis=rank - 1, onesided=1
        )
        spectrum = _node(ctx, "DFT", [rows], spectrum_shape, TensorProto.FLOAT, axis=rank - 2)
    else:
        pairs = _rfft2d_matmul(ctx, x, shape, height, width)
        spectrum = _reshape(ctx, pairs, spectrum_shape)
    _replace(ctx, node, spectrum)


def _irfft2d(ctx, node, **kwargs) -> None:
    """``IRFFT2D`` of float pairs ``[..., H, W//2+1, 2]`` -> ``[..., H, W]``."""
    kind = _check_opset(ctx, node)
    height, width = _fft_size(node)
    shape = ctx.get_shape(node.output[0])
    utils.make_sure(
        shape is not None and shape[-2:] == [height, width],
        "%s: IRFFT2D to shape %s with fft_length %s is not supported",
        node.name,
        shape,
        [height, width],
    )
    rank, half = len(shape), width // 2 + 1
    pairs = node.input[0]
    if kind == "dft":
        spectrum_shape = shape[:-1] + [half, 2]
        length = _const(ctx, np.array(width, np.int64), "dft_length")
        rows = _node(
            ctx, "DFT", [pairs], spectrum_shape, TensorProto.FLOAT, axis=rank - 2, inverse=1
        )
        real = _node(
            ctx,
            "DFT",
            [rows, length],
            shape + [1],
            TensorProto.FLOAT,
            axis=rank - 1,
            inverse=1,
            onesided=1,
        )
        output = _reshape(ctx, real, shape)
    else:
        interleaved = _reshape(ctx, pairs, shape[:-1] + [2 * half])
        output = _irfft2d_matmul(ctx, interleaved, shape[:-1] + [2 * half], height, width)
    _replace(ctx, node, output)


def _bitcast(ctx, node, **kwargs) -> None:
    """A complex <-> float-pairs ``Bitcast`` is an ``Identity`` on the float-pairs form."""
    source, target = ctx.get_dtype(node.input[0]), ctx.get_dtype(node.output[0])
    if target in _COMPLEX_PARTS:  # float pairs [..., 2] -> complex [...]
        node.type = "Identity"
        ctx.set_dtype(node.output[0], _COMPLEX_PARTS[target])
        ctx.set_shape(node.output[0], ctx.get_shape(node.output[0]) + [2])
        return
    utils.make_sure(
        source in _COMPLEX_PARTS or source == target,
        "%s: Bitcast from ONNX type %s to %s has no ONNX form",
        node.name,
        source,
        target,
    )
    node.type = "Identity"


_TF2ONNX_HANDLERS: dict[str, dict[int, Callable]] = {}  # op -> opset -> tf2onnx's handler


def _tf2onnx_handler(name: str, opset: int) -> Callable:
    """tf2onnx's own handler of ``name`` for ``opset`` (the newest at or below it)."""
    versions = _TF2ONNX_HANDLERS[name]
    return versions[max(version for version in versions if version <= opset)]


def _register(name: str, handler: Callable) -> None:
    """Register ``handler`` for ``name`` at opset 1 and wherever tf2onnx has its own (kept)."""
    opsets = tf_op.get_opsets().get(constants.ONNX_DOMAIN, [])
    own = {v: ops[name][0] for v, ops in enumerate(opsets) if name in ops}
    _TF2ONNX_HANDLERS[name] = own
    for version in sorted({1, *own}):
        tf_op.register_handler(handler, version, [name], constants.ONNX_DOMAIN, {})


_register("RFFT2D", _rfft2d)
_register("IRFFT2D", _irfft2d)
_register("Bitcast", _bitcast)
