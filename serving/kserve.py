"""The KServe Open Inference Protocol (v2), JSON and the binary tensor extension.

With ``Inference-Header-Content-Length: L`` the body is an L-byte JSON header followed
by the raw tensor bytes of the inputs whose ``parameters.binary_data_size`` is set (in
order). Outputs are sent as binary data when the request asks for it per output
(``parameters.binary_data``) or for all (``parameters.binary_data_output``).
"""

from __future__ import annotations

import numpy as np
import orjson

from serving.errors import ClientError
from serving.inputs import image_tensor
from serving.repository import ServedModel

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "UINT8": np.uint8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
}
OUTPUTS = {"probabilities": "FP32", "class_index": "INT64"}


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """Separate the JSON header from the binary tensor data."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ClientError(
                f"invalid Inference-Header-Content-Length {header_length[:32]!r} "
                f"for a {len(body)}-byte body"
            )
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    try:
        request = orjson.loads(json_part)
    except orjson.JSONDecodeError as error:
        raise ClientError(f"malformed JSON: {error}") from error
    if not isinstance(request, dict):
        raise ClientError("the inference request must be a JSON object")
    return request, binary


def parse_infer(request: dict, binary: bytes, model: ServedModel) -> np.ndarray:
    """The ``image`` input as float32 ``[N, H, W, C]``."""
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ClientError(f'"inputs" must be a list holding the one input "{model.input_name}"')
    tensor = inputs[0]
    if tensor.get("name") != model.input_name:
        raise ClientError(
            f'unknown input {tensor.get("name")!r}; the model takes "{model.input_name}"'
        )
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if datatype not in DATATYPES:
        raise ClientError(f"unsupported datatype {datatype!r}; use one of {sorted(DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ClientError(f'"shape" must be a list of non-negative integers, got {shape!r}')
    count = int(np.prod(shape)) if shape else 1
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        dtype = np.dtype(DATATYPES[datatype])
        if size != count * dtype.itemsize or size != len(binary):
            raise ClientError(
                f"binary_data_size {size} does not match shape {shape} of "
                f"{datatype} ({count * dtype.itemsize} bytes; "
                f"{len(binary)} binary bytes sent)"
            )
        data = np.frombuffer(binary, dtype=dtype)
    else:
        if "data" not in tensor:
            raise ClientError('the input has neither "data" nor a binary_data_size')
        try:
            data = np.asarray(tensor["data"], dtype=DATATYPES[datatype]).reshape(-1)
        except (ValueError, TypeError) as error:
            raise ClientError(f"input data is not an array of {datatype}: {error}") from error
        if data.size != count:
            raise ClientError(f"input data has {data.size} values, shape {shape} needs {count}")
    return image_tensor(data.reshape(shape), model.input_size)


def infer_response(
    request: dict, model: ServedModel, outputs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers (binary when the client asked for it)."""
    requested = request.get("outputs") or [{"name": name} for name in OUTPUTS]
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ClientError('"outputs" must be a list of {"name": ...} objects')
    all_binary = bool((request.get("parameters") or {}).get("binary_data_output", False))
    header_outputs, blobs = [], []
    for item in requested:
        name = item.get("name")
        if name not in OUTPUTS:
            raise ClientError(f"unknown output {name!r}; the model has {sorted(OUTPUTS)}")
        value = np.ascontiguousarray(outputs[name])
        entry = {"name": name, "datatype": OUTPUTS[name], "shape": list(value.shape)}
        if (item.get("parameters") or {}).get("binary_data", all_binary):
            blob = value.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = value.reshape(-1).tolist()
        header_outputs.append(entry)
    header = {
        "model_name": model.name,
        "model_version": str(model.version),
        "outputs": header_outputs,
    }
    if "id" in request:
        header["id"] = request["id"]
    body = orjson.dumps(header)
    if not blobs:
        return body, {}
    return body + b"".join(blobs), {"Inference-Header-Content-Length": str(len(body))}


def model_metadata(model: ServedModel, versions: list[int]) -> dict:
    return {
        "name": model.name,
        "versions": [str(v) for v in versions],
        "platform": model.backend.platform,
        "inputs": [
            {"name": model.input_name, "datatype": "FP32", "shape": [-1, *model.input_size]}
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(model.class_names)]},
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
        ],
    }
