"""ONNX lowerings of one spectral convolution: rfft2 -> multiply-accumulate -> irfft2.

No lowering uses complex tensors; each mixes channels per frequency as real batched
MatMuls, ``Yr = Xr Kr - Xi Ki``, ``Yi = Xr Ki + Xi Kr``. Each reads and writes one
activation layout (``LAYOUTS``), so consecutive layers of the same lowering need no
transposes between them:

- ``factorized`` (default, opset 17, ``WHNC`` = ``[W, H, N, C]``): the transforms as
  two short DFT stages per axis (:mod:`export.factorized_dft`), each one MatMul with a
  small constant matrix; the spectrum stays in the factorized (digit-reversed) order
  and the kernel is stored in that order.
- ``matmul`` (opset 17, ``NCHW``): the transforms as dense real DFT matrices, O(N^2)
  per axis.
- ``dft`` (opset 20, ``NCHW``): the ONNX ``DFT`` operator (RFFT/IRFFT via
  ``onesided``), for runtimes that implement it well.
"""

from __future__ import annotations

import numpy as np

from export.factorized_dft import FactorizedDFT
from export.onnx_builder import GraphBuilder

LOWERINGS = {"factorized": 17, "matmul": 17, "dft": 20}  # lowering -> minimum opset
LAYOUTS = {"factorized": "WHNC", "matmul": "NCHW", "dft": "NCHW"}  # activation layout


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


def spectral_conv_factorized(
    g: GraphBuilder,
    x: str,
    kernel_real: np.ndarray,
    kernel_imag: np.ndarray,
    width: int,
    plan: FactorizedDFT | None = None,
) -> str:
    """Factorized transforms on ``WHNC`` activations ``[W, H, N, Cin]`` -> ``[W, H, N, Cout]``.

    Every stage contracts the axis right after the slow ones, so it is a plain
    (broadcast) MatMul ``M @ t`` with the batch and channels in the trailing columns;
    the reshapes between stages are free. The channel mixing's four real products are
    not combined elementwise: the first inverse stage multiplies ``X Kr`` and ``X Ki``
    each by its own matrix and adds the two (measured: 114 ms against 139 ms for one
    Concat and a double-width stage; 6 layers, batch 32, ``cfconv bench profile``).

    ``plan`` defaults to the cheapest splits (:meth:`FactorizedDFT.for_size`).
    """
    height, _, cin, cout = kernel_real.shape
    plan = plan or FactorizedDFT.for_size(height, width, cout)
    if (plan.height, plan.width) != (height, width):
        raise ValueError(f"a {plan.height}x{plan.width} plan for a {height}x{width} layer")
    # layers share a stage's matrix only if they share the size and the splits
    size = f"{height}x{width}/{plan.height_first}x{plan.width_first}"
    columns, kept = plan.width_columns, plan.kept_first
    hfirst, hsecond = plan.height_first, plan.height_second

    def stage(matrix: np.ndarray, name: str, t: str) -> str:
        weights = g.constant(matrix.astype(np.float32), name, f"{name}{size}")
        return g.op("MatMul", [weights, t])

    # Forward: W = (n1, n2) slowest in x, so [N1, rest] is a free view.
    wfirst, wsecond = plan.width_first, plan.width_second
    t = stage(plan.forward_width_first, "rfft_w1", g.reshape(x, [wfirst, -1]))
    t = stage(plan.forward_width_second, "dft_w2", g.reshape(t, [kept, 2 * wsecond, -1]))
    t = stage(plan.forward_height_first, "dft_h1", g.reshape(t, [columns, 2 * hfirst, -1]))
    t = stage(
        plan.forward_height_second, "dft_h2", g.reshape(t, [columns, hfirst, 2 * hsecond, -1])
    )
    spectrum = g.reshape(t, [plan.frequencies, -1, cin])  # [F, 2N (part, n), Cin]
    # Mixing: [Xr; Xi] Kr and [Xr; Xi] Ki, per frequency.
    ordered_real, ordered_imag = plan.kernel_order(kernel_real, kernel_imag)
    by_real = g.op("MatMul", [spectrum, g.constant(ordered_real, "kernel_real")])
    by_imag = g.op("MatMul", [spectrum, g.constant(ordered_imag, "kernel_imag")])
    # Inverse: Yr = (Xr Kr) - (Xi Ki), Yi = (Xr Ki) + (Xi Kr) folded into the first stage.
    by_real, by_imag = (
        g.reshape(product, [columns, hfirst, 2 * hsecond, -1]) for product in (by_real, by_imag)
    )  # [Fw, K1h, (k2h, part), N Cout]
    for_kr, for_ki = _mixed_inverse(plan.inverse_height_second)
    t = g.op("Add", [stage(for_kr, "idft_h2_kr", by_real), stage(for_ki, "idft_h2_ki", by_imag)])
    t = stage(plan.inverse_height_first, "idft_h1", g.reshape(t, [columns, 2 * hfirst, -1]))
    t = stage(plan.inverse_width_second, "idft_w2", g.reshape(t, [kept, 2 * wsecond, -1]))
    t = stage(plan.inverse_width_first, "irfft_w1", g.reshape(t, [2 * kept, -1]))
    return g.reshape(t, [width, height, -1, cout])


def _mixed_inverse(inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``M [.., O, 2 K]`` acting on ``(k, part)`` -> ``(M, M')`` acting on ``P`` and ``Q``.

    With ``P = X Kr`` and ``Q = X Ki`` (each ``(k, part)`` stacked), ``M [Yr; Yi]`` equals
    ``M P + M' Q`` where ``M'`` takes ``M``'s imaginary-part column for ``Q``'s real part
    and minus its real-part column for ``Q``'s imaginary part.
    """
    swapped = np.empty_like(inverse)
    swapped[..., 0::2], swapped[..., 1::2] = inverse[..., 1::2], -inverse[..., 0::2]
    return inverse, swapped


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
    """Dispatch to the named lowering; ``x`` and the result are in ``LAYOUTS[lowering]``."""
    if lowering == "factorized":
        return spectral_conv_factorized(g, x, kernel_real, kernel_imag, width)
    if lowering == "matmul":
        return spectral_conv_matmul(g, x, kernel_real, kernel_imag, width)
    if lowering == "dft":
        return spectral_conv_dft(g, x, kernel_real, kernel_imag, width)
    raise ValueError(f"unknown ONNX lowering {lowering!r}; choose one of {list(LOWERINGS)}")
