"""Datasets: the Debian Fashion-MNIST files, image folders, conversions, bad input."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import tensorflow as tf

from cfconv_tf.data import (
    FASHION_MNIST_ENV,
    batched,
    batches_per_pass,
    load_dataset,
    training_stream,
)


def test_fashion_mnist_splits_are_real_and_disjoint():
    splits = load_dataset("fashion_mnist")
    assert splits.image_shape == (28, 28, 1) and splits.classes == 10
    assert splits.class_names[0] == "T-shirt/top"
    counts = [
        int(split.reduce(0, lambda n, _: n + 1))
        for split in (splits.train, splits.validation, splits.test)
    ]
    assert counts == [55_000, 5_000, 10_000]
    images, labels = next(iter(splits.test.batch(1000)))
    assert images.dtype == tf.float32 and images.shape == (1000, 28, 28, 1)
    assert 0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) == 255.0
    assert set(np.unique(labels.numpy())) == set(range(10))


def test_resize_and_gray_to_rgb_give_the_papers_shape():
    splits = load_dataset("fashion_mnist", input_size=(150, 150), channels=3, train_limit=4)
    images, _ = next(iter(batched(splits.train, 4)))
    assert images.shape == (4, 150, 150, 3)
    np.testing.assert_array_equal(images[..., 0].numpy(), images[..., 2].numpy())


def test_randaugment_changes_training_images_only_when_asked():
    splits = load_dataset("fashion_mnist", train_limit=16)
    plain, _ = next(iter(training_stream(splits.train, 16, seed=1)))
    augmented, _ = next(iter(training_stream(splits.train, 16, seed=1, augment=True)))
    assert augmented.shape == plain.shape
    assert not np.allclose(np.sort(plain.numpy().ravel()), np.sort(augmented.numpy().ravel()))


def test_training_stream_is_the_same_for_every_iterator_and_reshuffles_each_pass():
    examples = tf.data.Dataset.range(10).map(lambda i: (tf.cast(i, tf.float32), i))
    stream = training_stream(examples, 4, seed=3)
    assert stream.element_spec[0].shape == (4,)  # a static batch: the step is traced for it
    first, second = ([int(x) for _, y in stream.take(10) for x in y] for _ in range(2))
    assert first == second  # 40 labels = 4 passes, batches running across passes
    passes = [first[k : k + 10] for k in range(0, 40, 10)]
    assert all(sorted(one) == list(range(10)) for one in passes)
    assert len({tuple(one) for one in passes}) == 4
    other_seed = [int(x) for _, y in training_stream(examples, 4, seed=4).take(10) for x in y]
    assert other_seed != first
    assert batches_per_pass(examples, 4) == 3
    assert batches_per_pass(examples.filter(lambda x, _: x < 5), 4) == 2


@pytest.mark.parametrize("batch_size", [0, -4])
def test_training_stream_refuses_a_batch_size_below_one(batch_size):
    examples = tf.data.Dataset.range(10).map(lambda i: (tf.cast(i, tf.float32), i))
    with pytest.raises(ValueError, match=f"batch_size must be positive, got {batch_size}"):
        training_stream(examples, batch_size, seed=0)


def write_images(root, classes: dict[str, int], rng) -> None:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (20 + index, 17, 3), dtype=np.uint8)
            encoded = tf.io.encode_png(pixels) if index % 2 else tf.io.encode_jpeg(pixels)
            suffix = "png" if index % 2 else "jpg"
            (root / name / f"{index}.{suffix}").write_bytes(encoded.numpy())


def test_image_folder_is_split_80_10_10_and_resized(tmp_path, rng):
    write_images(tmp_path, {"cat": 10, "dog": 10}, rng)
    splits = load_dataset(f"folder:{tmp_path}", input_size=(12, 14), channels=1)
    assert splits.class_names == ("cat", "dog") and splits.image_shape == (12, 14, 1)
    sizes = [len(list(split)) for split in (splits.train, splits.validation, splits.test)]
    assert sizes == [16, 2, 2]
    image, label = next(iter(splits.test))
    assert image.shape == (12, 14, 1) and int(label) in (0, 1)
    # The held-out halves stay the same from one pass to the next.
    first = [int(label) for _, label in splits.validation]
    assert first == [int(label) for _, label in splits.validation]


def test_missing_fashion_files_say_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


def test_corrupt_fashion_files_are_reported(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    for prefix in ("train", "t10k"):
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x01\x02\x03")
        )
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress((2051).to_bytes(4, "big") + b"\x00\x00\x00\x03" * 3 + b"\x00" * 5)
        )
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_dataset("fashion_mnist")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="not a readable gzipped IDX"):
        load_dataset("fashion_mnist")


def test_bad_dataset_requests_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist_typo'"):
        load_dataset("mnist_typo")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}", input_size=(8, 8))
    with pytest.raises(ValueError, match="give an input size"):
        load_dataset(f"folder:{tmp_path}")
    with pytest.raises(ValueError, match="tfds has no dataset"):
        load_dataset("tfds:surely_not_a_dataset", input_size=(8, 8))
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        load_dataset("fashion_mnist", channels=2)
    with pytest.raises(ValueError, match="batch_size"):
        batched(load_dataset("fashion_mnist").test, 0)
