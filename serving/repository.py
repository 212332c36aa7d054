"""The model repository the server serves: ``<root>/<name>/<version>/``.

The layout is the one ``cfconv export`` writes (Triton-style for ONNX, TF Serving style
for SavedModels), read by :mod:`serving.scan`; other folders in a model folder are
ignored with one warning, and hidden staging folders silently (the exporter renames
complete folders into place, so a visible version is complete).

:meth:`ModelRepository.refresh` loads new versions, drops removed ones and retries a
version that failed to load (or could not be read) once its files change; every
version's state (``AVAILABLE``, ``FAILED`` with its error, ``UNLOADED``) is kept for the
status endpoints. One bad entry never stops the others from loading, and each problem is
logged once, when it appears or changes, not at every scan. Requests that already hold a
version finish on it; requests that reach an unloaded version's queue get 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from serving.backends import MODEL_FILES, Backend, load_backend
from serving.batching import MicroBatcher
from serving.errors import NotFound
from serving.scan import (
    VERSION,
    VERSIONS,
    Found,
    ModelFolder,
    describe,
    fingerprint,
    model_folder,
    model_folders,
)
from serving.settings import ServerSettings

log = logging.getLogger("cfconv.serve")
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
        self.ignored: set[tuple[str, str]] = set()
        self.unreadable: dict[str, str] = {}  # model folders that cannot be listed
        self.failed_scans = 0
        self.scan_error = ""
        self.scan_started: float | None = None
        self.closing: set[asyncio.Task] = set()

    def _on_disk(self) -> dict[str, ModelFolder | OSError]:
        """Each model folder's contents, or the error that kept it from being listed;
        folders that are not versions are warned about once."""
        found: dict[str, ModelFolder | OSError] = {}
        for folder in model_folders(self.root):
            try:
                found[folder.name] = contents = model_folder(
                    folder, MODEL_FILES[self.settings.backend]
                )
            except OSError as error:  # one unreadable model folder stops only itself
                found[folder.name] = error
                continue
            for name in contents.odd:
                if (folder.name, name) not in self.ignored:
                    self.ignored.add((folder.name, name))
                    log.warning("ignoring %r in model %s: %s", name, folder.name, VERSIONS)
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
            for name, found in on_disk.items():
                if isinstance(found, OSError):
                    self._unreadable(name, describe(found))
                else:
                    self._unreadable(name, "")
                    await self._refresh_model(name, found.versions)
            for name in set(self.unreadable) - set(on_disk):
                self._unreadable(name, "")
            for name in set(self.models) - set(on_disk):
                await self._refresh_model(name, {})
        finally:
            self.scan_started = None

    def _unreadable(self, name: str, problem: str) -> None:
        """Keep (and log, when it changes) why model folder ``name`` cannot be listed;
        ``""``: it can."""
        if self.unreadable.get(name, "") == problem:
            return
        if problem:
            self.unreadable[name] = problem
            log.error("cannot scan model %s: %s; its versions stay as they were", name, problem)
        else:
            del self.unreadable[name]
            log.info("model %s can be scanned again", name)

    async def _refresh_model(self, name: str, on_disk: dict[int, Found]) -> None:
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
        for version, state in states.items():
            if version not in on_disk and state.state == FAILED:
                states[version] = VersionState(UNLOADED)  # a failed version that is gone
                log.info("%s version %d is gone", name, version)
        for version, found in on_disk.items():
            if version in loaded:
                continue
            if found.problem:
                self._failed(name, version, found.problem)
                continue
            try:
                files = await loop.run_in_executor(self.loader, fingerprint, found.folder)
            except OSError as error:
                self._failed(name, version, f"cannot be read: {describe(error)}")
                continue
            state = states.get(version)
            if state is not None and state.state == FAILED and state.fingerprint == files:
                continue  # retried when its files change
            await self._load(name, version, found.folder, files)
        if not loaded:
            del self.models[name]

    def _failed(self, name: str, version: int, message: str, files: tuple = ()) -> None:
        """Version ``version`` of ``name`` cannot be served, for the reason ``message``
        (shown to clients: no server paths); logged and counted when this is news."""
        previous = self.states[name].get(version)
        failed = VersionState(FAILED, message[:500], files)
        self.states[name][version] = failed
        if previous != failed:
            self.count_failure(name)
            log.error("cannot load %s version %d: %s", name, version, failed.error)

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
            self._failed(
                name, version, f"{type(error).__name__}: {error}".replace(str(folder), where), files
            )
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
        """Refresh every ``poll_seconds`` until cancelled; a failed scan is counted and
        logged when its error is news, and readiness turns false while scans keep failing
        (:meth:`stuck`)."""
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            try:
                await self.refresh()
            except Exception as error:  # keep watching whatever one scan met
                self.failed_scans += 1
                if str(error) != self.scan_error:
                    self.scan_error = str(error)
                    log.error("model repository scan failed: %s", error)
            else:
                if self.failed_scans:
                    log.info("model repository scans again after %d failures", self.failed_scans)
                self.failed_scans, self.scan_error = 0, ""

    def stuck(self) -> bool:
        """Whether the server cannot keep what it serves in step with the disk: its last
        :data:`STUCK_AFTER` scans failed, a scan has run for :data:`STUCK_SCAN_SECONDS`,
        or a model folder cannot be listed (so its removed versions cannot be seen)."""
        started = self.scan_started
        hung = started is not None and time.monotonic() - started > STUCK_SCAN_SECONDS
        return hung or self.failed_scans >= STUCK_AFTER or bool(self.unreadable)

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
