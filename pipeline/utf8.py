"""Decoding the text files users write (vocabularies, input lists) with errors that name the line."""

from __future__ import annotations

__all__ = ["decode_utf8"]


def decode_utf8(data: bytes, source: str, error: type[Exception] = ValueError) -> str:
    """``data`` as UTF-8 text; otherwise raise ``error("SOURCE:LINE: not valid UTF-8 (byte 0x.. at offset N)")``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_no = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        raise error(f"{source}:{line_no}: not valid UTF-8 (byte 0x{byte:02x} at offset {exc.start})") from None
