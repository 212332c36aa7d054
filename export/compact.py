"""Compact spectral kernels: low-rank factors and half-precision storage for exports.

A frozen layer's kernel part ``K [H, Wf, Cin, Cout]`` (real or imaginary), read as a
matrix ``[H * Wf, Cin * Cout]`` (frequencies by channel pairs), is stored as
``U [H * Wf, r] @ V [r, Cin * Cout]``: its best rank-``r`` approximation (truncated SVD).
A factorized generator's kernel has rank at most its ``generator_rank`` (frequency
factors times channel-pair factors), so with dense updates (``samples: 1.0``, as the
demo's model trains) a rank of ``generator_rank`` loses nothing and the paper network's
kernels shrink ~60x; any other kernel loses what its discarded singular values hold,
which :func:`compact_model` measures. ``float16`` storage halves the file (kernels or
factors rounded to half precision, computed in float32). ``int8`` storage quarters it:
each full-rank kernel as symmetric 8-bit integers with one float32 scale per frequency and
output channel, shared by the real and imaginary parts (:func:`quantize`), so a complex
value keeps one grid for both its parts.

The ONNX file keeps the factors; onnxruntime multiplies them once when it loads the
model (constant folding), so inference runs at the full kernel's speed and memory: a
compact file is smaller to store and ship, not faster to run. The exception is a float16
or int8 kernel (without a rank) in the native lowering, whose op reads it as stored: half
(a quarter) of the bytes per call, which is what bounds batch-1 latency.
"""

from __future__ import annotations

import dataclasses
import weakref

import keras
import numpy as np

from cfconv_tf.frozen import FrozenSpectralConv2D

STORAGE_DTYPES = ("float32", "float16", "int8")
INT8_LEVELS = 127  # symmetric int8: -127 .. 127, so that q and -q are both stored


@dataclasses.dataclass(frozen=True)
class KernelStorage:
    """How an export stores spectral kernels.

    ``rank``: each kernel part as rank-``rank`` factors (``None``: the kernel itself);
    ``dtype``: ``"float32"``, ``"float16"`` or ``"int8"`` storage (computed in float32 in
    every case; int8 only without a rank).
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
        if self.dtype == "int8" and self.rank is not None:
            raise ValueError(
                "int8 kernel storage keeps the full kernel: it takes no kernel rank (store "
                "rank-r factors in float16 instead)"
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
    """``array`` as the file stores it (float32, float16, or int8 for values that are
    integers already: :func:`quantize`'s, possibly gathered and negated)."""
    return array.astype(storage.dtype)


def quantize(
    kernel_real: np.ndarray, kernel_imag: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric int8 of the kernel parts ``[H, Wf, Cin, Cout]``.

    Returns ``(q_real, q_imag, scale)``: int8 parts and float32 ``scale [H, Wf, Cout]``,
    the largest magnitude over both parts and the input channels divided by
    :data:`INT8_LEVELS`, so that the kernel is ``q * scale[:, :, None, :]``
    (:func:`dequantize`). One scale per frequency and output channel follows the kernel's
    spectrum (its magnitude varies by orders across frequencies) and lets a runtime apply it
    once per output after summing over the input channels. Conjugate frequencies get
    conjugate integers, so a Hermitian DC column stays Hermitian.
    """
    if not (np.isfinite(kernel_real).all() and np.isfinite(kernel_imag).all()):
        raise ValueError("a kernel with NaN or infinite values cannot be stored as int8")
    peak = np.maximum(np.abs(kernel_real).max(axis=2), np.abs(kernel_imag).max(axis=2))
    scale = (peak.astype(np.float64) / INT8_LEVELS).astype(np.float32)
    divisor = np.where(scale > 0, scale, 1.0).astype(np.float64)[:, :, None, :]
    q_real, q_imag = (
        np.clip(np.rint(part / divisor), -INT8_LEVELS, INT8_LEVELS).astype(np.int8)
        for part in (kernel_real, kernel_imag)
    )
    return q_real, q_imag, scale


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """The float32 kernel part ``[H, Wf, Cin, Cout]`` of int8 ``q`` and ``scale [H, Wf,
    Cout]``, as a runtime computes it (a float32 product)."""
    return q.astype(np.float32) * scale[:, :, None, :]


def product(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``U [..., r] @ V [r, Cin, Cout]`` -> ``[..., Cin, Cout]`` in float32, as a runtime
    computes it from the stored factors."""
    flat = u.astype(np.float32).reshape(-1, u.shape[-1]) @ v.astype(np.float32).reshape(
        v.shape[0], -1
    )
    return flat.reshape(*u.shape[:-1], *v.shape[1:])


Factors = tuple[np.ndarray, np.ndarray]  # U [H, Wf, r], V [r, Cin, Cout] as stored
Quantized = tuple[np.ndarray, np.ndarray, np.ndarray]  # q_real, q_imag, scale: quantize()


@dataclasses.dataclass(frozen=True)
class _Compacted:
    """What :func:`compact_model` gave a layer: its storage, what the file stores (each
    kernel part's factors, or the quantized parts), and the kernel parts the layer was set
    to (computed from them)."""

    storage: KernelStorage
    kept: tuple[Factors, Factors] | Quantized
    kernel: tuple[np.ndarray, np.ndarray]


# layer -> what compact_model gave it, so that an export writes those very factors
_COMPACTED: weakref.WeakKeyDictionary[FrozenSpectralConv2D, _Compacted] = (
    weakref.WeakKeyDictionary()
)


def stored_factors(part: np.ndarray, storage: KernelStorage) -> Factors:
    """Rank-``storage.rank`` factors of a kernel part, as the file stores them."""
    u, v = factors(part, storage.rank)
    return stored(u, storage), stored(v, storage)


def _stored_kernel(
    parts: tuple[np.ndarray, np.ndarray], storage: KernelStorage
) -> tuple[Factors, Factors] | Quantized | None:
    """What a file with ``storage`` holds for the kernel ``parts`` beyond a cast: each
    part's factors (with a rank), the quantized parts (int8), else ``None``."""
    if storage.rank is not None:
        real, imag = (stored_factors(part, storage) for part in parts)
        return real, imag
    if storage.dtype == "int8":
        return quantize(*parts)
    return None


def compact_parts(
    parts: tuple[np.ndarray, np.ndarray], storage: KernelStorage
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[Factors, Factors] | Quantized | None]:
    """The kernel parts ``[H, Wf, Cin, Cout]`` an export with ``storage`` computes with
    (float32), and what its file stores for them beyond a cast (:func:`_stored_kernel`)."""
    kept = _stored_kernel(parts, storage)
    if storage.rank is not None:
        real, imag = (product(*factors) for factors in kept)
    elif kept is not None:
        real, imag = (dequantize(q, kept[2]) for q in kept[:2])
    else:
        real, imag = (stored(part, storage).astype(np.float32) for part in parts)
    return (real, imag), kept


def layer_stored(
    layer: FrozenSpectralConv2D, storage: KernelStorage
) -> tuple[Factors, Factors] | Quantized:
    """What the file stores for ``layer``'s kernel (``storage`` has a rank, or is int8):
    what :func:`compact_model` computed the layer's kernel from, while the layer still
    holds that kernel, else that of the kernel it holds."""
    parts = tuple(np.asarray(weight) for weight in layer.get_weights())
    compacted = _COMPACTED.get(layer)
    if (
        compacted is not None
        and compacted.storage == storage
        and all(np.array_equal(a, b) for a, b in zip(parts, compacted.kernel, strict=True))
    ):
        return compacted.kept
    return _stored_kernel(parts, storage)


def compact_model(model: keras.Model, storage: KernelStorage) -> dict[str, float]:
    """Give every frozen spectral layer of ``model`` the kernel ``storage`` keeps.

    Returns each layer's relative error ``||K' - K|| / ||K||`` (Frobenius norm over both
    parts). ``model`` is changed in place: export it, and its exports compute what it
    now computes (with a rank or int8, they store the factors or integers computed here:
    :func:`layer_stored`).
    """
    errors = {}
    for layer in model._flatten_layers(include_self=False):
        if not isinstance(layer, FrozenSpectralConv2D):
            continue
        parts = tuple(np.asarray(weight) for weight in layer.get_weights())
        compacted, kept = compact_parts(parts, storage)
        difference = sum(
            np.sum((new - old) ** 2.0) for new, old in zip(compacted, parts, strict=True)
        )
        scale = sum(np.sum(old.astype(np.float64) ** 2.0) for old in parts)
        errors[layer.name] = float(np.sqrt(difference / max(scale, np.finfo(np.float64).tiny)))
        layer.set_weights(list(compacted))
        if kept is not None:
            _COMPACTED[layer] = _Compacted(storage, kept, compacted)
    return errors
