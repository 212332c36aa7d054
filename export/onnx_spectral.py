"""ONNX lowerings of one spectral convolution: rfft2 -> multiply-accumulate -> irfft2.

Both lowerings take an NCHW float tensor ``[N, Cin, H, W]`` and return
``[N, Cout, H, W]``; neither uses complex tensors. They share the channel mixing,
done per frequency as real batched MatMuls:
``Yr = Xr Kr - Xi Ki``, ``Yi = Xr Ki + Xi Kr`` over ``[H*Wf, N, C]`` operands.

- ``matmul``: the transforms as real MatMuls with constant DFT matrices (opset 17,
  any runtime and execution provider).
- ``dft``: the ONNX ``DFT`` operator (opset 20, RFFT/IRFFT via ``onesided``), for
  runtimes that implement it well.
"""

from __future__ import annotations

import numpy as np

from export.onnx_builder import GraphBuilder

LOWERINGS = {"matmul": 17, "dft": 20}  # lowering -> minimum opset


def _angles(rows: int, cols: int, length: int) -> np.ndarray:
    """``2 pi r c / length`` in float64 (exact integer products before the division)."""
    product = np.outer(np.arange(rows), np.arange(cols)) % length
    return 2.0 * np.pi * product / length


def _mix_channels(
    g: GraphBuilder, spectrum: str, kernel_real: np.ndarray, kernel_imag: np.ndarray
) -> str:
    """``[H, Wf, N, 2, Cin]`` (real, imaginary) -> ``[H, Wf, N, 2, Cout]``."""
    height, half_width, cin, cout = kernel_real.shape
    frequencies = height * half_width
    stacked = g.reshape(spectrum, [frequencies, -1, 2 * cin])
    xr = g.op("Slice", [stacked, g.shape([0]), g.shape([cin]), g.shape([2])])
    xi = g.op("Slice", [stacked, g.shape([cin]), g.shape([2 * cin]), g.shape([2])])
    kr = g.constant(kernel_real.reshape(frequencies, cin, cout), "kernel_real")
    ki = g.constant(kernel_imag.reshape(frequencies, cin, cout), "kernel_imag")
    yr = g.op("Sub", [g.op("MatMul", [xr, kr]), g.op("MatMul", [xi, ki])])
    yi = g.op("Add", [g.op("MatMul", [xr, ki]), g.op("MatMul", [xi, kr])])
    mixed = g.op("Concat", [yr, yi], axis=2)  # [H*Wf, N, 2*Cout]
    return g.reshape(mixed, [height, half_width, -1, 2, cout])


def spectral_conv_matmul(
    g: GraphBuilder, x: str, kernel_real: np.ndarray, kernel_imag: np.ndarray, width: int
) -> str:
    """The transforms as constant real DFT matrices (see the module docstring)."""
    height, half_width, cin, cout = kernel_real.shape
    size = f"{height}x{width}"
    # rfft along W: x [N,C,H,W] @ [cos | -sin] [W, 2Wf] -> [N,C,H,2,Wf]
    theta_w = _angles(width, half_width, width)
    forward_w = np.concatenate([np.cos(theta_w), -np.sin(theta_w)], axis=1)
    xw = g.op("MatMul", [x, g.constant(forward_w.astype(np.float32), "rfft_w", f"rfft_w{size}")])
    xw = g.transpose(g.reshape(xw, [-1, cin, height, 2, half_width]), [0, 1, 3, 2, 4])
    # full DFT along H of the complex [Re; Im] stacked on rows: [[C, S], [-S, C]]
    theta_h = _angles(height, height, height)
    cos_h, sin_h = np.cos(theta_h), np.sin(theta_h)
    forward_h = np.block([[cos_h, sin_h], [-sin_h, cos_h]]).astype(np.float32)
    stacked = g.reshape(xw, [-1, cin, 2 * height, half_width])
    xh = g.op("MatMul", [g.constant(forward_h, "dft_h", f"dft_h{size}"), stacked])
    spectrum = g.transpose(g.reshape(xh, [-1, cin, 2, height, half_width]), [3, 4, 0, 2, 1])
    mixed = _mix_channels(g, spectrum, kernel_real, kernel_imag)
    # inverse DFT along H: [[C, -S], [S, C]] / H
    inverse_h = (np.block([[cos_h, -sin_h], [sin_h, cos_h]]) / height).astype(np.float32)
    rows = g.reshape(g.transpose(mixed, [2, 4, 3, 0, 1]), [-1, cout, 2 * height, half_width])
    zh = g.op("MatMul", [g.constant(inverse_h, "idft_h", f"idft_h{size}"), rows])
    zh = g.transpose(g.reshape(zh, [-1, cout, 2, height, half_width]), [0, 1, 3, 2, 4])
    # c2r along W: y = Zr @ (c_k cos / W) - Zi @ (c_k sin / W); the imaginary parts of
    # the DC and Nyquist bins meet sin = 0, as in every irfft.
    weights = np.full(half_width, 2.0)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    theta = _angles(half_width, width, width)
    inverse_w = (
        np.concatenate(
            [weights[:, None] * np.cos(theta), -weights[:, None] * np.sin(theta)], axis=0
        )
        / width
    )
    flat = g.reshape(zh, [-1, cout, height, 2 * half_width])
    return g.op(
        "MatMul", [flat, g.constant(inverse_w.astype(np.float32), "irfft_w", f"irfft_w{size}")]
    )


def spectral_conv_dft(
    g: GraphBuilder, x: str, kernel_real: np.ndarray, kernel_imag: np.ndarray, width: int
) -> str:
    """The transforms as ONNX ``DFT`` (opset 20) nodes."""
    height, half_width, cin, cout = kernel_real.shape
    axis_h = g.constant(np.array(2, np.int64), "axis", key="axis2")
    axis_w = g.constant(np.array(3, np.int64), "axis", key="axis3")
    length_w = g.constant(np.array(width, np.int64), "dft_length", key=f"length{width}")
    real = g.reshape(x, [-1, cin, height, width, 1])
    xw = g.op("DFT", [real, length_w, axis_w], onesided=1)  # [N,C,H,Wf,2]
    xh = g.op("DFT", [xw, "", axis_h])
    spectrum = g.transpose(xh, [2, 3, 0, 4, 1])  # [H,Wf,N,2,C]
    mixed = _mix_channels(g, spectrum, kernel_real, kernel_imag)
    back = g.transpose(mixed, [2, 4, 0, 1, 3])  # [N,Cout,H,Wf,2]
    zh = g.op("DFT", [back, "", axis_h], inverse=1)
    y = g.op("DFT", [zh, length_w, axis_w], inverse=1, onesided=1)  # [N,Cout,H,W,1]
    return g.reshape(y, [-1, cout, height, width])


def spectral_conv(
    g: GraphBuilder,
    lowering: str,
    x: str,
    kernel_real: np.ndarray,
    kernel_imag: np.ndarray,
    width: int,
) -> str:
    """Dispatch to the named lowering."""
    if lowering == "matmul":
        return spectral_conv_matmul(g, x, kernel_real, kernel_imag, width)
    if lowering == "dft":
        return spectral_conv_dft(g, x, kernel_real, kernel_imag, width)
    raise ValueError(f"unknown ONNX lowering {lowering!r}; choose one of {list(LOWERINGS)}")
