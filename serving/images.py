"""Encoded images -> pixels at a model's input size, within a pixel budget.

Only the formats a classifier needs are opened (PNG, JPEG, GIF, BMP, WebP: no EPS or
other formats that run interpreters); an image's size is read from its header and
checked against the budget before anything is decoded, so a small file that expands to
gigabytes is refused for what it is.

Pixels come out as TensorFlow's decoders give them (``tf.io.decode_image`` with
``dtype=tf.uint8``): 16-bit samples keep their high byte, palettes are looked up, alpha
is dropped, CMYK becomes RGB, and the EXIF orientation is not applied.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image

from serving.errors import ClientError, PayloadTooLarge, UnsupportedMediaType

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
# Pillow's modes of 8-bit samples, which it converts to grayscale and RGB as TensorFlow does
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
# Pillow's modes of 16-bit grayscale ("I": older Pillow's 16-bit PNG)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class PixelBudget:
    """How many pixels one request may decode: ``per_image`` each, ``per_request`` in all."""

    def __init__(self, per_image: int, per_request: int) -> None:
        self.per_image = per_image
        self.left = per_request
        self.per_request = per_request

    def spend(self, width: int, height: int) -> None:
        pixels = width * height
        if pixels > self.per_image:
            raise PayloadTooLarge(
                f"an image of {width}x{height} pixels exceeds the limit of {self.per_image:,} "
                f"pixels per image"
            )
        if pixels > self.left:
            raise PayloadTooLarge(
                f"the images of this request exceed the limit of {self.per_request:,} pixels "
                f"per request"
            )
        self.left -= pixels


def _reason(error: Exception) -> str:
    """A decoder's complaint without object reprs (which hold memory addresses)."""
    text = re.sub(r"\s*<[^<>]*>", "", str(error)).strip()
    return text[:160] or type(error).__name__


def eight_bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit samples: 16-bit grayscale keeps each sample's high byte (as
    ``tf.io.decode_png(..., dtype=tf.uint8)`` and ``tf.image.convert_image_dtype`` do).

    Raises:
        UnsupportedMediaType: samples of another kind (32-bit integers, floats).
    """
    if image.mode in EIGHT_BIT_MODES:
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        samples = np.asarray(image)
        if samples.min() >= 0 and samples.max() < 2**16:
            return Image.fromarray((samples >> 8).astype(np.uint8), "L")
    raise UnsupportedMediaType(
        f"images of Pillow mode {image.mode!r} (samples of more than 16 bits) are not "
        f"supported: send 8- or 16-bit images"
    )


def decode_image(data: bytes, size: tuple[int, int, int], budget: PixelBudget) -> np.ndarray:
    """Image bytes -> float32 pixels ``[H, W, C]`` for a ``(H, W, C)`` input (C 1 or 3).

    Converted to 8 bits (:func:`eight_bit`), then to grayscale or RGB as the input needs,
    and resized bilinearly when its size differs.
    """
    height, width, channels = size
    mode = "L" if channels == 1 else "RGB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                budget.spend(*image.size)
                image.draft(mode, (width, height))  # JPEG: decode at a reduced scale
                image.load()  # decode now: truncated or corrupt data fails here
                image = eight_bit(image).convert(mode)
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32)
    except (PayloadTooLarge, UnsupportedMediaType):
        raise
    except Exception as error:  # any decoder failure on client bytes is the client's
        raise ClientError(
            f"not a decodable {'/'.join(FORMATS)} image ({len(data)} bytes): {_reason(error)}"
        ) from error
    return pixels.reshape(height, width, channels)


def decode_b64_image(value: object, size: tuple[int, int, int], budget: PixelBudget) -> np.ndarray:
    """``{"b64": "..."}`` (TF Serving's convention for binary values) -> pixels ``[H, W, C]``."""
    if not isinstance(value, dict) or set(value) != {"b64"} or not isinstance(value["b64"], str):
        raise ClientError('an encoded image must be given as {"b64": "<base64 string>"}')
    try:
        data = base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError) as error:
        raise ClientError(f"invalid base64 in a b64 image: {_reason(error)}") from error
    return decode_image(data, size, budget)


def image_size(shape: tuple[int | None, ...]) -> tuple[int, int, int] | None:
    """``(H, W, C)`` of an image input ``[N, H, W, C]`` with fixed sizes and 1 or 3 channels."""
    if len(shape) != 4 or any(size is None for size in shape[1:]) or shape[3] not in (1, 3):
        return None
    return int(shape[1]), int(shape[2]), int(shape[3])
