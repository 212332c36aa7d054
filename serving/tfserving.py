"""TensorFlow Serving's REST API: request parsing and response shapes, for any signature.

``POST /v1/models/{name}[/versions/{v}]:predict`` with ``{"instances": [...]}`` (row
format: one entry per example; with several inputs each entry is a ``{name: value}``
dict) or ``{"inputs": ...}`` (columnar: the batch of the one input, or ``{name: batch}``).
Values of an image input may be ``{"b64": "<JPEG/PNG>"}``, decoded and resized
server-side. Answers follow TF Serving: ``predictions`` (row) or ``outputs`` (columnar),
each the output itself when the model has one output, else keyed by output name.
Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import numpy as np

from export.names import SIGNATURE_NAME
from export.tensor_info import TensorInfo
from serving.backends import Backend
from serving.errors import ClientError
from serving.images import PixelBudget, decode_b64_image, image_size
from serving.tensors import fit_to, same_batch, to_array

Arrays = dict[str, np.ndarray]


def _values(values: object, info: TensorInfo, budget: PixelBudget) -> np.ndarray:
    """A batch of one input's values (numbers, or b64 images for an image input)."""
    what = f"input {info.name!r}"
    if not isinstance(values, list) or not values:
        raise ClientError(f"{what}: expected a non-empty list of values, one per example")
    if any(isinstance(value, dict) for value in values):
        size = image_size(info.shape)
        if size is None:
            raise ClientError(f'{what}: {{"b64": ...}} values are images; this input is not one')
        array = np.stack([decode_b64_image(value, size, budget) for value in values])
    else:  # example by example: the event loop gets the GIL between them
        dtype = np.dtype(info.dtype)
        rows = [to_array(value, dtype, what) for value in values]
        if len({row.shape for row in rows}) != 1:
            raise ClientError(f"{what}: the examples have different shapes")
        array = np.stack(rows)
    return fit_to(array, info, what)


def parse_predict(
    body: object, inputs: tuple[TensorInfo, ...], budget: PixelBudget
) -> tuple[Arrays, bool]:
    """``(inputs by name, row_format)`` from a decoded request body, for a model taking
    ``inputs``."""
    if not isinstance(body, dict):
        raise ClientError("the request body must be a JSON object")
    signature = body.get("signature_name", SIGNATURE_NAME)
    if signature != SIGNATURE_NAME:
        raise ClientError(f"unknown signature_name {str(signature)[:64]!r}; use {SIGNATURE_NAME!r}")
    if ("instances" in body) == ("inputs" in body):
        raise ClientError('give exactly one of "instances" (row format) or "inputs" (columnar)')
    infos = {info.name: info for info in inputs}
    if "instances" in body:
        return _rows(body["instances"], infos, budget), True
    columns = body["inputs"]
    if not isinstance(columns, dict) or (len(infos) == 1 and set(columns) != set(infos)):
        if len(infos) != 1:
            raise ClientError(f'"inputs" must be an object keyed by input name: {sorted(infos)}')
        columns = {next(iter(infos)): columns}
    _check_names(columns, infos)
    arrays = {name: _values(columns[name], info, budget) for name, info in infos.items()}
    return same_batch(arrays), False


def _rows(instances: object, infos: dict[str, TensorInfo], budget: PixelBudget) -> Arrays:
    if not isinstance(instances, list) or not instances:
        raise ClientError('"instances" must be a non-empty list of examples')
    keyed = all(isinstance(item, dict) and "b64" not in item for item in instances)
    if len(infos) > 1 or keyed:
        if not keyed:
            raise ClientError(
                f"each instance must be an object keyed by input name: {sorted(infos)}"
            )
        for item in instances:
            _check_names(item, infos)
        return {
            name: _values([item[name] for item in instances], info, budget)
            for name, info in infos.items()
        }
    ((name, info),) = infos.items()
    return {name: _values(instances, info, budget)}


def _check_names(given: dict, infos: dict[str, TensorInfo]) -> None:
    if set(given) != set(infos):
        raise ClientError(
            f"the model takes the inputs {sorted(infos)}; got {sorted(str(k)[:32] for k in given)}"
        )


def predict_response(outputs: Arrays, row_format: bool) -> dict:
    """The body of a predict answer (numpy arrays; serialized by the caller)."""
    if row_format:
        count = len(next(iter(outputs.values())))
        if len(outputs) == 1:
            (values,) = outputs.values()
            return {"predictions": list(values)}
        return {
            "predictions": [
                {name: value[index] for name, value in outputs.items()} for index in range(count)
            ]
        }
    if len(outputs) == 1:
        return {"outputs": next(iter(outputs.values()))}
    return {"outputs": outputs}


STATES = {"AVAILABLE": "AVAILABLE", "FAILED": "END", "UNLOADED": "END"}


def status_response(states: dict) -> dict:
    """``GET /v1/models/{name}``: every version's state, with its load error if it failed."""
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": STATES[state.state],
                "status": {
                    "error_code": "OK" if state.state != "FAILED" else "UNKNOWN",
                    "error_message": state.error,
                },
            }
            for version, state in sorted(states.items())
        ]
    }


TF_TYPES = {
    "float16": "DT_HALF",
    "bfloat16": "DT_BFLOAT16",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "bool": "DT_BOOL",
}


def _tensor_info(info: TensorInfo) -> dict:
    return {
        "dtype": TF_TYPES[info.dtype],
        "name": info.name,
        "tensor_shape": {
            "dim": [{"size": str(-1 if size is None else size), "name": ""} for size in info.shape],
            "unknown_rank": False,
        },
    }


def metadata_response(name: str, version: int, backend: Backend) -> dict:
    signature = {
        "inputs": {info.name: _tensor_info(info) for info in backend.inputs},
        "outputs": {info.name: _tensor_info(info) for info in backend.outputs},
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": name, "signature_name": "", "version": str(version)},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE_NAME: signature}}},
    }
