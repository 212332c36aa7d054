"""Model configuration files (``models/*.yaml``): the network's shape and defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from cfconv_tf.generator import (
    PAPER_HIDDEN_UNITS,
    validate_fourier_bands,
    validate_generator,
    validate_generator_rank,
    validate_hidden_initializer,
)
from cfconv_tf.layers import (
    NAMED_STATE_INITIALIZERS,
    validate_kernel_scale,
    validate_recompute_generators,
)
from cfconv_tf.sampling import validate_samples

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# The spatial variant's convolutions: dense k x k (the paper's baseline), or depthwise
# k x k followed by a pointwise 1 x 1 (the large-kernel CNNs of RepLKNet and SLaK).
SEPARABLE = "separable"
SPATIAL_KINDS = ("dense", SEPARABLE)
# What follows each convolution before its ReLU: nothing (the paper's network), or
# "layer": each image's feature map normalized over height, width and channels, then a
# learned per-channel scale and offset (GroupNormalization with one group). It keeps
# the signal's scale through the stack whatever the initial kernels, and acts the same
# in training and inference, unlike batch statistics.
LAYER_NORMALIZATION = "layer"
NORMALIZATIONS = ("none", LAYER_NORMALIZATION)
# The network family: the paper's stride-1 stack, or a ResNet-style downsampling CNN
# (see cfconv_tf.models).
RESNET = "resnet"
ARCHITECTURES = ("paper", RESNET)
# Where a ResNet block of a spectral stage puts its CF-Conv: in place of the block's
# second 3x3 convolution, or added to it as a global branch.
SPECTRAL_ADD = "add"
SPECTRAL_MODES = ("replace", SPECTRAL_ADD)
# The learning rate over a run: constant, or cosine decay from learning_rate to 0 over
# the run's epochs x steps per epoch (the usual ResNet recipe; with BatchNorm it also
# lets the moving statistics catch up with weights that stop moving at the end).
COSINE = "cosine"
LEARNING_RATE_SCHEDULES = ("constant", COSINE)
# The ModelConfig fields that define a CF-Conv layer's generators.
GENERATOR_FIELDS = (
    "generator",
    "generator_rank",
    "hidden_units",
    "fourier_bands",
    "generator_initializer",
)
# The ModelConfig fields every CF-Conv layer of a model takes, under the same names as
# CFConv2D's arguments.
CF_LAYER_FIELDS = (
    *GENERATOR_FIELDS,
    "samples",
    "update_rate",
    "state_initializer",
    "kernel_scale",
    "recompute_generators",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A network: its convolutions, global average pooling, a dense head.

    ``architecture`` ``"paper"`` uses ``conv_layers``, ``filters``, ``normalization``
    and the ``spatial_*`` fields; ``"resnet"`` uses ``stage_filters`` (one width a
    stage; every stage after the first halves the resolution), ``blocks_per_stage``
    (two 3x3 convolutions a block), ``residual`` (false: the plain twin) and
    ``spectral_stages`` / ``spectral_mode`` (where its CF-Conv variant puts CF-Convs,
    and how), ``stem_stride`` (2: the stem halves the input, so stage 0 runs at half
    the resolution) and ``batchnorm_momentum`` (Keras's default 0.99; 0.9, PyTorch's
    0.1, keeps the inference statistics current within a short budget). The CF-Conv
    settings (``samples``, ``generator``...) serve both.

    ``input_size``/``channels`` of ``None`` mean "the dataset's own"; ``classes`` is
    always taken from the dataset at training time and only used here as a default.
    """

    name: str
    conv_layers: int = 6
    filters: int = 32
    dense_units: tuple[int, ...] = (128, 64)
    input_size: tuple[int, int] | None = None
    channels: int | None = None
    classes: int = 2
    samples: int | float = 2**18
    generator: str = "coordinate_mlp"
    generator_rank: int = 16
    hidden_units: tuple[int, ...] = PAPER_HIDDEN_UNITS
    fourier_bands: int = 0
    generator_initializer: str = "glorot_uniform"
    update_rate: float = 1.0
    state_initializer: str = "cfconv_uniform"
    kernel_scale: float | str = 1.0
    recompute_generators: bool = False
    spatial_kernel_size: int = 3
    spatial_kind: str = "dense"
    normalization: str = "none"
    architecture: str = "paper"
    stage_filters: tuple[int, ...] = (32, 64, 128)
    blocks_per_stage: int = 1
    residual: bool = True
    spectral_stages: tuple[int, ...] = ()
    spectral_mode: str = "replace"
    stem_stride: int = 1
    batchnorm_momentum: float = 0.99
    learning_rate: float = 1e-3
    learning_rate_schedule: str = "constant"
    batch_size: int = 32
    epochs: int = 10
    description: str = ""

    def __post_init__(self) -> None:
        for field in (
            "conv_layers",
            "filters",
            "classes",
            "spatial_kernel_size",
            "blocks_per_stage",
            "stem_stride",
            "batch_size",
            "epochs",
        ):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{self.name}: {field} must be a positive integer, got {value!r}")
        validate_samples(self.samples)
        try:
            validate_fourier_bands(self.fourier_bands)
            validate_generator(self.generator)
            validate_generator_rank(self.generator_rank)
            validate_hidden_initializer(self.generator_initializer)
            validate_kernel_scale(self.kernel_scale)
            validate_recompute_generators(self.recompute_generators)
        except ValueError as error:
            raise ValueError(f"{self.name}: {error}") from error
        for field, choices in (
            ("state_initializer", NAMED_STATE_INITIALIZERS),
            ("spatial_kind", SPATIAL_KINDS),
            ("normalization", NORMALIZATIONS),
            ("architecture", ARCHITECTURES),
            ("spectral_mode", SPECTRAL_MODES),
            ("learning_rate_schedule", LEARNING_RATE_SCHEDULES),
        ):
            value = getattr(self, field)
            if value not in choices:
                raise ValueError(f"{self.name}: {field} must be one of {choices}, got {value!r}")
        if not self.stage_filters or any(
            isinstance(width, bool) or not isinstance(width, int) or width <= 0
            for width in self.stage_filters
        ):
            raise ValueError(
                f"{self.name}: stage_filters must be positive integers, got {self.stage_filters}"
            )
        momentum = self.batchnorm_momentum
        if (
            isinstance(momentum, bool)
            or not isinstance(momentum, (int, float))
            or not 0 < momentum < 1
        ):
            raise ValueError(
                f"{self.name}: batchnorm_momentum must be a number in (0, 1), got {momentum!r}"
            )
        if not isinstance(self.residual, bool):
            raise ValueError(f"{self.name}: residual must be true or false, got {self.residual!r}")
        if self.spectral_stages and self.architecture != RESNET:
            raise ValueError(f"{self.name}: spectral_stages needs architecture {RESNET!r}")
        stages = len(self.stage_filters)
        if len(set(self.spectral_stages)) != len(self.spectral_stages) or any(
            isinstance(stage, bool) or not isinstance(stage, int) or not 0 <= stage < stages
            for stage in self.spectral_stages
        ):
            raise ValueError(
                f"{self.name}: spectral_stages must be distinct stage indices in "
                f"0..{len(self.stage_filters) - 1}, got {self.spectral_stages}"
            )
        if self.input_size is not None and (len(self.input_size) != 2 or min(self.input_size) <= 0):
            raise ValueError(
                f"{self.name}: input_size must be [height, width], got {self.input_size}"
            )

    def replace(self, **changes) -> ModelConfig:
        """A copy with the given fields changed (``None`` values are ignored)."""
        return dataclasses.replace(
            self, **{key: value for key, value in changes.items() if value is not None}
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# A configuration file may start from another: ``base: <name or path>`` takes every
# setting of that file except its name and description, and the file's own settings
# override them. A name resolves under models/; a relative path from the including
# file's directory.
BASE_KEY = "base"
UNINHERITED = ("name", "description")


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """Read a model configuration by name under ``models/`` or by file path.

    A name is one word without a suffix (``pathfinder_cf``); anything else is a path,
    read from the working directory when relative. The file may name a ``base``
    configuration (see ``BASE_KEY``).

    Raises:
        FileNotFoundError: no such file (or base file); the message lists the known names.
        ValueError: unknown keys, invalid values, a bad ``base`` or a cycle of them.
    """
    path = _config_path(name_or_path, Path())
    raw = _read_settings(path, ())
    raw.setdefault("name", path.stem)
    for key in ("dense_units", "input_size", "hidden_units", "stage_filters", "spectral_stages"):
        if raw.get(key) is not None:
            if not isinstance(raw[key], list):
                raise ValueError(f"{path}: {key} must be a list, got {raw[key]!r}")
            raw[key] = tuple(raw[key])
    return ModelConfig(**raw)


def _config_path(name_or_path: str | Path, directory: Path, including: str = "") -> Path:
    """The file of a name (under ``models/``) or of a path (relative to ``directory``).

    ``including``: the file that names this one, for the error message.
    """
    path = Path(name_or_path)
    is_name = not path.suffix and len(path.parts) == 1
    path = MODELS_DIR / f"{path}.yaml" if is_name else directory / path
    if not path.is_file():
        known = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
        raise FileNotFoundError(
            f"model configuration {str(name_or_path)!r}{including} not found "
            f"(as {'a name' if is_name else 'a path'}: {path}); known names: {known}"
        )
    return path


def _read_settings(path: Path, including: tuple[Path, ...]) -> dict[str, Any]:
    """One file's settings over its base's (``including``: the files that led here)."""
    if path.resolve() in including:
        chain = " -> ".join(str(p) for p in (*including, path.resolve()))
        raise ValueError(f"{path}: base configurations form a cycle: {chain}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    fields = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(raw) - fields - {BASE_KEY})
    if unknown:
        raise ValueError(
            f"{path}: unknown settings {unknown}; known: {sorted(fields | {BASE_KEY})}"
        )
    if BASE_KEY not in raw:
        return raw
    base = raw.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: base must be a configuration name or path, got {base!r}")
    base_path = _config_path(base, path.parent, f" (the base of {path})")
    inherited = _read_settings(base_path, (*including, path.resolve()))
    for key in UNINHERITED:
        inherited.pop(key, None)
    return {**inherited, **raw}
