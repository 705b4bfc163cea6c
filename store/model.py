"""The tree model: entry kinds, inode metadata, entries, and their one canonical encoding.

An entry encodes as (little-endian):
  kind u8 | name_len u16 | name | mode u32 | uid u32 | gid u32 | xattr_count u16
  | xattr_count x (name_len u16 | value_len u32 | name | value), sorted by name
  | payload: file: size u64 + fs-verity digest[32]; dir: tree id[32];
             symlink: target_len u16 + target.
The encoding is canonical: every field has one fixed width and every byte is
checked on decoding, so an entry's encoding is exactly the bytes it was decoded
from (decoders of trees rely on it to hash what they read).
Both tree objects and pack manifests use it, so the signed pack and the
store agree byte for byte on what an entry is.
"""

from __future__ import annotations

import enum
import hashlib
import stat
import struct

from .codec import Reader
from .ids import RawId
from .names import show
from .record import Frozen

Xattrs = tuple[tuple[bytes, bytes], ...]

MAX_NAME = 255
MAX_TARGET = 4095
MAX_XATTR_NAME = 255
MAX_XATTR_VALUE = 65536
MAX_XATTRS = 1024
PERMISSION_BITS = 0o7777


class Kind(enum.IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3

    @property
    def type_bits(self) -> int:
        return {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}[self]


class Meta(Frozen):
    """Inode metadata that a tree records: permission bits, owner, xattrs (sorted)."""

    __slots__ = ("mode", "uid", "gid", "xattrs")
    _fields = __slots__
    mode: int
    uid: int
    gid: int
    xattrs: Xattrs

    def __init__(self, mode: int, uid: int, gid: int, xattrs: Xattrs = ()) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "mode", mode)
        setattr_(self, "uid", uid)
        setattr_(self, "gid", gid)
        setattr_(self, "xattrs", xattrs)

    def __hash__(self) -> int:  # a dict key of every object write: kept cheap
        return hash((self.mode, self.uid, self.gid, self.xattrs))

    def encode(self) -> bytes:
        out = [_META.pack(self.mode, self.uid, self.gid, len(self.xattrs))]
        for name, value in self.xattrs:
            out.append(_XATTR.pack(len(name), len(value)) + name + value)
        return b"".join(out)

    def object_key(self) -> str:
        """Hex SHA-256 of the encoding: tells inodes apart that share content."""
        return hashlib.sha256(self.encode()).hexdigest()


_NO_ID = RawId(b"")


class Entry(Frozen):
    """One name in a directory.  ``digest``/``size`` for files, ``tree`` for
    directories, ``target`` for symlinks; the others are empty."""

    __slots__ = ("name", "kind", "meta", "size", "digest", "tree", "target")
    _fields = __slots__
    name: bytes
    kind: Kind
    meta: Meta
    size: int
    digest: RawId
    tree: RawId
    target: bytes

    def __init__(self, name: bytes, kind: Kind, meta: Meta, size: int = 0,
                 digest: RawId = _NO_ID, tree: RawId = _NO_ID, target: bytes = b"") -> None:
        setattr_ = object.__setattr__
        setattr_(self, "name", name)
        setattr_(self, "kind", kind)
        setattr_(self, "meta", meta)
        setattr_(self, "size", size)
        setattr_(self, "digest", digest)
        setattr_(self, "tree", tree)
        setattr_(self, "target", target)


# mode, uid, gid, xattr_count
_META = struct.Struct("<IIIH")
# xattr name length, value length
_XATTR = struct.Struct("<HI")
# kind, name length
_HEAD = struct.Struct("<BH")
# file: size, fs-verity digest
_FILE = struct.Struct("<Q32s")
_U16 = struct.Struct("<H")


def check_name(name: bytes) -> str | None:
    """Why ``name`` is not a valid directory entry name, or None when it is."""
    if not name:
        return "empty name"
    if len(name) > MAX_NAME:
        return f"name longer than {MAX_NAME} bytes"
    if b"/" in name or b"\0" in name:
        return "name contains '/' or NUL"
    if name in (b".", b".."):
        return f"name {show(name)} is reserved"
    return None


def encode_entry(entry: Entry) -> bytes:
    parts = [_HEAD.pack(entry.kind, len(entry.name)), entry.name, entry.meta.encode()]
    if entry.kind is Kind.FILE:
        parts.append(_FILE.pack(entry.size, entry.digest))
    elif entry.kind is Kind.DIR:
        parts.append(entry.tree)
    else:
        parts.append(_U16.pack(len(entry.target)) + entry.target)
    return b"".join(parts)


MetaCache = dict[bytes, Meta]


def decode_meta(reader: Reader, cache: MetaCache | None = None) -> Meta:
    """Read inode metadata.  ``cache``: metadata already decoded, by encoding (most entries
    of a tree share a few), shared across calls; only metadata without xattrs is cached."""
    if cache is not None:
        fixed = reader.peek(_META.size)
        known = cache.get(fixed)
        if known is not None:
            reader.pos += _META.size
            return known
    mode, uid, gid, count = reader.unpack(_META, "metadata")
    if mode & ~PERMISSION_BITS:
        raise reader.fail(f"mode {mode:#o} has bits outside {PERMISSION_BITS:#o}")
    if count > MAX_XATTRS:
        raise reader.fail(f"{count} xattrs exceed limit {MAX_XATTRS}")
    xattrs = []
    previous = None
    for _ in range(count):
        name_len, value_len = reader.unpack(_XATTR, "xattr header")
        if not 0 < name_len <= MAX_XATTR_NAME or value_len > MAX_XATTR_VALUE:
            raise reader.fail(f"xattr sizes out of range (name {name_len}, value {value_len})")
        name = reader.take(name_len, "xattr name")
        if b"\0" in name:
            raise reader.fail("xattr name contains NUL")
        if previous is not None and name <= previous:
            raise reader.fail(f"xattr {show(name)} not sorted or duplicated")
        previous = name
        xattrs.append((name, reader.take(value_len, "xattr value")))
    meta = Meta(mode, uid, gid, tuple(xattrs))
    if cache is not None and not count:
        cache[fixed] = meta
    return meta


_KINDS = {int(kind): kind for kind in Kind}


def decode_entry(reader: Reader, metas: MetaCache | None = None) -> Entry:
    """Read one entry, checking every field; raise FormatError on anything off.

    ``metas``: a ``decode_meta`` cache shared across the calls of one decoding.
    """
    kind_number, name_len = reader.unpack(_HEAD, "entry header")
    kind = _KINDS.get(kind_number)
    if kind is None:
        raise reader.fail(f"unknown entry kind {kind_number}")
    name = reader.take(name_len, "entry name")
    problem = check_name(name)
    if problem:
        raise reader.fail(f"bad entry name {show(name)}: {problem}")
    meta = decode_meta(reader, metas)
    if kind is Kind.FILE:
        size, digest = reader.unpack(_FILE, "file payload")
        return Entry(name, kind, meta, size=size, digest=digest)
    if kind is Kind.DIR:
        return Entry(name, kind, meta, tree=RawId(reader.take(32, "tree id")))
    (target_len,) = reader.unpack(_U16, "symlink target length")
    if not 0 < target_len <= MAX_TARGET:
        raise reader.fail(f"symlink target length {target_len} out of range")
    target = reader.take(target_len, "symlink target")
    if b"\0" in target:
        raise reader.fail("symlink target contains NUL")
    return Entry(name, kind, meta, target=target)
