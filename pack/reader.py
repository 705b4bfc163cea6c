"""Reading a pack: the one place that parses untrusted pack bytes.

``PackReader`` reads the file front to back exactly once per pass, hashing
every byte.  Opening checks the header, the commit (its id and encoding), the
ref, the frame tables, that the sections add up to the file's length, and the
whole manifest (names, order, parents, tree ids, root tree against the
commit).  ``entries()`` then streams the inline data one zstd frame at a time,
checking each inline file's fs-verity digest against its manifest entry, and
at the end that the file was not changed underneath (its SHA-256 equals
``expected_sha256`` when given: the digest its signatures were checked
against).  Every way a pack can be bad raises ``PackError`` with the offset
(or manifest path) at fault; memory is bounded by the manifest (at most
``format.MAX_MANIFEST``) plus one frame.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from store.commits import Commit, decode_commit
from store.errors import FormatError, PackError, RefError
from store.fsverity import digest_bytes
from store.ids import RawId, to_hex
from store.refs import check_ref_name

from . import format as fmt
from .manifest import Manifest, ManifestEntry, check_meta, decode_manifest

HASH_CHUNK = 1 << 20


def check_pack_file(path: str) -> None:
    """PackError unless ``path`` is a regular file (a missing pack is said to be missing)."""
    if not os.path.isfile(path):
        what = "not a regular file" if os.path.lexists(path) else "no such pack file"
        raise PackError(f"{what}", path=path)


def _open_regular(path: str) -> BinaryIO:
    """The pack at ``path`` opened for reading; PackError if it is missing or not a regular file."""
    try:
        # O_NONBLOCK: a FIFO given as a pack must be refused, not waited on.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        check_pack_file(path)
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PackError("not a regular file", offset=0, path=path)
    return os.fdopen(fd, "rb")


@contextlib.contextmanager
def named(path: str) -> Iterator[None]:
    """Let a PackError raised in the block start with the pack's ``path``, once: the reader's
    messages name an offset, only the caller knows which file the user gave."""
    try:
        yield
    except PackError as err:
        message = str(err)
        if message.startswith(f"{path}: "):
            raise
        raise PackError(f"{path}: {message.removeprefix('pack: ')}", offset=err.offset,
                        path=err.path if err.path is not None else path) from err


def _frame_tables(header: fmt.Header, tables: bytes) -> tuple[list[fmt.Frame], list[fmt.Frame], int]:
    """The manifest and data frames the tables describe, checked, and where the last one ends."""
    tables_at = header.tables_offset
    split = header.manifest_frames * fmt.FRAME_ENTRY_SIZE
    manifest_frames, end = fmt.parse_frame_table(
        tables[:split], header.manifest_frames, tables_at + header.tables_size, tables_at, "manifest")
    fmt.check_manifest_frames(manifest_frames, header, tables_at)
    data_frames, end = fmt.parse_frame_table(
        tables[split:], header.data_frames, end, tables_at + split, "data")
    fmt.check_data_frames(data_frames, header, tables_at + split)
    return manifest_frames, data_frames, end


def layout_sha256(path: str | os.PathLike[str]) -> bytes:
    """The SHA-256 of the pack at ``path``, hashed in the one pass that checks its layout: the
    header, the frame tables, and that the sections add up to the file's length exactly.

    What signing checks, so that a file that is not a pack is never signed; nothing is
    decompressed (``PackReader`` checks the rest).  PackError naming ``path`` otherwise.
    """
    path = os.fspath(path)
    with named(path), _open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        sha = hashlib.sha256()
        at = 0

        def read(n: int, what: str) -> bytes:
            nonlocal at
            data = handle.read(n)
            if len(data) != n:
                raise PackError(f"pack: truncated {what}: need {n} bytes at offset {at}, got "
                                f"{len(data)}", offset=at)
            sha.update(data)
            at += n
            return data

        header = fmt.parse_header(read(min(fmt.HEADER_SIZE, size), "header"), size)
        read(header.commit_len + header.ref_len, "commit and ref")
        _manifest, _data, end = _frame_tables(header, read(header.tables_size, "frame tables"))
        fmt.check_layout(end, size)
        while at < size:
            read(min(HASH_CHUNK, size - at), "frames")
        if handle.read(1):
            raise PackError(f"{path}: grew while it was read", offset=at)
        return sha.digest()


class PackReader:
    """An open pack whose header, commit and manifest have been checked.

    Use as a context manager.  ``commit``, ``commit_id``, ``ref`` and
    ``manifest`` are trustworthy as far as the pack's own consistency goes;
    whether the pack is *trusted* is ``pack.verify``'s business.
    """

    def __init__(self, path: str | os.PathLike[str], *, expected_sha256: bytes | None = None,
                 keep_trees: bool = False) -> None:
        self.path = os.fspath(path)
        self.expected_sha256 = expected_sha256
        self._handle: BinaryIO = _open_regular(self.path)
        self.size = os.fstat(self._handle.fileno()).st_size
        try:
            self._open(keep_trees)
        except BaseException:
            self._handle.close()
            raise

    def __enter__(self) -> PackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handle.close()

    # -- sequential, hashed reads ------------------------------------------------------
    def _read(self, n: int, what: str) -> bytes:
        data = self._handle.read(n)
        if len(data) != n:
            raise PackError(f"pack: truncated {what}: need {n} bytes at offset {self._pos}, "
                            f"got {len(data)}", offset=self._pos)
        self._sha.update(data)
        self._pos += n
        return data

    def _open(self, keep_trees: bool) -> None:
        self._pos = 0
        self._sha = hashlib.sha256()
        header = fmt.parse_header(self._read(min(fmt.HEADER_SIZE, self.size), "header"), self.size)
        self.header = header
        self.commit_bytes = self._read(header.commit_len, "commit")
        self.commit_id, self.commit = self._commit(self.commit_bytes)
        self.ref = self._ref(self._read(header.ref_len, "ref"))
        tables = self._read(header.tables_size, "frame tables")
        self._manifest_frames, self._data_frames, end = _frame_tables(header, tables)
        fmt.check_layout(end, self.size)
        self.manifest = self._manifest(keep_trees)
        self._data_at = self._pos
        self._sha_at_data = self._sha.copy()

    def _commit(self, data: bytes) -> tuple[RawId, Commit]:
        got = hashlib.sha256(data).digest()
        if not hmac.compare_digest(got, self.header.commit_id):
            raise PackError(f"pack: commit id mismatch: the header says {to_hex(self.header.commit_id)}, "
                            f"the commit hashes to {got.hex()} at offset {fmt.HEADER_SIZE}",
                            offset=fmt.HEADER_SIZE)
        try:
            commit = decode_commit(data, "pack commit")
        except FormatError as err:
            at = fmt.HEADER_SIZE + getattr(err, "offset", 0)
            raise PackError(f"pack: {err} (pack offset {at})", offset=at) from err
        check_meta(commit.root_meta, "commit root directory", fmt.HEADER_SIZE)
        return RawId(got), commit

    def _ref(self, raw: bytes) -> str:
        at = fmt.HEADER_SIZE + self.header.commit_len
        try:
            return check_ref_name(raw.decode("ascii"))
        except (UnicodeDecodeError, RefError) as err:
            raise PackError(f"pack: invalid ref {raw!r} at offset {at}", offset=at) from err

    def _manifest(self, keep_trees: bool) -> Manifest:
        dctx = fmt.decompressor()
        data = bytearray()
        for i, frame in enumerate(self._manifest_frames):
            data += fmt.decompress_frame(dctx, self._read(frame.compressed, f"manifest frame {i}"),
                                         frame, f"manifest frame {i}")
        manifest = decode_manifest(bytes(data), self.header.entry_count, self.header.inline_max,
                                   keep_trees=keep_trees)
        if manifest.root_tree != self.commit.root_tree:
            raise PackError(f"pack: the manifest's root tree is {to_hex(manifest.root_tree)}, the "
                            f"commit's is {to_hex(self.commit.root_tree)}", offset=fmt.HEADER_SIZE)
        if manifest.data_size != self.header.data_size:
            raise PackError(f"pack: the manifest's inline files hold {manifest.data_size} bytes, "
                            f"the header says {self.header.data_size}", offset=70)
        return manifest

    # -- the data section ---------------------------------------------------------------
    def entries(self) -> Iterator[tuple[ManifestEntry, bytes | None]]:
        """Every manifest row in order, with the bytes of each inline file (None otherwise).

        Streams the data section one frame at a time and checks each inline
        file's fs-verity digest.  When the generator is exhausted the whole
        file has been read, nothing follows it, and (with ``expected_sha256``)
        its SHA-256 matched: a caller must not rely on what it consumed until
        then.  May be called again for another pass.
        """
        self._handle.seek(self._data_at)
        self._pos = self._data_at
        self._sha = self._sha_at_data.copy()
        dctx = fmt.decompressor()
        frames = iter(enumerate(self._data_frames))
        current = b""
        current_at = self._data_at  # file offset of the frame being consumed
        at = 0
        used = 0
        for row in self.manifest.entries:
            if not row.inline:
                yield row, None
                continue
            size = row.entry.size
            if at + size > len(current):
                if at != len(current):
                    raise PackError(f"pack: inline file {row.path!r} straddles data frames",
                                    offset=current_at, path=row.path)
                following = next(frames, None)
                if following is None:  # cannot happen when data_size adds up; refuse anyway
                    raise PackError(f"pack: no data frame left for {row.path!r}",
                                    offset=self._pos, path=row.path)
                index, frame = following
                if index and len(current) + size <= fmt.FRAME_MAX:
                    raise PackError(f"pack: data frame {index} starts although {row.path!r} fits "
                                    f"the previous one (frames are filled greedily)",
                                    offset=frame.offset, path=row.path)
                raw = self._read(frame.compressed, f"data frame {index}")
                current = fmt.decompress_frame(dctx, raw, frame, f"data frame {index}")
                used = index + 1
                current_at = frame.offset
                at = 0
                if size > len(current):
                    raise PackError(f"pack: inline file {row.path!r} of {size} bytes overruns "
                                    f"data frame {index}", offset=frame.offset, path=row.path)
            data = current[at:at + size]
            at += size
            got = digest_bytes(data)
            if not hmac.compare_digest(got, row.entry.digest):
                raise PackError(f"pack: inline file {row.path!r}: fs-verity digest {got.hex()}, "
                                f"the manifest says {to_hex(row.entry.digest)} (data frame at "
                                f"offset {current_at})", offset=current_at, path=row.path)
            yield row, data
        if used != len(self._data_frames) or at != len(current):
            raise PackError("pack: data frames left unused after the last inline file",
                            offset=self._pos)
        if self._handle.read(1):
            raise PackError(f"{self.path}: grew while it was read", offset=self._pos)
        if self.expected_sha256 is not None and not hmac.compare_digest(
                self._sha.digest(), self.expected_sha256):
            raise PackError(f"{self.path}: changed while it was read: its bytes no longer "
                            f"hash to the verified digest {self.expected_sha256.hex()}", offset=0)

    def check_data(self) -> None:
        """Read the whole data section, checking every inline file (see ``entries``)."""
        for _row in self.entries():
            pass

    def sha256(self) -> bytes:
        """The SHA-256 of the bytes read by the last complete pass (call after ``check_data``)."""
        return self._sha.digest()


def open_pack(path: str | os.PathLike[str], *, expected_sha256: bytes | None = None,
              keep_trees: bool = False) -> PackReader:
    """Open and check a pack (see ``PackReader``); raises PackError on any fault."""
    return PackReader(path, expected_sha256=expected_sha256, keep_trees=keep_trees)
