"""A small helper for writing ONNX graphs node by node with unique names."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


class GraphBuilder:
    """Collects nodes and constant initializers; hands out unique tensor names.

    Constants are de-duplicated by key so layers of the same size share their DFT
    matrices.
    """

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constants: dict[str, str] = {}
        self._counter = 0

    def fresh(self, hint: str) -> str:
        self._counter += 1
        return f"{hint}_{self._counter}"

    def constant(self, array: np.ndarray, hint: str, key: str | None = None) -> str:
        """Add ``array`` as an initializer (once per ``key``) and return its name."""
        if key is not None and key in self._constants:
            return self._constants[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.require(array, requirements="C"), name))
        if key is not None:
            self._constants[key] = name
        return name

    def shape(self, dims: list[int]) -> str:
        """An int64 shape constant for Reshape (``-1`` marks the batch axis)."""
        return self.constant(np.array(dims, np.int64), "shape", key=f"shape{dims}")

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        """Append one single-output node (named as its output, for profiles); return the output."""
        output = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def reshape(self, tensor: str, dims: list[int]) -> str:
        return self.op("Reshape", [tensor, self.shape(dims)])

    def transpose(self, tensor: str, perm: list[int]) -> str:
        return self.op("Transpose", [tensor], perm=perm)

    def rename(self, tensor: str, name: str) -> None:
        """Make the node producing ``tensor`` write to ``name`` (a graph output)."""
        for node in self.nodes:
            for index, output in enumerate(node.output):
                if output == tensor:
                    node.output[index] = name
