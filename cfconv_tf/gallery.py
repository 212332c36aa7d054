"""``cfconv examples``: a grid of a dataset's test images with their class names (for a
dense task: with the labelled pixels drawn over them in colour)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cfconv_tf.data import load_dataset


def draw_examples(
    dataset: str,
    out: str | Path,
    rows: int = 3,
    columns: int = 6,
    input_size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> Path:
    """Write a PNG of the first ``rows * columns`` test images of ``dataset`` (resized and
    converted as ``load_dataset`` does), each titled with its class name; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = load_dataset(dataset, input_size, channels, train_limit=2)  # shows test only
    count = rows * columns
    images, labels = (np.asarray(part) for part in next(iter(splits.test.batch(count))))
    figure, axes = plt.subplots(rows, columns, figsize=(1.8 * columns, 1.9 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, label in zip(axes.ravel(), images, labels, strict=False):
        pixels = image[..., 0] if image.shape[-1] == 1 else image / 255
        axis.imshow(pixels, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        if splits.dense:
            labelled = np.ma.masked_equal(label[..., 0], 0)  # class 0: the background
            axis.imshow(labelled, cmap="autumn", alpha=0.9, interpolation="nearest")
            present = [splits.class_names[k] for k in np.unique(labelled.compressed())]
            axis.set_title(", ".join(present) or splits.class_names[0], fontsize=9)
        else:
            axis.set_title(splits.class_names[label], fontsize=9)
    figure.suptitle(dataset, fontsize=10)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out
