"""cfconv experiment: arms, seeds, resumable runs, the summary table and the plot."""

from __future__ import annotations

import json

import pytest
from conftest import write_config_yaml

from cfconv_tf.cli import main
from cfconv_tf.config import load_model_config
from cfconv_tf.experiment import (
    PAPER_KERNEL_ENTRIES,
    experiment_arms,
    markdown,
    summarize,
)


def test_paper_counts_become_the_same_fraction_of_the_kernel():
    arms = experiment_arms([2**12, 2**18], scale_to_paper=True)
    assert [arm.label for arm in arms] == [
        "spatial-3x3",
        "cf-2^12-paper-fraction",
        "cf-2^18-paper-fraction",
    ]
    assert PAPER_KERNEL_ENTRIES == 11_673_600
    assert arms[2].samples == pytest.approx(0.02246, rel=1e-3)  # fashion_cnn.yaml's value
    assert arms[1].paper_count == 4096
    plain = experiment_arms([4096, 0.5], scale_to_paper=False, spatial=False)
    assert [(a.label, a.samples) for a in plain] == [("cf-2^12", 4096), ("cf-fraction-0.5", 0.5)]
    with pytest.raises(ValueError, match="paper's counts"):
        experiment_arms([0.5], scale_to_paper=True)
    with pytest.raises(ValueError, match="nothing to run"):
        experiment_arms([], scale_to_paper=False, spatial=False)


def test_baseline_configurations_are_spatial_arms_named_by_their_kernel():
    wide = load_model_config("pathfinder_cnn_wide")
    large = load_model_config("pathfinder_large_kernel")
    assert [arm.label for arm in experiment_arms([], False, config=wide)] == ["spatial-3x3"]
    (arm,) = experiment_arms([], False, config=large)
    assert (arm.label, arm.variant) == ("spatial-31x31-separable", "spatial")
    row = {"config": "pf", "arm": arm.label, "variant": "spatial", "samples": None,
           "paper_count": None, "seeds": [0], "accuracy_mean": 0.5, "accuracy_std": 0.0,
           "accuracy_min": 0.5, "accuracy_max": 0.5, "fit_seconds_mean": 3.0}  # fmt: skip
    assert "| pf | 31x31-separable CNN | - | 0 |" in markdown([row], [])


def test_summary_gives_mean_spread_extremes_and_accuracy_at_equal_time():
    runs = [
        {"config": "c", "label": "cf-2^12", "variant": "cf", "samples": 4096, "paper_count": None,
         "seed": seed, "test_accuracy": accuracy, "fit_seconds": 10.0 * (seed + 1),
         "curve": [[0, 5.0 * (seed + 1), accuracy - 0.1], [1, 10.0 * (seed + 1), accuracy]]}
        for seed, accuracy in enumerate([0.5, 0.6, 0.7])
    ] + [
        {"config": "c", "label": "spatial-3x3", "variant": "spatial", "samples": None,
         "paper_count": None, "seed": 0, "test_accuracy": 0.8, "fit_seconds": 15.0,
         "curve": [[0, 5.0, 0.7], [1, 15.0, 0.8]]}
    ]  # fmt: skip
    rows = summarize(runs)
    assert [row["arm"] for row in rows] == ["spatial-3x3", "cf-2^12"]
    cf = rows[1]
    assert cf["seeds"] == [0, 1, 2]
    assert cf["accuracy_mean"] == pytest.approx(0.6)
    assert cf["accuracy_std"] == pytest.approx(0.1)
    assert (cf["accuracy_min"], cf["accuracy_max"]) == (0.5, 0.7)
    assert cf["fit_seconds_mean"] == pytest.approx(20.0)
    # judged at the shortest arm's time (15 s): the best each CF run had by then
    assert cf["equal_time_seconds"] == 15.0
    assert cf["equal_time_accuracy"] == pytest.approx((0.5 + 0.5 + 0.6) / 3)
    assert rows[0]["equal_time_accuracy"] == pytest.approx(0.8)
    table = markdown(rows, ["cfconv experiment ..."])
    assert (
        "| c | CF-Conv | 2^12 | 0,1,2 | 60.0 ± 10.0 % | 50.0 - 70.0 % | 20 | 53.3 % (at 15 s) |"
        in table
    )
    # the fastest arm's slower seeds still count at the budget: it is their time, not the mean
    runs.append(
        {**runs[-1], "seed": 1, "fit_seconds": 17.0, "curve": [[0, 6.0, 0.6], [1, 17.0, 0.9]]}
    )
    rows = summarize(runs)
    assert rows[0]["equal_time_seconds"] == 17.0
    assert rows[0]["equal_time_accuracy"] == pytest.approx((0.8 + 0.9) / 2)
    # a resumed run (its curve starts after epoch 0) or one without a curve is not judged
    runs[0]["curve"] = runs[0]["curve"][1:]
    assert summarize(runs)[1]["equal_time_accuracy"] is None
    for run in runs:
        del run["curve"]
    assert all(row["equal_time_accuracy"] is None for row in summarize(runs))


def test_cli_experiment_trains_every_arm_and_seed_and_resumes(tiny_config, tmp_path, capsys):
    config_file = write_config_yaml(tiny_config, tmp_path / "tiny.yaml")
    out = tmp_path / "experiment"
    argv = ["experiment", "--config", str(config_file), "--samples", "2^6,0.5"]
    argv += ["--seeds", "0,1", "--steps-per-epoch", "2", "--train-limit", "64"]
    argv += ["--batch-size", "16", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 6  # 3 arms x 2 seeds
    assert {row["arm"] for row in results["summary"]} == {
        "spatial-3x3",
        "cf-2^6",
        "cf-fraction-0.5",
    }
    for run in results["runs"]:
        assert 0.0 <= run["test_accuracy"] <= 1.0 and run["fit_seconds"] > 0
        (epoch, elapsed, validation), *_ = run["curve"]  # one point per epoch
        assert epoch == 0 and 0 < elapsed <= run["fit_seconds"] and 0.0 <= validation <= 1.0
    assert (out / "accuracy.png").stat().st_size > 10_000
    assert "cfconv experiment --config" in (out / "results.md").read_text()
    assert {run["metric"] for run in results["runs"]} == {"accuracy"}
    assert "| test accuracy mean ± std |" in (out / "results.md").read_text()
    # A second call finds every run done: nothing is trained again.
    first = (out / "tiny" / "cf-2^6" / "seed-0" / "experiment_run.json").stat().st_mtime
    capsys.readouterr()
    assert main(argv) == 0
    assert (out / "tiny" / "cf-2^6" / "seed-0" / "experiment_run.json").stat().st_mtime == first
    assert "trainable parameters" not in capsys.readouterr().out


def test_a_dense_task_is_judged_by_the_path_iou(tiny_config, tmp_path, monkeypatch):
    from cfconv_tf import pathfinder

    monkeypatch.setenv(pathfinder.CACHE_ENV, str(tmp_path / "cache"))
    config_file = write_config_yaml(tiny_config, tmp_path / "tiny.yaml")
    out = tmp_path / "experiment"
    dataset = "pathfinder:20:labels=path:train=32:validation=4:test=6"
    argv = ["experiment", "--config", str(config_file), "--samples", "1.0", "--dataset"]
    argv += [dataset, "--seeds", "0", "--steps-per-epoch", "2", "--epochs", "2"]
    argv += ["--batch-size", "8", "--out", str(out)]
    assert main(argv) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert len(runs) == 2 and {run["metric"] for run in runs} == {"iou"}
    for run in runs:
        history = (out / "tiny" / run["label"] / "seed-0" / "history.csv").read_text()
        header, *epochs = history.splitlines()
        last = dict(zip(header.split(","), epochs[-1].split(","), strict=True))
        # the curve holds the validation IoU, not the pixel accuracy
        assert run["curve"][-1][2] == pytest.approx(float(last["val_iou"]))
        assert 0.0 <= run["test_accuracy"] <= 1.0
    assert "| test iou mean ± std |" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--samples", "0.5", "--scale-to-paper"], "--scale-to-paper takes the paper's counts"),
        (["--samples", "2^12", "--seeds", ""], "at least one seed"),
    ],
)
def test_cli_experiment_reports_bad_requests(extra, message, tmp_path, capsys):
    argv = ["experiment", "--out", str(tmp_path / "exp"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("exp/*/*/seed-*"))  # nothing was trained


@pytest.mark.parametrize(
    "extra", [["--samples", "0"], ["--samples", "2^12", "--seeds", "0,x"], ["--samples", ""]]
)
def test_cli_experiment_rejects_bad_option_values(extra, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["experiment", *extra])
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err
