"""Atomic writes of model versions: stage in a hidden folder, then rename into place.

A server that watches ``<base>/<name>/`` sees either no version folder or a complete
one; a crash leaves only a hidden ``.staging-*`` folder, which servers ignore (TF
Serving and ours load numeric folder names only).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(name: str) -> str:
    """A model name is one safe path component (no slashes, no '..', no hidden names)."""
    if not MODEL_NAME.match(name) or ".." in name:
        raise ValueError(
            f"invalid model name {name!r}: use letters, digits, '_', '-', '.' "
            f"(starting with a letter or digit)"
        )
    return name


def versions(model_dir: Path) -> list[int]:
    """The numeric version folders of a model, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def free_version(base: Path, name: str, version: int | None = None) -> Path:
    """The folder ``base/name/<version>`` a new version goes to (``version`` defaults to
    one more than the newest), or an error for a bad name or version, or a version
    folder that already holds a model. Callers may ask before doing expensive work;
    :func:`staged_version` asks again when it writes."""
    model_dir = Path(base) / check_model_name(name)
    if version is None:
        version = (versions(model_dir) or [0])[-1] + 1
    if version <= 0:
        raise ValueError(f"version must be a positive integer, got {version}")
    final = model_dir / str(version)
    if final.exists() and any(final.iterdir()):
        raise FileExistsError(f"{final} already holds a model; choose another version")
    return final


@contextlib.contextmanager
def staged_version(
    base: Path, name: str, version: int | None = None
) -> Iterator[tuple[Path, Path]]:
    """Yield ``(staging, final)`` folders; on success staging becomes final.

    On failure nothing is left: not the staging folder, nor the model's folder if this
    call made it.

    ``final`` is ``base/name/<version>``.

    ``version`` defaults to one more than the newest existing version (1 for a new
    model). An existing, non-empty version folder is an error, checked before anything
    is written. On any exception the staging folder is removed.
    """
    final = free_version(base, name, version)
    model_dir = final.parent
    created = not model_dir.exists()
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{final.name}-", dir=model_dir))
    try:
        yield staging, final
        staging.chmod(0o755)
        if final.exists():
            final.rmdir()  # empty, checked above
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            remove_if_empty(model_dir)
        raise


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if nothing is in it (a folder made for a write that failed)."""
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as stream:
        stream.write(text)
    os.chmod(stream.name, 0o644)
    os.replace(stream.name, path)
