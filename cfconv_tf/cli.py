"""The ``cfconv`` command: one verb per user job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cfconv_tf.sampling import validate_samples


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


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default="fashion_cnn",
        help="model configuration: a name under models/ or a YAML path",
    )
    parser.add_argument(
        "--samples", type=_samples, help="positions per CF layer and step: count, 2^k, or fraction"
    )
    parser.add_argument("--input-size", type=_size, help="resize inputs to HxW")
    parser.add_argument(
        "--channels", type=int, choices=(1, 3), help="convert images to 1 or 3 channels"
    )


def _configured(args: argparse.Namespace):
    from cfconv_tf.config import load_model_config

    return load_model_config(args.config).replace(
        samples=args.samples,
        input_size=args.input_size,
        channels=args.channels,
        epochs=getattr(args, "epochs", None),
        batch_size=getattr(args, "batch_size", None),
        learning_rate=getattr(args, "learning_rate", None),
    )


def _cmd_train(args: argparse.Namespace) -> None:
    from cfconv_tf.training import RunSettings, train

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
    train(settings, out, save_every=args.save_every)
    print(f"run written to {out}")


def _cmd_summary(args: argparse.Namespace) -> None:
    from cfconv_tf.models import VARIANTS, build_model, parameter_counts

    config = _configured(args)
    height, width = config.input_size or (28, 28)
    shape = (height, width, config.channels or 1)
    for variant in VARIANTS:
        counts = parameter_counts(build_model(config, variant, shape, config.classes))
        print(
            f"{config.name} {variant:8s} input {shape}: {counts['trainable']:,} trainable "
            f"parameters, {counts['non_trainable']:,} spectral-state entries"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cfconv", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    train = verbs.add_parser("train", help="train a CF-Conv or spatial CNN")
    _add_model_options(train)
    train.add_argument("--model", choices=("cf", "spatial"), default="cf")
    train.add_argument(
        "--dataset",
        default="fashion_mnist",
        help="fashion_mnist, cats_vs_dogs, tfds:<name> or folder:<path>",
    )
    train.add_argument("--epochs", type=_positive)
    train.add_argument("--batch-size", type=_positive)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--augment", action="store_true", help="RandAugment the training split")
    train.add_argument("--train-limit", type=_positive, help="use only the first N training images")
    train.add_argument("--steps-per-epoch", type=_positive)
    train.add_argument(
        "--save-every", type=_positive, help="back up every N steps (default: each epoch)"
    )
    train.add_argument(
        "--out", help="run directory (default runs/<config>_<model>); rerun to resume"
    )
    train.set_defaults(run=_cmd_train)

    summary = verbs.add_parser("summary", help="print both variants' parameter counts")
    _add_model_options(summary)
    summary.set_defaults(run=_cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"cfconv {args.verb}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
