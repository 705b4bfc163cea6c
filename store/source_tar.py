"""Reading a tar stream into the store: plain, gzip, xz or zstd; ustar, GNU or PAX headers.

The input is read once, front to back (it may be a pipe), and its compression
is recognised by magic bytes.  Python's ``tarfile`` parses the headers (GNU
long names, PAX records, sparse files); this module decides what the members
mean for a tree:

- Paths are normalised (``./`` and empty components dropped).  An absolute
  path or one with a ``..`` component is refused with the member named, as is
  a member below a symlink or a file, and a path given twice (tar would let
  the last one win; a tree holds one entry per path, so we refuse).
- ``.`` (or ``./``) gives the root directory its metadata.  Directories that
  appear only as parents of other members get mode 0755 and ``owner``.
- Owners are the numeric uid/gid (user and group names are ignored), or all
  ``owner`` when given.  Symlinks always get mode 0777, as on Linux.
- Xattrs come from PAX records: ``SCHILY.xattr.NAME`` (raw bytes, as GNU tar
  writes them), ``LIBARCHIVE.xattr.NAME`` (URL-encoded name, base64 value;
  used only where no SCHILY record names the same xattr) and
  ``RHT.security.selinux``.  ACL records (``SCHILY.acl.*``) are refused, not
  silently dropped.
- A hardlink must point at an earlier file or symlink member; it becomes an
  entry with that member's content and metadata.
- Devices and fifos are refused, or skipped (and reported) with ``skip_special``.
- The archive must end with an end-of-archive block: a stream cut at a member
  boundary is refused rather than committed as a smaller tree.
"""

from __future__ import annotations

import base64
import binascii
import errno
import gzip
import hashlib
import lzma
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol
from urllib.parse import unquote_to_bytes

import zstandard

from .builder import TreeBuilder, check_meta, show, sorted_xattrs, store_reader
from .errors import SourceError
from .ids import RawId
from .model import PERMISSION_BITS, Entry, Kind, Meta
from .transaction import Transaction

Progress = Callable[[int, int], None]  # (files done, bytes done)

BLOCK = 512
# The magic bytes each supported compression starts with.
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
# tarfile reads the decompressed stream in records of this size; keeping the
# last WINDOW bytes read lets us look at the block that ended the archive.
WINDOW = 4 * tarfile.RECORDSIZE

SCHILY_XATTR = "SCHILY.xattr."
LIBARCHIVE_XATTR = "LIBARCHIVE.xattr."
SCHILY_ACL = "SCHILY.acl."
RHT_SELINUX = "RHT.security.selinux"
# What setting an xattr the kernel or filesystem will not take fails with.
XATTR_REFUSALS = (errno.EOPNOTSUPP, errno.EPERM, errno.EINVAL, errno.E2BIG, errno.ERANGE)


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


@dataclass
class TarSourceOptions:
    owner: tuple[int, int] | None = None  # None: the members' own numeric uid/gid
    skip_special: bool = False
    progress: Progress | None = None
    progress_every: int = 500
    label: str = "tar stream"  # how messages name the input


@dataclass
class TarSourceResult:
    tree: RawId
    root_meta: Meta
    sha256: str  # of the input exactly as read (compressed), to compare with a published digest
    compression: str
    skipped: list[tuple[bytes, str]] = field(default_factory=list)  # (path, why)
    files: int = 0
    bytes: int = 0


class _Input:
    """The raw input: replays the bytes peeked at for magic, hashes every byte read."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.pending = b""

    def peek(self, n: int) -> bytes:
        while len(self.pending) < n:
            chunk = self.raw.read(n - len(self.pending))
            if not chunk:
                break
            self.sha256.update(chunk)
            self.pending += chunk
        return self.pending[:n]

    def read(self, size: int = -1, /) -> bytes:
        if self.pending:
            data = self.pending if size < 0 else self.pending[:size]
            self.pending = self.pending[len(data):]
            return data
        data = self.raw.read(size)
        self.sha256.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class _Decompressed:
    """The tar bytes: decompression errors become SourceError; the last WINDOW bytes are kept."""

    def __init__(self, source: _Readable, compression: str, label: str) -> None:
        self.source = source
        self.compression = compression
        self.label = label
        self.total = 0
        self.tail = bytearray()

    def read(self, size: int = -1, /) -> bytes:
        try:
            data = self.source.read(size)
        except (EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile, zstandard.ZstdError) as err:
            raise SourceError(f"corrupt or truncated {self.compression} data: {err}",
                              path=self.label) from err
        self.total += len(data)
        self.tail += data
        if len(self.tail) > 2 * WINDOW:
            del self.tail[:-WINDOW]
        return data

    def block_at(self, offset: int) -> bytes | None:
        """The block at ``offset`` of the tar stream, if read and still in the window."""
        start = offset - (self.total - len(self.tail))
        if start < 0:
            return None
        return bytes(self.tail[start:start + BLOCK])


def _open_decompressed(source: _Input, label: str) -> _Decompressed:
    head = source.peek(6)
    if head.startswith(GZIP_MAGIC):
        return _Decompressed(gzip.GzipFile(fileobj=source, mode="rb"), "gzip", label)  # type: ignore[call-overload]
    if head.startswith(XZ_MAGIC):
        return _Decompressed(lzma.LZMAFile(source), "xz", label)  # type: ignore[arg-type]
    if head.startswith(ZSTD_MAGIC):
        reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True,  # type: ignore[arg-type]
                                                             closefd=False)
        return _Decompressed(reader, "zstd", label)
    if head.startswith(BZIP2_MAGIC):
        raise SourceError("bzip2-compressed tar is not supported (plain, gzip, xz or zstd; "
                          "decompress it with bunzip2 first)", path=label)
    return _Decompressed(source, "none", label)


def member_path(raw: bytes, where: str) -> list[bytes]:
    """A member name as path components; [] for the root.  Refuses absolute and ``..``."""
    if raw.startswith(b"/"):
        raise SourceError("absolute path refused", path=where)
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    if b".." in parts:
        raise SourceError("path with a '..' component refused", path=where)
    return parts


def _bytes(text: str) -> bytes:
    """Undo tarfile's decoding (UTF-8, surrogateescape): the bytes the archive holds."""
    return text.encode("utf-8", "surrogateescape")


def member_xattrs(info: tarfile.TarInfo, where: str) -> tuple[tuple[bytes, bytes], ...]:
    found: dict[bytes, bytes] = {}
    fallback: dict[bytes, bytes] = {}
    for key, value in info.pax_headers.items():
        if key.startswith(SCHILY_XATTR):
            found[_bytes(key[len(SCHILY_XATTR):])] = _bytes(value)
        elif key.startswith(LIBARCHIVE_XATTR):
            try:
                raw = base64.b64decode(_bytes(value) + b"=" * (-len(value) % 4), validate=True)
            except binascii.Error as err:
                raise SourceError(f"PAX record {key!r} is not base64", path=where) from err
            fallback[unquote_to_bytes(key[len(LIBARCHIVE_XATTR):])] = raw
        elif key == RHT_SELINUX:
            fallback[b"security.selinux"] = _bytes(value)
        elif key.startswith(SCHILY_ACL):
            raise SourceError(f"carries a POSIX ACL record ({key}); ACLs in this form are "
                              f"not supported (store them as system.posix_acl_* xattrs)", path=where)
    for name, data in fallback.items():
        found.setdefault(name, data)
    return sorted_xattrs(found.items())


class _TarReader:
    def __init__(self, tx: Transaction, options: TarSourceOptions) -> None:
        self.tx = tx
        self.options = options
        uid, gid = options.owner or (0, 0)
        implied = Meta(0o755, uid, gid)
        self.builder = TreeBuilder(implied, implied)
        self.skipped: list[tuple[bytes, str]] = []
        self.files = 0
        self.bytes = 0

    def meta(self, info: tarfile.TarInfo, where: str, mode: int | None = None) -> Meta:
        uid, gid = self.options.owner or (info.uid, info.gid)
        perms = info.mode & PERMISSION_BITS if mode is None else mode
        return check_meta(Meta(perms, uid, gid, member_xattrs(info, where)), where)

    def member(self, archive: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        raw = _bytes(info.name)
        where = f"tar member {show(raw)!r}"
        parts = member_path(raw, where)
        if info.isdir():
            if parts:
                self.builder.add_dir(parts, self.meta(info, where), where)
            else:
                self.builder.set_root_meta(self.meta(info, where), where)
            return
        if not parts:
            raise SourceError("the root must be a directory", path=where)
        if info.isreg():
            meta = self.meta(info, where)
            data = archive.extractfile(info)
            if data is None:  # not possible for a regular member; a bug if it happens
                raise AssertionError(f"tarfile gave no data for regular member {info.name!r}")
            try:
                digest, size = store_reader(self.tx, data, info.size, meta, where)  # type: ignore[arg-type]
            except OSError as err:
                if not meta.xattrs or err.errno not in XATTR_REFUSALS:
                    raise
                names = ", ".join(show(name) for name, _ in meta.xattrs)
                raise SourceError(f"cannot be stored with its metadata (owner {meta.uid}:"
                                  f"{meta.gid}, xattrs {names}): {err.strerror}", path=where) from err
            self.builder.add_leaf(parts, Entry(b"", Kind.FILE, meta, size=size, digest=digest), where)
            self.files += 1
            self.bytes += size
            if self.options.progress and self.files % self.options.progress_every == 0:
                self.options.progress(self.files, self.bytes)
        elif info.issym():
            meta = self.meta(info, where, mode=0o777)
            self.builder.add_leaf(parts, Entry(b"", Kind.SYMLINK, meta, target=_bytes(info.linkname)),
                                  where)
        elif info.islnk():
            self.hardlink(parts, _bytes(info.linkname), where)
        elif info.ischr() or info.isblk() or info.isfifo():
            kind = "character device" if info.ischr() else "block device" if info.isblk() else "fifo"
            if not self.options.skip_special:
                raise SourceError(f"is a {kind}; sealtree stores files, directories and "
                                  f"symlinks only (use --skip-special)", path=where)
            self.builder.add_parents(parts, where)  # tar extracting it would make them too
            self.skipped.append((b"/".join(parts), kind))
        else:
            raise SourceError(f"unsupported tar member type {info.type!r}", path=where)

    def hardlink(self, parts: list[bytes], link: bytes, where: str) -> None:
        target = self.builder.get(member_path(link, f"{where} (hardlink to {show(link)!r})"))
        if not isinstance(target, Entry):
            what = "a directory" if target is not None else "no earlier member"
            raise SourceError(f"hardlink to {show(link)!r}, which is {what}; a hardlink must "
                              f"point at an earlier file or symlink", path=where)
        self.builder.add_leaf(parts, target, where)
        if target.kind is Kind.FILE:
            self.files += 1
            self.bytes += target.size


def read_tar(tx: Transaction, stream: BinaryIO, options: TarSourceOptions | None = None
             ) -> TarSourceResult:
    """Store the tree a tar stream holds; return the root tree id and metadata, the
    input's SHA-256, and what was skipped.  Any malformed or unsafe input is a SourceError."""
    options = options or TarSourceOptions()
    label = options.label
    source = _Input(stream)
    tar_bytes = _open_decompressed(source, label)
    reader = _TarReader(tx, options)
    try:
        with tarfile.open(fileobj=tar_bytes, mode="r|", encoding="utf-8",  # type: ignore[call-overload]
                          errors="surrogateescape") as archive:
            while (info := archive.next()) is not None:
                reader.member(archive, info)
                del archive.members[:]  # tarfile keeps every header; we need none of them
            end = tar_bytes.block_at(archive.offset)
    except tarfile.TarError as err:
        raise SourceError(f"not a valid tar stream: {err}", path=label) from err
    if end is None or len(end) < BLOCK or end.count(0) != BLOCK:
        raise SourceError(f"truncated or corrupt: no end-of-archive block after the last "
                          f"member (at offset {archive.offset})", path=label)
    source.drain()
    tree = reader.builder.write(tx)
    if options.progress:
        options.progress(reader.files, reader.bytes)
    return TarSourceResult(tree, reader.builder.root.meta, source.sha256.hexdigest(),
                           tar_bytes.compression, reader.skipped, reader.files, reader.bytes)
