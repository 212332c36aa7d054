"""Shared fixtures: small configurations and real Fashion-MNIST images."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses  # noqa: E402
from pathlib import Path  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402

from cfconv_tf.config import ModelConfig  # noqa: E402
from cfconv_tf.distribution import split_cpu  # noqa: E402

# Two logical CPU devices, so MirroredStrategy has two replicas to keep in step
# (test_distribution.py). Must happen before TensorFlow starts; every other test keeps
# running on /CPU:0 as before.
split_cpu(2)


def fresh_seed() -> int:
    """A new seed every run, or ``$CFCONV_TEST_SEED`` to replay one; printed, so a
    failure's output says which seed to replay."""
    seed = int(os.environ.get("CFCONV_TEST_SEED") or np.random.SeedSequence().entropy % 2**31)
    print(f"rng seed {seed} (replay with CFCONV_TEST_SEED={seed})")
    return seed


@pytest.fixture
def rng() -> np.random.Generator:
    """Fresh random inputs every run (:func:`fresh_seed`)."""
    return np.random.default_rng(fresh_seed())


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


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory, tiny_config) -> dict[str, Path]:
    """Real (short) training runs on Fashion-MNIST for both variants: run directories."""
    from cfconv_tf.training import RunSettings, train

    runs = {}
    for variant in ("cf", "spatial"):
        run_dir = tmp_path_factory.mktemp(f"run_{variant}")
        settings = RunSettings(
            config=tiny_config, variant=variant, train_limit=64, steps_per_epoch=3, seed=2
        )
        train(settings, run_dir, verbose=0)
        runs[variant] = run_dir
    return runs


def write_config_yaml(config: ModelConfig, path: Path) -> Path:
    """``config`` as a YAML file the CLI's ``--config`` reads (name = file stem)."""
    raw = dataclasses.asdict(config)
    path.write_text(yaml.safe_dump({key: value for key, value in raw.items() if value is not None}))
    return path


def trained_tiny_model(
    config: ModelConfig, variant: str, shape: tuple[int, int, int], classes: int, seed: int = 0
):
    """A model whose spectral state has been through a few sparse training writes."""
    from cfconv_tf.models import build_model

    model = build_model(config, variant, shape, classes, seed=seed)
    images = np.random.default_rng(seed).uniform(0, 255, (4, *shape)).astype(np.float32)
    for _ in range(3):
        model(images, training=True)
    return model


class StopAfter(keras.callbacks.Callback):
    """Simulates a killed process: raises after ``steps`` training steps."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps, self.seen = steps, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.steps:
            raise KeyboardInterrupt("killed")


class Snapshots(keras.callbacks.Callback):
    """Records the model's weights (spectral state included) at chosen moments."""

    def __init__(self) -> None:
        super().__init__()
        self.at_start, self.epochs, self.after_step = None, [], {}

    def on_train_begin(self, logs=None):
        self.at_start = [w.numpy().copy() for w in self.model.weights]

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_train_batch_end(self, batch, logs=None):
        key = (self.epochs[-1], batch)
        self.after_step[key] = [w.numpy().copy() for w in self.model.weights]


def small_cf(filters: int, activation: str | None = "relu", name: str | None = None, **options):
    """A small, cheap CF-Conv layer (factorized generator, He-scaled, sparse updates)."""
    from cfconv_tf import CFConv2D

    settings = {
        "samples": 0.25,
        "generator": "factorized",
        "generator_rank": 4,
        "hidden_units": (8,),
        "kernel_scale": "auto",
        **options,
    }
    return CFConv2D(filters, activation=activation, name=name, **settings)
