"""What a spectral kernel looks like in space, and how large it effectively is.

A CF-Conv layer's kernel is a half spectrum ``K`` of shape ``[H, W//2+1, Cin, Cout]``;
the layer computes ``y_o = sum_i x_i (*) k_io``, a circular convolution with the
spatial kernel ``k = irfft2(K)`` (``[H, W, Cin, Cout]``, origin at index ``(0, 0)``).
The paper's claim is that continuous kernels learn their own extent; the effective
kernel size measures it: the side of the smallest window centred on the origin
(wrapping around, as the convolution does) that holds a given share of ``k``'s energy.
"""

from __future__ import annotations

import numpy as np


def spatial_kernels(kernel_real: np.ndarray, kernel_imag: np.ndarray, width: int) -> np.ndarray:
    """``[H, W//2+1, Cin, Cout]`` half spectrum -> ``[H, width, Cin, Cout]`` spatial kernel."""
    spectrum = np.asarray(kernel_real, np.float64) + 1j * np.asarray(kernel_imag, np.float64)
    return np.fft.irfft2(spectrum, s=(spectrum.shape[0], width), axes=(0, 1))


def centred_distance(height: int, width: int) -> np.ndarray:
    """``[H, W]``: each offset's Chebyshev distance from the origin, wrapping around.

    The window of half-width ``r`` centred on the origin is ``distance <= r``.
    """
    rows = np.arange(height)
    cols = np.arange(width)
    row_distance = np.minimum(rows, height - rows)
    col_distance = np.minimum(cols, width - cols)
    return np.maximum(row_distance[:, None], col_distance[None, :])


def effective_kernel_sizes(spatial: np.ndarray, energy: float = 0.9) -> np.ndarray:
    """Side ``2r + 1`` of the smallest centred window with ``energy`` of each kernel's energy.

    Args:
        spatial: ``[H, W, Cin, Cout]`` spatial kernels (see :func:`spatial_kernels`).
        energy: the share in (0, 1].

    Returns:
        ``[Cin, Cout]`` int array of odd sides; a side larger than the grid (even sizes)
        means the whole grid. An all-zero kernel has side 1.
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy share must lie in (0, 1], got {energy}")
    height, width = spatial.shape[:2]
    distance = centred_distance(height, width).ravel()
    power = np.square(spatial).reshape(height * width, -1)
    per_ring = np.zeros((distance.max() + 1, power.shape[1]))
    np.add.at(per_ring, distance, power)
    share = np.cumsum(per_ring, axis=0) / np.maximum(per_ring.sum(axis=0), 1e-300)
    radius = np.argmax(share >= energy * (1.0 - 1e-12), axis=0)
    return (2 * radius + 1).reshape(spatial.shape[2:])
