"""The manifest: every path of a tree with its entry, in one canonical order.

Row encoding (little-endian)::

    parent_len u16 | parent path (names joined by '/'; empty for the root directory)
    | entry       store.model.encode_entry, byte for byte what tree objects hold
    | file only:  inline u8 (1 exactly when size <= inline_max)
                  | data offset u64 (inline: where its bytes start in the data
                    section, which is every inline file in row order; large: 0)

Rows come depth first, each directory's children sorted by name bytes, a
directory's row before its children's rows: the order of ``store.walk.walk``.
The root directory has no row: its metadata is in the commit.

Decoding is the pack's consistency check: each directory's tree id is
recomputed from its rows (``store.tree.join_tree`` of the entry bytes read,
which are canonical: what ``encode_tree`` gives) and must equal the id its row
declares, and the root's must equal the commit's root tree, so a pack that
passes commits to exactly the ids the store uses.  Anything off raises
``PackError``; offsets are into the decompressed manifest, paths name the row.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from store.codec import Reader
from store.errors import FormatError, PackError
from store.ids import RawId, to_hex
from store.model import Entry, Kind, Meta, MetaCache, check_name, decode_entry, encode_entry
from store.tree import join_tree

MAX_PARENT = 4095  # PATH_MAX less the NUL: also bounds the depth to 2048
XATTR_NAMESPACES = (b"security", b"system", b"trusted", b"user")

_U16 = struct.Struct("<H")
# inline flag, data offset
_INLINE = struct.Struct("<BQ")


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One path of the tree.  ``inline``: the file's bytes are in the pack at ``offset``."""

    path: bytes
    entry: Entry
    inline: bool = False
    offset: int = 0

    @property
    def parent(self) -> bytes:
        return self.path.rpartition(b"/")[0]

    @property
    def is_large(self) -> bool:
        """A regular file whose content is a separate object, named by its fs-verity digest."""
        return self.entry.kind is Kind.FILE and not self.inline


@dataclass
class Manifest:
    """A checked manifest and what it adds up to."""

    entries: list[ManifestEntry]
    root_tree: RawId
    data_size: int
    trees: list[tuple[RawId, bytes]] = field(default_factory=list)  # (id, encoding), if kept
    dirs: int = 0
    symlinks: int = 0
    inline_files: int = 0
    inline_bytes: int = 0
    large_files: int = 0
    large_bytes: int = 0

    @property
    def files(self) -> int:
        return self.inline_files + self.large_files

    def large_entries(self) -> list[ManifestEntry]:
        """The large files in manifest order: each needs object ``entry.digest`` with ``entry.meta``."""
        return [e for e in self.entries if e.is_large]


def check_meta(meta: Meta, where: str, offset: int | None = None) -> None:
    """Refuse xattrs outside the namespaces Linux has (an unpack would fail on them)."""
    for name, _value in meta.xattrs:
        namespace, dot, rest = name.partition(b".")
        if not dot or not rest or namespace not in XATTR_NAMESPACES:
            raise PackError(f"pack: {where}: xattr {name!r} is not in a namespace of "
                            f"{[n.decode() for n in XATTR_NAMESPACES]}", offset=offset, path=where)


# -- encoding -------------------------------------------------------------------------

def encode_row(row: ManifestEntry) -> bytes:
    parent = row.parent
    parts = [_U16.pack(len(parent)), parent, encode_entry(row.entry)]
    if row.entry.kind is Kind.FILE:
        parts.append(_INLINE.pack(row.inline, row.offset))
    return b"".join(parts)


def plan_manifest(walked: Iterable[tuple[bytes, Entry]], inline_max: int
                  ) -> Iterator[ManifestEntry]:
    """Rows for ``store.walk.walk`` output: files up to ``inline_max`` bytes inline, in order."""
    offset = 0
    for path, entry in walked:
        if entry.kind is Kind.FILE and entry.size <= inline_max:
            yield ManifestEntry(path, entry, True, offset)
            offset += entry.size
        else:
            yield ManifestEntry(path, entry)


# -- decoding -------------------------------------------------------------------------

@dataclass
class _OpenDir:
    path: bytes
    entry: Entry | None  # None for the root directory
    offset: int  # of its row, for errors
    names: list[bytes] = field(default_factory=list)  # its children's, in order
    encoded: list[bytes] = field(default_factory=list)  # and their entries' encodings


def _fail(message: str, offset: int, path: bytes | None = None) -> PackError:
    shown = f" ({path.decode(errors='backslashreplace')})" if path is not None else ""
    return PackError(f"pack: manifest{shown}: {message} at manifest offset {offset}", offset=offset,
                     path=path)


def _why_not_open(parent: bytes) -> str:
    if parent.startswith(b"/"):
        return "absolute parent path"
    for name in parent.split(b"/"):
        problem = check_name(name)
        if problem:
            return f"bad parent path component {name!r}: {problem}"
    return ("parent is not a directory listed before it (missing, not a directory, "
            "or the rows are out of order)")


class _Decoder:
    """Decodes rows one at a time; the hot path of opening a pack (one call per path)."""

    def __init__(self, reader: Reader, inline_max: int, keep_trees: bool) -> None:
        self.reader = reader
        self.inline_max = inline_max
        self.keep_trees = keep_trees
        self.metas: MetaCache = {}
        self.stack = [_OpenDir(b"", None, 0)]
        self.entries: list[ManifestEntry] = []
        self.trees: list[tuple[RawId, bytes]] = []
        self.data_size = 0
        self.root_tree: RawId | None = None
        self.dirs = self.symlinks = self.inline_files = self.inline_bytes = 0
        self.large_files = self.large_bytes = 0

    def close(self) -> None:
        """Finish the innermost open directory: its recomputed id must be what its row says.

        The tree is hashed from the bytes its entries were decoded from: the
        encoding is canonical, so they are what ``encode_tree`` would give.
        """
        done = self.stack.pop()
        encoded = join_tree(done.encoded)
        got = RawId(hashlib.sha256(encoded).digest())
        if self.keep_trees:
            self.trees.append((got, encoded))
        if done.entry is None:
            self.root_tree = got
        elif not hmac.compare_digest(got, done.entry.tree):
            raise _fail(f"tree id mismatch: the row says {to_hex(done.entry.tree)}, "
                        f"its entries encode to {to_hex(got)}", done.offset, done.path)

    def row(self) -> None:
        reader = self.reader
        start = reader.offset
        (parent_len,) = reader.unpack(_U16, "parent path length")
        if parent_len > MAX_PARENT:
            raise _fail(f"parent path of {parent_len} bytes exceeds {MAX_PARENT}", start)
        parent = reader.take(parent_len, "parent path")
        entry_at = reader.pos
        entry = decode_entry(reader, self.metas)
        name = entry.name
        path = parent + b"/" + name if parent else name
        stack = self.stack
        while stack[-1].path != parent:
            if len(stack) == 1:
                raise _fail(_why_not_open(parent), start, path)
            self.close()
        top = stack[-1]
        if top.names and name <= top.names[-1]:
            raise _fail(f"{'duplicate' if name == top.names[-1] else 'unsorted'} "
                        f"name after {top.names[-1]!r}", start, path)
        if entry.meta.xattrs:
            check_meta(entry.meta, path.decode(errors="backslashreplace"), start)
        top.names.append(name)
        top.encoded.append(reader.data[entry_at:reader.pos])
        kind = entry.kind
        if kind is Kind.FILE:
            self.entries.append(self.file(path, entry, start))
        elif kind is Kind.DIR:
            stack.append(_OpenDir(path, entry, start))
            self.dirs += 1
            self.entries.append(ManifestEntry(path, entry))
        else:
            self.symlinks += 1
            self.entries.append(ManifestEntry(path, entry))

    def file(self, path: bytes, entry: Entry, start: int) -> ManifestEntry:
        inline, offset = self.reader.unpack(_INLINE, "inline data fields")
        size = entry.size
        if inline != (size <= self.inline_max):
            raise _fail(f"inline flag {inline} for a file of {size} bytes with inline_max "
                        f"{self.inline_max}", start, path)
        if not inline:
            if offset != 0:
                raise _fail(f"large file with data offset {offset}, expected 0", start, path)
            self.large_files += 1
            self.large_bytes += size
            return ManifestEntry(path, entry)
        if offset != self.data_size:
            raise _fail(f"inline data offset {offset}, expected {self.data_size}", start, path)
        self.data_size += size
        self.inline_files += 1
        self.inline_bytes += size
        return ManifestEntry(path, entry, True, offset)


def decode_manifest(data: bytes | bytearray | memoryview, entry_count: int, inline_max: int, *,
                    keep_trees: bool = False) -> Manifest:
    """Parse and check ``entry_count`` rows filling ``data`` exactly.

    Checks every length, name, order, parent, inline flag and offset, and
    recomputes every directory's tree id.  ``keep_trees`` also returns each
    directory's tree object encoding (for storing them).  Raises PackError.
    """
    reader = Reader(data, "manifest")
    decoder = _Decoder(reader, inline_max, keep_trees)
    try:
        for _ in range(entry_count):
            decoder.row()
        reader.expect_end()
    except FormatError as err:
        offset = getattr(err, "offset", reader.offset)
        raise PackError(f"pack: {err}", offset=offset) from err
    while decoder.stack:
        decoder.close()
    if decoder.root_tree is None:  # unreachable: the root is always closed last
        raise PackError("pack: manifest has no root directory", offset=0)
    return Manifest(decoder.entries, decoder.root_tree, decoder.data_size, decoder.trees,
                    dirs=decoder.dirs, symlinks=decoder.symlinks, inline_files=decoder.inline_files,
                    inline_bytes=decoder.inline_bytes, large_files=decoder.large_files,
                    large_bytes=decoder.large_bytes)
