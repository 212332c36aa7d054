"""Datasets as ``tf.data`` pipelines of (pixels, label).

Sources:
- ``fashion_mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` (offline).
- ``tfds:NAME`` or a known tfds name such as ``cats_vs_dogs``: tensorflow-datasets
  (downloads on first use, so only for users who are online).
- ``folder:PATH`` or an existing directory: ``PATH/<class>/*.jpg|png|...``.
- ``pathfinder:SIZE[:option=value...]``: the procedural long-range task of
  :mod:`cfconv_tf.pathfinder`, drawn from a seed (offline).

Every split yields ``image`` float32 ``[H, W, C]`` with pixel values in [0, 255] and
``label`` int32: a class index, or for a dense task (``pathfinder:...:labels=path``) a
class index per pixel ``[H, W, 1]``. Images are resized and converted between grayscale and
RGB on request, so the paper's 150x150x3 shape can be used on any source.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from cfconv_tf import pathfinder
from cfconv_tf.pathfinder import PathfinderSpec, parse_pathfinder

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "CFCONV_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_VALIDATION = 5000
TFDS_NAMES = ("cats_vs_dogs",)
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049


@dataclasses.dataclass
class DataSplits:
    """Train / validation / test datasets (unbatched) and what a model needs to know.

    ``dense``: the labels are per-pixel class indices ``[H, W, 1]`` (``class_names``
    name their values), not one class index an image.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    dense: bool = False

    @property
    def classes(self) -> int:
        return len(self.class_names)


def dataset_names() -> list[str]:
    """The dataset names ``load_dataset`` accepts, besides ``tfds:`` and ``folder:`` ones."""
    return ["fashion_mnist", *TFDS_NAMES, "pathfinder:<size>"]


def load_dataset(
    name: str,
    input_size: tuple[int, int] | None = None,
    channels: int | None = None,
    seed: int = 0,
    train_limit: int | None = None,
) -> DataSplits:
    """Load a dataset by name (see the module docstring) as resized, typed splits.

    Args:
        input_size: ``(H, W)`` to resize to; ``None`` keeps the source's own size
            (which must then be fixed).
        channels: 1 or 3 to convert to; ``None`` keeps the source's.
        seed: fixes the split of sources that have no test split.
        train_limit: keep only the first N training examples (quick runs).

    Raises:
        ValueError: unknown name or bad option; FileNotFoundError: missing files.
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if name == "fashion_mnist":
        splits = _fashion_mnist()
    elif name.startswith("pathfinder:"):
        splits = _pathfinder(parse_pathfinder(name), train_limit)
    elif name.startswith("tfds:") or name in TFDS_NAMES:
        splits = _tfds(name.removeprefix("tfds:"), input_size)
    elif name.startswith("folder:") or os.path.isdir(name):
        splits = _image_folder(Path(name.removeprefix("folder:")), input_size, seed)
    else:
        raise ValueError(
            f"unknown dataset {name!r}; use one of {dataset_names()}, "
            f"'tfds:<name>', 'folder:<path>' or 'pathfinder:<size>[:option=value]'"
        )
    if train_limit is not None:
        if train_limit <= 0:
            raise ValueError(f"train_limit must be positive, got {train_limit}")
        splits.train = splits.train.take(train_limit)
    return _convert(splits, input_size, channels)


def batched(dataset: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Batch a split in its own order, for ``evaluate`` and ``predict``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def training_stream(
    dataset: tf.data.Dataset, batch_size: int, seed: int, augment: bool = False
) -> tf.data.Dataset:
    """An endless stream of shuffled training batches that depends only on ``seed``.

    Each pass over the split is reshuffled; batches run on across passes. Every
    iterator over the stream yields the same batches: the shuffle is built inside
    ``flat_map``, so each iterator gets its own shuffle seeded afresh. (A plain seeded
    ``shuffle`` gives each new iterator a new order, and Keras opens one iterator more
    under a ``tf.distribute`` strategy than without, which would feed a distributed run
    other batches than a single-device one.) RandAugment (up to 3 operations per
    image, as the paper's KerasCV pipeline) is applied when asked.

    Batches have a static size (the stream never ends, so ``drop_remainder`` drops
    nothing): the training step is traced for it, and CF-Conv layers transform a
    static batch in cache-sized chunks (:mod:`cfconv_tf.spectral`).
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")

    def passes(_) -> tf.data.Dataset:
        return dataset.shuffle(4096, seed=seed, reshuffle_each_iteration=True).repeat()

    stream = tf.data.Dataset.from_tensors(0).flat_map(passes).batch(batch_size, drop_remainder=True)
    if augment:
        augmenter = keras.layers.RandAugment(value_range=(0, 255), num_ops=3, seed=seed)
        stream = stream.map(
            lambda images, labels: (augmenter(images, training=True), labels),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return stream.prefetch(tf.data.AUTOTUNE)


def batches_per_pass(dataset: tf.data.Dataset, batch_size: int) -> int:
    """``ceil(examples / batch_size)``: the steps of one epoch over ``dataset``."""
    examples = int(dataset.cardinality())
    if examples < 0:  # unknown (a filtered or generated source): count once
        examples = int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    if examples == 0:
        raise ValueError("the training split is empty")
    return -(-examples // batch_size)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read one gzipped IDX file (images ``[N, rows, cols]`` or labels ``[N]``)."""
    try:
        with gzip.open(path, "rb") as stream:
            data = stream.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"{path} is not a readable gzipped IDX file: {error}") from error
    header_magic = int.from_bytes(data[:4], "big")
    if header_magic != magic:
        raise ValueError(f"{path}: IDX magic number {header_magic}, expected {magic}")
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    offset = 4 + 4 * dims
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated or corrupt IDX data (shape {shape})")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _fashion_mnist() -> DataSplits:
    root = Path(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DIR))
    files = {
        split: (root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz")
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }
    missing = [str(path) for pair in files.values() for path in pair if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files missing: {missing}. Install them with "
            f"`apt-get install -y dataset-fashion-mnist` (or point ${FASHION_MNIST_ENV} "
            f"at a folder holding the four IDX .gz files)."
        )
    arrays = {}
    for split, (images_path, labels_path) in files.items():
        images = _read_idx(images_path, IDX_IMAGES_MAGIC)[..., None]
        labels = _read_idx(labels_path, IDX_LABELS_MAGIC).astype(np.int32)
        if len(images) != len(labels):
            raise ValueError(f"{images_path}: {len(images)} images but {len(labels)} labels")
        arrays[split] = (images, labels)
    train_images, train_labels = arrays["train"]
    cut = len(train_images) - FASHION_MNIST_VALIDATION
    return DataSplits(
        train=tf.data.Dataset.from_tensor_slices((train_images[:cut], train_labels[:cut])),
        validation=tf.data.Dataset.from_tensor_slices((train_images[cut:], train_labels[cut:])),
        test=tf.data.Dataset.from_tensor_slices(arrays["test"]),
        class_names=FASHION_MNIST_CLASSES,
        image_shape=train_images.shape[1:],
    )


def _pathfinder(spec: PathfinderSpec, train_limit: int | None) -> DataSplits:
    """The three splits of a Pathfinder task; with ``train_limit`` only that many
    training examples are drawn (example ``i`` does not depend on how many are)."""
    if train_limit is not None and train_limit > 0:
        spec = dataclasses.replace(spec, train=min(spec.train, max(train_limit, 2)))
    train, validation, test = (
        tf.data.Dataset.from_tensor_slices(pathfinder.load(spec, split))
        for split in pathfinder.SPLITS
    )
    shape = (spec.size, spec.size, 1)
    return DataSplits(train, validation, test, spec.class_names, shape, dense=spec.dense)


def _tfds(name: str, input_size: tuple[int, int] | None) -> DataSplits:
    import tensorflow_datasets as tfds  # heavy; only the online path needs it

    if input_size is None:
        raise ValueError(f"tfds dataset {name!r} has images of varying size: give an input size")
    try:
        builder = tfds.builder(name)
    except Exception as error:  # tfds raises its own DatasetNotFoundError type
        raise ValueError(f"tfds has no dataset {name!r}: {error}") from error
    builder.download_and_prepare()
    splits = list(builder.info.splits)
    if "test" in splits:
        names = ["train[:90%]", "train[90%:]", "test"]
    else:  # cats_vs_dogs has a single 'train' split
        names = ["train[:80%]", "train[80%:90%]", "train[90%:]"]
    train, validation, test = (builder.as_dataset(split=s, as_supervised=True) for s in names)
    label = builder.info.features["label"]
    channels = builder.info.features["image"].shape[-1] or 3
    return DataSplits(
        train, validation, test, tuple(label.names), (input_size[0], input_size[1], channels)
    )


def _image_folder(root: Path, input_size: tuple[int, int] | None, seed: int) -> DataSplits:
    """80/10/10 split of ``root/<class>/*``; the held-out 20 % is halved into val/test."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    if input_size is None:
        raise ValueError(f"image folder {root}: give an input size to resize the images to")
    train, held_out = keras.utils.image_dataset_from_directory(
        root,
        validation_split=0.2,
        subset="both",
        seed=seed,
        batch_size=None,
        image_size=tuple(input_size),
        label_mode="int",
        verbose=False,
    )
    class_names = tuple(train.class_names)
    return DataSplits(
        train=train,
        validation=held_out.shard(2, 0),
        test=held_out.shard(2, 1),
        class_names=class_names,
        image_shape=(input_size[0], input_size[1], 3),
    )


def _convert(
    splits: DataSplits, input_size: tuple[int, int] | None, channels: int | None
) -> DataSplits:
    """Resize and convert channels in every split; cast to (float32, int32). A dense
    label map is resized with the image, to the nearest pixel's class."""
    height, width, source_channels = splits.image_shape
    if input_size is not None:
        height, width = int(input_size[0]), int(input_size[1])
    target_channels = channels or source_channels

    def convert(image, label):
        image = tf.cast(image, tf.float32)
        if image.shape[-1] != target_channels:
            image = (
                tf.image.grayscale_to_rgb(image)
                if target_channels == 3
                else tf.image.rgb_to_grayscale(image)
            )
        if tuple(image.shape[:2]) != (height, width):
            image = tf.image.resize(image, (height, width))
            if splits.dense:
                label = tf.image.resize(label, (height, width), method="nearest")
        image = tf.ensure_shape(image, (height, width, target_channels))
        return image, tf.cast(label, tf.int32)

    return DataSplits(
        *(
            split.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
            for split in (splits.train, splits.validation, splits.test)
        ),
        class_names=splits.class_names,
        image_shape=(height, width, target_channels),
        dense=splits.dense,
    )
