"""What a model repository holds on disk, read so that one bad entry hides nothing else.

Versions are folders named by a plain version number (ASCII digits without a leading
zero, 1 to 999999999: ``"²".isdigit()`` is True, and ``7`` and ``007`` would be one
version twice). A version entry that cannot be used as it is (an unreadable folder, a
link to nothing, a file where a folder belongs) is found with the reason, described
without the server's paths, so it can be reported in its version's state while the
model's other versions load and unload as usual. A version folder without the model file
yet is not a version yet; hidden entries (the exporter's staging folders) are skipped.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from export.atomic import MODEL_NAME

VERSION = re.compile(r"[1-9][0-9]{0,8}")
VERSIONS = "versions are numbers from 1 to 999999999 without leading zeros"


@dataclasses.dataclass(frozen=True)
class Found:
    """A version on disk: its folder, and why it cannot be loaded ("" if it can)."""

    folder: Path
    problem: str = ""


def describe(error: OSError) -> str:
    """An OS error without the path it names (clients see it; the paths are the server's)."""
    return error.strerror or type(error).__name__


def model_folders(root: Path) -> list[Path]:
    """The folders of ``root`` named like models (OSError if ``root`` cannot be read)."""
    found = []
    for entry in sorted(root.iterdir()):
        try:
            if MODEL_NAME.match(entry.name) and entry.is_dir():
                found.append(entry)
        except OSError:  # an entry that vanished or cannot be looked at is no model
            continue
    return found


@dataclasses.dataclass
class ModelFolder:
    """A model folder's versions, and its visible folders that are not versions."""

    versions: dict[int, Found] = dataclasses.field(default_factory=dict)
    odd: list[str] = dataclasses.field(default_factory=list)


def model_folder(folder: Path, model_file: str) -> ModelFolder:
    """What a model folder holds (OSError if the folder itself cannot be listed)."""
    found = ModelFolder()
    for entry in sorted(folder.iterdir()):
        name = entry.name
        try:
            if not VERSION.fullmatch(name):
                if not name.startswith(".") and entry.is_dir():
                    found.odd.append(name)
            elif entry.is_symlink() and not entry.exists():
                found.versions[int(name)] = Found(entry, "a symbolic link to nothing")
            elif not entry.is_dir():
                found.versions[int(name)] = Found(entry, "not a folder")
            elif (entry / model_file).is_file():
                found.versions[int(name)] = Found(entry)
        except OSError as error:
            if VERSION.fullmatch(name):
                found.versions[int(name)] = Found(entry, f"cannot be read: {describe(error)}")
    return found


def fingerprint(folder: Path) -> tuple:
    """Names, sizes and modification times of a version folder's files (OSError if one
    cannot be read or vanishes meanwhile)."""
    return tuple(
        sorted(
            (str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns)
            for path in folder.rglob("*")
            if path.is_file() and (stat := path.stat())
        )
    )
