"""Training on real Fashion-MNIST images: learning, checkpoints, resume, the CLI."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from conftest import Snapshots, StopAfter

from cfconv_tf.cli import main
from cfconv_tf.layers import CFConv2D
from cfconv_tf.models import build_model
from cfconv_tf.training import RunSettings, compile_model, headline_metric, train


@pytest.mark.parametrize("variant", ["cf", "spatial"])
def test_a_few_dozen_steps_lower_the_loss_on_real_images(tiny_config, fashion_batch, variant):
    images, labels = fashion_batch
    keras.utils.set_random_seed(1)
    model = build_model(tiny_config, variant, images.shape[1:], 10, seed=1)
    compile_model(model, 10, learning_rate=1e-2)
    before = model.evaluate(images, labels, verbose=0, return_dict=True)["loss"]
    model.fit(images, labels, batch_size=32, epochs=12, verbose=0)  # 96 steps
    after = model.evaluate(images, labels, verbose=0, return_dict=True)["loss"]
    # Chance level is ln(10) = 2.30. The paper's CF-Conv learns slowly (SPEC sec. 3);
    # measured over seeds 1-3: cf 2.30 -> 2.05..2.06, spatial 2.30 -> 1.75..2.01.
    assert after < before - 0.1, (before, after)


def test_killed_run_resumes_from_its_checkpoint_with_the_same_state(tiny_config, tmp_path):
    settings = RunSettings(
        config=tiny_config.replace(epochs=3, batch_size=16),
        variant="cf",
        train_limit=64,
        steps_per_epoch=4,
        seed=5,
    )
    first = Snapshots()
    with pytest.raises(KeyboardInterrupt):
        train(settings, tmp_path, save_every=3, extra_callbacks=[first, StopAfter(8)], verbose=0)
    assert first.epochs == [0, 1]
    assert not (tmp_path / "model.keras").exists()
    backup = json.loads((tmp_path / "backup" / "training_metadata.json").read_text())
    backed_up = first.after_step[(backup["epoch"], backup["batch"])]
    assert (backup["epoch"], backup["batch"]) == (1, 1)  # global step 6 of 8

    resumed = Snapshots()
    result = train(settings, tmp_path, save_every=3, extra_callbacks=[resumed], verbose=0)
    # The resumed run restarts epoch 1 from the state backed up at its step 1.
    assert resumed.epochs == [1, 2]
    names = [w.path for w in keras.saving.load_model(tmp_path / "model.keras").weights]
    assert any("state_real" in name for name in names)
    for before, restored in zip(backed_up, resumed.at_start, strict=True):
        np.testing.assert_array_equal(before, restored)
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2"]
    saved = json.loads((tmp_path / "test_metrics.json").read_text())
    assert saved["test"] == pytest.approx(result["test"])
    assert 0.0 <= saved["test"]["sparse_categorical_accuracy"] <= 1.0
    assert (tmp_path / "checkpoints" / "last.keras").exists()
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))

    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    cf = [layer for layer in reloaded.layers if isinstance(layer, CFConv2D)]
    assert len(cf) == tiny_config.conv_layers


def test_a_run_dir_refuses_different_settings(tiny_config, tmp_path):
    settings = RunSettings(config=tiny_config, variant="spatial", train_limit=32, steps_per_epoch=1)
    train(settings, tmp_path, verbose=0)
    with pytest.raises(ValueError, match=r"holds a different run .*'variant'"):
        train(
            RunSettings(config=tiny_config, variant="cf", train_limit=32, steps_per_epoch=1),
            tmp_path,
            verbose=0,
        )


def test_a_run_dir_resumes_across_added_config_fields_and_memory_options(tiny_config, tmp_path):
    """A run.json written before a config field existed reads it as its default; the
    recompute option may change on resume; any other change is still refused."""
    settings = RunSettings(config=tiny_config, variant="cf", train_limit=32, steps_per_epoch=1)
    train(settings, tmp_path, verbose=0)
    run_file = tmp_path / "run.json"
    recorded = json.loads(run_file.read_text())
    for added_later in ("generator", "generator_rank", "recompute_generators"):
        del recorded["config"][added_later]
    run_file.write_text(json.dumps(recorded))
    recomputed = RunSettings(
        config=tiny_config.replace(recompute_generators=True),
        variant="cf",
        train_limit=32,
        steps_per_epoch=1,
    )
    result = train(recomputed, tmp_path, verbose=0)
    assert 0.0 <= result["test"]["sparse_categorical_accuracy"] <= 1.0
    factorized = RunSettings(
        config=tiny_config.replace(generator="factorized"),
        variant="cf",
        train_limit=32,
        steps_per_epoch=1,
    )
    with pytest.raises(ValueError, match=r"differ in \['config.generator'\]"):
        train(factorized, tmp_path, verbose=0)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["train", "--config", "missing_model"], "not found"),
    ],
)
def test_cli_reports_bad_requests_without_a_traceback(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--samples", "0"],
        ["train", "--samples", "1.5"],
        ["train", "--input-size", "12x"],
        ["train", "--model", "vit"],
    ],
)
def test_cli_rejects_bad_option_values(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_summary_prints_parameter_counts(capsys):
    assert main(["summary", "--config", "fashion_cnn"]) == 0
    output = capsys.readouterr().out
    assert "cf" in output and "spatial" in output and "56,726 trainable" in output


@pytest.mark.parametrize("classes", [2, 3])
def test_a_dense_model_is_scored_by_the_iou_of_its_foreground_pixels(classes, rng):
    """The IoU a dense model is compiled with, against numpy's count: predicted and true
    pixels of every class but the background, intersection over union per class,
    averaged over those classes."""
    labels = rng.integers(0, classes, (4, 9, 7, 1))
    scores = rng.uniform(size=(4, 9, 7, classes if classes > 2 else 1)).astype(np.float32)
    inputs = keras.Input((9, 7, scores.shape[-1]))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    compile_model(model, classes, 1e-3, dense=True)
    found = model.evaluate(scores, labels, verbose=0, return_dict=True)
    predicted = (scores[..., 0] > 0.5).astype(int) if classes == 2 else scores.argmax(-1)
    truth = labels[..., 0]
    expected = np.mean(
        [
            ((predicted == k) & (truth == k)).sum() / ((predicted == k) | (truth == k)).sum()
            for k in range(1, classes)
        ]
    )
    assert found["iou"] == pytest.approx(expected, rel=1e-5)
    assert headline_metric(found) == "iou"
    assert headline_metric({"loss": 1, "binary_accuracy": 0.5}) == "binary_accuracy"
    assert headline_metric(["val_loss", "val_binary_accuracy", "val_iou"]) == "val_iou"
    with pytest.raises(ValueError, match="no accuracy or iou"):
        headline_metric(["loss", "mae"])


def test_a_dense_task_refuses_augmentation_that_would_move_images_off_their_masks(
    tiny_config, tmp_path, monkeypatch
):
    from cfconv_tf import pathfinder

    monkeypatch.setenv(pathfinder.CACHE_ENV, str(tmp_path / "cache"))
    dataset = "pathfinder:20:labels=path:train=8:validation=2:test=2"
    settings = RunSettings(tiny_config, "cf", dataset=dataset, augment=True)
    with pytest.raises(ValueError, match="without --augment"):
        train(settings, tmp_path / "run", verbose=0)
    assert not (tmp_path / "run").exists()  # nothing written for a refused run


@pytest.mark.parametrize("classes", [2, 3])
def test_the_dense_loss_is_crossentropy_plus_the_dice_loss_of_the_foreground(classes, rng):
    from cfconv_tf.dense import crossentropy_dice

    labels = rng.integers(0, classes, (3, 5, 4, 1))
    if classes == 2:
        probabilities = rng.uniform(0.05, 0.95, (3, 5, 4, 1))
        truth = labels.astype(float)
        crossentropy = -(truth * np.log(probabilities) + (1 - truth) * np.log(1 - probabilities))
        foreground = probabilities
    else:
        logits = rng.normal(size=(3, 5, 4, classes))
        probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        truth = np.eye(classes)[labels[..., 0]][..., 1:]
        picked = np.take_along_axis(probabilities, labels, axis=-1)
        crossentropy = -np.log(picked)
        foreground = probabilities[..., 1:]
    dice = 1 - (2 * (foreground * truth).sum() + 1) / (foreground.sum() + truth.sum() + 1)
    expected = crossentropy.reshape(3, -1).mean(axis=1) + dice
    found = crossentropy_dice(labels, probabilities.astype(np.float32)).numpy()
    np.testing.assert_allclose(found, expected, rtol=1e-4)
