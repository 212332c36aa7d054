"""The ``cfconv`` command: one verb per user job."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cfconv_tf import native_logs
from cfconv_tf.distribution import (
    DEFAULT_COLLECTIVE_TIMEOUT,
    STRATEGIES,
    PeerFailure,
    make_strategy,
)
from cfconv_tf.layers import KERNEL_SOURCES
from cfconv_tf.sampling import validate_samples
from export.compact import STORAGE_DTYPES, KernelStorage
from export.onnx_spectral import LOWERINGS
from export.pipeline import FORMATS
from serving.cli import add_serve_arguments, positive_float


def _samples(text: str) -> int | float:
    """``4096``, ``2**18``-style ``2^18``, or a fraction such as ``0.01``."""
    try:
        if "^" in text:
            base, exponent = text.split("^")
            value: int | float = int(base) ** int(exponent)
        elif any(mark in text for mark in ".eE"):
            value = float(text)
        else:
            value = int(text)
        return validate_samples(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _size(text: str) -> tuple[int, int]:
    """``28`` or ``150x120`` (height x width)."""
    try:
        parts = [int(part) for part in text.lower().split("x")]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"input size must look like 150 or 150x120, got {text!r}"
        ) from error
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"input size must look like 150 or 150x120, got {text!r}")
    return parts[0], parts[1]


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _sample_list(text: str) -> list[int | float]:
    """Comma-separated sample settings, e.g. ``2^12,2^15,0.5``."""
    values = [_samples(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one sample setting, e.g. 2^12,2^15")
    return values


def _seed_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"seeds must look like 0,1,2, got {text!r}") from error


def _labelled_path(text: str) -> tuple[str, Path]:
    """``label=path``."""
    label, separator, path = text.partition("=")
    if not separator or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=FILE, got {text!r}")
    return label, Path(path)


def _add_model_options(parser: argparse.ArgumentParser, sample_list: bool = False) -> None:
    parser.add_argument(
        "--config",
        default="fashion_cnn",
        help="model configuration: a name under models/ or a YAML path",
    )
    if sample_list:
        parser.add_argument(
            "--samples",
            dest="sample_list",
            type=_sample_list,
            default=[],
            help="CF-Conv arms: comma-separated counts, 2^k or fractions (none: the "
            "spatial arm only)",
        )
    else:
        parser.add_argument(
            "--samples",
            type=_samples,
            help="positions per CF layer and step: count, 2^k, or fraction",
        )
    parser.add_argument("--input-size", type=_size, help="resize inputs to HxW")
    parser.add_argument(
        "--channels", type=int, choices=(1, 3), help="convert images to 1 or 3 channels"
    )


def _add_budget_options(parser: argparse.ArgumentParser) -> None:
    """The data and training budget of a run."""
    parser.add_argument(
        "--dataset",
        default="fashion_mnist",
        help=(
            "fashion_mnist, cats_vs_dogs, pathfinder:<size>[:option=value...], "
            "tfds:<name> or folder:<path>"
        ),
    )
    parser.add_argument("--epochs", type=_positive)
    parser.add_argument("--batch-size", type=_positive)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument(
        "--train-limit", type=_positive, help="use only the first N training images"
    )
    parser.add_argument("--steps-per-epoch", type=_positive)


def _configured(args: argparse.Namespace):
    from cfconv_tf.config import load_model_config

    return load_model_config(args.config).replace(
        samples=getattr(args, "samples", None),
        input_size=args.input_size,
        channels=args.channels,
        epochs=getattr(args, "epochs", None),
        batch_size=getattr(args, "batch_size", None),
        learning_rate=getattr(args, "learning_rate", None),
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from cfconv_tf.training import RunSettings, train

    strategy = make_strategy(args.strategy, args.cpu_replicas, args.collective_timeout)

    settings = RunSettings(
        config=_configured(args),
        variant=args.model,
        dataset=args.dataset,
        seed=args.seed,
        augment=args.augment,
        train_limit=args.train_limit,
        steps_per_epoch=args.steps_per_epoch,
    )
    out = args.out or f"runs/{settings.config.name}_{args.model}"
    train(settings, out, save_every=args.save_every, strategy=strategy)
    print(f"run written to {out}")


def _cmd_experiment(args: argparse.Namespace) -> None:
    from cfconv_tf.experiment import experiment_arms, run_experiment

    config = _configured(args)
    arms = experiment_arms(
        args.sample_list, args.scale_to_paper, spatial=not args.no_spatial, config=config
    )
    rows = run_experiment(
        config,
        arms,
        args.seeds,
        args.out,
        command="cfconv " + " ".join(args.argv),
        dataset=args.dataset,
        train_limit=args.train_limit,
        steps_per_epoch=args.steps_per_epoch,
    )
    print(f"{len(rows)} arms summarized in {args.out}/results.md and accuracy.png")


def _cmd_inspect(args: argparse.Namespace) -> None:
    from cfconv_tf.inspection import inspect_model
    from export.model_files import load_trained_model

    report = inspect_model(
        load_trained_model(args.model), args.out, args.source, args.pairs, args.energy
    )
    for name, layer in report.items():
        size = layer["effective_size"]
        print(
            f"{name}: effective kernel size median {size['median']:g} "
            f"(min {size['min']}, max {size['max']}) of {layer['spatial_shape'][:2]}; "
            f"kernel RMS {layer['kernel_rms']:.3g} (He {layer['he_rms']:.3g})"
            + (
                f", generator scale {layer['generator_scale']:.3g}"
                if "generator_scale" in layer
                else ""
            )
        )
    print(f"PNGs and kernels.json written to {args.out}")


def _cmd_examples(args: argparse.Namespace) -> None:
    from cfconv_tf.gallery import draw_examples

    picture = draw_examples(
        args.dataset, args.out, args.rows, args.columns, args.input_size, args.channels
    )
    print(f"wrote {picture}")


def _cmd_summary(args: argparse.Namespace) -> None:
    from cfconv_tf.models import VARIANTS, build_model, parameter_counts

    config = _configured(args)
    height, width = config.input_size or (28, 28)
    shape = (height, width, config.channels or 1)
    for variant in VARIANTS:
        counts = parameter_counts(build_model(config, variant, shape, config.classes))
        print(
            f"{config.name} {variant:8s} input {shape}: {counts['trainable']:,} trainable "
            f"parameters, {counts['non_trainable']:,} non-trainable entries "
            "(spectral state, norm statistics)"
        )


def _cmd_freeze(args: argparse.Namespace) -> None:
    from export.pipeline import freeze_and_report

    report = freeze_and_report(
        args.model,
        args.out,
        args.source,
        args.input_size,
        args.dataset,
        args.evaluate_limit,
        args.dtype,
        KernelStorage(args.kernel_rank, args.kernel_dtype),
    )
    print(json.dumps(report, indent=2))


def _cmd_export(args: argparse.Namespace) -> None:
    from export.names import KERNEL_STORAGE_KEY, ONNX_FILE
    from export.onnx_export import onnx_metadata
    from export.pipeline import export_model

    storage = KernelStorage(args.kernel_rank, args.kernel_dtype)
    name = args.name or Path(args.model.rstrip("/")).stem
    if name == "model":  # <run>/model.keras: name it after the run
        name = Path(args.model).resolve().parent.name
    folder = export_model(
        args.model,
        args.format,
        args.out,
        name,
        args.version,
        args.source,
        args.input_size,
        args.lowering,
        args.opset,
        args.labels,
        args.dtype,
        storage,
    )
    print(f"exported {args.format} to {folder}")
    if not storage.is_exact:
        errors = json.loads(onnx_metadata(folder / ONNX_FILE)[KERNEL_STORAGE_KEY])
        for layer, error in errors["relative_errors"].items():
            print(f"{layer}: kernel stored with relative error {error:.2e}")


def _cmd_verify(args: argparse.Namespace) -> None:
    from export.pipeline import verify_exports

    report = verify_exports(args.model, args.savedmodel, args.onnx, args.dataset)
    for kind, errors in report.errors.items():
        for name, error in errors.items():
            print(f"{kind:12s} {name:60s} relative error {error:.2e}")
    failures = report.failures()
    if failures:
        raise ValueError(
            f"exports differ from the trained model by more than {report.tolerance:.3g}: "
            + "; ".join(failures)
        )
    print(f"all exports within {report.tolerance:.3g} of the trained model")


BENCH_SUITES = ("layer", "train", "infer", "profile", "serve", "onnx", "all")
ALL_SUITES = ("layer", "train", "infer", "profile", "serve")  # what "all" runs


def _cmd_bench(args: argparse.Namespace) -> None:
    import datetime

    import keras

    from cfconv_tf.bench.report import machine, write_report
    from cfconv_tf.bench.timing import peak_matmul_gflops

    quick = args.quick
    size = args.input_size[0] if args.input_size else (15 if quick else 150)
    if args.rows is not None:  # refuse bad rows before anything is measured
        if args.suite == "train":
            from cfconv_tf.bench.train import configurations, select_rows

            select_rows(configurations(size), args.rows)
        elif args.suite == "infer":
            from cfconv_tf.bench.infer import select_models

            select_models(size, args.rows)
        else:
            raise ValueError(f"--rows selects rows of the train and infer suites, not {args.suite}")
    batch = args.batch_size or (4 if quick else 32)
    repeats = args.repeats or (2 if quick else 7)
    layers = 2 if quick else 6
    if (args.suite == "onnx") != bool(args.onnx):
        raise ValueError("the onnx suite times the files given with --onnx, and only it takes them")
    suites = ALL_SUITES if args.suite == "all" else (args.suite,)
    bar = keras.utils.Progbar(None, unit_name="row")
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    if suites != ("onnx",):  # the onnx suite compares files with each other only
        results["peak_gflops"] = peak_matmul_gflops((1024,) if quick else (1024, 2048, 4096))
    for suite in suites:
        if suite == "layer":
            from cfconv_tf.bench.stages import run_layer_stages

            results["layer"] = run_layer_stages(
                size,
                batch,
                samples=(16, 0.5) if quick else (2**12, 2**15, 2**18),
                repeats=repeats,
                progress=lambda _: bar.add(1),
            )
        elif suite == "train":
            from cfconv_tf.bench.train import run_train

            results["train"] = run_train(
                size,
                batch,
                repeats,
                warmup=1 if quick else 2,
                conv_layers=layers,
                time_limit_s=120 if quick else 600,
                progress=lambda _: bar.add(1),
                row_names=args.rows,
            )
        elif suite == "infer":
            from cfconv_tf.bench.infer import run_infer
            from cfconv_tf.bench.timing import weight_stream_gbs

            results["weight_stream_gbs"] = weight_stream_gbs(64 if quick else 256)
            results["infer"] = run_infer(
                size,
                batch_sizes=(1, batch),
                repeats=repeats,
                conv_layers=layers,
                peak_gflops=results["peak_gflops"],
                weight_stream_gbs=results["weight_stream_gbs"],
                budget_seconds=10 if quick else 60,
                progress=lambda _: bar.add(1),
                row_names=args.rows,
            )
        elif suite == "profile":
            from cfconv_tf.bench.onnx_profile import run_profile

            results["profile"] = run_profile(
                size,
                batch_sizes=(1, batch),
                runs=repeats,
                conv_layers=layers,
                peak_gflops=results["peak_gflops"],
                progress=lambda _: bar.add(1),
            )
        elif suite == "onnx":
            from cfconv_tf.bench.onnx_files import run_onnx_files

            results["onnx"] = run_onnx_files(
                dict(args.onnx),
                batch_sizes=(1, batch),
                repeats=repeats,
                progress=lambda _: bar.add(1),
            )
        else:
            from cfconv_tf.bench.serve import run_serve

            results["serve"] = run_serve(
                size,
                conv_layers=layers,
                clients=(1, 4) if quick else (1, 8, 32),
                seconds=2 if quick else 10,
                rates=tuple(args.rate or ()),
                progress=lambda _: bar.add(1),
            )
    write_report(results, Path(args.out), "cfconv " + " ".join(args.argv))
    print(Path(args.out, "results.md").read_text())


def _cmd_serve(args: argparse.Namespace) -> None:
    """Serve in a fresh ``python -m serving`` process: it never loads TensorFlow."""
    from serving.cli import run, settings_from

    settings_from(args)  # bad options fail here, with this command's name
    if args.command_line:
        serve_argv = args.argv[args.argv.index("serve") + 1 :]
        os.execv(sys.executable, [sys.executable, "-m", "serving", *serve_argv])
    run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfconv", description=__doc__)
    parser.add_argument(
        "--verbose", action="store_true", help="show TensorFlow's C++ logs (hidden by default)"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train a CF-Conv or spatial CNN")
    _add_model_options(train)
    train.add_argument("--model", choices=("cf", "spatial"), default="cf")
    _add_budget_options(train)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--augment", action="store_true", help="RandAugment the training split")
    train.add_argument(
        "--save-every", type=_positive, help="back up every N steps (default: each epoch)"
    )
    train.add_argument(
        "--out", help="run directory (default runs/<config>_<model>); rerun to resume"
    )
    train.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="none",
        help="tf.distribute strategy; multiworker reads the cluster from TF_CONFIG",
    )
    train.add_argument(
        "--cpu-replicas",
        type=_positive,
        help="mirrored on a CPU-only host: split the CPU into N devices (one replica each)",
    )
    train.add_argument(
        "--collective-timeout",
        type=float,
        default=DEFAULT_COLLECTIVE_TIMEOUT,
        help="multiworker: seconds to wait for the other workers before failing",
    )
    train.set_defaults(run=_cmd_train)

    experiment = verbs.add_parser(
        "experiment", help="a spatial baseline vs CF-Conv at several sample counts, over seeds"
    )
    _add_model_options(experiment, sample_list=True)
    _add_budget_options(experiment)
    experiment.add_argument(
        "--scale-to-paper",
        action="store_true",
        help="read --samples as the paper's counts at 150x150 and use the same fractions",
    )
    experiment.add_argument("--seeds", type=_seed_list, default=[0, 1, 2])
    experiment.add_argument(
        "--no-spatial", action="store_true", help="leave out the spatial baseline arm"
    )
    experiment.add_argument("--out", default="runs/experiment", help="experiment directory")
    experiment.set_defaults(run=_cmd_experiment)

    inspect = verbs.add_parser(
        "inspect", help="PNGs of learned spectra, spatial kernels and effective kernel sizes"
    )
    inspect.add_argument("model", help="a .keras model (trained or frozen) or a run directory")
    inspect.add_argument("--out", required=True, help="folder for the PNGs and kernels.json")
    inspect.add_argument(
        "--source",
        choices=KERNEL_SOURCES,
        default="state",
        help="trained layers: the stored state or the MLPs' kernel",
    )
    inspect.add_argument("--pairs", type=_positive, default=4, help="channel pairs per layer")
    inspect.add_argument(
        "--energy", type=float, default=0.9, help="energy share of the effective kernel size"
    )
    _add_import_option(inspect)
    inspect.set_defaults(run=_cmd_inspect)

    examples = verbs.add_parser("examples", help="a PNG of a dataset's test images")
    examples.add_argument("dataset", help="a dataset name, as --dataset takes")
    examples.add_argument("--out", required=True, help="the PNG to write")
    examples.add_argument("--rows", type=_positive, default=3)
    examples.add_argument("--columns", type=_positive, default=6)
    examples.add_argument("--input-size", type=_size, help="resize to HxW (needed for folders)")
    examples.add_argument("--channels", type=int, choices=(1, 3), help="convert to 1 or 3 channels")
    examples.set_defaults(run=_cmd_examples)

    summary = verbs.add_parser("summary", help="print both variants' parameter counts")
    _add_model_options(summary)
    summary.set_defaults(run=_cmd_summary)

    freeze = verbs.add_parser("freeze", help="constant spectral kernels, no MLPs; report accuracy")
    freeze.add_argument("model", help="a .keras model or a training run directory")
    freeze.add_argument("--out", required=True, help="the frozen .keras file to write")
    _add_freeze_options(freeze)
    freeze.add_argument("--dataset", help="evaluate on this dataset (default: the run's)")
    freeze.add_argument("--evaluate-limit", type=_positive, help="evaluate on N test images")
    _add_import_option(freeze)
    freeze.set_defaults(run=_cmd_freeze)

    export = verbs.add_parser("export", help="write a SavedModel, ONNX model or Triton entry")
    export.add_argument("model", help="a .keras model (trained or frozen) or a run directory")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, help="base folder: <out>/<name>/<version>/")
    export.add_argument("--name", help="model name (default: the run or file name)")
    export.add_argument("--version", type=_positive, help="default: newest + 1")
    export.add_argument(
        "--lowering",
        choices=sorted(LOWERINGS),
        default="factorized",
        help="ONNX transforms: factorized DFT stages as small MatMuls (opset 17), dense DFT "
        "matrices (17) or DFT ops (20)",
    )
    export.add_argument("--opset", type=_positive)
    export.add_argument(
        "--labels",
        help="class names, one per line, for a classifier outside a run directory (adds the "
        "probabilities and class_index outputs)",
    )
    _add_freeze_options(export)
    _add_import_option(export)
    export.set_defaults(run=_cmd_export)

    verify = verbs.add_parser("verify", help="compare exports with the trained model")
    verify.add_argument("model", help="the trained .keras model or run directory")
    verify.add_argument("--savedmodel", action="append", default=[], help="a SavedModel folder")
    verify.add_argument("--onnx", action="append", default=[], help="an ONNX file")
    verify.add_argument("--dataset", help="also compare on this dataset's test images")
    _add_import_option(verify)
    verify.set_defaults(run=_cmd_verify)

    serve = verbs.add_parser(
        "serve",
        help="serve a model repository over HTTP",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_serve_arguments(serve)
    serve.set_defaults(run=_cmd_serve)

    bench = verbs.add_parser("bench", help="time training and inference side by side")
    bench.add_argument("suite", choices=BENCH_SUITES)
    bench.add_argument(
        "--quick", action="store_true", help="CI-sized: 15x15 inputs, batch 4, 2 conv layers"
    )
    bench.add_argument("--input-size", type=_size, help="square input size (default 150)")
    bench.add_argument("--batch-size", type=_positive, help="default 32 (quick: 4)")
    bench.add_argument("--repeats", type=_positive, help="timed runs per row")
    bench.add_argument(
        "--rows",
        type=lambda text: [name.strip() for name in text.split(";")],
        help='train and infer suites: the rows (infer: the models) to run, separated by ";" '
        '(e.g. "spatial 3x3;cf 2^18, factorized generator", or "cf;spatial 3x3"; default all)',
    )
    bench.add_argument(
        "--onnx",
        type=_labelled_path,
        action="append",
        default=[],
        metavar="LABEL=FILE",
        help="onnx suite: an ONNX file to time (repeat; the first is the reference)",
    )
    bench.add_argument(
        "--rate",
        type=positive_float,
        action="append",
        help="serve: an open-loop rate in requests/s (repeat; default: 50 %% and 90 %% of "
        "the best closed-loop throughput)",
    )
    bench.add_argument("--out", default="runs/bench", help="folder for results.json/md/png")
    bench.set_defaults(run=_cmd_bench)
    return parser


def _add_freeze_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        choices=KERNEL_SOURCES,
        default="state",
        help="kernel from the stored spectral state or re-generated by the MLPs",
    )
    parser.add_argument("--input-size", type=_size, help="freeze at another HxW (needs mlp)")
    parser.add_argument(
        "--dtype",
        help="dtype policy for every layer of the frozen model, e.g. float32 for a "
        "mixed-precision model (default: each layer keeps its own)",
    )
    parser.add_argument(
        "--kernel-rank",
        type=_positive,
        help="compact ONNX kernels: each spectral kernel as rank-R factors (exact for a "
        "factorized generator's dense-updated kernel at R = its rank; the error is reported)",
    )
    parser.add_argument(
        "--kernel-dtype",
        choices=STORAGE_DTYPES,
        default="float32",
        help="compact ONNX kernels: store spectral kernels (or their factors) in float16, or "
        "full kernels in int8 with a float32 scale per frequency and output channel",
    )


def _add_import_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (repeatable), e.g. one that registers your own "
        "Keras layers with keras.saving.register_keras_serializable; looked up from the "
        "current directory too",
    )


def import_modules(names: Sequence[str]) -> None:
    """Import the user's modules (from the current directory too), or a ``ValueError``."""
    if names and "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # ImportError, or the module's own failure
            raise ValueError(f"--import {name}: {type(error).__name__}: {error}") from error


def main(argv: Sequence[str] | None = None) -> int:
    command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv, args.command_line = argv, command_line
    if args.verbose and native_logs.muted and command_line:
        # TensorFlow fixed its log level when the package imported it: start again with
        # the user's choice in the environment
        os.environ[native_logs.LEVEL_VARIABLE] = "0"
        os.execv(sys.executable, [sys.executable, "-m", "cfconv_tf.cli", *argv])
    try:
        import_modules(getattr(args, "imports", []))
        args.run(args)
    except (ValueError, OSError) as error:  # files missing, unreadable, in the way
        print(f"cfconv {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except PeerFailure as error:
        print(f"cfconv {args.verb}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
