"""The model repository the server serves: ``<root>/<name>/<version>/``.

The layout is the one ``cfconv export`` writes (Triton-style for ONNX, TF Serving
style for SavedModels). Versions are numeric folder names; hidden staging folders are
ignored, and because the exporter renames complete folders into place, a version that
is visible is complete. :meth:`ModelRepository.refresh` loads new versions and drops
removed ones; requests already holding a version finish on it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from export.atomic import MODEL_NAME, versions
from serving.backends import MODEL_FILES, load_backend
from serving.batching import MicroBatcher
from serving.errors import NotFound

log = logging.getLogger("cfconv.serve")


@dataclasses.dataclass
class ServedModel:
    """One loaded version of a model and its batcher."""

    name: str
    version: int
    backend: object
    batcher: MicroBatcher

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.backend.input_size

    @property
    def input_name(self) -> str:
        return self.backend.input_name

    @property
    def class_names(self) -> list[str]:
        return self.backend.class_names

    async def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return await self.batcher.submit(images)


class ModelRepository:
    """Loaded versions by model name, kept in step with the folder by ``refresh``."""

    def __init__(
        self,
        root: Path,
        backend: str,
        executor: Executor,
        threads: int | None,
        max_batch_size: int,
        max_delay: float,
        observe_batch,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} does not exist")
        self.backend = backend
        self.executor = executor
        self.threads = threads
        self.max_batch_size = max_batch_size
        self.max_delay = max_delay
        self.observe_batch = observe_batch
        self.models: dict[str, dict[int, ServedModel]] = {}
        self.failed: dict[tuple[str, int], str] = {}

    def _on_disk(self) -> dict[str, list[int]]:
        found = {}
        for folder in sorted(self.root.iterdir()):
            if folder.is_dir() and MODEL_NAME.match(folder.name):
                ready = [
                    v
                    for v in versions(folder)
                    if (folder / str(v) / MODEL_FILES[self.backend]).is_file()
                ]
                if ready:
                    found[folder.name] = ready
        return found

    async def refresh(self) -> None:
        """Load versions that appeared, drop versions that disappeared."""
        loop = asyncio.get_running_loop()
        on_disk = self._on_disk()
        updated: dict[str, dict[int, ServedModel]] = {}
        for name, numbers in on_disk.items():
            current = self.models.get(name, {})
            updated[name] = {v: current[v] for v in numbers if v in current}
            for version in numbers:
                if version in current or (name, version) in self.failed:
                    continue
                folder = self.root / name / str(version)
                try:
                    backend = await loop.run_in_executor(
                        self.executor, load_backend, self.backend, folder, self.threads
                    )
                except Exception as error:  # a broken export must not stop the server
                    self.failed[(name, version)] = str(error)
                    log.error("cannot load %s version %d: %s", name, version, error)
                    continue
                batcher = MicroBatcher(
                    backend.predict,
                    self.executor,
                    self.max_batch_size,
                    self.max_delay,
                    self.observe_batch,
                )
                updated[name][version] = ServedModel(name, version, backend, batcher)
                log.info("loaded %s version %d from %s", name, version, folder)
        removed = [
            model
            for name, loaded in self.models.items()
            for version, model in loaded.items()
            if version not in updated.get(name, {})
        ]
        self.models = {name: loaded for name, loaded in updated.items() if loaded}
        for model in removed:
            log.info("unloaded %s version %d", model.name, model.version)
            await model.batcher.close()

    async def watch(self, interval: float) -> None:
        """Refresh every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except OSError as error:
                log.error("model repository scan failed: %s", error)

    def get(self, name: str, version: str | int | None = None) -> ServedModel:
        """A loaded model version (the newest when ``version`` is None)."""
        loaded = self.models.get(name)
        if not loaded:
            raise NotFound(f"model {name!r} not found; serving: {sorted(self.models)}")
        if version is None:
            return loaded[max(loaded)]
        if not str(version).isdigit() or int(version) not in loaded:
            raise NotFound(
                f"model {name!r} has no version {str(version)[:32]!r}; versions: {sorted(loaded)}"
            )
        return loaded[int(version)]

    async def close(self) -> None:
        for loaded in self.models.values():
            for model in loaded.values():
                await model.batcher.close()
