"""Bounds-checked reading of binary encodings.

Every read checks the remaining length first and raises ``FormatError``
naming what was being read, the offset, and expected vs got.
"""

from __future__ import annotations

import struct
from typing import Any

from .errors import FormatError


class Reader:
    """A cursor over bytes that refuses to read past the end."""

    def __init__(self, data: bytes | bytearray | memoryview, what: str, base_offset: int = 0) -> None:
        # bytes, so that taking a field is one slice (a copy only where the input is not bytes)
        self.data = data if isinstance(data, bytes) else bytes(data)
        self.what = what
        self.pos = 0
        self.base = base_offset

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def fail(self, message: str) -> FormatError:
        err = FormatError(f"{self.what}: {message} at offset {self.offset}")
        err.offset = self.offset  # type: ignore[attr-defined]
        return err

    def take(self, n: int, field: str = "bytes") -> bytes:
        pos = self.pos
        end = pos + n
        if n < 0 or end > len(self.data):
            raise self.fail(f"truncated {field}: need {n} bytes, {self.remaining()} left")
        self.pos = end
        return self.data[pos:end]

    def unpack(self, fmt: struct.Struct, field: str) -> tuple[Any, ...]:
        pos = self.pos
        end = pos + fmt.size
        if end > len(self.data):
            raise self.fail(f"truncated {field}: need {fmt.size} bytes, {self.remaining()} left")
        self.pos = end
        return fmt.unpack_from(self.data, pos)

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end), without moving."""
        return self.data[self.pos:self.pos + n]

    def expect_end(self) -> None:
        if self.remaining():
            raise self.fail(f"{self.remaining()} trailing bytes")


U16 = struct.Struct("<H")
U32 = struct.Struct("<I")


def pack_bytes32(data: bytes) -> bytes:
    return U32.pack(len(data)) + data


def read_bytes32(reader: Reader, field: str, limit: int) -> bytes:
    (n,) = reader.unpack(U32, f"{field} length")
    if n > limit:
        raise reader.fail(f"{field} length {n} exceeds limit {limit}")
    return reader.take(n, field)


def read_text32(reader: Reader, field: str, limit: int) -> str:
    raw = read_bytes32(reader, field, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise reader.fail(f"{field} is not UTF-8") from err
