"""Encoded images -> pixels at a model's input size, within a pixel budget.

Only the formats a classifier needs are opened (PNG, JPEG, GIF, BMP, WebP: no EPS or
other formats that run interpreters); an image's size is read from its header and
checked against the budget before anything is decoded, so a small file that expands to
gigabytes is refused for what it is.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image

from serving.errors import ClientError, PayloadTooLarge

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


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


def decode_image(data: bytes, size: tuple[int, int, int], budget: PixelBudget) -> np.ndarray:
    """Image bytes -> float32 pixels ``[H, W, C]`` for a ``(H, W, C)`` input (C 1 or 3).

    Converted to grayscale or RGB as the input needs and resized bilinearly when its size
    differs.
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
                image = image.convert(mode)
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(image, dtype=np.float32)
    except PayloadTooLarge:
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
