"""Compact spectral kernels: low-rank factors and half-precision storage for exports.

A frozen layer's kernel part ``K [H, Wf, Cin, Cout]`` (real or imaginary), read as a
matrix ``[H * Wf, Cin * Cout]`` (frequencies by channel pairs), is stored as
``U [H * Wf, r] @ V [r, Cin * Cout]``: its best rank-``r`` approximation (truncated SVD).
A factorized generator's kernel has rank at most its ``generator_rank`` (frequency
factors times channel-pair factors), so with dense updates (``samples: 1.0``, as the
demo's model trains) a rank of ``generator_rank`` loses nothing and the paper network's
kernels shrink ~60x; any other kernel loses what its discarded singular values hold,
which :func:`compact_model` measures. ``float16`` storage halves the file (kernels or
factors rounded to half precision, computed in float32).

The ONNX file keeps the factors; onnxruntime multiplies them once when it loads the
model (constant folding), so inference runs at the full kernel's speed and memory: a
compact file is smaller to store and ship, not faster to run. The exception is a float16
kernel (without a rank) in the native lowering, whose op reads it as stored: half the
bytes per call, which is what bounds batch-1 latency.
"""

from __future__ import annotations

import dataclasses
import weakref

import keras
import numpy as np

from cfconv_tf.frozen import FrozenSpectralConv2D

STORAGE_DTYPES = ("float32", "float16")


@dataclasses.dataclass(frozen=True)
class KernelStorage:
    """How an export stores spectral kernels.

    ``rank``: each kernel part as rank-``rank`` factors (``None``: the kernel itself);
    ``dtype``: ``"float32"`` or ``"float16"`` storage (computed in float32 either way).
    """

    rank: int | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.rank is not None and (isinstance(self.rank, bool) or self.rank < 1):
            raise ValueError(f"kernel rank must be a positive integer, got {self.rank!r}")
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(
                f"kernel storage dtype must be one of {STORAGE_DTYPES}, got {self.dtype!r}"
            )

    def __str__(self) -> str:
        rank = "full rank" if self.rank is None else f"rank {self.rank}"
        return f"{rank}, {self.dtype}"

    @property
    def is_exact(self) -> bool:
        """Whether the stored kernels are the frozen ones, bit for bit."""
        return self.rank is None and self.dtype == "float32"


EXACT = KernelStorage()  # the frozen kernels as they are


def factors(part: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-``rank`` factors of one kernel part ``[H, Wf, Cin, Cout]``.

    Returns ``U [H, Wf, r]`` (singular values folded in) and ``V [r, Cin, Cout]`` float32
    with ``r = min(rank, H * Wf, Cin * Cout)``, from an SVD in float64.
    """
    height, half, cin, cout = part.shape
    matrix = part.reshape(height * half, cin * cout).astype(np.float64)
    left, singular, right = np.linalg.svd(matrix, full_matrices=False)
    kept = min(rank, singular.size)
    u = (left[:, :kept] * singular[:kept]).reshape(height, half, kept)
    return u.astype(np.float32), right[:kept].reshape(kept, cin, cout).astype(np.float32)


def stored(array: np.ndarray, storage: KernelStorage) -> np.ndarray:
    """``array`` as the file stores it (float16 or float32)."""
    return array.astype(storage.dtype)


def product(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``U [..., r] @ V [r, Cin, Cout]`` -> ``[..., Cin, Cout]`` in float32, as a runtime
    computes it from the stored factors."""
    flat = u.astype(np.float32).reshape(-1, u.shape[-1]) @ v.astype(np.float32).reshape(
        v.shape[0], -1
    )
    return flat.reshape(*u.shape[:-1], *v.shape[1:])


Factors = tuple[np.ndarray, np.ndarray]  # U [H, Wf, r], V [r, Cin, Cout] as stored


@dataclasses.dataclass(frozen=True)
class _Compacted:
    """What :func:`compact_model` gave a layer: its storage, each kernel part's stored
    factors, and the kernel parts (their product) the layer was set to."""

    storage: KernelStorage
    factors: tuple[Factors, Factors]
    kernel: tuple[np.ndarray, np.ndarray]


# layer -> what compact_model gave it, so that an export writes those very factors
_COMPACTED: weakref.WeakKeyDictionary[FrozenSpectralConv2D, _Compacted] = (
    weakref.WeakKeyDictionary()
)


def stored_factors(part: np.ndarray, storage: KernelStorage) -> Factors:
    """Rank-``storage.rank`` factors of a kernel part, as the file stores them."""
    u, v = factors(part, storage.rank)
    return stored(u, storage), stored(v, storage)


def compact_part(part: np.ndarray, storage: KernelStorage) -> np.ndarray:
    """The kernel part ``[H, Wf, Cin, Cout]`` an export with ``storage`` computes with."""
    if storage.rank is None:
        return stored(part, storage).astype(np.float32)
    return product(*stored_factors(part, storage))


def layer_factors(layer: FrozenSpectralConv2D, storage: KernelStorage) -> tuple[Factors, Factors]:
    """The stored factors of ``layer``'s real and imaginary kernel parts (``storage`` has
    a rank): the ones :func:`compact_model` computed the layer's kernel from, while the
    layer still holds that kernel, else the factors of the kernel it holds."""
    parts = tuple(np.asarray(weight) for weight in layer.get_weights())
    compacted = _COMPACTED.get(layer)
    if (
        compacted is not None
        and compacted.storage == storage
        and all(np.array_equal(a, b) for a, b in zip(parts, compacted.kernel, strict=True))
    ):
        return compacted.factors
    real, imag = (stored_factors(part, storage) for part in parts)
    return real, imag


def compact_model(model: keras.Model, storage: KernelStorage) -> dict[str, float]:
    """Give every frozen spectral layer of ``model`` the kernel ``storage`` keeps.

    Returns each layer's relative error ``||K' - K|| / ||K||`` (Frobenius norm over both
    parts). ``model`` is changed in place: export it, and its exports compute what it
    now computes (with a rank, they store the factors computed here:
    :func:`layer_factors`).
    """
    errors = {}
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, FrozenSpectralConv2D):
            continue
        parts = [np.asarray(weight) for weight in layer.get_weights()]
        if storage.rank is None:
            compacted = [compact_part(part, storage) for part in parts]
        else:
            kept = tuple(stored_factors(part, storage) for part in parts)
            compacted = [product(*pair) for pair in kept]
        difference = sum(
            np.sum((new - old) ** 2.0) for new, old in zip(compacted, parts, strict=True)
        )
        scale = sum(np.sum(old.astype(np.float64) ** 2.0) for old in parts)
        errors[layer.name] = float(np.sqrt(difference / max(scale, np.finfo(np.float64).tiny)))
        layer.set_weights(compacted)
        if storage.rank is not None:
            _COMPACTED[layer] = _Compacted(storage, kept, tuple(compacted))
    return errors
