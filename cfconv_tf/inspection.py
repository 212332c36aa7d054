"""``cfconv inspect``: pictures and numbers of what each spectral layer learned.

For every CF-Conv layer (trained :class:`~cfconv_tf.layers.CFConv2D` or frozen
:class:`~cfconv_tf.frozen.FrozenSpectralConv2D`) of a model it writes:

- ``<layer>.png``: for a few (input, output) channel pairs, the spectral magnitude
  ``|K|`` (zero frequency at the centre) and the spatial kernel ``irfft2(K)`` (origin
  at the centre), the energy window of the effective size drawn on it;
- ``effective_kernel_size.png``: per layer, the distribution of effective kernel sizes
  over all channel pairs (the smallest centred window holding ``energy`` of a kernel's
  energy; a 3x3 convolution's kernels have size <= 3);
- ``kernels.json``: the same numbers (per layer: shape, size statistics, histogram),
  the kernel's RMS magnitude next to He's ``sqrt(2 / Cin)``, and for trained layers the
  factor on the generators' outputs (``generator_scale``).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np

from cfconv_tf.frozen import FrozenSpectralConv2D
from cfconv_tf.kernel_analysis import effective_kernel_sizes, spatial_kernels
from cfconv_tf.layers import CFConv2D


def spectral_layers(
    model: keras.Model, source: str = "state"
) -> list[tuple[keras.layers.Layer, np.ndarray, np.ndarray]]:
    """``(layer, kernel_real, kernel_imag)`` of every spectral layer, in order."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, CFConv2D):
            kernel_real, kernel_imag = layer.inference_kernel(source)
        elif isinstance(layer, FrozenSpectralConv2D):
            kernel_real, kernel_imag = layer.kernel_real, layer.kernel_imag
        else:
            continue
        layers.append((layer, np.asarray(kernel_real), np.asarray(kernel_imag)))
    if not layers:
        raise ValueError(f"model {model.name!r} has no CF-Conv layers to inspect")
    return layers


def _channel_pairs(channels_in: int, channels_out: int, count: int) -> list[tuple[int, int]]:
    """``count`` spread-out (input, output) pairs."""
    count = min(count, channels_in * channels_out)
    flat = np.linspace(0, channels_in * channels_out - 1, count).round().astype(int)
    return [(int(index) // channels_out, int(index) % channels_out) for index in flat]


def _plot_layer(
    name: str,
    spectrum: np.ndarray,
    spatial: np.ndarray,
    sizes: np.ndarray,
    pairs: list[tuple[int, int]],
    path: Path,
) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    figure, axes = plt.subplots(2, len(pairs), figsize=(2.6 * len(pairs), 5.4), squeeze=False)
    height, width = spatial.shape[:2]
    for column, (i, o) in enumerate(pairs):
        magnitude = np.fft.fftshift(np.abs(spectrum[:, :, i, o]), axes=0)
        top = axes[0, column].imshow(magnitude, cmap="magma", aspect="auto")
        axes[0, column].set_title(f"|K| in {i} -> out {o}", fontsize=8)
        figure.colorbar(top, ax=axes[0, column], fraction=0.046)
        kernel = np.fft.fftshift(spatial[:, :, i, o])
        limit = float(np.abs(kernel).max()) or 1.0
        bottom = axes[1, column].imshow(kernel, cmap="RdBu_r", vmin=-limit, vmax=limit)
        side = int(sizes[i, o])
        axes[1, column].add_patch(
            Rectangle(
                (width // 2 - side / 2, height // 2 - side / 2),
                side,
                side,
                fill=False,
                edgecolor="black",
                linewidth=1,
            )
        )
        axes[1, column].set_title(f"spatial, effective size {side}", fontsize=8)
        figure.colorbar(bottom, ax=axes[1, column], fraction=0.046)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    axes[0, 0].set_ylabel("frequency h (0 at centre), w ->")
    axes[1, 0].set_ylabel("offset (origin at centre)")
    figure.suptitle(f"{name}: spectral magnitude (top) and spatial kernel (bottom)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _plot_sizes(names: list[str], sizes: list[np.ndarray], energy: float, path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.4 * len(names) + 3, 4))
    axis.boxplot([size.ravel() for size in sizes], showmeans=True)
    axis.set_xticks(range(1, len(names) + 1), names, rotation=30, fontsize=8)
    axis.axhline(3, color="grey", linestyle="--", linewidth=1, label="3x3 convolution")
    axis.set_ylabel(f"window side holding {energy:.0%} of the energy")
    axis.set_title("effective kernel size per (input, output) channel pair")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def inspect_model(
    model: keras.Model,
    out: str | Path,
    source: str = "state",
    pairs: int = 4,
    energy: float = 0.9,
) -> dict:
    """Write the PNGs and ``kernels.json`` described in the module docstring.

    Returns:
        ``{layer name: {"spatial_shape", "kernel_rms", "he_rms", "effective_size":
        {median, mean, min, max, histogram}[, "generator_scale"]}}`` as written to
        ``kernels.json``.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report, names, all_sizes = {}, [], []
    for layer, kernel_real, kernel_imag in spectral_layers(model, source):
        name = layer.name
        spatial = spatial_kernels(kernel_real, kernel_imag, layer.input_size[1])
        sizes = effective_kernel_sizes(spatial, energy)
        spectrum = kernel_real + 1j * kernel_imag
        chosen = _channel_pairs(*spatial.shape[2:], pairs)
        _plot_layer(name, spectrum, spatial, sizes, chosen, out / f"{name}.png")
        values, counts = np.unique(sizes, return_counts=True)
        cin = kernel_real.shape[2]
        report[name] = {
            "spatial_shape": list(spatial.shape),
            # RMS of |K| against He's sqrt(2 / Cin): how far training moved the scale.
            "kernel_rms": float(np.sqrt(np.mean(kernel_real**2 + kernel_imag**2))),
            "he_rms": float(np.sqrt(2.0 / cin)),
            "effective_size": {
                "energy": energy,
                "median": float(np.median(sizes)),
                "mean": float(sizes.mean()),
                "min": int(sizes.min()),
                "max": int(sizes.max()),
                "histogram": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
            },
        }
        if isinstance(layer, CFConv2D):
            report[name]["generator_scale"] = float(layer.generator_scale.numpy())
        names.append(name)
        all_sizes.append(sizes)
    _plot_sizes(names, all_sizes, energy, out / "effective_kernel_size.png")
    (out / "kernels.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
