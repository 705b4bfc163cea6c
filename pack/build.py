"""Building a pack from a commit in a repository.

The same commit, ref, ``inline_max`` and ``level`` always give the same bytes
(with the same zstd library): rows come in ``store.walk`` order, frames are
cut by fixed rules, the compressor has one fixed configuration, each frame's
level follows from its content (``_Frames``), and nothing of the build machine
or time is recorded.  The pack names the EROFS image its tree makes (pack.image, recipe
1), built here from the same rows and bytes.  Inline files are read back from
their objects and their fs-verity digests checked before they are packed, so
a pack never carries a corrupt object under a vendor signature.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from store.atomic import atomic_file
from store.errors import ObjectCorrupt, ObjectMissing, PackError, UsageError
from store.fsverity import digest_bytes
from store.ids import RawId, to_hex
from store.model import Kind
from store.names import show
from store.refs import check_ref_name
from store.repo import Repository
from store.walk import walk

from . import format as fmt
from .image import ImageTree, image_ref
from .manifest import ManifestEntry, check_meta, encode_row, plan_manifest

# Why 4096 and 19: see docs/FORMAT.md, section 7 ("Choosing the inline threshold").
DEFAULT_INLINE_MAX = 4096
# The threshold of a pack that ships (``publish``, ``image build``): files of at most 16 KiB
# travel inside it.  Over HTTP each large object costs a request (and on a device an inode:
# an imported pack's files go into one bundle, store.bundles); Debian minbase: 1,255 objects
# to fetch instead of 1,958, a pack of 5.2 MB instead of 2.6 MB.  32 KiB fetched fewer still
# but made an update's pack delta twice as large.  One value for both, so that a device
# installed from an image holds the very pack the site publishes (deltas apply to it).
# docs/FORMAT.md, "Choosing the inline threshold".
RELEASE_INLINE_MAX = 16384
DEFAULT_LEVEL = 19
MAX_LEVEL = zstandard.MAX_COMPRESSION_LEVEL
COPY_CHUNK = 1 << 20
# A frame is written at FAST_LEVEL unless the pack's level makes it at least MIN_GAIN
# smaller: a device applying a delta compresses every changed frame again, at 0.2 s per MiB
# at level 19 against 0.01 s at level 9 (docs/FORMAT.md section 12, "Frame levels").
FAST_LEVEL = 9
MIN_GAIN = 0.25


@dataclass(frozen=True)
class BuildResult:
    """What was written: the pack's path, size and SHA-256, and what it holds."""

    path: str
    commit_id: RawId
    ref: str
    size: int
    sha256: bytes
    entries: int
    manifest_size: int
    inline_files: int
    inline_bytes: int
    large_files: int
    large_bytes: int
    image: fmt.ImageRef  # the identity of the tree's EROFS image (pack.image), signed with it


def _read_inline(repo: Repository, row: ManifestEntry) -> bytes:
    """The content of an inline file's object (loose, else bundled), checked against its
    size and digest."""
    entry = row.entry
    path = repo.objects.file_path(entry.digest, entry.meta)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        bundled = repo.objects.bundled_file(entry.digest, entry.meta)
        if bundled is None:
            raise ObjectMissing(f"object {to_hex(entry.digest)} of {show(row.path)} is missing",
                                object_id=to_hex(entry.digest), path=path) from None
        data = bundled
    else:
        try:
            data = os.read(fd, entry.size + 1)
            while len(data) <= entry.size and (more := os.read(fd, entry.size + 1 - len(data))):
                data += more
        finally:
            os.close(fd)
    got = digest_bytes(data)
    if len(data) != entry.size or not hmac.compare_digest(got, entry.digest):
        raise ObjectCorrupt(f"object {to_hex(entry.digest)} of {show(row.path)} is corrupt "
                            f"({len(data)} bytes, digest {got.hex()})",
                            expected=to_hex(entry.digest), got=got.hex(),
                            object_id=to_hex(entry.digest), path=path)
    return data


class _Frames:
    """Frames compressed at the pack's level where it gains at least MIN_GAIN over FAST_LEVEL,
    else at FAST_LEVEL (rebuilding them from a delta costs little where the level gains
    little)."""

    def __init__(self, level: int) -> None:
        self.cctx = fmt.compressor(level)
        self.fast = fmt.compressor(FAST_LEVEL) if level > FAST_LEVEL else None

    def compress(self, content: bytes) -> bytes:
        frame: bytes = self.cctx.compress(content)
        if self.fast is not None:
            fast: bytes = self.fast.compress(content)
            if len(frame) > len(fast) * (1 - MIN_GAIN):
                return fast
        return frame


class _DataFrames:
    """Inline files packed greedily into frames of at most FRAME_MAX bytes, spooled to a file."""

    def __init__(self, cctx: _Frames, spool: BinaryIO) -> None:
        self.cctx = cctx
        self.spool = spool
        self.table: list[tuple[int, int]] = []
        self.pending = bytearray()

    def add(self, data: bytes) -> None:
        if len(self.pending) + len(data) > fmt.FRAME_MAX:
            self.flush()
        self.pending += data

    def flush(self) -> None:
        if self.pending:
            frame = self.cctx.compress(bytes(self.pending))
            self.spool.write(frame)
            self.table.append((len(frame), len(self.pending)))
            self.pending = bytearray()


def build_pack(repo: Repository, commit_id: RawId, ref: str, out: str | os.PathLike[str], *,
               inline_max: int = DEFAULT_INLINE_MAX, level: int = DEFAULT_LEVEL) -> BuildResult:
    """Write the pack of ``commit_id`` for ``ref`` to ``out`` (atomically); files up to
    ``inline_max`` bytes go inline.  Raises UsageError on bad options, ObjectMissing or
    ObjectCorrupt for a bad inline object, PackError if the tree exceeds a pack limit,
    holds xattrs Linux will not set (``store.inode_rules``: a reader would refuse it) or
    cannot be an EROFS image (pack.image)."""
    if not 0 <= inline_max <= fmt.MAX_INLINE_MAX:
        raise UsageError(f"the inline threshold must be in 0..{fmt.MAX_INLINE_MAX} bytes, "
                         f"got {inline_max}")
    if not 1 <= level <= MAX_LEVEL:
        raise UsageError(f"the zstd level must be in 1..{MAX_LEVEL}, got {level}")
    ref_bytes = check_ref_name(ref).encode("ascii")
    commit_bytes = repo.objects.read_raw("commit", commit_id)
    commit = repo.objects.read_commit(commit_id)
    rows = list(plan_manifest(walk(repo.objects, commit.root_tree), inline_max))
    if len(rows) > fmt.MAX_ENTRIES:
        raise PackError(f"the tree has {len(rows)} paths, a pack holds at most {fmt.MAX_ENTRIES}")
    # What a reader would refuse is not packed (nor signed): metadata Linux will not set.
    check_meta(commit.root_meta, Kind.DIR, None)
    for row in rows:
        check_meta(row.entry.meta, row.entry.kind, row.path)
    manifest = b"".join(encode_row(row) for row in rows)
    if len(manifest) > fmt.MAX_MANIFEST:
        raise PackError(f"the manifest would be {len(manifest)} bytes, a pack allows {fmt.MAX_MANIFEST}")
    cctx = _Frames(level)
    manifest_frames = [cctx.compress(manifest[i:i + fmt.FRAME_MAX])
                       for i in range(0, len(manifest), fmt.FRAME_MAX)]
    out = os.fspath(out)
    inline = [row for row in rows if row.inline]
    tree = ImageTree(commit.root_meta)
    with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(out))) as spool:
        frames = _DataFrames(cctx, spool)
        for row in rows:
            data = _read_inline(repo, row) if row.inline else None
            if data is not None:
                frames.add(data)
            tree.add(row, data)
        frames.flush()
        image = image_ref(tree.image())
        objects = tree.objects
        del tree
        data_size = sum(row.entry.size for row in inline)
        header = fmt.Header(inline_max, commit.id(), len(commit_bytes), len(ref_bytes), len(rows),
                            len(manifest), len(manifest_frames), data_size, len(frames.table))
        sha = hashlib.sha256()
        size = 0
        with atomic_file(out, 0o644) as handle:
            def emit(chunk: bytes) -> None:
                nonlocal size
                handle.write(chunk)
                sha.update(chunk)
                size += len(chunk)

            emit(header.encode())
            emit(commit_bytes)
            emit(ref_bytes)
            emit(image.encode())
            emit(fmt.encode_image_objects(objects))
            emit(fmt.encode_frame_table([(len(f), min(fmt.FRAME_MAX, len(manifest) - i * fmt.FRAME_MAX))
                                         for i, f in enumerate(manifest_frames)]))
            emit(fmt.encode_frame_table(frames.table))
            for frame in manifest_frames:
                emit(frame)
            spool.seek(0)
            while chunk := spool.read(COPY_CHUNK):
                emit(chunk)
    large = [row for row in rows if row.is_large]
    return BuildResult(out, commit_id, ref, size, sha.digest(), len(rows), len(manifest),
                       len(inline), data_size, len(large), sum(r.entry.size for r in large), image)
