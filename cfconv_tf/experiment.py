"""``cfconv experiment``: a spatial baseline against CF-Convs at several sample counts.

Every arm (the configuration's spatial model, or its CF-Conv model at one sample count)
is trained with
:func:`cfconv_tf.training.train` on the same data, budget and seeds, each run in its own
run directory ``<out>/<config>/<arm>/seed-<k>/`` (so a killed experiment resumes: finished runs
are kept, an interrupted one resumes from its backup). The report summarizes every run
found under ``<out>``, so several invocations (e.g. the paper's counts and the same
fractions of the kernel) add up to one table:

- ``results.json``: every run and the per-arm summary;
- ``results.md``: test accuracy (mean, standard deviation, min, max over seeds) and
  training time per arm, with the commands;
- ``accuracy.png``: test accuracy against sample count and against training time.

Sample counts can be given as the paper's counts at 150x150 (``--scale-to-paper``):
they are converted to the same fraction of the kernel entries, ``count / (150 * 76 *
32 * 32)``, so a 28x28 model samples as densely as the paper's did.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import keras

from cfconv_tf.config import SEPARABLE, ModelConfig
from cfconv_tf.training import (
    RunSettings,
    headline_metric,
    metric_label,
    settings_changes,
    train,
)

PAPER_KERNEL_ENTRIES = 150 * (150 // 2 + 1) * 32 * 32  # one 32->32 layer at 150x150
RUN_FILE = "experiment_run.json"
COMMANDS_FILE = "commands.txt"


@dataclasses.dataclass(frozen=True)
class Arm:
    """One setting of the experiment: the spatial model, or CF-Conv at ``samples``."""

    label: str
    variant: str
    samples: int | float | None = None
    paper_count: int | None = None  # the paper's count this fraction stands for


def paper_fraction(count: int) -> float:
    """The fraction of a 150x150 32->32 layer's entries that ``count`` samples are."""
    return count / PAPER_KERNEL_ENTRIES


def _count_label(count: int) -> str:
    exponent = math.log2(count)
    return f"2^{int(exponent)}" if exponent.is_integer() else str(count)


def spatial_label(config: ModelConfig) -> str:
    """The spatial arm's label: its kernel, and ``separable`` when it is, e.g.
    ``spatial-3x3`` or ``spatial-31x31-separable``."""
    size = config.spatial_kernel_size
    return f"spatial-{size}x{size}" + ("-separable" if config.spatial_kind == SEPARABLE else "")


def experiment_arms(
    samples: list[int | float],
    scale_to_paper: bool,
    spatial: bool = True,
    config: ModelConfig | None = None,
) -> list[Arm]:
    """The arms for ``samples`` (counts or fractions), plus the spatial variant of
    ``config`` (default: the 3x3 baseline).

    Raises:
        ValueError: no arm at all, or fractions given as the paper's counts.
    """
    if not samples and not spatial:
        raise ValueError("nothing to run: give --samples for CF-Conv arms, or keep the spatial arm")
    label = spatial_label(config) if config is not None else "spatial-3x3"
    arms = [Arm(label, "spatial")] if spatial else []
    for value in samples:
        if scale_to_paper:
            if not isinstance(value, int):
                raise ValueError(f"--scale-to-paper takes the paper's counts, got {value!r}")
            fraction = paper_fraction(value)
            arms.append(Arm(f"cf-{_count_label(value)}-paper-fraction", "cf", fraction, value))
        elif isinstance(value, int):
            arms.append(Arm(f"cf-{_count_label(value)}", "cf", value))
        else:
            arms.append(Arm(f"cf-fraction-{value:g}", "cf", value))
    return arms


class FitTimer(keras.callbacks.Callback):
    """Wall time of ``fit`` (training steps and validation, not the test evaluation),
    and the learning curve: ``[epoch, seconds since fit began, validation score]`` at
    the end of every epoch (the score: :func:`~cfconv_tf.training.headline_metric`).
    A resumed run's curve starts at a later epoch, timed from the resumption."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.started = time.perf_counter()
        self.curve: list[list[float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        validation = {key: value for key, value in (logs or {}).items() if key.startswith("val_")}
        if validation:
            score = validation[headline_metric(validation)]
            self.curve.append([epoch, time.perf_counter() - self.started, float(score)])

    def on_train_end(self, logs: dict | None = None) -> None:
        self.seconds = time.perf_counter() - self.started


def run_arm(
    arm: Arm,
    config: ModelConfig,
    seed: int,
    out: Path,
    dataset: str,
    train_limit: int | None,
    steps_per_epoch: int | None,
) -> dict:
    """Train one (arm, seed) run, or read it back if it finished before.

    Raises:
        ValueError: the run directory holds a finished run of other settings (e.g. one
            made before its configuration file changed): reading it back would report
            that run under this command.
    """
    run_dir = out / config.name / arm.label / f"seed-{seed}"
    record_file = run_dir / RUN_FILE
    settings = RunSettings(
        config=config.replace(samples=arm.samples),
        variant=arm.variant,
        dataset=dataset,
        seed=seed,
        train_limit=train_limit,
        steps_per_epoch=steps_per_epoch,
    )
    if record_file.exists():
        run_file = run_dir / "run.json"
        found = json.loads(run_file.read_text()) if run_file.exists() else {}
        changed = settings_changes(found, settings.to_dict())
        if changed:
            raise ValueError(
                f"{run_dir} holds a finished run of other settings (they differ in "
                f"{changed}); choose a new --out, or move that run away"
            )
        return json.loads(record_file.read_text())
    timer = FitTimer()
    result = train(settings, run_dir, extra_callbacks=[timer], verbose=0)
    metric = headline_metric(result["test"])
    record = {
        **dataclasses.asdict(arm),
        "config": config.name,
        "seed": seed,
        "metric": metric_label(metric),  # what test_accuracy and the curve hold
        "test_accuracy": result["test"][metric],
        "test_loss": result["test"]["loss"],
        "fit_seconds": timer.seconds,
        "curve": timer.curve,
        "trainable_parameters": result["parameters"]["trainable"],
    }
    record_file.write_text(json.dumps(record, indent=2) + "\n")
    return record


def collect_runs(out: Path) -> list[dict]:
    """Every finished run under ``out``."""
    return [json.loads(path.read_text()) for path in sorted(out.glob(f"*/*/seed-*/{RUN_FILE}"))]


def best_within(run: dict, seconds: float) -> float | None:
    """The best validation accuracy ``run`` reached within ``seconds`` of fit time, or
    ``None`` when it has no whole learning curve (none, or a resumed run's, whose times
    miss the part before the resumption) or no epoch ended that early."""
    curve = run.get("curve") or []
    if not curve or curve[0][0] != 0:
        return None
    return max((accuracy for _, elapsed, accuracy in curve if elapsed <= seconds), default=None)


def group_runs(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """Runs by (config, arm label)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        groups.setdefault((run["config"], run["label"]), []).append(run)
    return groups


def summarize(runs: list[dict]) -> list[dict]:
    """Per (config, arm): seeds, accuracy mean/std/min/max, mean fit time, and the
    accuracy at equal time; sorted.

    Equal time: every arm is judged at the shortest arm's fit time (its slowest seed's:
    the longest time every run of every arm reached) by the best validation accuracy
    each run had reached by then.
    Give the faster arms more epochs for this to compare them at the slower arms' cost.
    """
    groups = group_runs(runs)
    rows = []
    for (config, label), members in groups.items():
        accuracies = [member["test_accuracy"] for member in members]
        first = members[0]
        rows.append(
            {
                "config": config,
                "arm": label,
                "variant": first["variant"],
                "samples": first["samples"],
                "paper_count": first["paper_count"],
                "metric": first.get("metric", "accuracy"),
                "seeds": sorted(member["seed"] for member in members),
                "accuracy_mean": statistics.fmean(accuracies),
                "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
                "accuracy_min": min(accuracies),
                "accuracy_max": max(accuracies),
                "fit_seconds_mean": statistics.fmean(m["fit_seconds"] for m in members),
            }
        )
    budget = min(
        (max(run["fit_seconds"] for run in members) for members in groups.values()),
        default=0.0,
    )
    for row in rows:
        members = groups[(row["config"], row["arm"])]
        reached = [best_within(member, budget) for member in members]
        row["equal_time_seconds"] = budget
        row["equal_time_accuracy"] = (
            statistics.fmean(reached) if reached and None not in reached else None
        )
    return sorted(rows, key=_row_order)


def _row_order(row: dict) -> tuple:
    """Spatial first; then per config: the paper's fractions, counts, fractions."""
    if row["variant"] == "spatial":
        return (0, row["config"], 0, 0.0)
    kind = _kind(row)
    return (1, row["config"], ("paper", "count", "fraction").index(kind), _paper_scale_count(row))


def _samples_text(row: dict) -> str:
    if row["variant"] == "spatial":
        return "-"
    kind = _kind(row)
    if kind == "count":
        return _count_label(row["samples"])
    percent = f"{row['samples'] * 100:.3g} %"
    return (
        f"{percent} (the paper's {_count_label(row['paper_count'])})"
        if kind == "paper"
        else percent
    )


def markdown(rows: list[dict], commands: list[str]) -> str:
    """The results table (accuracies in percent) and the commands that produced it."""
    lines = ["Commands:", "", "```", *commands, "```", ""]
    metric = _metric_names(rows)
    lines += [
        f"| config | model | samples per layer and step | seeds | test {metric} "
        f"mean ± std | min - max | fit time (s) | best validation {metric} within the "
        "shortest arm's fit time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        model = (
            row["arm"].removeprefix("spatial-") + " CNN"
            if row["variant"] == "spatial"
            else "CF-Conv"
        )
        lines.append(
            f"| {row['config']} | {model} | {_samples_text(row)} | "
            f"{','.join(map(str, row['seeds']))} | "
            f"{100 * row['accuracy_mean']:.1f} ± {100 * row['accuracy_std']:.1f} % | "
            f"{100 * row['accuracy_min']:.1f} - {100 * row['accuracy_max']:.1f} % | "
            f"{row['fit_seconds_mean']:.0f} | {_equal_time_text(row)} |"
        )
    return "\n".join(lines) + "\n"


def _metric_names(rows: list[dict]) -> str:
    """What the rows' scores are: ``accuracy``, ``iou``, or both (``accuracy / iou``)."""
    return " / ".join(sorted({row.get("metric", "accuracy") for row in rows})) or "accuracy"


def _equal_time_text(row: dict) -> str:
    """The equal-time cell: accuracy and the time it was judged at, or "-"."""
    if row.get("equal_time_accuracy") is None:
        return "-"
    return f"{100 * row['equal_time_accuracy']:.1f} % (at {row['equal_time_seconds']:.0f} s)"


def plot(rows: list[dict], runs: list[dict], path: Path) -> None:
    """Test accuracy against samples per step (log) and against fit time, per run; the
    validation accuracy of every run against its fit time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the legends go below the plots (they would hide points); room for their rows
    figure, (by_samples, by_time, curves) = plt.subplots(1, 3, figsize=(21, 4.5 + 0.09 * len(rows)))
    colours = plt.cm.tab20.colors  # one colour per arm
    configs = sorted({row["config"] for row in rows})
    groups = group_runs(runs)
    for row in rows:
        members = groups[(row["config"], row["arm"])]
        name = f"{row['config']}: {row['arm']}"
        accuracies = [100 * member["test_accuracy"] for member in members]
        colour = colours[rows.index(row) % len(colours)]
        by_time.scatter(
            [m["fit_seconds"] for m in members],
            accuracies,
            label=name,
            s=18,
            color=colour,
            marker="osD^vP"[configs.index(row["config"]) % 6],  # colours repeat after 20
        )
        for index, member in enumerate(m for m in members if m.get("curve")):
            _, seconds, validation = zip(*member["curve"], strict=True)
            curves.plot(
                seconds,
                [100 * value for value in validation],
                color=colour,
                marker=".",
                linewidth=1,
                label=name if index == 0 else None,
            )
        if row["variant"] == "spatial":
            by_samples.axhspan(
                100 * row["accuracy_min"], 100 * row["accuracy_max"], alpha=0.2, color="grey"
            )
            by_samples.axhline(100 * row["accuracy_mean"], color="grey", label=name)
    kinds = {
        "paper": "the paper's fraction of the kernel",
        "count": "count per layer as given",
        "fraction": "fraction as given",
    }
    for config in sorted({row["config"] for row in rows if row["variant"] == "cf"}):
        for kind, description in kinds.items():
            cf_rows = [
                row
                for row in rows
                if row["variant"] == "cf" and row["config"] == config and _kind(row) == kind
            ]
            if cf_rows:
                by_samples.errorbar(
                    [_paper_scale_count(row) for row in cf_rows],
                    [100 * row["accuracy_mean"] for row in cf_rows],
                    yerr=[100 * row["accuracy_std"] for row in cf_rows],
                    marker="o",
                    capsize=3,
                    label=f"{config}: CF-Conv, {description}",
                )
    by_samples.set_xscale("log", base=2)
    by_samples.set_xlabel("samples per layer and step (fractions: as many of a 150x150 layer)")
    metric = _metric_names(rows)
    by_samples.set_ylabel(f"test {metric} (%)")
    by_samples.set_title(f"{metric} against sampled positions (mean ± std over seeds)")
    below = {"fontsize": 7, "loc": "upper center", "bbox_to_anchor": (0.5, -0.14)}
    by_samples.legend(**below)
    by_time.set_xscale("log")
    by_time.set_xlabel("fit time per run (s, log)")
    by_time.set_ylabel(f"test {metric} (%)")
    by_time.set_title(f"{metric} against training time (each run)")
    by_time.legend(**below, ncol=2)
    if rows:
        curves.axvline(rows[0]["equal_time_seconds"], color="grey", linestyle=":")
    curves.set_xlabel("fit time (s); dotted: the shortest arm's")
    curves.set_ylabel(f"validation {metric} (%)")
    curves.set_title("learning curves (each run)")
    if curves.get_legend_handles_labels()[0]:
        curves.legend(**below, ncol=2)
    figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(figure)


def _kind(row: dict) -> str:
    """How a CF arm's samples were given: the paper's fraction, a count, a fraction."""
    if row["paper_count"] is not None:
        return "paper"
    return "count" if isinstance(row["samples"], int) else "fraction"


def _paper_scale_count(row: dict) -> float:
    """x of a CF arm: its count, or for a fraction the count it is of a 150x150 layer."""
    if _kind(row) == "count":
        return float(row["samples"])
    return row["samples"] * PAPER_KERNEL_ENTRIES


def write_report(out: Path, command: str) -> list[dict]:
    """Summarize every run under ``out`` into results.json/.md and accuracy.png."""
    commands_file = out / COMMANDS_FILE
    commands = commands_file.read_text().splitlines() if commands_file.exists() else []
    if command not in commands:
        commands.append(command)
        commands_file.write_text("\n".join(commands) + "\n")
    runs = collect_runs(out)
    rows = summarize(runs)
    (out / "results.json").write_text(
        json.dumps({"commands": commands, "summary": rows, "runs": runs}, indent=2) + "\n"
    )
    (out / "results.md").write_text(markdown(rows, commands))
    plot(rows, runs, out / "accuracy.png")
    return rows


def run_experiment(
    config: ModelConfig,
    arms: list[Arm],
    seeds: list[int],
    out: str | Path,
    command: str,
    dataset: str = "fashion_mnist",
    train_limit: int | None = None,
    steps_per_epoch: int | None = None,
) -> list[dict]:
    """Train every (arm, seed) not yet done, then write the report; returns its rows."""
    if not seeds:
        raise ValueError("an experiment needs at least one seed")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for arm in arms:
        for seed in seeds:
            record = run_arm(arm, config, seed, out, dataset, train_limit, steps_per_epoch)
            print(
                f"{arm.label} seed {seed}: test {record.get('metric', 'accuracy')} "
                f"{100 * record['test_accuracy']:.1f} %, "
                f"fit {record['fit_seconds']:.0f} s",
                flush=True,
            )
    return write_report(out, command)
