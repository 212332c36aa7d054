"""tf2onnx handlers for elementwise TensorFlow ops that tf2onnx 1.17 lacks.

Keras' exact GELU (``activation="gelu"``) computes ``Erfc``, ``celu`` computes ``Expm1``
and ``keras.ops.log1p`` computes ``Log1p``; ONNX has none of them, but has ``Erf``,
``Exp`` and ``Log``. Importing this module (which ``import cfconv_tf`` does) registers:

- ``Erfc(x) = 1 - Erf(x)`` (opset 9, where ``Erf`` appears);
- ``Expm1(x) = Exp(x) - 1``;
- ``Log1p(x) = Log(1 + x)``.

Each loses relative precision where the result is near zero (``Erfc`` of large ``x``,
``Expm1`` and ``Log1p`` of tiny ``x``), but not absolute precision, which is what the
export's parity bound (relative to the largest output) measures.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tf2onnx.onnx_opset  # noqa: F401  (tf2onnx's own handlers, registered first)
from tf2onnx import constants, utils
from tf2onnx.handler import tf_op


def _one(ctx, node) -> str:
    """A constant 1 of the node's input dtype."""
    dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    return ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype)).output[0]


def _apply_then(inner: str, outer: str, one_first: bool) -> Callable:
    """A handler that rewrites ``op(x)`` as ``outer(inner(x), 1)`` (or ``outer(1, inner(x))``)."""

    def handler(ctx, node, **kwargs) -> None:
        x = node.input[0]
        shape, dtype = ctx.get_shape(x), ctx.get_dtype(x)
        value = ctx.make_node(inner, [x], shapes=[shape], dtypes=[dtype]).output[0]
        one = _one(ctx, node)
        node.type = outer
        ctx.replace_inputs(node, [one, value] if one_first else [value, one])

    return handler


def _add_one_then(outer: str) -> Callable:
    """A handler that rewrites ``op(x)`` as ``outer(x + 1)``."""

    def handler(ctx, node, **kwargs) -> None:
        x = node.input[0]
        shape, dtype = ctx.get_shape(x), ctx.get_dtype(x)
        shifted = ctx.make_node("Add", [x, _one(ctx, node)], shapes=[shape], dtypes=[dtype])
        node.type = outer
        ctx.replace_inputs(node, [shifted.output[0]])

    return handler


HANDLERS = {  # TensorFlow op -> (first ONNX opset, handler)
    "Erfc": (9, _apply_then("Erf", "Sub", one_first=True)),
    "Expm1": (1, _apply_then("Exp", "Sub", one_first=False)),
    "Log1p": (1, _add_one_then("Log")),
}

for _name, (_opset, _handler) in HANDLERS.items():
    tf_op.register_handler(_handler, _opset, [_name], constants.ONNX_DOMAIN, {})
