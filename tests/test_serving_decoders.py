"""The server's decoders on generated input: every request is answered with a result or a
client error (``HTTPError``), never with another exception (a 500)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from export.tensor_info import TensorInfo
from serving import kserve, parsing, tfserving
from serving.backends import Backend, saved_model_metadata
from serving.encodings import inflate
from serving.errors import ClientError, HTTPError, PayloadTooLarge, UnsupportedMediaType
from serving.images import PixelBudget, decode_image, eight_bit
from serving.tensors import DATATYPES, to_array

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class FakeBackend(Backend):
    """A model's signature without a model: an image and an int64 input."""

    def __init__(self, inputs: tuple[TensorInfo, ...]) -> None:
        self.inputs = inputs
        self.outputs = (TensorInfo("score", (None, 1), "float32"),)


IMAGE = TensorInfo("image", (None, 4, 4, 1), "float32")
COUNTS = TensorInfo("counts", (None, 3), "int64")
FLAGS = TensorInfo("flags", (None, None), "bool")  # a free axis
PIXELS = TensorInfo("pixels", (None, 2, None), "uint8")
SINGLE, PAIR = FakeBackend((IMAGE,)), FakeBackend((IMAGE, COUNTS))
MIXED = FakeBackend((FLAGS, PIXELS))
BACKENDS = (SINGLE, PAIR, MIXED)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=40,
)
# numbers as text, Unicode digits included ("²".isdigit() is True; int("²") fails)
digits = st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=4)
numeric_text = st.sampled_from(["12", "-1", "1e3", " 5", "0x10"]) | digits
names = (
    st.sampled_from(["image", "counts", "flags", "pixels", "other", ""])
    | st.text(max_size=6)
    | digits
    | st.integers()
)
datatypes = st.sampled_from([*DATATYPES, "BYTES", "fp32"]) | json_values
sizes = st.integers(min_value=-2, max_value=4) | st.sampled_from([0, 2**31, 2**62, 2**63])
shapes = st.lists(sizes, max_size=5) | json_values


def png(size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((size, size), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def budget() -> PixelBudget:
    return PixelBudget(per_image=10_000, per_request=20_000)


def answered(call) -> object:
    """Run ``call``: a result, or ``None`` for a client error; anything else fails the test."""
    try:
        return call()
    except HTTPError as error:
        assert 400 <= error.status < 500 or error.status == 503, error
        assert not re.search(r" at 0x[0-9a-f]+", str(error)), error  # no object addresses
        return None


@FUZZ
@given(
    body=st.dictionaries(
        st.sampled_from(["instances", "inputs", "signature_name", "other"]), json_values, max_size=3
    )
    | json_values
)
def test_tf_serving_bodies(body):
    for backend in BACKENDS:
        result = answered(
            lambda backend=backend: tfserving.parse_predict(body, backend.inputs, budget())
        )
        if result is not None:
            arrays, _ = result
            assert set(arrays) == {info.name for info in backend.inputs}
            assert len({len(array) for array in arrays.values()}) == 1  # one batch size
            for info in backend.inputs:
                assert arrays[info.name].dtype == np.dtype(info.dtype)


tensor_entries = st.fixed_dictionaries(
    {"name": names, "datatype": datatypes, "shape": shapes},
    optional={
        "data": json_values,
        "parameters": st.dictionaries(
            st.sampled_from(["binary_data_size", "binary_data", "x"]), json_values, max_size=2
        )
        | json_values,
    },
)


@FUZZ
@given(
    request=st.fixed_dictionaries(
        {"inputs": st.lists(tensor_entries, max_size=3) | json_values},
        optional={
            "outputs": st.lists(
                st.fixed_dictionaries({"name": names}, optional={"parameters": json_values}),
                max_size=2,
            )
            | json_values,
            "parameters": json_values,
            "id": json_values,
        },
    ),
    binary=st.binary(max_size=64),
)
def test_kserve_requests(request, binary):
    for backend in BACKENDS:
        answered(lambda backend=backend: kserve.requested_outputs(request, backend.outputs))
        arrays = answered(
            lambda backend=backend: kserve.parse_infer(request, binary, backend.inputs)
        )
        if arrays is not None:
            assert set(arrays) == {info.name for info in backend.inputs}
            assert len({len(array) for array in arrays.values()}) == 1


@FUZZ
@given(body=st.binary(max_size=64), length=st.none() | numeric_text | st.text(max_size=6))
def test_kserve_body_split(body, length):
    answered(lambda: kserve.split_body(body, length))


@FUZZ
@given(
    data=st.binary(max_size=200)
    | st.builds(lambda tail, cut: png()[:cut] + tail, st.binary(max_size=40), st.integers(0, 80))
)
def test_image_bytes(data):
    pixels = answered(lambda: decode_image(data, (4, 4, 1), budget()))
    if pixels is not None:
        assert pixels.shape == (4, 4, 1) and pixels.dtype == np.float32


@FUZZ
@given(values=json_values, dtype=st.sampled_from(sorted(set(DATATYPES.values()))))
def test_json_numbers_to_typed_arrays(values, dtype):
    array = answered(lambda: to_array(values, np.dtype(dtype), "x"))
    if array is not None:
        assert array.dtype == np.dtype(dtype)


@pytest.mark.parametrize(
    ("values", "dtype", "message"),
    [
        ([300], "uint8", "must lie in [0, 255]"),
        ([2**40], "int32", "must lie in"),
        ([2**63], "int64", "must lie in"),
        ([0.5], "int64", "must be integers"),
        ([1e5], "float16", "finite"),
        ([True], "float32", "got booleans"),
        ([True, 0.5], "float32", "got booleans"),
        ([[7, 8], [9, False]], "uint8", "got booleans"),
        ([1, 0], "bool", "expected BOOL values"),
        (["1"], "float32", "expected numbers"),
        ([[1, 2], [3]], "float32", "not a rectangular array"),
    ],
)
def test_values_that_do_not_fit_are_refused_not_wrapped(values, dtype, message):
    with pytest.raises(ClientError, match=message.replace("[", r"\[").replace("]", r"\]")):
        to_array(values, np.dtype(dtype), "x")


def test_images_over_the_pixel_budget_are_refused_before_decoding():
    big = io.BytesIO()
    Image.new("L", (200, 100)).save(big, "PNG")
    with pytest.raises(PayloadTooLarge, match="200x100 pixels exceeds the limit of 10,000"):
        decode_image(big.getvalue(), (4, 4, 1), budget())
    spent = budget()
    decode_image(png(100), (4, 4, 1), spent)  # 10,000 pixels: the whole per-image budget
    decode_image(png(100), (4, 4, 1), spent)
    with pytest.raises(PayloadTooLarge, match="per request"):
        decode_image(png(10), (4, 4, 1), spent)


def test_eps_and_other_formats_are_not_opened():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\nshowpage\n"
    with pytest.raises(ClientError, match="not a decodable PNG/JPEG/GIF/BMP/WEBP image"):
        decode_image(eps, (4, 4, 1), budget())


def test_b64_images_feed_image_inputs_only():
    encoded = {"b64": base64.b64encode(png()).decode()}
    arrays, _ = tfserving.parse_predict({"instances": [encoded]}, SINGLE.inputs, budget())
    assert arrays["image"].shape == (1, 4, 4, 1)
    body = {"instances": [{"image": encoded, "counts": {"b64": "AAAA"}}]}
    with pytest.raises(ClientError, match="input 'counts'.*not one"):
        tfserving.parse_predict(body, PAIR.inputs, budget())


@FUZZ
@given(
    data=st.binary(max_size=200)
    | st.builds(
        lambda body, cut: gzip.compress(body, mtime=0)[:cut],
        st.binary(max_size=300),
        st.integers(0, 400),
    ),
    coding=st.sampled_from(["gzip", "deflate"]),
)
def test_compressed_bodies(data, coding):
    body = answered(lambda: inflate(data, coding, 256))
    if body is not None:
        assert len(body) <= 256


def test_compressed_bodies_inflate_within_the_limit():
    assert inflate(gzip.compress(b"x" * 256), "gzip", 256) == b"x" * 256
    with pytest.raises(PayloadTooLarge, match="decompressed request body exceeds the 256-byte"):
        inflate(zlib.compress(b"x" * 257), "deflate", 256)


def test_16_bit_gray_keeps_its_high_byte_and_wider_samples_are_refused():
    samples = np.array([[0, 255, 256, 32767, 65279, 65280, 65535]], np.int32)  # mode I
    for image in (Image.fromarray(samples.astype(np.uint16)), Image.fromarray(samples)):
        assert np.asarray(eight_bit(image)).tolist() == [[0, 0, 1, 127, 254, 255, 255]]
    for image in (Image.new("F", (2, 2), 0.5), Image.fromarray(np.array([[2**16]], np.int32))):
        with pytest.raises(UnsupportedMediaType, match="more than 16 bits"):
            eight_bit(image)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"preprocessing": 255}', "'preprocessing' must be text"),
        ('{"class_names": ["a", "b"], "lowering": ["dft"]}', "'lowering' must be text"),
        ('["a", "b"]', "not a JSON object"),
        ("{oops", "not JSON"),
    ],
)
def test_saved_model_metadata_of_the_wrong_shape_is_refused(tmp_path, content, message):
    path = tmp_path / "cfconv.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        saved_model_metadata(path)


@FUZZ
@given(body=st.binary(max_size=300), boundary=st.text(alphabet="abc123-", min_size=1, max_size=8))
def test_multipart_uploads(body, boundary):
    part = b'--%s\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n\r\n'
    upload = part % boundary.encode() + png() + b"\r\n--" + boundary.encode() + b"--\r\n"
    content_type = f"multipart/form-data; boundary={boundary}"
    for data in (body, upload, upload[: len(body) % (len(upload) + 1)]):
        pixels = answered(lambda data=data: parsing.image(data, content_type, (4, 4, 1), budget()))
        if pixels is not None:
            assert pixels.shape == (1, 4, 4, 1)


@FUZZ
@given(
    values=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), max_size=6),
    binary=st.booleans(),
    identifier=st.none() | st.text(max_size=5),
)
def test_kserve_answers_encode(values, binary, identifier):
    outputs = {"score": np.asarray(values, np.float32).reshape(-1, 1)}
    body, headers = kserve.infer_response(
        identifier, "m", 1, outputs, [kserve.RequestedOutput("score", binary)]
    )
    header = body[: int(headers["Inference-Header-Content-Length"])] if headers else body
    assert json.loads(header)["outputs"][0]["shape"] == [len(values), 1]
