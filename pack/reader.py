"""Reading a pack: the one place that parses untrusted pack bytes.

``PackReader`` reads the file front to back exactly once per pass, hashing
every byte.  Opening checks the header, the commit (its id and encoding), the
ref, the image identity and the image objects (format versions 2 and 3), the
frame tables, that the sections add up to the file's length, and (unless
``check_manifest=False``: then on the first use of ``manifest``) the whole
manifest (names, order, parents, tree ids, root tree against the commit).
``entries()`` then streams the inline data one zstd frame at a time,
checking each inline file's fs-verity digest against its manifest entry, and
at the end that the file was not changed underneath (its SHA-256 equals
``expected_sha256`` when given: the digest its signatures were checked
against).  Every way a pack can be bad raises ``PackError`` with the offset at
fault, about the pack file (``path``).

Memory (the bound is stated in docs/FORMAT.md, "Memory"): the manifest is
decoded one frame at a time and its rows are not kept; ``manifest.entries``
decodes them again on each iteration from the file, checking that each
compressed manifest frame still has the SHA-256 it had when it was checked.
Only a small manifest (``ROW_CACHE_ROWS``, ``ROW_CACHE_BYTES``) keeps its rows,
so that the several passes of a deploy over a usual tree cost one decoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from store.commits import Commit, decode_commit
from store.errors import FormatError, PackError, RefError
from store.fsverity import digest_bytes
from store.ids import RawId, to_hex
from store.model import Kind
from store.names import show
from store.record import Frozen
from store.refs import check_ref_name

from . import format as fmt
from .manifest import Manifest, ManifestEntry, TreeSink, check_manifest, check_meta, iter_rows

HASH_CHUNK = 1 << 20
# A manifest of at most ROW_CACHE_ROWS rows and ROW_CACHE_BYTES bytes keeps its decoded
# rows, so that the several passes of a deploy over a usual tree (up to some 250,000
# paths) cost one decoding: a row costs about 340 bytes of Python objects plus its path,
# so at most about 85 MiB + ROW_CACHE_BYTES.  A larger one is decoded again on each pass.
ROW_CACHE_ROWS = 1 << 18
ROW_CACHE_BYTES = 32 << 20
# What reading any pack may take above the interpreter's own memory (docs/FORMAT.md,
# "Memory"): the open directories' entries (at most the manifest) and, when they are
# stored (import), a copy of the tree object being completed, each at most MAX_MANIFEST,
# with the kept rows of a small manifest (see above) and a few frames in the remaining third.
MEMORY_BOUND = 3 * fmt.MAX_MANIFEST


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
def named(path: str | os.PathLike[str]) -> Iterator[None]:
    """A PackError raised in the block without a subject is about the pack ``path``."""
    try:
        yield
    except PackError as err:
        err.located(os.fspath(path))
        raise


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
                raise PackError(f"truncated {what}: need {n} bytes at offset {at}, got "
                                f"{len(data)}", offset=at)
            sha.update(data)
            at += n
            return data

        header = fmt.parse_header(read(min(fmt.HEADER_SIZE, size), "header"), size)
        read(header.commit_len + header.ref_len, "commit and ref")
        if header.has_image:
            fmt.parse_image(read(fmt.IMAGE_SIZE, "image identity"), header.image_offset)
        if header.has_image_objects:
            header = fmt.parse_image_count(read(fmt.IMAGE_COUNT_SIZE, "image object count"),
                                           header, size)
            fmt.parse_image_objects(read(header.image_count * fmt.IMAGE_OBJECT_SIZE,
                                         "image objects"), header)
        _manifest, _data, end = _frame_tables(header, read(header.tables_size, "frame tables"))
        fmt.check_layout(end, size)
        while at < size:
            read(min(HASH_CHUNK, size - at), "frames")
        if handle.read(1):
            raise PackError("grew while it was read", offset=at)
        return sha.digest()


def read_image_ref(path: str | os.PathLike[str]) -> fmt.ImageRef | None:
    """The image identity the pack at ``path`` names (None: format version 1), from its
    header alone: nothing else is checked, nor its signatures (prune keeps images by it).
    PackError naming ``path`` when the header or the identity does not parse."""
    path = os.fspath(path)
    with named(path), _open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        header = fmt.parse_header(handle.read(fmt.HEADER_SIZE), size)
        if not header.has_image:
            return None
        return fmt.parse_image(os.pread(handle.fileno(), fmt.IMAGE_SIZE, header.image_offset),
                               header.image_offset)


class PackReader:
    """An open pack whose header, commit and (unless ``check_manifest=False``) manifest have
    been checked.

    Use as a context manager.  ``commit``, ``commit_id``, ``ref``, ``image`` (the signed
    identity of the tree's EROFS image, pack.image; None in a version-1 pack),
    ``image_objects`` (the objects that image's stubs redirect to, pack.format.ImageObject;
    None before version 3) and ``manifest`` are trustworthy as far as the pack's own
    consistency goes; whether the pack is *trusted* is ``pack.verify``'s business (and that
    ``image_objects`` is what the manifest gives is checked by the passes that read the
    data: ``pack.importer``, ``pack.verify.check_whole``).  With ``check_manifest=False``
    the manifest is neither read nor decoded at open: the first use of ``manifest`` reads
    (by offset) and checks it exactly as opening would have.  ``on_tree`` gets every
    directory's tree object (id, encoding) while the manifest is checked, children first.
    Errors name the pack as ``name`` (default: ``path``; an importer reading its own copy
    names the file the user gave).
    """

    def __init__(self, path: str | os.PathLike[str], *, expected_sha256: bytes | None = None,
                 on_tree: TreeSink | None = None, name: str | os.PathLike[str] | None = None,
                 check_manifest: bool = True) -> None:
        self.path = os.fspath(path)
        self.name = os.fspath(name) if name is not None else self.path
        self.expected_sha256 = expected_sha256
        with named(self.name):
            self._handle: BinaryIO = _open_regular(self.path)
        self.size = os.fstat(self._handle.fileno()).st_size
        try:
            with named(self.name):
                self._open(on_tree, check_manifest)
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
            raise PackError(f"truncated {what}: need {n} bytes at offset {self._pos}, "
                            f"got {len(data)}", offset=self._pos)
        self._sha.update(data)
        self._pos += n
        return data

    def _open(self, on_tree: TreeSink | None, check_manifest: bool) -> None:
        self._pos = 0
        self._sha = hashlib.sha256()
        header = fmt.parse_header(self._read(min(fmt.HEADER_SIZE, self.size), "header"), self.size)
        self.header = header
        self.commit_bytes = self._read(header.commit_len, "commit")
        self.commit_id, self.commit = self._commit(self.commit_bytes)
        self.ref = self._ref(self._read(header.ref_len, "ref"))
        self.image: fmt.ImageRef | None = None
        self.image_objects: tuple[fmt.ImageObject, ...] | None = None
        if header.has_image:
            self.image = fmt.parse_image(self._read(fmt.IMAGE_SIZE, "image identity"),
                                         header.image_offset)
        if header.has_image_objects:
            header = self.header = fmt.parse_image_count(
                self._read(fmt.IMAGE_COUNT_SIZE, "image object count"), header, self.size)
            self.image_objects = fmt.parse_image_objects(
                self._read(header.image_count * fmt.IMAGE_OBJECT_SIZE, "image objects"), header)
        tables = self._read(header.tables_size, "frame tables")
        self._manifest_frames, self._data_frames, end = _frame_tables(header, tables)
        fmt.check_layout(end, self.size)
        # The manifest frames are read by offset when the manifest is checked (now, or on
        # the first use of ``manifest``), continuing this hash: the data pass starts after.
        self._sha_at_manifest = self._sha.copy()
        self._data_at = self._pos + sum(frame.compressed for frame in self._manifest_frames)
        self._on_tree = on_tree
        self._checked: Manifest | None = None
        if check_manifest:
            self._checked = self._check_manifest()

    @property
    def manifest(self) -> Manifest:
        """The checked manifest (checked on first use when opened with ``check_manifest=False``:
        PackError naming the pack then if it is bad)."""
        checked = self._checked
        if checked is None:
            with named(self.name):
                checked = self._checked = self._check_manifest()
        return checked

    def _commit(self, data: bytes) -> tuple[RawId, Commit]:
        got = hashlib.sha256(data).digest()
        if not hmac.compare_digest(got, self.header.commit_id):
            raise PackError(f"commit id mismatch: the header says {to_hex(self.header.commit_id)}, "
                            f"the commit hashes to {got.hex()} at offset {fmt.HEADER_SIZE}",
                            offset=fmt.HEADER_SIZE)
        try:
            commit = decode_commit(data, "pack commit")
        except FormatError as err:
            at = fmt.HEADER_SIZE + getattr(err, "offset", 0)
            raise PackError(f"{err} (pack offset {at})", offset=at) from err
        check_meta(commit.root_meta, Kind.DIR, None, fmt.HEADER_SIZE)
        return RawId(got), commit

    def _ref(self, raw: bytes) -> str:
        at = fmt.HEADER_SIZE + self.header.commit_len
        try:
            return check_ref_name(raw.decode("ascii"))
        except (UnicodeDecodeError, RefError) as err:
            raise PackError(f"invalid ref {show(raw)} at offset {at}", offset=at) from err

    def _check_manifest(self) -> Manifest:
        """Check the manifest, streamed: one frame read by offset (the data pass's position
        is untouched) and decompressed at a time, no row kept (unless it is small); hash the
        frames after what opening hashed, and remember each one's SHA-256 for later passes."""
        digests: list[bytes] = []
        sha = self._sha_at_manifest.copy()
        fd = self._handle.fileno()

        def checked_frames() -> Iterator[bytes]:
            dctx = fmt.decompressor()
            for i, frame in enumerate(self._manifest_frames):
                raw = os.pread(fd, frame.compressed, frame.offset)
                if len(raw) != frame.compressed:
                    raise PackError(f"truncated manifest frame {i}: need {frame.compressed} "
                                    f"bytes at offset {frame.offset}, got {len(raw)}",
                                    offset=frame.offset)
                sha.update(raw)
                digests.append(hashlib.sha256(raw).digest())
                yield fmt.decompress_frame(dctx, raw, frame, f"manifest frame {i}")

        header = self.header
        small = header.entry_count <= ROW_CACHE_ROWS and header.manifest_size <= ROW_CACHE_BYTES
        kept: list[ManifestEntry] | None = [] if small else None
        root_tree, data_size, counts = check_manifest(
            checked_frames(), header.entry_count, header.inline_max, on_tree=self._on_tree,
            keep=kept)
        self._frame_digests = digests
        self._sha_at_data = sha
        if root_tree != self.commit.root_tree:
            raise PackError(f"the manifest's root tree is {to_hex(root_tree)}, the "
                            f"commit's is {to_hex(self.commit.root_tree)}", offset=fmt.HEADER_SIZE)
        if data_size != header.data_size:
            raise PackError(f"the manifest's inline files hold {data_size} bytes, "
                            f"the header says {header.data_size}", offset=70)
        rows: Iterable[ManifestEntry] = kept if kept is not None else _Reread(self._rows)
        return Manifest(rows, header.entry_count, root_tree, data_size, **counts)

    def _reread_frames(self) -> Iterator[bytes]:
        """The decompressed manifest frames again, read by offset (the data pass's position
        is untouched), each checked against the digest it had when the manifest was checked."""
        dctx = fmt.decompressor()
        fd = self._handle.fileno()
        for i, (frame, digest) in enumerate(zip(self._manifest_frames, self._frame_digests,
                                                strict=True)):
            raw = os.pread(fd, frame.compressed, frame.offset)
            if not hmac.compare_digest(hashlib.sha256(raw).digest(), digest):
                raise PackError(f"changed while it was read: manifest frame {i} is not what "
                                f"was checked", offset=frame.offset, path=self.name)
            yield fmt.decompress_frame(dctx, raw, frame, f"manifest frame {i}")

    def _rows(self) -> Iterator[ManifestEntry]:
        with named(self.name):
            yield from iter_rows(self._reread_frames(), self.header.entry_count,
                                 self.header.inline_max)

    # -- the data section ---------------------------------------------------------------
    def entries(self) -> Iterator[tuple[ManifestEntry, bytes | None]]:
        """Every manifest row in order, with the bytes of each inline file (None otherwise).

        Streams the data section one frame at a time and checks each inline
        file's fs-verity digest.  When the generator is exhausted the whole
        file has been read, nothing follows it, and (with ``expected_sha256``)
        its SHA-256 matched: a caller must not rely on what it consumed until
        then.  May be called again for another pass.
        """
        with named(self.name):
            yield from self._entries()

    def _entries(self) -> Iterator[tuple[ManifestEntry, bytes | None]]:
        manifest = self.manifest  # checked first: that hashes its frames
        self._handle.seek(self._data_at)
        self._pos = self._data_at
        self._sha = self._sha_at_data.copy()
        dctx = fmt.decompressor()
        frames = iter(enumerate(self._data_frames))
        current = b""
        current_at = self._data_at  # file offset of the frame being consumed
        at = 0
        used = 0
        for row in manifest.entries:
            if not row.inline:
                yield row, None
                continue
            size = row.entry.size
            if at + size > len(current):
                shown = show(row.path)
                if at != len(current):
                    raise PackError(f"inline file {shown} straddles data frames",
                                    offset=current_at)
                following = next(frames, None)
                if following is None:  # cannot happen when data_size adds up; refuse anyway
                    raise PackError(f"no data frame left for {shown}", offset=self._pos)
                index, frame = following
                if index and len(current) + size <= fmt.FRAME_MAX:
                    raise PackError(f"data frame {index} starts although {shown} fits "
                                    f"the previous one (frames are filled greedily)",
                                    offset=frame.offset)
                raw = self._read(frame.compressed, f"data frame {index}")
                current = fmt.decompress_frame(dctx, raw, frame, f"data frame {index}")
                used = index + 1
                current_at = frame.offset
                at = 0
                if size > len(current):
                    raise PackError(f"inline file {shown} of {size} bytes overruns "
                                    f"data frame {index}", offset=frame.offset)
            data = current[at:at + size]
            at += size
            got = digest_bytes(data)
            if not hmac.compare_digest(got, row.entry.digest):
                raise PackError(f"inline file {show(row.path)}: fs-verity digest {got.hex()}, "
                                f"the manifest says {to_hex(row.entry.digest)} (data frame at "
                                f"offset {current_at})", offset=current_at)
            yield row, data
        if used != len(self._data_frames) or at != len(current):
            raise PackError("data frames left unused after the last inline file",
                            offset=self._pos)
        if self._handle.read(1):
            raise PackError("grew while it was read", offset=self._pos)
        if self.expected_sha256 is not None and not hmac.compare_digest(
                self._sha.digest(), self.expected_sha256):
            raise PackError(f"changed while it was read: its bytes no longer "
                            f"hash to the verified digest {self.expected_sha256.hex()}", offset=0)

    def check_data(self) -> None:
        """Read the whole data section, checking every inline file (see ``entries``)."""
        for _row in self.entries():
            pass


class _Reread(Frozen):
    """A large manifest's rows: decoded again from the pack file on each iteration."""

    __slots__ = ("decode",)
    _fields = __slots__
    decode: Callable[[], Iterator[ManifestEntry]]

    def __init__(self, decode: Callable[[], Iterator[ManifestEntry]]) -> None:
        self._set_fields(decode)

    def __iter__(self) -> Iterator[ManifestEntry]:
        return self.decode()
