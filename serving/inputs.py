"""Turning request payloads into model inputs: image tensors and encoded images."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from serving.errors import ClientError


def decode_image(data: bytes, input_size: tuple[int, int, int]) -> np.ndarray:
    """JPEG/PNG/... bytes -> float32 pixels ``[H, W, C]`` at the model's input size.

    Converted to grayscale or RGB as the model expects, resized bilinearly when the
    size differs.
    """
    height, width, channels = input_size
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode now: truncated or corrupt data fails here
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ClientError(f"not a decodable image ({len(data)} bytes): {error}") from error
    return pixels.reshape(height, width, channels)


def decode_b64_image(value: object, input_size: tuple[int, int, int]) -> np.ndarray:
    """``{"b64": "..."}`` (TF Serving's binary convention) -> pixels ``[H, W, C]``."""
    if not isinstance(value, dict) or set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise ClientError('an encoded image must be given as {"b64": "<base64 string>"}')
    try:
        data = base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise ClientError(f"invalid base64 in b64 image: {error}") from error
    return decode_image(data, input_size)


def image_tensor(value: object, input_size: tuple[int, int, int]) -> np.ndarray:
    """Nested lists (or an array) -> float32 ``[N, H, W, C]``, checked against the model."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise ClientError(f"image data is not a rectangular array of numbers: {error}") from error
    expected = (-1, *input_size)
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(input_size) or len(array) == 0:
        raise ClientError(f"expected image shape {list(expected)}, got {list(array.shape)}")
    if not np.all(np.isfinite(array)):
        raise ClientError("image data contains NaN or infinite values")
    return array


def images_from_instances(values: list, input_size: tuple[int, int, int]) -> np.ndarray:
    """A list of images, each nested lists or ``{"b64": ...}`` -> ``[N, H, W, C]``."""
    if not isinstance(values, list) or not values:
        raise ClientError("expected a non-empty list of images")
    if all(isinstance(value, dict) for value in values):
        return np.stack([decode_b64_image(value, input_size) for value in values])
    return image_tensor(values, input_size)
