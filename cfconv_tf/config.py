"""Model configuration files (``models/*.yaml``): the network's shape and defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

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
# The ModelConfig fields that define a CF-Conv layer's generators.
GENERATOR_FIELDS = (
    "generator",
    "generator_rank",
    "hidden_units",
    "fourier_bands",
    "generator_initializer",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The paper's CNN family: conv stack, global average pooling, dense head.

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
    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 10
    description: str = ""

    def __post_init__(self) -> None:
        for field in (
            "conv_layers",
            "filters",
            "classes",
            "spatial_kernel_size",
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
        if self.state_initializer not in NAMED_STATE_INITIALIZERS:
            raise ValueError(
                f"{self.name}: state_initializer must be one of {NAMED_STATE_INITIALIZERS}, "
                f"got {self.state_initializer!r}"
            )
        if self.spatial_kind not in SPATIAL_KINDS:
            raise ValueError(
                f"{self.name}: spatial_kind must be one of {SPATIAL_KINDS}, "
                f"got {self.spatial_kind!r}"
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


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """Read a model configuration by file path or by name under ``models/``.

    Raises:
        FileNotFoundError: no such file; the message lists the known names.
        ValueError: unknown keys or invalid values.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = MODELS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
        raise FileNotFoundError(
            f"model configuration {str(name_or_path)!r} not found; known: {known}"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(raw).__name__}")
    fields = {field.name for field in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(fields)}")
    raw.setdefault("name", path.stem)
    for key in ("dense_units", "input_size", "hidden_units"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    return ModelConfig(**raw)
