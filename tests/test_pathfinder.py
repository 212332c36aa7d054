"""Pathfinder: deterministic, balanced, and not separable by global statistics."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cfconv_tf import pathfinder
from cfconv_tf.data import load_dataset
from cfconv_tf.pathfinder import PathfinderSpec, generate, layout, load, parse_pathfinder

SMALL = PathfinderSpec(size=32, train=700, validation=2, test=300)


@pytest.fixture(scope="module")
def small_split():
    """Train and test images of a 32-pixel task, flattened: ``[N, 1024]`` float64."""
    (train, train_labels), (test, test_labels) = (
        generate(SMALL, split) for split in ("train", "test")
    )
    flat = [images.reshape(len(images), -1).astype(np.float64) / 255 for images in (train, test)]
    return flat[0], train_labels, flat[1], test_labels


def test_names_parse_to_specs_and_back():
    spec = parse_pathfinder("pathfinder:64:length=14:distractors=3:gap=1.2:stroke=0.3")
    assert (spec.size, spec.length, spec.distractors, spec.gap) == (64, 14, 3, 1.2)
    assert spec.stroke == 0.3
    assert parse_pathfinder(spec.name) == spec
    assert PathfinderSpec(size=48).name == "pathfinder:48"
    dense = parse_pathfinder("pathfinder:32:labels=path")
    assert dense.dense and dense.name == "pathfinder:32:labels=path"


@pytest.mark.parametrize(
    "name, message",
    [
        ("pathfinder", "pathfinder:SIZE"),
        ("pathfinder:big", "pathfinder:SIZE"),
        ("pathfinder:6\u00b2", "pathfinder:SIZE"),  # a digit to str.isdigit, not to int
        ("pathfinder:8", "at least 16"),
        ("pathfinder:64:colour=red", "unknown pathfinder option 'colour=red'"),
        ("pathfinder:64:length=", "unknown pathfinder option"),
        ("pathfinder:64:length=long", "length must be an integer"),
        ("pathfinder:64:length=60", "do not fit"),
        ("pathfinder:64:length=16", "do not fit"),
        ("pathfinder:64:gap=0", "must be positive"),
        ("pathfinder:64:stroke=0", "stroke must be"),
        ("pathfinder:64:stroke=0.8", "stroke must be"),
        ("pathfinder:64:labels=edges", "labels must be one of"),
    ],
)
def test_bad_names_are_refused_with_the_reason(name, message):
    with pytest.raises(ValueError, match=message):
        parse_pathfinder(name)


def test_crowded_canvas_is_a_clear_error_not_a_hang():
    crowded = PathfinderSpec(distractors=30, train=2, validation=2, test=2)
    with pytest.raises(ValueError, match="32 paths of 17 units do not fit"):
        generate(crowded, "train")


def test_every_example_depends_only_on_spec_split_and_index():
    images, labels = generate(dataclasses.replace(SMALL, train=12), "train")
    again, _ = generate(dataclasses.replace(SMALL, train=12), "train")
    fewer, _ = generate(dataclasses.replace(SMALL, train=5), "train")
    other_seed, _ = generate(dataclasses.replace(SMALL, train=12, seed=1), "train")
    test_images, _ = generate(dataclasses.replace(SMALL, test=12), "test")
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(images[:5], fewer)
    assert not np.array_equal(images, other_seed)
    assert not np.array_equal(images, test_images)
    assert images.shape == (12, 32, 32, 1) and images.dtype == np.uint8
    assert list(labels) == [0, 1] * 6


@pytest.mark.parametrize("size", [17, 64, 150])
def test_any_size_draws_the_same_task(size):
    images, _ = generate(PathfinderSpec(size=size, train=2, validation=2, test=2), "train")
    assert images.shape == (2, size, size, 1)
    # paths and markers cover about the same fraction of the image at every size
    coverage = (images > 0).mean()
    assert 0.03 < coverage < 0.3, coverage


def test_strokes_keep_their_width_in_canvas_units_at_every_size():
    """A larger size draws the same paths with proportionally wider strokes: the share of
    the image they cover stays about that of the 32-pixel image (the same drawing)."""
    spec = PathfinderSpec(train=16, validation=2, test=2)
    coverage = {
        size: (generate(dataclasses.replace(spec, size=size), "train")[0] > 0).mean()
        for size in (32, 64, 128)
    }
    for size in (64, 128):
        assert 0.75 < coverage[size] / coverage[32] < 1.35, coverage


def test_at_32_px_any_stroke_up_to_half_a_unit_draws_one_pixel_paths():
    spec = PathfinderSpec(train=8, validation=2, test=2)
    images, _ = generate(spec, "train")
    thinner, _ = generate(dataclasses.replace(spec, stroke=0.3), "train")
    np.testing.assert_array_equal(images, thinner)


def test_a_thinner_stroke_draws_the_same_paths_thinner():
    spec = PathfinderSpec(size=64, train=4, validation=2, test=2)
    thick, _ = generate(spec, "train")
    thin, _ = generate(dataclasses.replace(spec, stroke=0.3), "train")
    assert np.all(thick[thin > 0] > 0) and (thin > 0).sum() < 0.8 * (thick > 0).sum()


def test_markers_sit_on_one_path_when_connected_and_two_paths_otherwise():
    rng = np.random.default_rng(0)
    distances = {}
    for connected in (True, False):
        found = []
        for _ in range(150):
            paths, markers = layout(SMALL, connected, rng)
            assert len(paths) == 2 + SMALL.distractors
            ends = [{tuple(path[0]), tuple(path[-1])} for path in paths]
            owners = [
                k for k, path_ends in enumerate(ends) for m in markers if tuple(m) in path_ends
            ]
            assert len(owners) == 2 and (owners[0] == owners[1]) == connected
            found.append(np.linalg.norm(markers[0] - markers[1]))
        distances[connected] = np.array(found)
    # the markers' distance is drawn alike for both labels: it is not a cue
    low, high = pathfinder.marker_distances(SMALL)
    for found in distances.values():
        assert low - pathfinder.APART_SLACK <= found.min()
        assert found.max() <= high + pathfinder.APART_SLACK
    assert abs(distances[True].mean() - distances[False].mean()) < 1.0


@pytest.mark.parametrize("size", [32, 45, 64])
def test_path_labels_mark_the_drawn_path_that_joins_the_markers(size):
    spec = PathfinderSpec(size=size, labels="path", train=24, validation=2, test=2)
    images, masks = generate(spec, "train")
    classified, connected = generate(dataclasses.replace(spec, labels="connected"), "train")
    np.testing.assert_array_equal(images, classified)  # the same images, other labels
    assert masks.shape == images.shape and masks.dtype == np.uint8
    assert set(np.unique(masks)) <= {0, 1}
    scale = size / pathfinder.CANVAS
    for index, (image, mask) in enumerate(zip(images[..., 0], masks[..., 0], strict=True)):
        if not connected[index]:
            assert not mask.any()  # no path joins the markers
            continue
        assert np.all(image[mask == 1] == 255)  # only drawn pixels
        # one path of the four (two marked, two distractors), reaching both markers
        assert 0.15 < mask.sum() / (image > 0).sum() < 0.3
        rng = np.random.default_rng([spec.seed, pathfinder.SPLITS.index("train"), index])
        paths, markers = layout(spec, True, rng)
        for row, column in np.floor(markers * scale).astype(int):
            near = mask[max(row - 1, 0) : row + 2, max(column - 1, 0) : column + 2]
            assert near.any(), (index, row, column)
        # and no other path's: every marked pixel is nearest the marked path's centre line
        pixels = np.stack(np.nonzero(mask), -1) + 0.5
        distances = [
            np.linalg.norm(pixels[:, None] - path[None] * scale, axis=-1).min(axis=1)
            for path in paths
        ]
        assert np.all(np.argmin(distances, axis=0) == 0)


def test_labels_are_balanced_and_brightness_says_nothing(small_split):
    train, labels, _, _ = small_split
    assert labels.mean() == pytest.approx(0.5, abs=0.01)
    brightness = train.mean(axis=1)
    connected, disconnected = brightness[labels == 1], brightness[labels == 0]
    spread = np.sqrt(connected.var() / len(connected) + disconnected.var() / len(disconnected))
    assert abs(connected.mean() - disconnected.mean()) < 4 * spread


def logistic_regression_accuracy(train, labels, test, test_labels, steps=300) -> tuple:
    """Train and test accuracy of an L2-regularized logistic regression on pixels."""
    weights, bias = np.zeros(train.shape[1]), 0.0
    for _ in range(steps):
        predictions = 1 / (1 + np.exp(-(train @ weights + bias)))
        error = predictions - labels
        weights -= 0.5 * (train.T @ error / len(train) + 1e-3 * weights)
        bias -= 0.5 * error.mean()
    return tuple(
        float(((x @ weights + bias > 0) == y).mean())
        for x, y in ((train, labels), (test, test_labels))
    )


def test_a_logistic_regression_on_pixels_stays_at_chance(small_split):
    train, labels, test, test_labels = small_split
    _, test_accuracy = logistic_regression_accuracy(train, labels, test, test_labels)
    assert test_accuracy < 0.6, test_accuracy
    # the same regression finds a faint global cue when there is one: the check can fail
    leak = 0.02 * np.where(labels == 1, 1.0, -1.0)[:, None]
    test_leak = 0.02 * np.where(test_labels == 1, 1.0, -1.0)[:, None]
    _, leaked = logistic_regression_accuracy(train + leak, labels, test + test_leak, test_labels)
    assert leaked > 0.9, leaked


def test_splits_are_kept_once_drawn_and_redrawn_when_damaged(tmp_path):
    spec = dataclasses.replace(SMALL, test=4)
    images, labels = load(spec, "test", tmp_path)
    (stored,) = (tmp_path / "pathfinder").glob("*.npz")
    np.testing.assert_array_equal(load(spec, "test", tmp_path)[0], images)
    for damage in (b"not a zip file", stored.read_bytes()[:-100]):  # garbage, truncated
        stored.write_bytes(damage)
        np.testing.assert_array_equal(load(spec, "test", tmp_path)[0], images)
    # the other splits' sizes, how a number is written and the kind of labels do not
    # redraw a split
    same = dataclasses.replace(spec, train=5, gap=int(spec.gap))
    load(same, "test", tmp_path)
    dense_images, masks = load(dataclasses.replace(spec, labels="path"), "test", tmp_path)
    assert len(list((tmp_path / "pathfinder").glob("*.npz"))) == 1
    np.testing.assert_array_equal(dense_images, images)
    np.testing.assert_array_equal(
        masks, generate(dataclasses.replace(spec, labels="path"), "test")[1]
    )
    np.testing.assert_array_equal(load(spec, "test", tmp_path)[1], labels)
    with pytest.raises(ValueError, match="unknown split"):
        load(spec, "holdout", tmp_path)


def test_load_dataset_gives_pathfinder_splits(tmp_path, monkeypatch):
    monkeypatch.setenv(pathfinder.CACHE_ENV, str(tmp_path))
    splits = load_dataset("pathfinder:24:train=50:validation=4:test=6", train_limit=8)
    assert splits.image_shape == (24, 24, 1)
    assert splits.class_names == ("disconnected", "connected")
    counts = [
        int(s.reduce(0, lambda n, _: n + 1)) for s in (splits.train, splits.validation, splits.test)
    ]
    assert counts == [8, 4, 6]
    images, labels = next(iter(splits.train.batch(8)))
    assert images.dtype == "float32" and float(images.numpy().max()) == 255.0
    spec = PathfinderSpec(size=24, train=8, validation=4, test=6)
    np.testing.assert_array_equal(images.numpy()[..., 0], generate(spec, "train")[0][..., 0])


def test_load_dataset_gives_dense_path_labels_resized_to_the_nearest_pixel(tmp_path, monkeypatch):
    monkeypatch.setenv(pathfinder.CACHE_ENV, str(tmp_path))
    name = "pathfinder:32:labels=path:train=8:validation=2:test=2"
    splits = load_dataset(name)
    assert splits.dense and splits.class_names == ("background", "path")
    images, masks = next(iter(splits.train.batch(8)))
    assert masks.shape == (8, 32, 32, 1) and masks.dtype == "int32"
    expected = generate(parse_pathfinder(name), "train")[1]
    np.testing.assert_array_equal(masks.numpy(), expected)
    resized = load_dataset(name, input_size=(20, 27), channels=3)
    images, masks = next(iter(resized.train.batch(8)))
    assert images.shape == (8, 20, 27, 3) and masks.shape == (8, 20, 27, 1)
    assert set(np.unique(masks.numpy())) == {0, 1}  # nearest pixel: no blended classes
    assert not load_dataset("pathfinder:24:train=8:validation=2:test=2").dense


def test_commands_take_a_pathfinder_dataset(tmp_path, monkeypatch, tiny_config):
    from conftest import write_config_yaml

    from cfconv_tf.cli import main

    monkeypatch.setenv(pathfinder.CACHE_ENV, str(tmp_path / "cache"))
    dataset = "pathfinder:24:train=16:validation=4:test=8"
    picture = tmp_path / "examples.png"
    for name in (dataset, f"{dataset}:labels=path"):  # a dense task's masks drawn over
        assert main(["examples", name, "--out", str(picture), "--rows", "2", "--columns", "3"]) == 0
        assert picture.read_bytes().startswith(b"\x89PNG")
    config = write_config_yaml(tiny_config, tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    argv = ["train", "--config", str(config), "--dataset", dataset, "--out", str(run)]
    assert main([*argv, "--epochs", "1", "--steps-per-epoch", "2"]) == 0
    run_record = json.loads((run / "run.json").read_text())
    assert run_record["dataset"] == dataset
    assert main(["freeze", str(run), "--out", str(tmp_path / "frozen.keras")]) == 0
