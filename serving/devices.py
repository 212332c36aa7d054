"""Which onnxruntime execution providers serve the models: ``--device`` and ``--provider``."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence

import onnxruntime as ort

from serving.settings import DEVICES

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def gpu_present() -> bool:
    """Whether ``nvidia-smi`` lists a GPU (onnxruntime-gpu lists CUDA without one)."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return False
    try:
        listed = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return listed.returncode == 0 and "GPU" in listed.stdout


def execution_providers(
    device: str, providers: Sequence[str] = (), available: Sequence[str] | None = None
) -> tuple[str, ...]:
    """The providers to use, most preferred first; the CPU provider always comes last.

    ``providers`` (an expert's list) wins over ``device``; ``auto`` takes CUDA when
    onnxruntime-gpu and a GPU are present, else the CPU.

    Raises:
        ValueError: an unknown device, or a provider this onnxruntime does not have (CUDA
            on a CPU-only install or machine).
    """
    available = tuple(ort.get_available_providers() if available is None else available)
    if providers:
        missing = [name for name in providers if name not in available]
        if missing:
            raise ValueError(f"onnxruntime has no {missing}; this install has {list(available)}")
        chosen = tuple(providers)
    elif device == "cpu":
        chosen = (CPU,)
    elif device == "cuda":
        if CUDA not in available or not gpu_present():
            raise ValueError(
                "--device cuda needs onnxruntime-gpu (pip install 'cfconv-tf[gpu]') and a GPU; "
                f"this install has {list(available)}"
                + ("" if CUDA not in available else " but no GPU is present")
            )
        chosen = (CUDA,)
    elif device == "auto":
        chosen = (CUDA,) if CUDA in available and gpu_present() else (CPU,)
    else:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    return chosen if CPU in chosen else (*chosen, CPU)
