"""The KServe Open Inference Protocol (v2), JSON and the binary tensor extension, for any
signature; and the Triton extensions its clients call (model config, repository index,
inference statistics).

With ``Inference-Header-Content-Length: L`` the body is an L-byte JSON header followed by
the raw tensor bytes of the inputs whose ``parameters.binary_data_size`` is set, in
order. Outputs are sent as binary data when the request asks for it per output
(``parameters.binary_data``) or for all (``parameters.binary_data_output``), and as their
top classes when it asks for ``parameters.classification`` (:mod:`serving.classification`).
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import orjson

from export.tensor_info import TensorInfo
from serving import classification
from serving.backends import Backend
from serving.batching import Statistics
from serving.errors import ClientError
from serving.tensors import (
    KSERVE_NAMES,
    check_shape,
    datatype,
    element_count,
    fit_to,
    parse_json,
    same_batch,
    to_array,
)

HEADER_LENGTH = "inference-header-content-length"
DIGITS = re.compile(r"[0-9]{1,12}")
Arrays = dict[str, np.ndarray]


class RequestedOutput(NamedTuple):
    """An output to send: as binary data or JSON, and as its top ``classes`` if asked."""

    name: str
    binary: bool
    classes: int | None = None


def _object(value: object, what: str) -> dict:
    """An optional JSON object (``parameters``): ``{}`` when absent."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ClientError(f"{what} must be a JSON object")
    return value


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """Separate the JSON header from the binary tensor data."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if not DIGITS.fullmatch(header_length) or int(header_length) > len(body):
            raise ClientError(
                f"invalid Inference-Header-Content-Length {header_length[:32]!r} "
                f"for a {len(body)}-byte body"
            )
        json_part, binary = body[: int(header_length)], body[int(header_length) :]
    request = parse_json(json_part)
    if not isinstance(request, dict):
        raise ClientError("the inference request must be a JSON object")
    return request, binary


def _tensor(
    entry: object, info: TensorInfo, binary: memoryview, offset: int
) -> tuple[np.ndarray, int]:
    """One input entry -> its array (the model input's dtype) and the next binary offset."""
    what = f"input {info.name!r}"
    request_type = datatype(entry.get("datatype"))
    shape = check_shape(entry.get("shape"), what)
    count = element_count(shape)
    size = _object(entry.get("parameters"), f"{what}: parameters").get("binary_data_size")
    if size is not None:
        if (
            type(size) is not int
            or size != count * request_type.itemsize
            or offset + size > len(binary)
        ):
            raise ClientError(
                f"{what}: binary_data_size {str(size)[:32]} does not match shape {list(shape)} "
                f"of {KSERVE_NAMES[request_type.name]} ({count * request_type.itemsize} bytes) "
                f"within the {len(binary) - offset} binary bytes left"
            )
        raw = np.frombuffer(binary[offset : offset + size], dtype=request_type)
        offset += size
    else:
        if "data" not in entry:
            raise ClientError(f'{what}: neither "data" nor parameters.binary_data_size')
        data = entry["data"]
        raw = to_array(data if isinstance(data, list) else [data], request_type, what)
        if raw.size != count:
            raise ClientError(f"{what}: {raw.size} values for shape {list(shape)} ({count})")
    return fit_to(raw.reshape(shape), info, what), offset


def parse_infer(request: dict, binary: bytes, inputs: tuple[TensorInfo, ...]) -> Arrays:
    """The inputs of a model taking ``inputs`` from an inference request (each once)."""
    entries = request.get("inputs")
    infos = {info.name: info for info in inputs}
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise ClientError(f'"inputs" must be a list of tensors, one per input: {sorted(infos)}')
    names = [entry.get("name") for entry in entries]
    if not all(isinstance(name, str) for name in names) or sorted(names) != sorted(infos):
        raise ClientError(
            f"the model takes the inputs {sorted(infos)}; got {[str(n)[:32] for n in names][:8]}"
        )
    _object(request.get("parameters"), "parameters")
    view, offset, arrays = memoryview(binary), 0, {}
    for entry in entries:
        arrays[entry["name"]], offset = _tensor(entry, infos[entry["name"]], view, offset)
    if offset != len(binary):
        raise ClientError(f"{len(binary) - offset} binary bytes follow the inputs unused")
    return same_batch(arrays)


def requested_outputs(request: dict, outputs: tuple[TensorInfo, ...]) -> list[RequestedOutput]:
    """The model's ``outputs`` to send and how, checked before inference."""
    infos = {info.name: info for info in outputs}
    all_binary = _object(request.get("parameters"), "parameters").get("binary_data_output", False)
    requested = request.get("outputs")
    if requested is None:
        return [RequestedOutput(name, all_binary is True) for name in infos]
    if not isinstance(requested, list) or not all(isinstance(item, dict) for item in requested):
        raise ClientError('"outputs" must be a list of {"name": ...} objects')
    chosen = []
    for item in requested:
        name = item.get("name")
        if name not in infos:
            raise ClientError(f"unknown output {str(name)[:64]!r}; the model has {list(infos)}")
        parameters = _object(item.get("parameters"), f"output {name!r}: parameters")
        count = parameters.get(classification.PARAMETER)
        if count is not None:
            count = classification.class_count(count, infos[name])
        chosen.append(
            RequestedOutput(name, parameters.get("binary_data", all_binary) is True, count)
        )
    return chosen


def request_id(request: dict) -> str | None:
    """The request's ``id``, echoed in the answer."""
    return request["id"] if isinstance(request.get("id"), str) else None


def _datatype(value: np.ndarray) -> str:
    """The KServe datatype of an answer's array (text, as object arrays, is BYTES)."""
    return "BYTES" if value.dtype == object else KSERVE_NAMES[value.dtype.name]


def _binary(value: np.ndarray) -> bytes:
    """An answer's array in the binary tensor extension's layout: raw values, or for BYTES
    each element as its 4-byte little-endian length and its UTF-8 bytes."""
    if value.dtype != object:
        return value.tobytes()
    encoded = (item.encode() for item in value.reshape(-1))
    return b"".join(len(item).to_bytes(4, "little") + item for item in encoded)


def infer_response(
    identifier: str | None,
    name: str,
    version: int,
    outputs: Arrays,
    chosen: list[RequestedOutput],
    labels: dict[str, list[str]] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The response body and extra headers (binary when the client asked for it);
    ``labels``: class names by output, for the classification extension."""
    header_outputs, blobs = [], []
    for output, binary, classes in chosen:
        value = np.ascontiguousarray(outputs[output])
        if classes is not None:
            value = classification.top_classes(value, classes, (labels or {}).get(output))
        entry = {"name": output, "datatype": _datatype(value), "shape": list(value.shape)}
        if binary:
            blob = _binary(value)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = (
                value.reshape(-1).tolist() if value.dtype == object else value.reshape(-1)
            )
        header_outputs.append(entry)
    header = {"model_name": name, "model_version": str(version), "outputs": header_outputs}
    if identifier is not None:
        header["id"] = identifier
    body = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return body, {}
    return body + b"".join(blobs), {"Inference-Header-Content-Length": str(len(body))}


def _v2_tensor(info: TensorInfo) -> dict:
    return {
        "name": info.name,
        "datatype": KSERVE_NAMES.get(info.dtype, info.dtype.upper()),
        "shape": [-1 if size is None else size for size in info.shape],
    }


def model_metadata(name: str, versions: list[int], backend: Backend) -> dict:
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": backend.platform,
        "inputs": [_v2_tensor(info) for info in backend.inputs],
        "outputs": [_v2_tensor(info) for info in backend.outputs],
    }


def _config_tensor(info: TensorInfo) -> dict:
    dims = [-1 if size is None else size for size in info.shape[1:]]
    return {"name": info.name, "data_type": "TYPE_" + KSERVE_NAMES[info.dtype], "dims": dims or [1]}


def model_config(name: str, backend: Backend, max_batch_size: int) -> dict:
    """Triton's model configuration (``GET /v2/models/{name}/config``)."""
    return {
        "name": name,
        "platform": backend.platform,
        "max_batch_size": max_batch_size,
        "input": [_config_tensor(info) for info in backend.inputs],
        "output": [_config_tensor(info) for info in backend.outputs],
    }


def _duration(count: int, ns: int) -> dict:
    return {"count": count, "ns": ns}


def model_statistics(name: str, version: int, stats: Statistics) -> dict:
    """One entry of Triton's ``model_stats`` (``GET /v2/models[/{name}]/stats``)."""
    return {
        "name": name,
        "version": str(version),
        "last_inference": stats.last_inference_ms,
        "inference_count": stats.inference_count,
        "execution_count": stats.execution_count,
        "inference_stats": {
            "success": _duration(stats.success_count, stats.success_ns),
            "fail": _duration(stats.fail_count, stats.fail_ns),
            "queue": _duration(stats.queue_count, stats.queue_ns),
            "compute_input": _duration(stats.execution_count, 0),
            "compute_infer": _duration(stats.execution_count, stats.compute_ns),
            "compute_output": _duration(stats.execution_count, 0),
        },
        "batch_stats": [],
    }
