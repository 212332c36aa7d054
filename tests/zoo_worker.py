"""The export zoo's fresh process: load each trained ``.keras`` and export it every way.

``python zoo_worker.py FOLDER SHARD SHARDS``: for every ``SHARDS``-th
``FOLDER/<model>/trained.keras`` from the ``SHARD``-th on, in name order (with
``inputs.npz`` and, for a classifier, ``labels.txt``), freeze the model once and export
a SavedModel, a Triton entry (factorized ONNX) and ONNX in every other lowering through
the same pipeline as ``cfconv export`` (:func:`export.pipeline.prepare_export`, then
:func:`export.pipeline.write_export`, which checks each written file itself), run each
export on the inputs, and write ``<model>/outputs/<export>.npz`` and
``FOLDER/results-<SHARD>.json`` (each export's input and output names, or its error).
Shards let the fixture run one worker per core.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from cfconv_tf.cli import import_modules
from export.onnx_spectral import LOWERINGS
from export.pipeline import PreparedExport, prepare_export, write_export
from export.self_check import load_onnx, load_savedmodel

EXPORTS = {  # export name -> (format, lowering)
    "savedmodel": ("savedmodel", "factorized"),
    "triton": ("triton", "factorized"),
    **{
        f"onnx-{lowering}": ("onnx", lowering) for lowering in LOWERINGS if lowering != "factorized"
    },
}


def export_and_run(model_dir: Path, prepared: PreparedExport, export: str) -> dict:
    """Write one export of the prepared model, run it on the inputs, save its outputs;
    returns its input and output names."""
    fmt, lowering = EXPORTS[export]
    folder = write_export(prepared, fmt, model_dir / export, "m", lowering=lowering)
    loaded = load_savedmodel(folder) if fmt == "savedmodel" else load_onnx(folder / "model.onnx")
    inputs = dict(np.load(model_dir / "inputs.npz"))
    outputs = {}
    for batch in sorted({int(name.split("@")[1]) for name in inputs}):
        arrays = {n.split("@")[0]: v for n, v in inputs.items() if n.endswith(f"@{batch}")}
        outputs.update({f"{n}@{batch}": v for n, v in loaded.run(arrays).items()})
    (model_dir / "outputs").mkdir(exist_ok=True)
    np.savez(model_dir / "outputs" / f"{export}.npz", **outputs)
    names = sorted({name.split("@")[0] for name in outputs})
    return {"inputs": [info.name for info in loaded.inputs], "outputs": names}


def export_all(model_dir: Path) -> dict[str, dict]:
    """Every export of one model, frozen once: each export's names, or its error (an
    error in loading or freezing is every export's)."""
    labels = model_dir / "labels.txt"
    try:
        prepared = prepare_export(
            model_dir / "trained.keras", labels=labels if labels.is_file() else None
        )
    except Exception as error:  # recorded for the tests that ask about this model
        return {export: _failure(error) for export in EXPORTS}
    results = {}
    for export in EXPORTS:
        try:
            results[export] = export_and_run(model_dir, prepared, export)
        except Exception as error:  # recorded for the test that asks about it
            results[export] = _failure(error)
    return results


def _failure(error: Exception) -> dict:
    return {"error": f"{type(error).__name__}: {error}"}


def main(folder: Path, shard: int, shards: int) -> None:
    import_modules(["zoo_layers"])
    results = {}
    model_dirs = sorted(path.parent for path in folder.glob("*/trained.keras"))
    for model_dir in model_dirs[shard::shards]:
        for export, result in export_all(model_dir).items():
            results[f"{model_dir.name}/{export}"] = result
    (folder / f"results-{shard}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
