"""Reading a tar stream into the store: plain, gzip, xz or zstd; ustar, GNU or PAX headers.

The input is read once, front to back (it may be a pipe), and its compression
is recognised by magic bytes; ``store.decompress`` checks every checksum and
end of it, on a read-ahead thread.  Python's ``tarfile`` parses the headers
(GNU long names, PAX records, sparse files), with every number checked as
GNU tar checks it (``store.tar_numbers``); this module decides what the
members mean for a tree:

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
  boundary is refused rather than committed as a smaller tree; only zeros may
  follow it.
- ``max_file_size`` and ``max_total_size`` bound what an untrusted archive can
  make us write: a member past either is refused from its header, before its
  data is read (a 10 KiB sparse archive can describe a 10 GiB file).

Errors about the input (its compression, a header, its end) name
``options.label``; errors about a member name the member, as the archive
spells it.
"""

from __future__ import annotations

import errno
import hashlib
import re
import tarfile
import tarfile as tarfile_module
from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, Protocol, cast

from .builder import TreeBuilder
from .decompress import Decompressed, Readable, ReadAhead, compression_of
from .errors import Name, SourceError, SpecialFile
from .fsverity import digest_bytes
from .ids import RawId
from .model import PERMISSION_BITS, Entry, Kind, Meta, Xattrs
from .names import show
from .record import Mutable
from .sparse import Piece
from .storable import check_storable_meta, sorted_xattrs
from .tar_numbers import MAX_SIZE, PAX_SPARSE_MAP, check_header, check_pax, header_number
from .transaction import COPY_CHUNK, IN_MEMORY_MAX, Transaction, store_reader
from .write_behind import WriteBehind

Progress = Callable[[int, int], None]  # (files done, bytes done)

BLOCK = 512
# tarfile reads the stream in records of this size; keeping the last WINDOW bytes
# read lets us look at the block that ended the archive.
WINDOW = 4 * tarfile.RECORDSIZE
READ_STEP = 1 << 16
# The largest sparse map taken (entries of (offset, length), 16 bytes each in memory).
MAX_SPARSE_ENTRIES = 1 << 22
_DIGITS = re.compile(rb"[0-9]+")

SCHILY_XATTR = "SCHILY.xattr."
LIBARCHIVE_XATTR = "LIBARCHIVE.xattr."
SCHILY_ACL = "SCHILY.acl."
RHT_SELINUX = "RHT.security.selinux"
# What setting an xattr the kernel or filesystem will not take fails with.
XATTR_REFUSALS = (errno.EOPNOTSUPP, errno.EPERM, errno.EINVAL, errno.E2BIG, errno.ERANGE)


class TarSourceOptions(Mutable):
    __slots__ = ("owner", "skip_special", "progress", "progress_every", "label",
                 "max_file_size", "max_total_size")
    _fields = __slots__

    def __init__(self, owner: tuple[int, int] | None = None, skip_special: bool = False,
                 progress: Progress | None = None, progress_every: int = 500,
                 label: Name = "tar stream", max_file_size: int | None = None,
                 max_total_size: int | None = None) -> None:
        self.owner = owner  # None: the members' own numeric uid/gid
        self.skip_special = skip_special
        self.progress = progress
        self.progress_every = progress_every
        self.label = label  # the input, as messages name it (a file name, raw)
        # Limits for untrusted input, in bytes (None: none), checked against each member's
        # header before its data is read: the largest regular file, and all of them together.
        self.max_file_size = max_file_size
        self.max_total_size = max_total_size


class TarSourceResult(Mutable):
    __slots__ = ("tree", "root_meta", "sha256", "compression", "skipped", "files", "bytes")
    _fields = __slots__
    skipped: list[tuple[bytes, str]]  # (path, why)

    def __init__(self, tree: RawId, root_meta: Meta, sha256: str, compression: str,
                 skipped: list[tuple[bytes, str]] | None = None, files: int = 0,
                 bytes: int = 0) -> None:  # noqa: A002 - the field's name
        self.tree = tree
        self.root_meta = root_meta
        self.sha256 = sha256  # of the input exactly as read (compressed), to compare with a published digest
        self.compression = compression
        self.skipped = [] if skipped is None else skipped
        self.files = files
        self.bytes = bytes


class _Reads(Protocol):
    def read(self, size: int, /) -> bytes: ...


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


class _TarBytes:
    """The tar stream as tarfile reads it; the last WINDOW bytes read are kept."""

    def __init__(self, source: Readable) -> None:
        self.source = source
        self.total = 0
        self.tail = bytearray()

    def read(self, size: int = -1, /) -> bytes:
        data = self.source.read(size)
        self.total += len(data)
        self.tail += data
        if len(self.tail) > 2 * WINDOW:
            del self.tail[:-WINDOW]
        return data

    def after(self, offset: int) -> bytes | None:
        """The bytes from ``offset`` of the tar stream to what was read, if still kept."""
        start = offset - (self.total - len(self.tail))
        return None if start < 0 else bytes(self.tail[start:])


class SparseMap:
    """A sparse member's map, (offset, length) pairs, kept compact (16 bytes a pair): a map
    of MAX_SPARSE_ENTRIES or more is refused, so that memory stays bounded."""

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        self.numbers = array("Q")
        for offset, length in pairs:
            self.add(offset, length)

    def add(self, offset: int, length: int) -> None:
        if len(self.numbers) >= 2 * MAX_SPARSE_ENTRIES:
            raise SourceError(f"a sparse map of more than {MAX_SPARSE_ENTRIES} entries")
        if not 0 <= offset <= MAX_SIZE or not 0 <= length <= MAX_SIZE:
            raise SourceError(f"sparse map entry ({offset}, {length}) is out of range")
        self.numbers.append(offset)
        self.numbers.append(length)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        numbers = self.numbers
        return ((numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2))

    def __len__(self) -> int:
        return len(self.numbers) // 2


class _StrictInfo(tarfile.TarInfo):
    """tarfile's header, with every number checked as GNU tar checks it (tar_numbers),
    sparse maps included (tarfile reads those with ``int()``, or stops at a bad one)."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _StrictInfo:
        info = super().frombuf(buf, encoding, errors)  # checks the length and the checksum
        check_header(bytes(buf))
        return info

    def _proc_sparse(self, tarfile: tarfile.TarFile) -> _StrictInfo:
        """An old GNU sparse member: the map's first entries are in its header (checked by
        check_header), the rest in extension blocks of 21 entries each."""
        structs, extended, realsize = self._sparse_structs  # type: ignore[attr-defined]
        del self._sparse_structs  # type: ignore[attr-defined]
        sparse = SparseMap(structs)
        while extended:
            block = tarfile.fileobj.read(BLOCK)
            if len(block) != BLOCK:
                raise tarfile_module.ReadError("unexpected end of data in a sparse header")
            for i in range(21):
                entry = block[24 * i:24 * i + 24]
                if not entry.strip(b"\0"):
                    break  # the first unused slot ends the map
                sparse.add(header_number(entry[:12], "sparse offset"),
                           header_number(entry[12:], "sparse size"))
            extended = block[504]
        self.sparse = sparse  # type: ignore[assignment]
        self.offset_data = tarfile.fileobj.tell()
        tarfile.offset = self.offset_data + self._block(self.size)  # type: ignore[attr-defined]
        self.size = realsize
        return self

    def _proc_gnusparse_01(self, next: tarfile.TarInfo, pax_headers: dict[str, str]) -> None:
        numbers = [int(n) for n in pax_headers[PAX_SPARSE_MAP].split(",")]  # checked: check_pax
        if len(numbers) % 2:
            raise SourceError(f"PAX record {PAX_SPARSE_MAP} has an odd count of numbers")
        next.sparse = SparseMap(zip(numbers[::2], numbers[1::2], strict=True))  # type: ignore[assignment]

    def _proc_gnusparse_00(self, next: tarfile.TarInfo, pax_headers: dict[str, str],
                           buf: bytes) -> None:
        super()._proc_gnusparse_00(next, pax_headers, buf)  # type: ignore[misc]
        next.sparse = SparseMap(next.sparse)  # type: ignore[assignment, arg-type]

    def _proc_gnusparse_10(self, next: tarfile.TarInfo, pax_headers: dict[str, str],
                           tarfile: tarfile.TarFile) -> None:
        """The PAX sparse 1.0 map at the start of the member's data: a count, then an offset
        and a length per entry, a decimal number a line, padded to whole blocks."""
        buf = b""
        stored = next.size  # the header's size: the map and the data
        used = 0

        def number(what: str) -> int:
            nonlocal buf, used
            while b"\n" not in buf:
                if len(buf) > len(str(MAX_SIZE)) or used + BLOCK > stored:
                    raise SourceError(f"the PAX sparse map's {what} is not a number ending "
                                      f"in a newline within the member")
                block = tarfile.fileobj.read(BLOCK)
                if len(block) != BLOCK:
                    raise tarfile_module.ReadError("unexpected end of data in a sparse map")
                buf += block
                used += BLOCK
            line, buf = buf.split(b"\n", 1)
            if not _DIGITS.fullmatch(line) or len(line) > len(str(MAX_SIZE)):
                raise SourceError(f"the PAX sparse map's {what} is not a decimal number "
                                  f"({show(line)})")
            return int(line)

        count = number("count")
        if count > MAX_SPARSE_ENTRIES:
            raise SourceError(f"a sparse map of more than {MAX_SPARSE_ENTRIES} entries")
        sparse = SparseMap()
        for _ in range(count):
            sparse.add(number("offset"), number("length"))
        next.offset_data = tarfile.fileobj.tell()
        next.sparse = sparse  # type: ignore[assignment]


def path_problem(raw: bytes) -> str | None:
    """Why a member name cannot be a path of the tree (absolute, ``..``), or None."""
    if raw.startswith(b"/"):
        return "absolute path refused"
    if b".." in raw.split(b"/"):
        return "path with a '..' component refused"
    return None


def member_path(name: str) -> list[bytes]:
    """A member name (as tarfile decodes it) as path components; [] for the root.
    Refuses absolute and ``..`` with the member named."""
    raw = _bytes(name)
    problem = path_problem(raw)
    if problem:
        raise SourceError(problem, path=name)
    return [p for p in raw.split(b"/") if p not in (b"", b".")]


def _bytes(text: str) -> bytes:
    """Undo tarfile's decoding (UTF-8, surrogateescape): the bytes the archive holds."""
    return text.encode("utf-8", "surrogateescape")


def member_xattrs(info: tarfile.TarInfo, name: Name) -> tuple[tuple[bytes, bytes], ...]:
    found: dict[bytes, bytes] = {}
    fallback: dict[bytes, bytes] = {}
    for key, value in info.pax_headers.items():
        if key.startswith(SCHILY_XATTR):
            found[_bytes(key[len(SCHILY_XATTR):])] = _bytes(value)
        elif key.startswith(LIBARCHIVE_XATTR):
            import base64  # noqa: PLC0415 - rare (libarchive's records); binascii is a C module
            import binascii  # noqa: PLC0415

            try:
                raw = base64.b64decode(_bytes(value) + b"=" * (-len(value) % 4), validate=True)
            except binascii.Error as err:
                raise SourceError(f"PAX record {show(key)} is not base64", path=name) from err
            from urllib.parse import unquote_to_bytes  # noqa: PLC0415 - rare; not a cheap import

            fallback[unquote_to_bytes(key[len(LIBARCHIVE_XATTR):])] = raw
        elif key == RHT_SELINUX:
            fallback[b"security.selinux"] = _bytes(value)
        elif key.startswith(SCHILY_ACL):
            raise SourceError(f"carries a POSIX ACL record ({show(key)}); ACLs in this form are "
                              f"not supported (store them as system.posix_acl_* xattrs)", path=name)
    for xattr, data in fallback.items():
        found.setdefault(xattr, data)
    return sorted_xattrs(found.items())


def explain_write(err: BaseException, meta: Meta, name: Name) -> BaseException:
    """The error to raise for ``err``, raised storing member ``name`` with ``meta``: an xattr
    the filesystem refuses is the member's fault, named; anything else is ``err`` itself."""
    if not isinstance(err, OSError) or not meta.xattrs or err.errno not in XATTR_REFUSALS:
        return err
    xattrs = ", ".join(show(xattr) for xattr, _ in meta.xattrs)
    return SourceError(f"cannot be stored with its metadata (owner {meta.uid}:{meta.gid}, "
                       f"xattrs {xattrs}): {err.strerror}", path=name)


class _TarReader:
    def __init__(self, tx: Transaction, options: TarSourceOptions, writes: WriteBehind) -> None:
        self.tx = tx
        self.writes = writes  # small files are stored by its worker while we read on
        self.metas: dict[tuple[int, int, int, Xattrs], Meta] = {}
        self.options = options
        uid, gid = options.owner or (0, 0)
        implied = Meta(0o755, uid, gid)
        self.builder = TreeBuilder(implied, implied)
        self.skipped: list[tuple[bytes, str]] = []
        self.files = 0
        self.bytes = 0
        self.stored = 0  # bytes of regular members' data, for max_total_size

    def meta(self, info: tarfile.TarInfo, name: str, mode: int | None = None) -> Meta:
        uid, gid = self.options.owner or (info.uid, info.gid)
        perms = info.mode & PERMISSION_BITS if mode is None else mode
        key = (perms, uid, gid, member_xattrs(info, name) if info.pax_headers else ())
        meta = self.metas.get(key)
        if meta is None:  # checked once, then shared by every member that has it
            meta = self.metas[key] = check_storable_meta(Meta(*key), name)
        return meta

    def member(self, archive: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        # ``name`` is the member's name as the archive holds it (a str with its undecodable
        # bytes kept as surrogates): errors show it, escaped, once.
        name = info.name
        try:
            check_pax(info.pax_headers)
        except SourceError as err:
            raise err.located(name) from None  # the same error, now naming its member
        parts = member_path(name)
        if info.isdir():
            if parts:
                self.builder.add_dir(parts, self.meta(info, name), name)
            else:
                self.builder.set_root_meta(self.meta(info, name), name)
            return
        if not parts:
            raise SourceError("the root must be a directory", path=name)
        if info.isreg():
            self.regular(archive, info, parts, name)
        elif info.issym():
            meta = self.meta(info, name, mode=0o777)
            self.builder.add_leaf(parts, Entry(b"", Kind.SYMLINK, meta, target=_bytes(info.linkname)),
                                  name)
        elif info.islnk():
            self.hardlink(parts, info.linkname, name)
        elif info.ischr() or info.isblk() or info.isfifo():
            kind = "character device" if info.ischr() else "block device" if info.isblk() else "fifo"
            if not self.options.skip_special:
                raise SpecialFile(f"is a {kind}; sealtree stores files, directories and "
                                  f"symlinks only", path=name)
            self.builder.add_parents(parts, name)  # tar extracting it would make them too
            self.skipped.append((b"/".join(parts), kind))
        else:
            raise SourceError(f"unsupported tar member type {show(info.type)}", path=name)

    def check_limits(self, size: int, name: str) -> None:
        """Refuse a member whose size passes a limit, before a byte of it is read."""
        limit = self.options.max_file_size
        if limit is not None and size > limit:
            raise SourceError(f"is {size} bytes, more than the limit of {limit} bytes for "
                              f"one file", path=name)
        limit = self.options.max_total_size
        if limit is not None and self.stored + size > limit:
            raise SourceError(f"is {size} bytes, which takes the files to "
                              f"{self.stored + size} bytes, more than the limit of {limit} "
                              f"bytes for all of them", path=name)

    def regular(self, archive: tarfile.TarFile, info: tarfile.TarInfo, parts: list[bytes],
                name: str) -> None:
        self.check_limits(info.size, name)
        meta = self.meta(info, name)
        try:
            digest, size = self.store(archive, info, meta, name)
        except OSError as err:
            explained = explain_write(err, meta, name)
            if explained is err:
                raise
            raise explained from err
        self.builder.add_leaf(parts, Entry(b"", Kind.FILE, meta, size=size, digest=digest), name)
        self.files += 1
        self.bytes += size
        self.stored += size
        if self.options.progress and self.files % self.options.progress_every == 0:
            self.options.progress(self.files, self.bytes)

    def store(self, archive: tarfile.TarFile, info: tarfile.TarInfo, meta: Meta, name: str
              ) -> tuple[RawId, int]:
        """Store a regular member's data; return its digest and size."""
        if info.sparse is None and info.size <= IN_MEMORY_MAX and archive.fileobj is not None:
            # Read in one piece from the stream, which is at the member's data (stream mode
            # reads in order): tarfile's per-member file object costs more than the read.
            data = archive.fileobj.read(info.size)
            if len(data) != info.size:
                raise SourceError(f"truncated: the stream ends inside member {show(name)} "
                                  f"({len(data)} of its {info.size} bytes)", path=self.options.label)
            digest = RawId(digest_bytes(data))
            self.writes.add(data, meta, digest, name)  # written by a thread while we read on
            return digest, info.size
        if info.sparse is not None and archive.fileobj is not None:
            room = archive.offset - archive.fileobj.tell()  # to the next header
            return self.tx.add_file_pieces(self.sparse_pieces(archive.fileobj, info, name, room),
                                           meta)
        reader = archive.extractfile(info)
        if reader is None:  # not possible for a regular member; a bug if it happens
            raise AssertionError(f"tarfile gave no data for regular member {show(name)}")
        return store_reader(self.tx, reader, info.size, meta, name)  # type: ignore[arg-type]

    def sparse_pieces(self, stream: _Reads, info: tarfile.TarInfo, name: str, room: int
                      ) -> Iterator[Piece]:
        """A sparse member's content (GNU or PAX sparse: a map of data ranges, the data of each
        stored in turn) as pieces: its holes are never made, only counted.  The stream is at
        the member's data (stream mode reads in order), which has ``room`` bytes before the next
        header.  A map out of order, overlapping, past the member's size or holding more data
        than the member does is refused before any data is read."""
        sparse = cast(SparseMap, info.sparse)  # every _proc_* of _StrictInfo makes one
        pos = stored = 0
        for offset, length in sparse:
            if length == 0:  # an unused slot of an old GNU header, or the map's size-only end
                continue
            if offset < pos or offset + length > info.size:
                raise SourceError(f"sparse map entry ({offset}, {length}) is out of order or "
                                  f"past the file's size ({info.size} bytes)", path=name)
            pos = offset + length
            stored += length
        if stored > room:
            raise SourceError(f"the sparse map holds {stored} bytes of data, more than the "
                              f"member's {room}", path=name)
        pos = 0
        for offset, length in sparse:
            if length == 0:
                continue
            if offset > pos:
                yield offset - pos
            left = length
            while left:
                chunk = stream.read(min(left, COPY_CHUNK))
                if not chunk:
                    raise SourceError(f"truncated: the stream ends inside member {show(name)}",
                                      path=self.options.label)
                left -= len(chunk)
                yield chunk
            pos = offset + length
        if info.size > pos:
            yield info.size - pos

    def hardlink(self, parts: list[bytes], linkname: str, name: str) -> None:
        link = _bytes(linkname)
        problem = path_problem(link)
        if problem:
            raise SourceError(f"hardlink to {show(link)}: {problem}", path=name)
        target = self.builder.get(member_path(linkname))
        if not isinstance(target, Entry):
            what = "a directory" if target is not None else "no earlier member"
            raise SourceError(f"hardlink to {show(link)}, which is {what}; a hardlink must "
                              f"point at an earlier file or symlink", path=name)
        self.builder.add_leaf(parts, target, name)
        if target.kind is Kind.FILE:
            self.files += 1
            self.bytes += target.size


def _open(source: _Input, label: Name) -> tuple[Readable, str]:
    """The tar bytes of the input, and its compression."""
    try:
        compression = compression_of(source.peek(6))
    except SourceError as err:
        raise err.located(label) from None  # the same error, naming the input
    if compression == "none":
        return source, compression
    return Decompressed(source, compression, label), compression


def _check_end(tar_bytes: _TarBytes, offset: int, label: Name) -> None:
    """The archive ends at ``offset`` with a zero block, and only zeros follow (padding) to the
    end of the stream, which is read to its end, so that every checksum of it is checked."""
    rest = tar_bytes.after(offset)
    if rest is not None:
        while len(rest) < BLOCK and (more := tar_bytes.read(BLOCK)):
            rest += more
    if rest is None or len(rest) < BLOCK or rest[:BLOCK].count(0) != BLOCK:
        raise SourceError(f"truncated or corrupt: no end-of-archive block after the last "
                          f"member (at offset {offset})", path=label)
    while True:
        if rest.count(0) != len(rest):
            raise SourceError(f"data after the end-of-archive block (at offset {offset}) "
                              f"that is not zero padding", path=label)
        rest = tar_bytes.read(READ_STEP)
        if not rest:
            return


def read_tar(tx: Transaction, stream: BinaryIO, options: TarSourceOptions | None = None
             ) -> TarSourceResult:
    """Store the tree a tar stream holds; return the root tree id and metadata, the
    input's SHA-256, and what was skipped.  Any malformed or unsafe input is a SourceError:
    the input's own (a checksum, a header, the end) naming ``options.label``, a member's
    naming the member."""
    options = options or TarSourceOptions()
    label = options.label
    source = _Input(stream)
    decompressed, compression = _open(source, label)
    with ReadAhead(decompressed) as ahead:
        tree, root_meta, reader = _read_members(tx, ahead, options)
    if options.progress:
        options.progress(reader.files, reader.bytes)
    return TarSourceResult(tree, root_meta, source.sha256.hexdigest(),
                           compression, reader.skipped, reader.files, reader.bytes)


def _read_members(tx: Transaction, tar_source: Readable, options: TarSourceOptions
                  ) -> tuple[RawId, Meta, _TarReader]:
    """Store every member, check the end of the stream, store the trees."""
    label = options.label
    tar_bytes = _TarBytes(tar_source)
    with WriteBehind(tx, explain_write) as writes:
        reader = _TarReader(tx, options, writes)
        offset = _read_archive(reader, tar_bytes, label)
        _check_end(tar_bytes, offset, label)
        tree = reader.builder.write(tx)  # while the worker finishes its files
        writes.finish()
    return tree, reader.builder.root.meta, reader


def _read_archive(reader: _TarReader, tar_bytes: _TarBytes, label: Name) -> int:
    """Store every member; return the offset of the end of the archive."""
    try:
        with tarfile.open(fileobj=tar_bytes, mode="r|", encoding="utf-8",  # type: ignore[call-overload]
                          errors="surrogateescape", tarinfo=_StrictInfo) as archive:
            while (info := archive.next()) is not None:
                reader.member(archive, info)
                del archive.members[:]  # tarfile keeps every header; we need none of them
            offset: int = archive.offset
    except tarfile.TarError as err:
        raise SourceError(f"not a valid tar stream: {err}", path=label) from err
    except ValueError as err:  # tarfile's int() of a number it did not check (GNU sparse maps)
        raise SourceError(f"not a valid tar stream: {err}", path=label) from err
    except SourceError as err:  # a header's numbers (no subject yet): the input's fault
        raise err.located(label) from None  # the same error, naming the input
    return offset
