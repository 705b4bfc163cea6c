"""Typed object ids: a raw 32-byte digest and its hex spelling are different types."""

from __future__ import annotations

import re
from typing import NewType

from .errors import FormatError
from .names import show

RawId = NewType("RawId", bytes)
HexId = NewType("HexId", str)

DIGEST_SIZE = 32
_HEX_RE = re.compile(r"[0-9a-f]{64}")


def to_hex(raw: RawId) -> HexId:
    return HexId(raw.hex())


def to_raw(hex_id: HexId) -> RawId:
    return RawId(bytes.fromhex(hex_id))


def parse_hex(text: str) -> HexId:
    """Return ``text`` as a HexId, or raise FormatError if it is not 64 lowercase hex digits."""
    if not _HEX_RE.fullmatch(text):
        raise FormatError(f"not an object id (64 hex digits): {show(text[:80])}")
    return HexId(text)

