"""HTTP content codings: compressed request bodies and compressed answers.

A request body sent with ``Content-Encoding: gzip`` or ``deflate`` (what
``tritonclient.http`` sends for ``request_compression_algorithm``) is inflated before it
is parsed; every length in it (``Inference-Header-Content-Length`` included) counts
inflated bytes. It is inflated a chunk at a time, so the body limit holds for the
inflated size too: a small body that inflates past it is refused once the limit is
reached, never expanded in memory. ``deflate`` is zlib-wrapped (as HTTP says) or raw (as
some clients send); a gzip body may hold several members.

An answer is compressed with gzip or deflate (zlib-wrapped) when the client's
``Accept-Encoding`` allows it.
"""

from __future__ import annotations

import zlib

from serving.errors import ClientError, PayloadTooLarge, UnsupportedMediaType

CODINGS = {"gzip": "gzip", "x-gzip": "gzip", "deflate": "deflate"}  # header value -> coding
GZIP_BITS = 16 + zlib.MAX_WBITS  # window bits for a gzip member
CHUNK = 1 << 16  # inflated bytes produced per step
LEVEL = 1  # compression level of answers: their latency matters more than their last bytes


def request_coding(header: str) -> str | None:
    """The coding of a request body from its ``Content-Encoding`` (``None``: as is).

    Raises:
        UnsupportedMediaType: a coding other than gzip or deflate, or several.
    """
    codings = [coding.strip().lower() for coding in header.split(",")]
    codings = [coding for coding in codings if coding not in ("", "identity")]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in CODINGS:
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {header[:64]!r}: send the body as is, or "
            f"compressed once with gzip or deflate"
        )
    return CODINGS[codings[0]]


def _window_bits(coding: str, data: bytes) -> int:
    """zlib's window bits for a gzip member, or for deflate data with or without the
    zlib wrapper (told apart by the wrapper's header check)."""
    if coding == "gzip":
        return GZIP_BITS
    zlib_header = len(data) >= 2 and data[0] & 0x8F == 0x08 and (data[0] << 8 | data[1]) % 31 == 0
    return zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS


def inflate(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` decompressed, refused beyond ``limit`` inflated bytes.

    Raises:
        PayloadTooLarge: the inflated body exceeds ``limit``.
        ClientError: corrupt or truncated data, or data after a deflate stream.
    """
    parts, size, data = [], 0, body
    try:
        while True:  # a deflate stream, or one gzip member per turn
            inflater = zlib.decompressobj(_window_bits(coding, data))
            while not inflater.eof:
                part = inflater.decompress(data, CHUNK)
                data = inflater.unconsumed_tail
                if not (part or data or inflater.eof):
                    raise ClientError(f"the {coding} body is truncated")
                size += len(part)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the decompressed request body exceeds the {limit}-byte limit"
                    )
                parts.append(part)
            data = inflater.unused_data
            if not data or coding != "gzip":
                break
    except zlib.error as error:
        raise ClientError(f"corrupt {coding} body: {error}") from error
    if data:
        raise ClientError(f"{len(data)} bytes follow after the end of the {coding} stream")
    return b"".join(parts)


def _quality(parameters: str) -> float:
    """The ``q`` of an ``Accept-Encoding`` entry's parameters (1 when absent, 0 when
    malformed)."""
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def answer_coding(header: str) -> str | None:
    """The coding to compress an answer with: gzip or deflate, whichever the client's
    ``Accept-Encoding`` weighs more (gzip on a tie), or ``None``."""
    weights = {}
    for entry in header.split(","):
        coding, _, parameters = entry.partition(";")
        weights[coding.strip().lower()] = _quality(parameters)
    default = weights.get("*", 0.0)
    best = max(("gzip", "deflate"), key=lambda coding: weights.get(coding, default))
    return best if weights.get(best, default) > 0 else None


def compress(body: bytes, coding: str) -> bytes:
    """``body`` compressed with gzip or deflate (zlib-wrapped, as HTTP says)."""
    compressor = zlib.compressobj(
        LEVEL, zlib.DEFLATED, GZIP_BITS if coding == "gzip" else zlib.MAX_WBITS
    )
    return compressor.compress(body) + compressor.flush()
