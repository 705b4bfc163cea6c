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
recomputed from its rows (the tree object rebuilt from the entry bytes read,
which are canonical: what ``store.tree.encode_tree`` gives) and must equal the
id its row declares, and the root's must equal the commit's root tree, so a
pack that passes commits to exactly the ids the store uses.  Each directory
must also fit a tree object (``store.tree.MAX_ENTRIES``,
``store.objects.MAX_META_OBJECT``), and every xattr must be one Linux sets on
that kind of inode (``store.inode_rules``).  Anything off raises ``PackError``
with the offset into the decompressed manifest, and the row's path in the
message.

Memory: decoding is streamed, one decompressed frame at a time; what it holds
is the open directories' entries (the tree objects being rebuilt: at most the
manifest's size) and one row.  No Python object per row is kept.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from store.codec import Reader
from store.errors import FormatError, PackError
from store.ids import RawId, to_hex
from store.inode_rules import meta_problem
from store.model import (
    MAX_TARGET,
    PERMISSION_BITS,
    Entry,
    Kind,
    Meta,
    MetaCache,
    check_name,
    decode_entry,
    encode_entry,
)
from store.names import show
from store.objects import MAX_META_OBJECT
from store.record import Frozen, Mutable
from store.tree import MAGIC as TREE_MAGIC
from store.tree import MAX_ENTRIES as MAX_TREE_ENTRIES
from store.tree import VERSION as TREE_VERSION

MAX_PARENT = 4095  # PATH_MAX less the NUL: also bounds the depth to 2048

_U16 = struct.Struct("<H")
# inline flag, data offset
_INLINE = struct.Struct("<BQ")
# store.model's entry encoding, for the fast path of decoding (``_Decoder.fast_row``):
# kind, name length; mode, uid, gid, xattr count; file size, digest; symlink target length
_HEAD = struct.Struct("<BH")
_META = struct.Struct("<IIIH")
_FILE = struct.Struct("<Q32s")
_KINDS = {int(kind): kind for kind in Kind}


class ManifestEntry(Frozen):
    """One path of the tree.  ``inline``: the file's bytes are in the pack at ``offset``."""

    __slots__ = ("path", "entry", "inline", "offset")
    _fields = __slots__
    path: bytes
    entry: Entry
    inline: bool
    offset: int

    def __init__(self, path: bytes, entry: Entry, inline: bool = False, offset: int = 0) -> None:
        setattr_ = object.__setattr__  # one per manifest row: not _set_fields
        setattr_(self, "path", path)
        setattr_(self, "entry", entry)
        setattr_(self, "inline", inline)
        setattr_(self, "offset", offset)

    @property
    def parent(self) -> bytes:
        return self.path.rpartition(b"/")[0]

    @property
    def is_large(self) -> bool:
        """A regular file whose content is a separate object, named by its fs-verity digest."""
        return self.entry.kind is Kind.FILE and not self.inline


class Manifest(Frozen):
    """A checked manifest: what it adds up to, and its rows.

    ``entries`` iterates the rows in order; unless the manifest is small (see
    ``pack.reader``), each iteration decodes them again from the pack file, whose
    bytes are checked against what was checked first: no row is held in memory.
    """

    __slots__ = ("rows", "entry_count", "root_tree", "data_size", "dirs", "symlinks",
                 "inline_files", "inline_bytes", "large_files", "large_bytes")
    _fields = __slots__
    rows: Iterable[ManifestEntry]  # iterable again and again
    entry_count: int
    root_tree: RawId
    data_size: int
    dirs: int
    symlinks: int
    inline_files: int
    inline_bytes: int
    large_files: int
    large_bytes: int

    def __init__(self, rows: Iterable[ManifestEntry], entry_count: int, root_tree: RawId,
                 data_size: int, dirs: int = 0, symlinks: int = 0, inline_files: int = 0,
                 inline_bytes: int = 0, large_files: int = 0, large_bytes: int = 0) -> None:
        self._set_fields(rows, entry_count, root_tree, data_size, dirs, symlinks, inline_files,
                         inline_bytes, large_files, large_bytes)

    @property
    def entries(self) -> Rows:
        return Rows(self.rows, self.entry_count)

    @property
    def files(self) -> int:
        return self.inline_files + self.large_files

    def large_entries(self) -> Iterator[ManifestEntry]:
        """The large files in manifest order: each needs object ``entry.digest`` with ``entry.meta``."""
        return (e for e in self.entries if e.is_large)


class Rows(Frozen):
    """The manifest's rows: iterable (again and again, in order) and sized."""

    __slots__ = ("source", "count")
    _fields = __slots__
    source: Iterable[ManifestEntry]
    count: int

    def __init__(self, source: Iterable[ManifestEntry], count: int) -> None:
        self._set_fields(source, count)

    def __iter__(self) -> Iterator[ManifestEntry]:
        return iter(self.source)

    def __len__(self) -> int:
        return self.count


def check_meta(meta: Meta, kind: Kind, where: bytes | None, offset: int | None = None) -> None:
    """PackError unless Linux gives an inode of ``kind`` the metadata ``meta`` as recorded (an
    unpack or a deploy would fail on it, or show other metadata): ``store.inode_rules``.
    ``where``: the row's path (None for the commit's root directory)."""
    problem = meta_problem(kind, meta)
    if problem is not None:
        row = "the commit's root directory" if where is None else f"manifest row {show(where)}"
        at = f" at manifest offset {offset}" if offset is not None and where is not None else ""
        raise PackError(f"{row}: {problem}{at}", offset=offset)


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

class _Stream(Reader):
    """A ``Reader`` over the decompressed manifest, pulled one frame at a time.

    Bytes before ``keep`` (an absolute offset: the start of the row being decoded) are
    dropped when the next frame is appended, so the buffer holds one row and one frame.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        super().__init__(b"", "manifest")
        self._chunks = iter(chunks)
        self.keep = 0

    def _fill(self, n: int) -> None:
        while self.pos + n > len(self.data):
            chunk = next(self._chunks, None)
            if chunk is None:
                return
            drop = self.keep - self.base
            self.data = self.data[drop:] + chunk
            self.base += drop
            self.pos -= drop

    def take(self, n: int, field: str = "bytes") -> bytes:
        if self.pos + n > len(self.data):
            self._fill(n)
        return super().take(n, field)

    def unpack(self, fmt: struct.Struct, field: str) -> tuple[Any, ...]:
        if self.pos + fmt.size > len(self.data):
            self._fill(fmt.size)
        return super().unpack(fmt, field)

    def peek(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            self._fill(n)
        return super().peek(n)

    def slice(self, start: int) -> bytes:
        """The bytes from absolute offset ``start`` (not before ``keep``) to the cursor."""
        return self.data[start - self.base:self.pos]

    def expect_end(self) -> None:
        self._fill(1)
        super().expect_end()


# store.tree's header (magic, format version, entry count): written when the tree closes
_TREE_HEAD = struct.Struct("<4sHI")
_TREE_HEADER = _TREE_HEAD.size


class _OpenDir(Mutable):
    __slots__ = ("path", "entry", "offset", "last", "count", "encoded")
    _fields = __slots__

    def __init__(self, path: bytes, entry: Entry | None, offset: int) -> None:
        self.path = path
        self.entry = entry  # None for the root directory
        self.offset = offset  # of its row, for errors
        self.last = b""  # the name of its last child so far
        self.count = 0
        # the tree object being rebuilt: a placeholder header, then its entries' encodings
        self.encoded = bytearray(_TREE_HEADER)


def _fail(message: str, offset: int, path: bytes | None = None) -> PackError:
    row = f"manifest row {show(path)}" if path is not None else "manifest"
    return PackError(f"{row}: {message} at manifest offset {offset}", offset=offset)


def _why_not_open(parent: bytes) -> str:
    if parent.startswith(b"/"):
        return "absolute parent path"
    for name in parent.split(b"/"):
        problem = check_name(name)
        if problem:
            return f"bad parent path component {show(name)}: {problem}"
    return ("parent is not a directory listed before it (missing, not a directory, "
            "or the rows are out of order)")


TreeSink = Callable[[RawId, bytes], None]


class _Decoder:
    """Decodes rows one at a time; the hot path of opening a pack (one call per path).

    With ``check`` it checks everything (order, parents, tree ids, counts): the first
    pass.  Without, it only decodes: later passes over bytes already checked.
    """

    def __init__(self, reader: _Stream, inline_max: int, check: bool,
                 on_tree: TreeSink | None = None) -> None:
        self.reader = reader
        self.inline_max = inline_max
        self.check = check
        self.on_tree = on_tree
        self.metas: MetaCache = {}
        self.checked_metas: set[bytes] = set()  # encodings of xattr-less metadata checked
        self.stack = [_OpenDir(b"", None, 0)]
        self.data_size = 0
        self.root_tree: RawId | None = None
        self.counts = dict.fromkeys(("dirs", "symlinks", "inline_files", "inline_bytes",
                                     "large_files", "large_bytes"), 0)

    def close(self) -> None:
        """Finish the innermost open directory: its recomputed id must be what its row says.

        The tree is hashed from the bytes its entries were decoded from: the
        encoding is canonical, so they are what ``encode_tree`` would give.
        """
        done = self.stack.pop()
        done.encoded[:_TREE_HEADER] = _TREE_HEAD.pack(TREE_MAGIC, TREE_VERSION, done.count)
        got = RawId(hashlib.sha256(done.encoded).digest())
        if done.entry is None:
            self.root_tree = got
        elif not hmac.compare_digest(got, done.entry.tree):
            raise _fail(f"tree id mismatch: the row says {to_hex(done.entry.tree)}, "
                        f"its entries encode to {to_hex(got)}", done.offset, done.path)
        if self.on_tree is not None:
            self.on_tree(got, bytes(done.encoded))

    def fast_row(self) -> ManifestEntry | None:
        """The next row decoded straight from the buffer, when it is whole there and of the
        usual kind: metadata without xattrs, every field valid.  None otherwise, having
        consumed nothing: ``row`` then decodes it field by field (and raises about what is
        wrong).  What this accepts, ``row`` accepts too, with the same result."""
        reader = self.reader
        data = reader.data
        end = len(data)
        p = reader.pos
        if p + 5 > end:
            return None
        parent_len = data[p] | data[p + 1] << 8
        if parent_len > MAX_PARENT:
            return None
        entry_at = p + 2 + parent_len
        if entry_at + 3 > end:
            return None
        kind_number, name_len = _HEAD.unpack_from(data, entry_at)
        kind = _KINDS.get(kind_number)
        meta_at = entry_at + 3 + name_len
        if kind is None or meta_at + 14 > end:
            return None
        name = data[entry_at + 3:meta_at]
        if check_name(name) is not None:
            return None
        fixed = data[meta_at:meta_at + 14]
        meta = self.metas.get(fixed)
        if meta is None:
            mode, uid, gid, count = _META.unpack(fixed)
            if count or mode & ~PERMISSION_BITS:
                return None
            meta = self.metas[fixed] = Meta(mode, uid, gid)
        q = meta_at + 14
        inline = False
        offset = 0
        if kind is Kind.FILE:
            if q + 49 > end:
                return None
            size, digest = _FILE.unpack_from(data, q)
            inline_flag, offset = _INLINE.unpack_from(data, q + 40)
            inline = inline_flag == 1
            if inline_flag != (size <= self.inline_max) or (
                    offset != (self.data_size if inline else 0)):
                return None
            entry = Entry(name, kind, meta, size=size, digest=digest)
            entry_end = q + 40
            q += 49
        elif kind is Kind.DIR:
            if q + 32 > end:
                return None
            entry = Entry(name, kind, meta, tree=RawId(data[q:q + 32]))
            entry_end = q = q + 32
        else:
            if q + 2 > end:
                return None
            target_len = data[q] | data[q + 1] << 8
            entry_end = q + 2 + target_len
            if not 0 < target_len <= MAX_TARGET or entry_end > end:
                return None
            target = data[q + 2:entry_end]
            if b"\0" in target:
                return None
            entry = Entry(name, kind, meta, target=target)
            q = entry_end
        parent = data[p + 2:entry_at]
        path = parent + b"/" + name if parent else name
        start = reader.keep = reader.base + p
        if self.check:
            checked = fixed in self.checked_metas
            self.place(parent, name, path, entry, start, data[entry_at:entry_end], checked)
            if not checked:
                self.checked_metas.add(fixed)
        reader.pos = q
        counts = self.counts
        if kind is Kind.FILE:
            if inline:
                self.data_size += size
                counts["inline_files"] += 1
                counts["inline_bytes"] += size
                return ManifestEntry(path, entry, True, offset)
            counts["large_files"] += 1
            counts["large_bytes"] += size
        elif kind is Kind.DIR:
            counts["dirs"] += 1
        else:
            counts["symlinks"] += 1
        return ManifestEntry(path, entry)

    def row(self) -> ManifestEntry:
        reader = self.reader
        fast = self.fast_row()
        if fast is not None:
            return fast
        start = reader.keep = reader.offset
        (parent_len,) = reader.unpack(_U16, "parent path length")
        if parent_len > MAX_PARENT:
            raise _fail(f"parent path of {parent_len} bytes exceeds {MAX_PARENT}", start)
        parent = reader.take(parent_len, "parent path")
        entry_at = reader.offset
        entry = decode_entry(reader, self.metas)
        name = entry.name
        path = parent + b"/" + name if parent else name
        if self.check:
            self.place(parent, name, path, entry, start, reader.slice(entry_at))
        kind = entry.kind
        if kind is Kind.FILE:
            return self.file(path, entry, start)
        if kind is Kind.DIR:
            self.counts["dirs"] += 1
        else:
            self.counts["symlinks"] += 1
        return ManifestEntry(path, entry)

    def place(self, parent: bytes, name: bytes, path: bytes, entry: Entry, start: int,
              encoded: bytes, meta_checked: bool = False) -> None:
        """Check the row's place in the tree and add it to its directory's tree object
        (and its metadata, unless ``meta_checked``: the same passed already)."""
        stack = self.stack
        while stack[-1].path != parent:
            if len(stack) == 1:
                raise _fail(_why_not_open(parent), start, path)
            self.close()
        top = stack[-1]
        if top.count and name <= top.last:
            raise _fail(f"{'duplicate' if name == top.last else 'unsorted'} "
                        f"name after {show(top.last)}", start, path)
        if not meta_checked:
            check_meta(entry.meta, entry.kind, path, start)
        top.last = name
        top.count += 1
        top.encoded += encoded
        if top.count > MAX_TREE_ENTRIES or len(top.encoded) > MAX_META_OBJECT:
            raise _fail(f"directory {show(top.path) if top.path else '(root)'} exceeds a tree "
                        f"object's limits ({MAX_TREE_ENTRIES} entries, {MAX_META_OBJECT} bytes)",
                        start, path)
        if entry.kind is Kind.DIR:
            stack.append(_OpenDir(path, entry, start))

    def file(self, path: bytes, entry: Entry, start: int) -> ManifestEntry:
        inline, offset = self.reader.unpack(_INLINE, "inline data fields")
        size = entry.size
        if inline != (size <= self.inline_max):
            raise _fail(f"inline flag {inline} for a file of {size} bytes with inline_max "
                        f"{self.inline_max}", start, path)
        if not inline:
            if offset != 0:
                raise _fail(f"large file with data offset {offset}, expected 0", start, path)
            self.counts["large_files"] += 1
            self.counts["large_bytes"] += size
            return ManifestEntry(path, entry)
        if offset != self.data_size:
            raise _fail(f"inline data offset {offset}, expected {self.data_size}", start, path)
        self.data_size += size
        self.counts["inline_files"] += 1
        self.counts["inline_bytes"] += size
        return ManifestEntry(path, entry, True, offset)


def _as_pack_error(err: FormatError, reader: Reader) -> PackError:
    offset = getattr(err, "offset", reader.offset)
    return PackError(str(err), offset=offset)


def iter_rows(chunks: Iterable[bytes], entry_count: int, inline_max: int
              ) -> Iterator[ManifestEntry]:
    """The rows of a manifest already checked by ``check_manifest`` (the same bytes), decoded
    from its decompressed frames ``chunks`` without checking them again."""
    reader = _Stream(chunks)
    decoder = _Decoder(reader, inline_max, check=False)
    try:
        for _ in range(entry_count):
            yield decoder.row()
    except FormatError as err:  # the bytes were checked: only if they changed since
        raise _as_pack_error(err, reader) from err


def check_manifest(chunks: Iterable[bytes], entry_count: int, inline_max: int, *,
                   on_tree: TreeSink | None = None,
                   keep: list[ManifestEntry] | None = None) -> tuple[RawId, int, dict[str, int]]:
    """Parse and check ``entry_count`` rows filling the decompressed manifest ``chunks`` exactly.

    Checks every length, name, order, parent, xattr (``store.inode_rules``), inline flag
    and offset, and recomputes every directory's tree id, holding only the open
    directories' entries (one frame of the manifest is decoded at a time).  ``on_tree``
    gets each directory's tree object (id, encoding) when it is complete, children
    before parents; ``keep``, when given, gets every row appended.  Returns the root
    tree id, the inline data size and the counts (``Manifest``'s).  Raises PackError.
    """
    reader = _Stream(chunks)
    decoder = _Decoder(reader, inline_max, check=True, on_tree=on_tree)
    try:
        for _ in range(entry_count):
            row = decoder.row()
            if keep is not None:
                keep.append(row)
        reader.expect_end()
    except FormatError as err:
        raise _as_pack_error(err, reader) from err
    while decoder.stack:
        decoder.close()
    if decoder.root_tree is None:  # unreachable: the root is always closed last
        raise PackError("manifest has no root directory", offset=0)
    return decoder.root_tree, decoder.data_size, decoder.counts
