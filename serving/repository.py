"""The model repository the server serves: ``<root>/<name>/<version>/``.

The layout is the one ``cfconv export`` writes (Triton-style for ONNX, TF Serving style
for SavedModels). Versions are folders named by plain ASCII digits; anything else in a
model folder is ignored with one warning, and hidden staging folders silently (the
exporter renames complete folders into place, so a visible version is complete).

:meth:`ModelRepository.refresh` loads new versions, drops removed ones and retries a
version that failed to load once its files change; every version's state
(``AVAILABLE``, ``FAILED`` with its error, ``UNLOADED``) is kept for the status
endpoints. One bad entry never stops the others from loading. Requests that already hold
a version finish on it; requests that reach an unloaded version's queue get 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from export.atomic import MODEL_NAME
from serving.backends import MODEL_FILES, Backend, load_backend
from serving.batching import MicroBatcher
from serving.errors import NotFound
from serving.settings import ServerSettings

log = logging.getLogger("cfconv.serve")
VERSION = re.compile(r"[0-9]{1,9}")  # ASCII digits only: "²".isdigit() is True
AVAILABLE, FAILED, UNLOADED = "AVAILABLE", "FAILED", "UNLOADED"
STUCK_AFTER = 3  # failed scans in a row after which readiness reports the reloader stuck
STUCK_SCAN_SECONDS = 600.0  # a scan (loads included) running longer is stuck
QUEUED_BODIES = 16  # a version's queue holds at most this many largest bodies of inputs


@dataclasses.dataclass
class ServedModel:
    """One loaded version of a model and its batcher."""

    name: str
    version: int
    backend: Backend
    batcher: MicroBatcher

    async def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return await self.batcher.submit(inputs)


@dataclasses.dataclass
class VersionState:
    state: str
    error: str = ""
    fingerprint: tuple = ()  # what the files looked like when this state was reached


def fingerprint(folder: Path) -> tuple:
    """Names, sizes and modification times of a version folder's files."""
    return tuple(
        sorted(
            (str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns)
            for path in folder.rglob("*")
            if path.is_file() and (stat := path.stat())
        )
    )


class ModelRepository:
    """Loaded versions by model name, kept in step with the folder by ``refresh``."""

    def __init__(
        self,
        settings: ServerSettings,
        providers: tuple[str, ...],
        observe_batch: Callable[[int], None],
        count_failure: Callable[[str], None],
    ) -> None:
        self.root = Path(settings.model_repo)
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} does not exist")
        self.settings = settings
        self.providers = providers
        self.observe_batch = observe_batch
        self.count_failure = count_failure
        self.loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loader")
        self.models: dict[str, dict[int, ServedModel]] = {}
        self.states: dict[str, dict[int, VersionState]] = {}
        self.ignored: set[Path] = set()
        self.failed_scans = 0
        self.scan_started: float | None = None
        self.closing: set[asyncio.Task] = set()

    def _versions_on_disk(self, folder: Path) -> dict[int, Path]:
        """Version folders holding the backend's model file; others warned about once."""
        found = {}
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and VERSION.fullmatch(entry.name) and int(entry.name) > 0:
                if (entry / MODEL_FILES[self.settings.backend]).is_file():
                    found[int(entry.name)] = entry
            elif entry.is_dir() and entry not in self.ignored:
                self.ignored.add(entry)
                log.warning(
                    "ignoring %r in model %s: not a version number", entry.name, folder.name
                )
        return found

    def _on_disk(self) -> dict[str, dict[int, Path] | OSError]:
        """Each model folder's versions, or the error that kept it from being read."""
        found: dict[str, dict[int, Path] | OSError] = {}
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and MODEL_NAME.match(folder.name):
                try:
                    found[folder.name] = self._versions_on_disk(folder)
                except OSError as error:  # one unreadable model folder stops only itself
                    found[folder.name] = error
        return found

    async def refresh(self) -> None:
        """Load versions that appeared or changed after a failure, drop removed ones.

        The folders are read on the loader thread (a repository can be a slow network
        file system), never on the event loop.
        """
        self.scan_started = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
            on_disk = await loop.run_in_executor(self.loader, self._on_disk)
            for name, versions in on_disk.items():
                if isinstance(versions, OSError):
                    log.error("cannot scan model %s: %s", name, versions)
                else:
                    await self._refresh_model(name, versions)
            for name in set(self.models) - set(on_disk):
                await self._refresh_model(name, {})
        finally:
            self.scan_started = None

    async def _refresh_model(self, name: str, on_disk: dict[int, Path]) -> None:
        loop = asyncio.get_running_loop()
        loaded = self.models.setdefault(name, {})
        states = self.states.setdefault(name, {})
        for version in sorted(set(loaded) - set(on_disk)):
            model = loaded.pop(version)
            states[version] = VersionState(UNLOADED)
            log.info("unloaded %s version %d", name, version)
            closing = asyncio.create_task(model.batcher.close())  # its queue drains apart
            self.closing.add(closing)
            closing.add_done_callback(self.closing.discard)
        for version, folder in on_disk.items():
            if version in loaded:
                continue
            files = await loop.run_in_executor(self.loader, fingerprint, folder)
            state = states.get(version)
            if state is not None and state.state == FAILED and state.fingerprint == files:
                continue  # retried when its files change
            await self._load(name, version, folder, files)
        if not loaded:
            del self.models[name]

    async def _load(self, name: str, version: int, folder: Path, files: tuple) -> None:
        loop = asyncio.get_running_loop()
        settings = self.settings
        try:
            backend = await loop.run_in_executor(
                self.loader,
                load_backend,
                settings.backend,
                folder,
                settings.threads,
                self.providers,
            )
        except Exception as error:  # a broken export must not stop the server
            where = f"{name}/{version}"  # for clients, who need not know the server's paths
            message = f"{type(error).__name__}: {error}".replace(str(folder), where)[:500]
            self.states[name][version] = VersionState(FAILED, message, files)
            self.count_failure(name)
            log.error("cannot load %s version %d: %s", name, version, message)
            return
        batcher = MicroBatcher(
            backend.predict,
            f"infer-{name}-{version}",
            settings.max_batch_size,
            settings.max_delay_ms / 1e3,
            settings.max_queue_images,
            QUEUED_BODIES * settings.max_body_bytes,
            self.observe_batch,
        )
        self.models[name][version] = ServedModel(name, version, backend, batcher)
        self.states[name][version] = VersionState(AVAILABLE, "", files)
        log.info("loaded %s version %d from %s", name, version, folder)

    async def watch(self) -> None:
        """Refresh every ``poll_seconds`` until cancelled; a failed scan is logged and
        counted, and readiness turns false while scans keep failing (:meth:`stuck`)."""
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.refresh()
            except Exception as error:  # keep watching whatever one scan met
                self.failed_scans += 1
                log.error(
                    "model repository scan failed (%d in a row): %s", self.failed_scans, error
                )
            else:
                self.failed_scans = 0

    def stuck(self) -> bool:
        """Whether the reloader is stuck: its last :data:`STUCK_AFTER` scans failed, or a
        scan has run for :data:`STUCK_SCAN_SECONDS`."""
        started = self.scan_started
        hung = started is not None and time.monotonic() - started > STUCK_SCAN_SECONDS
        return hung or self.failed_scans >= STUCK_AFTER

    def _not_found(self, name: str) -> NotFound:
        return NotFound(f"model {name[:64]!r} not found; serving {sorted(self.models)[:20]}")

    def get(self, name: str, version: str | None = None) -> ServedModel:
        """A loaded model version (the newest when ``version`` is None)."""
        loaded = self.models.get(name)
        if not loaded:
            raise self._not_found(name)
        if version is None:
            return loaded[max(loaded)]
        if not VERSION.fullmatch(version) or int(version) not in loaded:
            raise NotFound(
                f"model {name!r} has no version {version[:32]!r}; versions: {sorted(loaded)}"
            )
        return loaded[int(version)]

    def version_states(self, name: str) -> dict[int, VersionState]:
        """Every version of ``name`` the server has seen, with its state."""
        states = self.states.get(name)
        if not states:
            raise self._not_found(name)
        return states

    async def close(self) -> None:
        for loaded in self.models.values():
            for model in loaded.values():
                await model.batcher.close()
        await asyncio.gather(*self.closing)
        self.loader.shutdown(wait=False)
