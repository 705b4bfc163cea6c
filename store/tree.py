"""Tree objects: one directory's entries, canonically encoded and addressed by SHA-256.

Encoding (version 1): header ``magic "STRE" | version u16 | count u32``, then
``count`` entries (store.model) sorted by name bytes, names unique.  The tree
id is the SHA-256 of the whole encoding.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from .codec import Reader
from .ids import RawId
from .model import Entry, MetaCache, decode_entry, encode_entry
from .names import show

MAGIC = b"STRE"
VERSION = 1
MAX_ENTRIES = 1 << 20
# magic, format version, entry count
_HEADER = struct.Struct("<4sHI")


def encode_tree(entries: Sequence[Entry]) -> bytes:
    """Canonical bytes of a directory; ``entries`` must be sorted by name and unique."""
    ordered = sorted(entries, key=lambda e: e.name)
    return _HEADER.pack(MAGIC, VERSION, len(ordered)) + b"".join(map(encode_tree_entry, ordered))


def encode_tree_entry(entry: Entry) -> bytes:
    return encode_entry(entry)


def join_tree(encoded_entries: Sequence[bytes]) -> bytes:
    """``encode_tree`` from the entries' encodings, already sorted by name and unique
    (what a decoder read: an entry's encoding is canonical)."""
    return _HEADER.pack(MAGIC, VERSION, len(encoded_entries)) + b"".join(encoded_entries)


def tree_id(encoded: bytes) -> RawId:
    return RawId(hashlib.sha256(encoded).digest())


def decode_tree(data: bytes, what: str = "tree") -> list[Entry]:
    """Parse a tree object, checking length, magic, version, count, order, then end."""
    reader = Reader(data, what)
    magic, version, count = reader.unpack(_HEADER, "tree header")
    if magic != MAGIC:
        raise reader.fail(f"bad magic: expected {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise reader.fail(f"unsupported tree version: expected {VERSION}, got {version}")
    if count > MAX_ENTRIES:
        raise reader.fail(f"entry count {count} exceeds {MAX_ENTRIES}")
    entries: list[Entry] = []
    metas: MetaCache = {}
    for _ in range(count):
        entry = decode_entry(reader, metas)
        if entries and entry.name <= entries[-1].name:
            raise reader.fail(f"entry {show(entry.name)} not sorted after {show(entries[-1].name)}")
        entries.append(entry)
    reader.expect_end()
    return entries
