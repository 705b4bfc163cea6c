"""Exporting a commit as a deterministic tar archive, optionally zstd-compressed.

The same commit gives the same bytes on every run and machine: nothing in the
archive comes from the exporting system (no names of users, no clock, no
umask, no directory order, no PIDs in header names).  The header layout is
written here, not by ``tarfile``, so that it does not depend on the Python
version either.  The rules (docs/FORMAT.md, section 8, has the full list):

- POSIX pax (ustar headers, ``x`` extended headers only where needed).
- The root directory first as ``./`` (it carries the root's mode, owner and
  xattrs), then every entry depth first, each directory's entries sorted by
  name bytes, so parents come before their children.
- Numeric owners only (uname/gname empty); mtime = the commit's timestamp.
- One member per path: a file that occurs twice is written twice, never as a
  hardlink.  Symlinks are ``2`` members, directories ``5`` members named
  with a trailing ``/``.
- Xattrs as ``SCHILY.xattr.NAME=VALUE`` records with the raw bytes.
- Each file's content is checked against its fs-verity digest while it is
  written: a corrupt object fails the export instead of being shipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import queue
import struct
import threading
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, BinaryIO

from .commits import Commit
from .errors import ObjectCorrupt, ObjectMissing, SourceError
from .fsverity import READ_CHUNK, VerityHasher, digest_bytes
from .ids import RawId, to_hex
from .model import Entry, Kind, Meta
from .names import show
from .objects import ObjectStore
from .readahead import read_ahead
from .record import Mutable
from .sparse import EXPORT_HOLE_MIN, zero_runs
from .walk import walk

if TYPE_CHECKING:  # imported when --zstd asks for it: start-up time counts on every export
    import zstandard

BLOCK = 512
RECORD = 20 * BLOCK  # the archive is padded to whole records, as tar(1) writes them
DEFAULT_ZSTD_LEVEL = 10
PAX_HEADER_NAME = b"././@PaxHeader"
MAX_OCTAL_7 = 0o7777777  # largest value of an 8-byte numeric field
MAX_OCTAL_11 = 0o77777777777  # largest value of a 12-byte numeric field
NAME_FIELD = 100
LINK_FIELD = 100

# name, mode, uid, gid, size, mtime, checksum, typeflag, linkname, magic, version,
# uname, gname, devmajor, devminor, prefix, 12 bytes of padding (POSIX ustar)
_USTAR = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12x")
_CHECKSUM_OFFSET = 148
_CHECKSUM_SIZE = 8

REG, DIR, SYMLINK, PAX = b"0", b"5", b"2", b"x"
FLUSH_FRAME = 1  # zstandard.FLUSH_FRAME (the module is imported only for --zstd)
FLUSH_AT = 1 << 20  # the archive is written to the output in pieces of about this size
OUTPUT_QUEUE = 4  # pieces made and not yet written, at most
AHEAD_FILES = 128  # how many files ahead of the writing their objects are opened and read
AHEAD_BATCH = 16  # files opened by one prefetch task
PREFETCH_THREADS = 4
SPARSE_DIR = b"GNUSparseFile.0/"  # the header name of a sparse member: this, then its base name


class ExportStats(Mutable):
    __slots__ = ("files", "dirs", "symlinks", "content_bytes", "archive_bytes", "sha256")
    _fields = __slots__

    def __init__(self, files: int = 0, dirs: int = 0, symlinks: int = 0, content_bytes: int = 0,
                 archive_bytes: int = 0, sha256: str = "") -> None:
        self.files = files
        self.dirs = dirs
        self.symlinks = symlinks
        self.content_bytes = content_bytes  # file content exported
        self.archive_bytes = archive_bytes  # bytes written to the output (after compression)
        self.sha256 = sha256  # of the output


def _octal(value: int, width: int) -> bytes:
    """A ustar numeric field: zero-padded octal digits and a NUL."""
    return b"%0*o\0" % (width - 1, value)


def _ustar(name: bytes, mode: int, uid: int, gid: int, size: int, mtime: int, typeflag: bytes,
           linkname: bytes = b"") -> bytes:
    header = bytearray(_USTAR.pack(
        name[:NAME_FIELD], _octal(mode, 8), _octal(uid, 8), _octal(gid, 8), _octal(size, 12),
        _octal(mtime, 12), b" " * _CHECKSUM_SIZE, typeflag, linkname[:LINK_FIELD], b"ustar\0", b"00",
        b"", b"", _octal(0, 8), _octal(0, 8), b""))
    # The checksum is the sum of the header's bytes with the checksum field read as spaces.
    header[_CHECKSUM_OFFSET:_CHECKSUM_OFFSET + _CHECKSUM_SIZE] = b"%06o\0 " % sum(header)
    return bytes(header)


def pax_record(key: bytes, value: bytes) -> bytes:
    """``"%d %s=%s\\n"`` where the length counts the whole record, its own digits included."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(body) + len(str(length)) != length:
        length = len(body) + len(str(length))
    return str(length).encode() + body


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Output:
    """Counts and hashes what reaches the output.  Each piece is hashed and written on a thread
    of its own (hashing and writing let Python's other threads run), in order, while the
    next piece is made; at most OUTPUT_QUEUE pieces wait.  A piece handed over is not
    changed afterwards (TarWriter gives away its buffer; a view is copied).  ``close()``
    waits for the last piece and raises the first error of a write."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.pieces: queue.Queue[bytes | bytearray | None] = queue.Queue(OUTPUT_QUEUE)
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.error is not None:
            raise self.error
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="export-output", daemon=True)
            self.thread.start()
        self.pieces.put(bytes(data) if isinstance(data, memoryview) else data)
        self.size += len(data)
        return len(data)

    def _run(self) -> None:
        while (data := self.pieces.get()) is not None:
            if self.error is None:
                try:
                    self.sha256.update(data)
                    self.out.write(data)
                except BaseException as err:  # noqa: BLE001 - raised by write() or close()
                    self.error = err

    def close(self, *, failed: bool = False) -> None:
        """Wait until every piece is written; raise the first error (not when the caller
        ``failed`` already: its error is the one to report)."""
        if self.thread is not None:
            if failed:
                self.error = self.error or _Stopped()  # what is still queued is not written
            self.pieces.put(None)
            self.thread.join()
            self.thread = None
        if self.error is not None and not failed:
            raise self.error


class _Stopped(Exception):
    """The export failed: the output thread writes no more."""


class TarWriter:
    """Writes members in the deterministic layout described above."""

    def __init__(self, out: _Output | zstandard.ZstdCompressionWriter, mtime: int) -> None:
        self.out = out
        self.mtime = mtime
        self.written = 0
        self.buffer = bytearray()  # what is not yet written to ``out``: up to FLUSH_AT bytes

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        self.buffer += data
        self.written += len(data)
        if len(self.buffer) >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        buffer, self.buffer = self.buffer, bytearray()  # given away: never changed after
        self.out.write(buffer)

    def _pad(self) -> None:
        if self.written % BLOCK:
            self._write(bytes(BLOCK - self.written % BLOCK))

    def member(self, path: bytes, kind: Kind, meta: Meta, *, size: int = 0, target: bytes = b"",
               sparse: list[tuple[int, int]] | None = None) -> None:
        """Write one member's header, after a PAX header when a field does not fit ustar or
        there are xattrs.  A file's ``size`` bytes follow through ``data`` then ``end_member``.
        With ``sparse`` (the data ranges of a file with holes, as (offset, length)) the file is
        a PAX sparse 1.0 member (docs/FORMAT.md, "Sparse files"): its map is written here, then
        only the bytes of those ranges follow."""
        name = path + b"/" if kind is Kind.DIR else path
        typeflag = {Kind.FILE: REG, Kind.DIR: DIR, Kind.SYMLINK: SYMLINK}[kind]
        records: list[tuple[bytes, bytes]] = []
        header_name = name
        sparse_map = b""
        if sparse is not None:
            # GNU tar's layout: the real name and size in records, a made-up name (here without
            # tar's PID) in the header, the map at the start of the data.
            sparse_map = _sparse_map(sparse)
            records += [(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                        (b"GNU.sparse.name", name), (b"GNU.sparse.realsize", b"%d" % size)]
            header_name = SPARSE_DIR + name.rsplit(b"/", 1)[-1]
            size = len(sparse_map) + sum(length for _offset, length in sparse)
        elif len(name) > NAME_FIELD:
            records.append((b"path", name))
        if len(target) > LINK_FIELD:
            records.append((b"linkpath", target))
        if size > MAX_OCTAL_11:
            records.append((b"size", b"%d" % size))
        if meta.uid > MAX_OCTAL_7:
            records.append((b"uid", b"%d" % meta.uid))
        if meta.gid > MAX_OCTAL_7:
            records.append((b"gid", b"%d" % meta.gid))
        if not 0 <= self.mtime <= MAX_OCTAL_11:
            records.append((b"mtime", b"%d" % self.mtime))
        for xname, value in meta.xattrs:  # already sorted by name in the tree
            if b"=" in xname:
                raise SourceError(f"xattr {show(xname)} cannot be exported: a PAX record "
                                  f"keyword cannot hold '='", path=path)
            records.append((b"SCHILY.xattr." + xname, value))
        if any(k in (b"path", b"linkpath", b"GNU.sparse.name") and not _is_utf8(v)
               for k, v in records):
            records.insert(0, (b"hdrcharset", b"BINARY"))
        mtime = min(max(self.mtime, 0), MAX_OCTAL_11)
        if records:
            data = b"".join(pax_record(k, v) for k, v in records)
            self._write(_ustar(PAX_HEADER_NAME, 0o644, 0, 0, len(data), mtime, PAX))
            self._write(data)
            self._pad()
        # A value that a PAX record carries is 0 in the ustar field: one rule, no guessing.
        self._write(_ustar(header_name, meta.mode, meta.uid if meta.uid <= MAX_OCTAL_7 else 0,
                           meta.gid if meta.gid <= MAX_OCTAL_7 else 0,
                           size if size <= MAX_OCTAL_11 else 0, mtime, typeflag, target))
        if sparse_map:
            self._write(sparse_map)

    def data(self, chunk: bytes | bytearray | memoryview) -> None:
        self._write(chunk)

    def end_member(self) -> None:
        self._pad()

    def finish(self) -> None:
        """Two zero blocks end the archive; zeros then fill the last record."""
        self._write(bytes(2 * BLOCK))
        if self.written % RECORD:
            self._write(bytes(RECORD - self.written % RECORD))
        self.flush()


def _sparse_map(ranges: list[tuple[int, int]]) -> bytes:
    """A PAX sparse 1.0 map: the number of ranges, then each one's offset and length, one
    decimal number a line, zero-padded to whole blocks."""
    lines = [b"%d" % len(ranges)]
    for offset, length in ranges:
        lines += [b"%d" % offset, b"%d" % length]
    data = b"\n".join(lines) + b"\n"
    return data + bytes(-len(data) % BLOCK)


def data_ranges_between(runs: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The (offset, length) ranges of a ``size``-byte file outside its zero ``runs`` (at least
    one); a file that ends in a run gets an empty range at its end, as GNU tar writes it."""
    ranges = []
    pos = 0
    for start, stop in runs:
        if start > pos:
            ranges.append((pos, start - pos))
        pos = stop
    ranges.append((pos, size - pos) if pos < size else (size, 0))
    return ranges


def _copy_sparse(writer: TarWriter, fd: int, entry: Entry, ranges: list[tuple[int, int]],
                 hasher: VerityHasher) -> int:
    """Write the data ``ranges`` of the object open as ``fd``, hashing them and the zeros
    between them; return how many bytes of content that was (its size when it is whole)."""
    buf = bytearray(READ_CHUNK)
    view = memoryview(buf)
    pos = 0
    for offset, length in ranges:
        hasher.update_zeros(offset - pos)
        pos = offset
        while pos < offset + length:
            n = os.preadv(fd, [view[:min(len(buf), offset + length - pos)]], pos)
            if not n:
                return pos
            hasher.update(view[:n])
            writer.data(view[:n])
            pos += n
    hasher.update_zeros(entry.size - pos)
    return entry.size


def _check_copied(path: bytes, entry: Entry, source: str, wrong_size: bool, got: bytes) -> None:
    """A file's content had ``entry.size`` bytes (not ``wrong_size``) and digest ``got``."""
    if wrong_size:
        raise ObjectCorrupt(f"object {to_hex(entry.digest)} is not {entry.size} bytes long",
                            path=path, object_id=to_hex(entry.digest), file=source)
    if not hmac.compare_digest(got, entry.digest):
        raise ObjectCorrupt(f"object {to_hex(entry.digest)} is corrupt: its content has "
                            f"digest {got.hex()}", expected=to_hex(entry.digest), got=got.hex(),
                            path=path, object_id=to_hex(entry.digest), file=source)


def _export_file(objects: ObjectStore, writer: TarWriter, path: bytes, entry: Entry,
                 fd: int | None) -> None:
    """A file's member: its header and content (read from ``fd``, its object opened by
    ``_ahead``; None if it is missing), the content checked against the tree's size and
    fs-verity digest as it is written.  A file with zero runs of EXPORT_HOLE_MIN or more is a
    sparse member."""
    source = objects.file_path(entry.digest, entry.meta)
    if fd is None:
        bundled = objects.bundled_file(entry.digest, entry.meta)  # checked as it is read
        if bundled is None:
            raise ObjectMissing(f"object {to_hex(entry.digest)} is missing", path=path,
                                object_id=to_hex(entry.digest), file=source)
        writer.member(path, Kind.FILE, entry.meta, size=entry.size)
        _check_copied(path, entry, source, len(bundled) != entry.size, entry.digest)
        writer.data(bundled)
        writer.end_member()
        return
    size = entry.size
    if size <= READ_CHUNK:  # most files: one read, one digest
        data = os.read(fd, size + 1)
        writer.member(path, Kind.FILE, entry.meta, size=size)
        _check_copied(path, entry, source, len(data) != size, digest_bytes(data))
        writer.data(data)
        writer.end_member()
        return
    hasher = VerityHasher()
    runs = zero_runs(fd, size) if size >= EXPORT_HOLE_MIN else []
    if runs:
        ranges = data_ranges_between(runs, size)
        writer.member(path, Kind.FILE, entry.meta, size=size, sparse=ranges)
        got = _copy_sparse(writer, fd, entry, ranges, hasher)
        wrong_size = got != size or os.fstat(fd).st_size != size
    else:
        writer.member(path, Kind.FILE, entry.meta, size=size)
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = os.preadv(fd, [view[:min(len(buf), size - got)]], got)
            if not n:
                break
            hasher.update(view[:n])
            writer.data(view[:n])
            got += n
        wrong_size = got != size or bool(os.pread(fd, 1, got))
    _check_copied(path, entry, source, wrong_size, hasher.digest())
    writer.end_member()


Walked = tuple[bytes, Entry, int | None]  # a path, its entry, and a file's object opened


def _open_objects(paths: list[str]) -> list[int | None]:
    """Open each object and ask the kernel to read it (POSIX_FADV_WILLNEED); None for one
    that is missing (reported when it is written).  On a prefetch thread: if one open fails
    otherwise, those opened are closed and the error is raised to the writer."""
    fds: list[int | None] = []
    try:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                fds.append(None)
                continue
            fds.append(fd)
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except BaseException:
        for opened in fds:
            if opened is not None:
                os.close(opened)
        raise
    return fds


class _Opened:
    """One prefetch task: a batch of objects opened on a prefetch thread, or its error."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.fds: list[int | None] = []
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.fds = _open_objects(self.paths)
        except BaseException as err:  # noqa: BLE001 - handed to the writer, raised there
            self.error = err
        self.done.set()

    def result(self) -> list[int | None]:
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.fds


class _TreesAhead:
    """One prefetch task: trees the walk reaches later, asked of the kernel
    (``store.readahead``), so that on a cold cache the walk does not wait for each."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def run(self) -> None:
        for path in self.paths:
            read_ahead(path)


class _Prefetching(ObjectStore):
    """The object store as the export's walk reads it: when a tree is read, the trees of its
    directories are handed to the prefetch threads."""

    def __init__(self, objects: ObjectStore, tasks: queue.SimpleQueue[_Opened | _TreesAhead | None]
                 ) -> None:
        super().__init__(objects.root, objects.bundles)
        self.bundle_index = objects.bundle_index  # one index, loaded once
        self.tasks = tasks

    def read_tree(self, raw: RawId) -> list[Entry]:
        entries = super().read_tree(raw)
        paths = [self.path("tree", entry.tree) for entry in entries if entry.kind is Kind.DIR]
        if paths:
            self.tasks.put(_TreesAhead(paths))
        return entries


def _prefetcher(tasks: queue.SimpleQueue[_Opened | _TreesAhead | None]) -> None:
    while (task := tasks.get()) is not None:
        task.run()


_Pending = tuple[bytes, Entry, _Opened | None, int]  # with its batch and index in it, or -1


def _ahead(objects: ObjectStore, tree: RawId) -> Generator[Walked, None, None]:
    """The walk, run ahead of the writing: the objects of the next AHEAD_FILES files are opened,
    and the kernel asked to read them, by PREFETCH_THREADS threads (AHEAD_BATCH files a task),
    so that on a cold cache the disk has many reads queued, directory and inode lookups
    included, while one file is hashed and written; and each tree read, the trees below it
    (``_Prefetching``).  The receiver closes each fd it is given; those not given yet are
    closed here."""
    pending: deque[_Pending] = deque()  # in walk order, each with its batch's task
    current: list[tuple[bytes, Entry, int]] = []  # walked since the last batch was submitted
    paths: list[str] = []  # the objects of the files among ``current``
    files_pending = 0
    tasks: queue.SimpleQueue[_Opened | _TreesAhead | None] = queue.SimpleQueue()
    items = walk(_Prefetching(objects, tasks), tree)
    threads = [threading.Thread(target=_prefetcher, args=(tasks,), name="export-prefetch",
                                daemon=True) for _ in range(PREFETCH_THREADS)]

    def submit() -> None:
        task = _Opened(list(paths)) if paths else None
        if task is not None:
            tasks.put(task)
        pending.extend((path, entry, task, index) for path, entry, index in current)
        current.clear()
        paths.clear()

    def given() -> Walked:
        path, entry, task, index = pending.popleft()
        if index < 0 or task is None:
            return path, entry, None
        return path, entry, task.result()[index]

    for thread in threads:
        thread.start()
    try:
        for path, entry in items:
            if entry.kind is Kind.FILE:
                current.append((path, entry, len(paths)))
                paths.append(objects.file_path(entry.digest, entry.meta))
                files_pending += 1
            else:
                current.append((path, entry, -1))
            if len(paths) == AHEAD_BATCH:
                submit()
            while files_pending - len(paths) > AHEAD_FILES:
                walked = given()
                files_pending -= walked[1].kind is Kind.FILE
                yield walked
        submit()
        while pending:
            yield given()
    finally:
        for _thread in threads:
            tasks.put(None)
        for thread in threads:
            thread.join()
        for _path, _entry, task, index in pending:
            if task is not None and index >= 0 and task.error is None:
                fd = task.fds[index]
                if fd is not None:
                    os.close(fd)


def _write_tree(objects: ObjectStore, commit: Commit, writer: TarWriter, stats: ExportStats
                ) -> None:
    """Every member of ``commit``'s tree, then the end of the archive."""
    writer.member(b".", Kind.DIR, commit.root_meta)
    stats.dirs += 1
    with contextlib.closing(_ahead(objects, commit.root_tree)) as walked:
        for path, entry, fd in walked:
            if entry.kind is Kind.FILE:
                try:
                    _export_file(objects, writer, path, entry, fd)
                finally:
                    if fd is not None:
                        os.close(fd)
                stats.files += 1
                stats.content_bytes += entry.size
            elif entry.kind is Kind.DIR:
                writer.member(path, Kind.DIR, entry.meta)
                stats.dirs += 1
            else:
                writer.member(path, Kind.SYMLINK, entry.meta, target=entry.target)
                stats.symlinks += 1
    writer.finish()


def export_tar(objects: ObjectStore, commit: Commit, out: BinaryIO, *, zstd_level: int | None = None
               ) -> ExportStats:
    """Write ``commit``'s tree to ``out`` as a deterministic tar (zstd-compressed at
    ``zstd_level`` when given); return counts and the SHA-256 of the bytes written."""
    stats = ExportStats()
    output = _Output(out)
    compressor = None
    sink: _Output | zstandard.ZstdCompressionWriter = output
    if zstd_level is not None:
        import zstandard  # noqa: PLC0415 - see the top of the module
        # Single-threaded, no content size (a stream), checksum on: a pure function of
        # the tar bytes and the level, for one libzstd version.
        params = zstandard.ZstdCompressor(level=zstd_level, write_checksum=True, write_content_size=False,
                                          write_dict_id=False, threads=0)
        compressor = sink = params.stream_writer(output, closefd=False)  # type: ignore[arg-type]
    writer = TarWriter(sink, commit.timestamp)
    try:
        _write_tree(objects, commit, writer, stats)
        if compressor is not None:
            compressor.flush(FLUSH_FRAME)
    except BaseException:
        output.close(failed=True)
        raise
    output.close()
    out.flush()
    stats.archive_bytes = output.size
    stats.sha256 = output.sha256.hexdigest()
    return stats

