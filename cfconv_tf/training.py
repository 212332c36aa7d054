"""``cfconv train``: fit a model with checkpoints, resume, history and a test score.

A run directory holds everything of one run:

- ``run.json``        the settings (a resumed run must use the same ones);
- ``backup/``         Keras ``BackupAndRestore`` state (weights, spectral state,
                      optimizer, epoch), written every ``save_every`` steps, so a
                      killed run resumes where it was;
- ``checkpoints/last.keras``  the whole model after each epoch;
- ``history.csv``     per-epoch metrics; ``tensorboard/`` TensorBoard logs;
- ``model.keras``     the trained model; ``test_metrics.json`` its test score.

Under a multi-worker strategy the chief writes these; worker ``i`` writes the same
files under ``worker-<i>/`` (see :mod:`cfconv_tf.distribution`). The strategy is not
part of the run's settings: a run backed up under one strategy resumes under another.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import keras
import tensorflow as tf

from cfconv_tf.config import COSINE, ModelConfig
from cfconv_tf.data import batched, batches_per_pass, load_dataset, training_stream
from cfconv_tf.dense import IOU, crossentropy_dice
from cfconv_tf.distribution import describe, peer_failures_reported, worker_dir
from cfconv_tf.models import build_model, parameter_counts


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Everything that defines a training run (and so must match on resume)."""

    config: ModelConfig
    variant: str
    dataset: str = "fashion_mnist"
    seed: int = 0
    augment: bool = False
    train_limit: int | None = None
    steps_per_epoch: int | None = None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def compile_model(
    model: keras.Model,
    classes: int,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    dense: bool = False,
) -> None:
    """Adam and the cross-entropy that matches the head (sigmoid for 2 classes), with
    accuracy; a ``dense`` (per-pixel) model adds the Dice loss
    (:func:`cfconv_tf.dense.crossentropy_dice`) and the IoU metric
    (:data:`cfconv_tf.dense.IOU`, averaged over the foreground classes)."""
    loss = "binary_crossentropy" if classes == 2 else "sparse_categorical_crossentropy"
    metric = "binary_accuracy" if classes == 2 else "sparse_categorical_accuracy"
    metrics = [keras.metrics.get(metric)]
    if dense:
        loss = crossentropy_dice
        foreground = list(range(1, classes))
        metrics.append(
            keras.metrics.BinaryIoU(target_class_ids=[1], name=IOU)
            if classes == 2
            else keras.metrics.IoU(classes, foreground, sparse_y_pred=False, name=IOU)
        )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=metrics)


def headline_metric(names: Iterable[str]) -> str:
    """The metric a run is judged by, of the metric ``names`` ``compile_model`` gave
    (optionally ``val_``-prefixed): the IoU where there is one, else the accuracy.

    Raises:
        ValueError: neither is among ``names``.
    """
    names = list(names)
    for wanted in (IOU, "accuracy"):
        for name in names:
            if name.removeprefix("val_").endswith(wanted):
                return name
    raise ValueError(f"no accuracy or {IOU} among the metrics {names}")


def metric_label(name: str) -> str:
    """What a :func:`headline_metric` name measures: ``"iou"`` or ``"accuracy"``."""
    return IOU if name.removeprefix("val_") == IOU else "accuracy"


# Config fields a resumed run may change: they change how a step is computed, not
# what it computes (e.g. recompute_generators trades memory for time, so a run that ran
# out of memory can be resumed with it).
RESUMABLE_CONFIG_CHANGES = frozenset({"recompute_generators"})


def learning_rate(config: ModelConfig, total_steps: int):
    """The optimizer's learning rate: ``config.learning_rate``, or with the ``cosine``
    schedule a decay from it to 0 over ``total_steps`` Adam steps."""
    if config.learning_rate_schedule == COSINE:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total_steps)
    return config.learning_rate


def _config_defaults() -> dict:
    """ModelConfig's field defaults as they appear in ``run.json`` (JSON types)."""
    return {
        field.name: json.loads(json.dumps(field.default))
        for field in dataclasses.fields(ModelConfig)
        if field.default is not dataclasses.MISSING
    }


def settings_changes(found: dict, wanted: dict) -> list[str]:
    """The settings (``config.<field>`` for the model's) that differ between two runs.

    Config fields missing from ``found`` (runs written before the field existed) count
    as their defaults; fields in :data:`RESUMABLE_CONFIG_CHANGES` may differ.
    """
    changed = [key for key in wanted if key != "config" and found.get(key) != wanted[key]]
    found_config = {**_config_defaults(), **found.get("config", {})}
    changed += [
        f"config.{key}"
        for key, value in wanted["config"].items()
        if key not in RESUMABLE_CONFIG_CHANGES and found_config.get(key) != value
    ]
    return sorted(changed)


def _check_run_dir(run_dir: Path, settings: RunSettings) -> None:
    """Write ``run.json``, or check that an existing one describes the same run."""
    run_file = run_dir / "run.json"
    wanted = settings.to_dict()
    if run_file.exists():
        changed = settings_changes(json.loads(run_file.read_text()), wanted)
        if changed:
            raise ValueError(
                f"{run_dir} holds a different run (settings differ in {changed}); "
                f"resume it with the same settings or choose a new --out"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps(wanted, indent=2) + "\n")


def train(
    settings: RunSettings,
    run_dir: str | Path,
    save_every: int | None = None,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
    verbose: int | str = "auto",
    strategy: tf.distribute.Strategy | None = None,
) -> dict:
    """Train (or resume) a run; evaluate on the test split.

    Args:
        save_every: back up every N steps (default: once per epoch).
        extra_callbacks: more Keras callbacks (e.g. to stop early in tests).
        strategy: a ``tf.distribute`` strategy (default: TF's current one); the
            configured batch size is the global batch, split across replicas.

    Returns:
        ``{"test": {metric: value}, "parameters": {...}, "class_names": [...]}``.
    """
    strategy = strategy or tf.distribute.get_strategy()
    run_dir = worker_dir(Path(run_dir), strategy)
    config = settings.config
    keras.utils.set_random_seed(settings.seed)
    splits = load_dataset(
        settings.dataset,
        config.input_size,
        config.channels,
        seed=settings.seed,
        train_limit=settings.train_limit,
    )
    if settings.augment and splits.dense:
        raise ValueError(
            f"--augment applies RandAugment (shear, translation, rotation) to the images "
            f"only, so {settings.dataset}'s per-pixel labels would no longer match them: "
            f"train a dense task without --augment"
        )
    _check_run_dir(run_dir, settings)
    steps_per_epoch = settings.steps_per_epoch or batches_per_pass(splits.train, config.batch_size)
    with strategy.scope():
        model = build_model(
            config,
            settings.variant,
            splits.image_shape,
            splits.classes,
            seed=settings.seed,
            dense=splits.dense,
        )
        rate = learning_rate(config, config.epochs * steps_per_epoch)
        compile_model(model, splits.classes, rate, dense=splits.dense)
    parameters = parameter_counts(model)
    print(
        f"{model.name}: {parameters['trainable']:,} trainable parameters, "
        f"{parameters['non_trainable']:,} non-trainable entries (spectral state, norm "
        f"statistics); {describe(strategy)}"
    )

    train_data = training_stream(
        splits.train, config.batch_size, seed=settings.seed, augment=settings.augment
    )
    callbacks = [
        keras.callbacks.BackupAndRestore(
            run_dir / "backup",
            save_freq=save_every or "epoch",
            double_checkpoint=True,
            delete_checkpoint=False,
        ),
        keras.callbacks.ModelCheckpoint(run_dir / "checkpoints" / "last.keras"),
        keras.callbacks.CSVLogger(run_dir / "history.csv", append=True),
        keras.callbacks.TensorBoard(run_dir / "tensorboard"),
        *(extra_callbacks or []),
    ]
    with peer_failures_reported(strategy):
        model.fit(
            train_data,
            validation_data=batched(splits.validation, config.batch_size),
            epochs=config.epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=callbacks,
            shuffle=False,  # the tf.data pipeline shuffles, seeded
            verbose=verbose,
        )
        model.save(run_dir / "model.keras")
        test = model.evaluate(batched(splits.test, config.batch_size), return_dict=True, verbose=0)
    result = {"test": test, "parameters": parameters, "class_names": list(splits.class_names)}
    (run_dir / "test_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print("test: " + ", ".join(f"{name} {value:.4f}" for name, value in test.items()))
    return result
