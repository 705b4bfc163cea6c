"""Commit objects: a root tree plus who/when/why, canonically encoded, addressed by SHA-256.

Encoding (version 1), little-endian:
  magic "STCM" | version u16 | root tree id[32] | root dir metadata (model.Meta)
  | has_parent u8 | parent id[32] (zeros when none) | timestamp i64 (seconds)
  | subject, body, version: each u32 length + UTF-8
  | metadata count u16, then count x (key, value) as u32 length + UTF-8, sorted by key
"""

from __future__ import annotations

import hashlib
import struct

from .codec import U16, Reader, pack_bytes32, read_text32
from .ids import RawId
from .model import Meta, decode_meta
from .record import Frozen

MAGIC = b"STCM"
VERSION = 1
MAX_TEXT = 1 << 20
MAX_METADATA = 256
# The timestamps a new commit may have: years 1 to 9999 UTC, what every date formatter can show.
# Readers accept any i64 (older repositories may hold others) and show those as plain numbers.
MIN_TIMESTAMP = -62135596800  # 0001-01-01T00:00:00Z
MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z
# magic, format version, root tree id
_HEADER = struct.Struct("<4sH32s")
# has_parent, parent id, timestamp
_PARENT_TIME = struct.Struct("<B32sq")


class Commit(Frozen):
    __slots__ = ("root_tree", "root_meta", "timestamp", "parent", "subject", "body", "version",
                 "metadata")
    _fields = __slots__
    root_tree: RawId
    root_meta: Meta
    timestamp: int
    parent: RawId | None
    subject: str
    body: str
    version: str
    metadata: tuple[tuple[str, str], ...]

    def __init__(self, root_tree: RawId, root_meta: Meta, timestamp: int,
                 parent: RawId | None = None, subject: str = "", body: str = "",
                 version: str = "", metadata: tuple[tuple[str, str], ...] = ()) -> None:
        for name, value in zip(self._fields, (root_tree, root_meta, timestamp, parent, subject,
                                              body, version, metadata), strict=True):
            object.__setattr__(self, name, value)

    def encode(self) -> bytes:
        parts = [_HEADER.pack(MAGIC, VERSION, self.root_tree), self.root_meta.encode(),
                 _PARENT_TIME.pack(self.parent is not None, self.parent or bytes(32), self.timestamp)]
        for text in (self.subject, self.body, self.version):
            parts.append(pack_bytes32(text.encode()))
        items = sorted(self.metadata)
        parts.append(U16.pack(len(items)))
        for key, value in items:
            parts.append(pack_bytes32(key.encode()) + pack_bytes32(value.encode()))
        return b"".join(parts)

    def id(self) -> RawId:
        return RawId(hashlib.sha256(self.encode()).digest())


def decode_commit(data: bytes, what: str = "commit") -> Commit:
    reader = Reader(data, what)
    magic, version, root = reader.unpack(_HEADER, "commit header")
    if magic != MAGIC:
        raise reader.fail(f"bad magic: expected {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise reader.fail(f"unsupported commit version: expected {VERSION}, got {version}")
    root_meta = decode_meta(reader)
    has_parent, parent, timestamp = reader.unpack(_PARENT_TIME, "parent and timestamp")
    if has_parent not in (0, 1) or (not has_parent and parent != bytes(32)):
        raise reader.fail("non-canonical parent field")
    subject, body, version_text = (read_text32(reader, f, MAX_TEXT) for f in ("subject", "body", "version"))
    (count,) = reader.unpack(U16, "metadata count")
    if count > MAX_METADATA:
        raise reader.fail(f"metadata count {count} exceeds {MAX_METADATA}")
    metadata = []
    for _ in range(count):
        key = read_text32(reader, "metadata key", MAX_TEXT)
        metadata.append((key, read_text32(reader, "metadata value", MAX_TEXT)))
    if metadata != sorted(metadata) or len({k for k, _ in metadata}) != len(metadata):
        raise reader.fail("metadata keys not sorted or duplicated")
    reader.expect_end()
    return Commit(RawId(root), root_meta, timestamp, RawId(parent) if has_parent else None,
                  subject, body, version_text, tuple(metadata))
