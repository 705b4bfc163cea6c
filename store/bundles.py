"""Object bundles: many small objects (trees, inline files) in one file.

A pack's import writes its trees and inline files into one bundle instead of one
inode each (docs/FORMAT.md, "Object bundles").  A bundle is
``bundles/<SHA-256 of the file>.bundle``, written once (``BundleWriter``, streamed
to a staging file, renamed in by ``store.transaction`` when complete and synced)
and never modified; only prune deletes one.  Layout (little-endian)::

    data     each record's meta bytes (Meta.encode(); files only) then its content
    table    count records "<B32s32sQIQ": kind (1 tree, 2 file), id, meta_key,
             offset (of the meta bytes), meta_len, size; sorted by (kind, id, meta_key)
    footer   "<8sQQ": magic, count, table offset

Everything is checked before use (``read_table``): a bad bundle is ObjectCorrupt
naming it, never another exception.  Content read for a caller is checked too
(``BundleIndex.read``): a tree's SHA-256, a file's fs-verity digest and that its
metadata bytes hash to the record's meta key and decode.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import os
import re
import struct
import threading
import time
from collections.abc import Iterator

from .codec import Reader
from .errors import FormatError, ObjectCorrupt
from .fsverity import digest_bytes
from .ids import RawId
from .model import Meta, decode_meta
from .record import Frozen

MAGIC = b"STBUNDL1"
RECORD = struct.Struct("<B32s32sQIQ")
FOOTER = struct.Struct("<8sQQ")
TREE = 1
FILE = 2
KINDS = {TREE: "tree", FILE: "file"}
KIND_CODES = {"tree": TREE, "file": FILE}
NO_META_KEY = bytes(32)
SUFFIX = ".bundle"
NAME = re.compile(r"[0-9a-f]{64}\.bundle")
FLUSH_AT = 1 << 20  # a writer's buffer is written out when it reaches this
RECENT_NS = 2_000_000_000  # a directory changed this recently may change again unseen in its mtime
_KEY_LEN = 65  # kind, id and meta key: the first bytes of a record, its sort key

Key = tuple[int, bytes, bytes]  # (kind code, id, meta key)


class BundledObject(Frozen):
    """One record of a bundle: ``kind`` "tree" or "file", its ``id`` (a tree's SHA-256, a
    file's fs-verity digest), ``meta_key`` (a file's raw Meta key, zeros for a tree), the
    ``bundle`` file and where the record is in it."""

    __slots__ = ("kind", "id", "meta_key", "bundle", "offset", "meta_len", "size")
    _fields = __slots__
    kind: str
    id: RawId
    meta_key: bytes
    bundle: str
    offset: int
    meta_len: int
    size: int

    def __init__(self, kind: str, id: RawId, meta_key: bytes, bundle: str,  # noqa: A002
                 offset: int, meta_len: int, size: int) -> None:
        self._set_fields(kind, id, meta_key, bundle, offset, meta_len, size)


def _corrupt(path: str, message: str) -> ObjectCorrupt:
    return ObjectCorrupt(f"bundle {message}", path=path)


def read_table(fd: int, path: str) -> list[tuple[int, bytes, bytes, int, int, int]]:
    """The checked table of the bundle open at ``fd`` (its records as tuples: kind code, id,
    meta key, offset, meta_len, size): one read of footer and table.  Raises ObjectCorrupt
    naming ``path`` for anything a writer would not have written."""
    size = os.fstat(fd).st_size
    if size < FOOTER.size:
        raise _corrupt(path, f"is {size} bytes, shorter than its footer")
    magic, count, table_at = FOOTER.unpack(os.pread(fd, FOOTER.size, size - FOOTER.size))
    if magic != MAGIC:
        raise _corrupt(path, f"footer has magic {magic!r}, not {MAGIC!r}")
    data_end = size - FOOTER.size
    if count > data_end // RECORD.size or table_at != data_end - count * RECORD.size:
        raise _corrupt(path, f"table of {count} records at offset {table_at} does not end at the "
                             f"footer (offset {data_end})")
    table = os.pread(fd, count * RECORD.size, table_at) if count else b""
    if len(table) != count * RECORD.size:
        raise _corrupt(path, "table is truncated")
    records = list(RECORD.iter_unpack(table))
    previous = b""
    for i, (kind, _id, meta_key, offset, meta_len, length) in enumerate(records):
        at = i * RECORD.size
        key = table[at:at + _KEY_LEN]
        if key <= previous:
            raise _corrupt(path, f"record {i} is not sorted after the one before it (or repeats it)")
        previous = key
        if kind not in KINDS:
            raise _corrupt(path, f"record {i} has kind {kind}, not 1 (tree) or 2 (file)")
        if kind == TREE and (meta_len or meta_key != NO_META_KEY):
            raise _corrupt(path, f"record {i} is a tree with metadata")
        if offset + meta_len + length > table_at:
            raise _corrupt(path, f"record {i} (offset {offset}, {meta_len} + {length} bytes) "
                                 f"is not inside the data (which ends at offset {table_at})")
    return records


def read_records(path: str) -> list[BundledObject]:
    """Every record of the bundle at ``path``, checked as ``read_table`` checks them."""
    fd = _open(path)
    try:
        return [BundledObject(KINDS[kind], RawId(raw), meta_key, path, offset, meta_len, size)
                for kind, raw, meta_key, offset, meta_len, size in read_table(fd, path)]
    finally:
        os.close(fd)


def _open(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


def check_content(path: str, kind: int, raw: bytes, meta_key: bytes, record: bytes, meta_len: int
                  ) -> bytes:
    """The content of a record whose bytes (meta and content) are ``record``, after checking
    them against the record's id and meta key; ObjectCorrupt naming the bundle otherwise."""
    content = record[meta_len:]
    if kind == TREE:
        got = hashlib.sha256(content).digest()
        if not hmac.compare_digest(got, raw):
            raise ObjectCorrupt(f"tree {raw.hex()} in the bundle is corrupt: its bytes hash to "
                                f"{got.hex()}", expected=raw.hex(), got=got.hex(), object_id=raw.hex(),
                                path=path)
        return content
    meta = record[:meta_len]
    got_key = hashlib.sha256(meta).digest()
    if not hmac.compare_digest(got_key, meta_key):
        raise ObjectCorrupt(f"file {raw.hex()} in the bundle is corrupt: its metadata hashes to "
                            f"{got_key.hex()}, not its key {meta_key.hex()}", expected=meta_key.hex(),
                            got=got_key.hex(), object_id=raw.hex(), path=path)
    reader = Reader(meta, f"metadata of file {raw.hex()}")
    try:
        decode_meta(reader)
        if reader.remaining():
            raise reader.fail(f"{reader.remaining()} bytes after the metadata")
    except FormatError as err:
        raise ObjectCorrupt(f"file {raw.hex()} in the bundle is corrupt: {err}", object_id=raw.hex(),
                            path=path) from err
    got = digest_bytes(content)
    if not hmac.compare_digest(got, raw):
        raise ObjectCorrupt(f"file {raw.hex()} in the bundle is corrupt: its content has digest "
                            f"{got.hex()}", expected=raw.hex(), got=got.hex(), object_id=raw.hex(),
                            path=path)
    return content


def check_bundle(path: str) -> Iterator[tuple[BundledObject | None, str | None]]:
    """fsck of one bundle: (record, problem or None) for each record; (None, problem) for the
    whole file (its SHA-256 is not its name, its table is bad: then no records follow)."""
    try:
        fd = _open(path)
    except OSError as err:
        yield None, f"unreadable: {err.strerror}"
        return
    try:
        sha = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, FLUSH_AT, offset):
            sha.update(chunk)
            offset += len(chunk)
        name = os.path.basename(path)
        if NAME.fullmatch(name) and sha.hexdigest() != name[:64]:
            yield None, f"bundle content changed: its SHA-256 is {sha.hexdigest()}"
        try:
            table = read_table(fd, path)
        except ObjectCorrupt as err:
            yield None, err.detail()
            return
        for kind, raw, meta_key, at, meta_len, size in table:
            record = BundledObject(KINDS[kind], RawId(raw), meta_key, path, at, meta_len, size)
            data = os.pread(fd, meta_len + size, at)
            try:
                check_content(path, kind, raw, meta_key, data, meta_len)
            except ObjectCorrupt as err:
                yield record, err.detail()
                continue
            yield record, None
    except OSError as err:
        yield None, f"unreadable: {err.strerror}"
    finally:
        os.close(fd)


def _mtime(directory: str) -> int | None:
    try:
        return os.stat(directory).st_mtime_ns
    except OSError:
        return None


def bundle_names(directory: str) -> list[str]:
    """The names in the bundles directory, sorted (none when it does not exist)."""
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


Location = tuple[str, int, int, int]  # bundle path, offset, meta_len, size


class BundleIndex:
    """Every record of every bundle in ``directory``, by (kind code, id, meta key): loaded
    on first use (one read of each footer and table), again when a lookup misses and the
    directory's listing changed, or a read finds a bundle gone.  A bundle whose table is bad
    is left out (``bad`` names it and its error)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._names: list[str] | None = None
        self._mtime: int | None = None  # of the directory, before it was listed
        self._records: dict[Key, Location] = {}
        self.bad: dict[str, ObjectCorrupt] = {}
        self._fds: dict[str, int] = {}

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass

    def _load(self, names: list[str], mtime: int | None) -> None:
        """Index the bundles ``names``, listed after the directory had ``mtime``."""
        self._mtime = mtime
        records: dict[Key, Location] = {}
        bad: dict[str, ObjectCorrupt] = {}
        for name in names:
            if not name.endswith(SUFFIX):
                continue
            path = f"{self.directory}/{name}"
            try:
                fd = _open(path)
            except FileNotFoundError:
                continue
            except OSError as err:
                bad[path] = _corrupt(path, f"cannot be opened: {err.strerror}")
                continue
            try:
                table = read_table(fd, path)
            except ObjectCorrupt as err:
                bad[path] = err
                continue
            except OSError as err:
                bad[path] = _corrupt(path, f"cannot be read: {err.strerror}")
                continue
            finally:
                os.close(fd)
            for kind, raw, meta_key, offset, meta_len, size in table:
                records.setdefault((kind, raw, meta_key), (path, offset, meta_len, size))
        self._records = records
        self.bad = bad
        self._names = names
        for path in [p for p in self._fds if os.path.basename(p) not in names]:
            os.close(self._fds.pop(path))

    def _ensure(self) -> None:
        if self._names is None:
            with self._lock:
                if self._names is None:
                    self._load(*self._listed())

    def _listed(self) -> tuple[list[str], int | None]:
        mtime = _mtime(self.directory)
        return bundle_names(self.directory), mtime

    def reload(self) -> None:
        """Read the directory again (after a writer published a bundle, or prune removed one)."""
        with self._lock:
            self._load(*self._listed())

    def _reload_if_changed(self) -> bool:
        """Load again when the directory changed since it was listed: its mtime differs, or is
        so recent that a change within the same clock tick could hide behind it."""
        mtime = _mtime(self.directory)
        if mtime == self._mtime and (mtime is None or time.time_ns() - mtime > RECENT_NS):
            return False  # still no directory, or one unchanged for a while
        names = bundle_names(self.directory)
        with self._lock:
            if names == self._names:
                self._mtime = mtime
                return False
            self._load(names, mtime)
        return True

    def find(self, key: Key) -> Location | None:
        """Where the record ``key`` is, or None."""
        self._ensure()
        found = self._records.get(key)
        if found is None and self._reload_if_changed():
            found = self._records.get(key)
        return found

    def records(self) -> dict[Key, Location]:
        self._ensure()
        return self._records

    def names(self) -> list[str]:
        self._ensure()
        assert self._names is not None
        return self._names

    def read(self, key: Key) -> bytes | None:
        """The checked content of record ``key``; None when no bundle holds it."""
        for _attempt in range(2):
            found = self.find(key)
            if found is None:
                return None
            path, offset, meta_len, size = found
            try:
                data = os.pread(self._fd(path), meta_len + size, offset)
            except FileNotFoundError:  # prune removed the bundle: look again
                self.reload()
                continue
            if len(data) != meta_len + size:
                raise _corrupt(path, f"was truncated: record at offset {offset} ends past its end")
            return check_content(path, key[0], key[1], key[2], data, meta_len)
        return None

    def _fd(self, path: str) -> int:
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    fd = self._fds[path] = _open(path)
        return fd


class BundleWriter:
    """A bundle being written to ``path``: records appended as they come (buffered, about
    FLUSH_AT bytes a write), the table kept in memory and written by ``finish``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        self._buffer = bytearray()
        self._offset = 0  # where the next record starts
        self._sha = hashlib.sha256()
        self._table: list[tuple[int, bytes, bytes, int, int, int]] = []
        self.broken = False  # a write failed: the file does not hold what the table says

    def __len__(self) -> int:
        return len(self._table)

    def add(self, kind: int, raw: bytes, meta_key: bytes, meta: bytes, content: bytes) -> None:
        """Append one record (the caller has not added ``(kind, raw, meta_key)`` before)."""
        self._table.append((kind, raw, meta_key, self._offset, len(meta), len(content)))
        self._offset += len(meta) + len(content)
        self._buffer += meta
        if len(content) >= FLUSH_AT:  # a large tree: written from where it is, not copied
            self._flush()
            self._write(content)
            return
        self._buffer += content
        if len(self._buffer) >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            try:
                self._write(self._buffer)
            finally:
                self._buffer.clear()

    def _write(self, data: bytes | bytearray) -> None:
        if self.broken:
            raise OSError(errno.EIO, "an earlier write of the bundle failed", self.path)
        self.broken = True  # until the whole of ``data`` is written
        self._sha.update(data)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        view.release()
        self.broken = False

    def finish(self) -> str:
        """Write the table and footer and close the file; return its SHA-256 (hex), its name."""
        self._table.sort(key=lambda record: record[:3])
        for record in self._table:
            self._buffer += RECORD.pack(*record)
        self._buffer += FOOTER.pack(MAGIC, len(self._table), self._offset)
        self._flush()
        os.fchmod(self.fd, 0o444)
        self.close()
        return self._sha.hexdigest()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def meta_key_of(meta: Meta) -> bytes:
    """A file record's meta key: the raw SHA-256 of ``meta.encode()``."""
    return hashlib.sha256(meta.encode()).digest()
