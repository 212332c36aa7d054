"""TensorFlow Serving's REST API: request parsing and response shapes.

``POST /v1/models/{name}[/versions/{v}]:predict`` with ``{"instances": [...]}`` (row
format) or ``{"inputs": ...}`` (columnar); images may be ``{"b64": ...}``. Errors are
``{"error": "..."}`` as TF Serving's.
"""

from __future__ import annotations

import numpy as np

from serving.errors import ClientError
from serving.inputs import images_from_instances
from serving.repository import ServedModel

SIGNATURE = "serving_default"


def parse_predict(body: object, model: ServedModel) -> tuple[np.ndarray, bool]:
    """Return ``(images [N,H,W,C], row_format)`` from a decoded request body."""
    if not isinstance(body, dict):
        raise ClientError("the request body must be a JSON object")
    signature = body.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise ClientError(f"unknown signature_name {signature!r}; this model has {SIGNATURE!r}")
    if ("instances" in body) == ("inputs" in body):
        raise ClientError('give exactly one of "instances" (row format) or "inputs" (columnar)')
    if "instances" in body:
        instances = body["instances"]
        if (
            isinstance(instances, list)
            and instances
            and all(
                isinstance(item, dict) and set(item) == {model.input_name} for item in instances
            )
        ):
            instances = [item[model.input_name] for item in instances]
        return images_from_instances(instances, model.input_size), True
    inputs = body["inputs"]
    if isinstance(inputs, dict):
        if set(inputs) != {model.input_name}:
            raise ClientError(f'"inputs" must name the single input "{model.input_name}"')
        inputs = inputs[model.input_name]
    return images_from_instances(inputs, model.input_size), False


def predict_response(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    if row_format:
        return {
            "predictions": [
                {"probabilities": probabilities.tolist(), "class_index": int(index)}
                for probabilities, index in zip(
                    outputs["probabilities"], outputs["class_index"], strict=True
                )
            ]
        }
    return {"outputs": {name: value.tolist() for name, value in outputs.items()}}


def status_response(versions: list[int]) -> dict:
    return {
        "model_version_status": [
            {
                "version": str(version),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for version in versions
        ]
    }


def _tensor_info(name: str, dtype: str, dims: list[int]) -> dict:
    return {
        "dtype": dtype,
        "name": name,
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in dims],
            "unknown_rank": False,
        },
    }


def metadata_response(model: ServedModel) -> dict:
    classes = len(model.class_names)
    signature = {
        "inputs": {
            model.input_name: _tensor_info(model.input_name, "DT_FLOAT", [-1, *model.input_size])
        },
        "outputs": {
            "probabilities": _tensor_info("probabilities", "DT_FLOAT", [-1, classes]),
            "class_index": _tensor_info("class_index", "DT_INT64", [-1]),
        },
        "method_name": "tensorflow/serving/predict",
    }
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}},
    }
