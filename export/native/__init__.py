"""The native lowering's onnxruntime library: where it is, and what to say without it.

The library (``spectral_conv.cpp``, the core, and ``onnxruntime_op.cpp``, its onnxruntime
binding) is compiled by the package's build; it registers the custom op
``ai.cfconv.SpectralConv2D`` that ``--lowering native`` exports write. This module imports
nothing heavy: the server loads it beside onnxruntime alone.
"""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent
LIBRARY_STEM = "_spectral_onnxruntime"
MISSING = (
    "the native lowering's library is not built in this installation (it needs g++ and the "
    "headers that `make setup` fetches: run `make setup`, or reinstall with "
    "`pip install -e .` after `python scripts/fetch_native_deps.py build/native`); "
    "export with a stock lowering (--lowering factorized) instead"
)


def library_path() -> Path | None:
    """The compiled custom-op library, or ``None`` where the build could not make it."""
    found = sorted(FOLDER.glob(f"{LIBRARY_STEM}*.so"))
    return found[-1] if found else None


def require_library() -> Path:
    """The compiled custom-op library.

    Raises:
        ValueError: it was not built (:data:`MISSING` says how to get it).
    """
    path = library_path()
    if path is None:
        raise ValueError(MISSING)
    return path
