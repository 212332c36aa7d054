"""Shared fixtures: small configurations and real Fashion-MNIST images."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from cfconv_tf.config import ModelConfig  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random inputs every run; the seed is printed on failure by pytest's -ra."""
    seed = int(np.random.SeedSequence().entropy % 2**32)
    print(f"rng seed {seed}")
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def tiny_config() -> ModelConfig:
    """The paper's network shape at a size the test suite can afford."""
    return ModelConfig(
        name="tiny",
        conv_layers=2,
        filters=6,
        dense_units=(16,),
        samples=0.05,
        hidden_units=(16, 8),
        learning_rate=3e-3,
        batch_size=32,
        epochs=1,
    )


@pytest.fixture(scope="session")
def fashion_batch() -> tuple[np.ndarray, np.ndarray]:
    """256 real Fashion-MNIST training images (float32 pixels) and labels."""
    from cfconv_tf.data import load_dataset

    splits = load_dataset("fashion_mnist", train_limit=256)
    images, labels = next(iter(splits.train.batch(256)))
    return images.numpy(), labels.numpy()
