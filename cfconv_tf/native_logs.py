"""TensorFlow's C++ start-up logs, kept off the console unless the user asks for them."""

from __future__ import annotations

import os
import sys

LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
muted = False  # whether quiet_tensorflow_import chose the level (not the user)


def quiet_tensorflow_import() -> None:
    """Import TensorFlow with its native logs off, unless the user set their level.

    TensorFlow logs from C++ while its libraries load, before any log level applies
    (absl's "All log messages before absl::InitializeLog()" line, oneDNN and CUDA
    notes), so the process's stderr is pointed at /dev/null for the import;
    ``TF_CPP_MIN_LOG_LEVEL=3`` keeps the later ones (a CPU machine's "failed call to
    cuInit") off too. That level also hides TensorFlow's C++ error lines (errors that
    stop a program still reach Python as exceptions); child processes inherit it. A
    user who sets ``TF_CPP_MIN_LOG_LEVEL`` (or runs ``cfconv --verbose``) gets
    TensorFlow's own behaviour.
    """
    global muted
    if "tensorflow" in sys.modules or LEVEL_VARIABLE in os.environ:
        return
    os.environ[LEVEL_VARIABLE] = "3"
    muted = True
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
