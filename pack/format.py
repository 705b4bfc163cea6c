"""The pack file layout: header, frame tables, zstd frames; parse/serialize pairs and limits.

A pack (version 3) is, in this order and with nothing after it::

    header                 _HEADER below (82 bytes)
    commit                 the commit object's canonical bytes (store.commits)
    ref                    the ref the commit is for, ASCII (store.refs rules)
    image identity         _IMAGE below (42 bytes): the recipe, size and fs-verity digest of
                           the EROFS image the tree makes (pack.image); version 1 has none
    image objects          u32 count, then count x _IMAGE_OBJECT (72 bytes): the objects the
                           image's stubs redirect to (digest, meta key, size), in manifest
                           order of their first large file; versions 1 and 2 have none
    manifest frame table   manifest_frames x _FRAME
    data frame table       data_frames x _FRAME
    manifest frames        zstd frames; concatenated they are the manifest (pack.manifest)
    data frames            zstd frames; concatenated they are the inline files' bytes

Every frame is an independent zstd frame that declares its content size and
decompresses to at most ``FRAME_MAX`` bytes, so reading and unpacking need
one frame of memory at a time.  Manifest frames are cut every ``FRAME_MAX``
bytes; data frames hold whole files, filled greedily (a new frame starts only
when the next file does not fit), so no file straddles two frames.

This module checks everything that can be checked without decompressing:
length, magic, version, sizes against their limits, and that the sections add
up to the file's length exactly.  Every failure is a ``PackError`` carrying
the offset at fault.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING

from store.errors import PackError
from store.ids import RawId
from store.objects import keyed_relative_path
from store.record import Frozen

if TYPE_CHECKING:  # imported where frames are (de)compressed: a deploy that never does skips it
    import zstandard

MAGIC = b"SEALPACK"
VERSION = 3
SUPPORTED_VERSIONS = (1, 2, 3)
IMAGE_VERSION = 2  # the first version with the image identity
IMAGE_OBJECTS_VERSION = 3  # the first version with the image's object list
IMAGE_RECIPES = (1,)  # pack.image.RECIPE: the recipes a reader knows
MAX_IMAGE = 1 << 42  # an image's size: the inline data (MAX_DATA) and the metadata, rounded up

FRAME_MAX = 1 << 20  # decompressed bytes in one frame: the reader's memory per frame
MAX_INLINE_MAX = FRAME_MAX  # an inline file must fit one frame
MAX_COMMIT = 16 << 20  # a commit object; store.commits bounds its fields further
MAX_REF = 255  # store.refs.check_ref_name's limit
MAX_ENTRIES = 1 << 24  # paths in one tree
# The decompressed manifest: what bounds reading a pack's memory (pack.reader.MEMORY_BOUND,
# docs/FORMAT.md "Memory").  64 MiB is some 600,000 paths of a usual tree.
MAX_MANIFEST = 64 << 20
MAX_DATA = 1 << 40  # decompressed inline data; streamed, so only a sanity bound
# The smallest manifest row of a large file (pack.manifest): parent length u16, kind u8, name
# length u16, a one-byte name, mode, uid, gid, xattr count (IIIH), size and digest (Q32s),
# inline flag and offset (BQ).  Each image object needs one: a bound on their count.
MIN_LARGE_ROW = 2 + 3 + 1 + 14 + 40 + 9
# A large file's size: the kernel's loff_t, the largest an image's stub can declare
# (store.erofs.SIZE_MAX).
MAX_FILE_SIZE = (1 << 63) - 1
# A frame's compressed size: above zstd's worst case for FRAME_MAX input
# (ZSTD_compressBound is size + size/256 + a few bytes).
MAX_FRAME_COMPRESSED = FRAME_MAX + (FRAME_MAX >> 7) + 4096

# magic, format version, flags (reserved, zero), inline_max (largest inline file),
# commit id (SHA-256 of the commit bytes), commit length, ref length, entry count,
# manifest size (decompressed), manifest frame count,
# inline data size (decompressed), data frame count
_HEADER = struct.Struct("<8sHHI32sIHIQIQI")
# compressed size, decompressed size
_FRAME = struct.Struct("<II")
# the image identity (version 2): recipe, image size in bytes, its fs-verity SHA-256 digest
_IMAGE = struct.Struct("<HQ32s")
# the image objects (version 3): a count, then per object its fs-verity digest, its meta key
# (SHA-256 of store.model.Meta.encode) and its size
_COUNT = struct.Struct("<I")
_IMAGE_OBJECT = struct.Struct("<32s32sQ")

HEADER_SIZE = _HEADER.size
FRAME_ENTRY_SIZE = _FRAME.size
IMAGE_SIZE = _IMAGE.size
IMAGE_COUNT_SIZE = _COUNT.size
IMAGE_OBJECT_SIZE = _IMAGE_OBJECT.size


class ImageRef(Frozen):
    """The EROFS image a pack's tree makes by ``recipe`` (pack.image): its size and fs-verity
    digest.  Signed with the rest of the pack; the image itself is built on the device."""

    __slots__ = ("recipe", "size", "digest")
    _fields = __slots__
    recipe: int
    size: int
    digest: bytes

    def __init__(self, recipe: int, size: int, digest: bytes) -> None:
        self._set_fields(recipe, size, digest)

    def encode(self) -> bytes:
        return _IMAGE.pack(self.recipe, self.size, self.digest)


def parse_image(data: bytes, offset: int) -> ImageRef:
    """The image identity at ``offset`` of the pack: a known recipe and a size in range."""
    _check(len(data) == IMAGE_SIZE, f"truncated image identity: need {IMAGE_SIZE} bytes, "
                                    f"got {len(data)}", offset)
    recipe, size, digest = _IMAGE.unpack(data)
    _check(recipe in IMAGE_RECIPES,
           f"unknown image recipe: expected one of {IMAGE_RECIPES}, got {recipe}", offset)
    _check(0 < size <= MAX_IMAGE, f"image size {size} not in 1..{MAX_IMAGE}", offset + 2)
    return ImageRef(recipe, size, digest)


class ImageObject(Frozen):
    """An object the image's stubs redirect to (format version 3): the file object of the
    first large file of its fs-verity ``digest`` in the manifest, whose metadata has the
    key ``meta_key`` (the raw SHA-256 of ``store.model.Meta.encode``), of ``size`` bytes.
    Signed with the rest of the pack, so a deploy that mounts the image knows the objects it
    needs without decoding the manifest."""

    __slots__ = ("digest", "meta_key", "size")
    _fields = __slots__
    digest: RawId
    meta_key: bytes
    size: int

    def __init__(self, digest: RawId, meta_key: bytes, size: int) -> None:
        setattr_ = object.__setattr__  # one per large object: not _set_fields
        setattr_(self, "digest", digest)
        setattr_(self, "meta_key", meta_key)
        setattr_(self, "size", size)

    def relative_path(self) -> str:
        """The object's path under ``objects/`` (store.objects): ``xx/<62 hex>.<key>.file``."""
        return keyed_relative_path(self.digest, self.meta_key.hex())

    def encode(self) -> bytes:
        return _IMAGE_OBJECT.pack(self.digest, self.meta_key, self.size)


def encode_image_objects(objects: Sequence[ImageObject]) -> bytes:
    """The image objects section: the count, then each object."""
    return _COUNT.pack(len(objects)) + b"".join(o.encode() for o in objects)


def parse_image_count(data: bytes, header: Header, file_size: int) -> Header:
    """The header with the count of image objects read from ``data`` (the section's first 4
    bytes): at most the large files the manifest can hold (one row each: the entry count,
    and ``manifest_size // MIN_LARGE_ROW``), and with the frame tables after it still inside
    the file."""
    at = header.image_objects_offset
    _check(len(data) == IMAGE_COUNT_SIZE, f"truncated image object count: need "
                                          f"{IMAGE_COUNT_SIZE} bytes, got {len(data)}", at)
    (count,) = _COUNT.unpack(data)
    most = min(header.entry_count, header.manifest_size // MIN_LARGE_ROW, MAX_ENTRIES)
    _check(count <= most, f"{count} image objects, more than the {most} large files the "
                          f"manifest may hold", at)
    header = header.replace(image_count=count)
    needed = header.tables_offset + header.tables_size
    _check(needed <= file_size, f"truncated: {count} image objects and the frame tables need "
                                f"at least {needed} bytes, the pack has {file_size}", at)
    return header


def parse_image_objects(data: bytes, header: Header) -> tuple[ImageObject, ...]:
    """The ``header.image_count`` image objects in ``data`` (the section after its count):
    each larger than ``inline_max`` (a large file) and at most MAX_FILE_SIZE, no digest twice."""
    at = header.image_objects_offset + IMAGE_COUNT_SIZE
    want = header.image_count * IMAGE_OBJECT_SIZE
    _check(len(data) == want, f"truncated image objects: need {want} bytes, got {len(data)}", at)
    rows = list(_IMAGE_OBJECT.iter_unpack(data))
    if rows:
        sizes = [row[2] for row in rows]
        if min(sizes) <= header.inline_max or max(sizes) > MAX_FILE_SIZE or \
                len({row[0] for row in rows}) != len(rows):
            _refuse_image_objects(rows, header.inline_max, at)
    # (digest, meta key, size) in field order; RawId is the bytes themselves at run time
    return tuple(itertools.starmap(ImageObject, rows))


def _refuse_image_objects(rows: Sequence[tuple[bytes, bytes, int]], inline_max: int, at: int
                          ) -> None:
    """PackError for the first image object out of bounds or repeating a digest."""
    seen: set[bytes] = set()
    for i, (digest, _meta_key, size) in enumerate(rows):
        where = at + i * IMAGE_OBJECT_SIZE
        _check(size > inline_max, f"image object {i} is {size} bytes, not a large file "
                                  f"(inline_max {inline_max})", where + 64)
        _check(size <= MAX_FILE_SIZE, f"image object {i} is {size} bytes, more than "
                                      f"{MAX_FILE_SIZE}", where + 64)
        _check(digest not in seen, f"image object {i} repeats digest {digest.hex()}", where)
        seen.add(digest)


class Header(Frozen):
    """The fixed header: what the rest of the pack must add up to."""

    __slots__ = ("inline_max", "commit_id", "commit_len", "ref_len", "entry_count", "manifest_size",
                 "manifest_frames", "data_size", "data_frames", "version", "image_count")
    _fields = __slots__
    inline_max: int
    commit_id: RawId
    commit_len: int
    ref_len: int
    entry_count: int
    manifest_size: int
    manifest_frames: int
    data_size: int
    data_frames: int
    version: int
    # How many image objects (version 3): not in the header's bytes but the count that starts
    # the image objects section, set by ``parse_image_count`` (0 until then).
    image_count: int

    def __init__(self, inline_max: int, commit_id: RawId, commit_len: int, ref_len: int, entry_count: int,
                 manifest_size: int, manifest_frames: int, data_size: int, data_frames: int,
                 version: int = VERSION, image_count: int = 0) -> None:
        self._set_fields(inline_max, commit_id, commit_len, ref_len, entry_count, manifest_size,
                         manifest_frames, data_size, data_frames, version, image_count)

    def encode(self) -> bytes:
        return _HEADER.pack(MAGIC, self.version, 0, self.inline_max, self.commit_id, self.commit_len,
                            self.ref_len, self.entry_count, self.manifest_size, self.manifest_frames,
                            self.data_size, self.data_frames)

    @property
    def has_image(self) -> bool:
        return self.version >= IMAGE_VERSION

    @property
    def image_offset(self) -> int:
        """Where the image identity is (when ``has_image``): after the ref."""
        return HEADER_SIZE + self.commit_len + self.ref_len

    @property
    def has_image_objects(self) -> bool:
        return self.version >= IMAGE_OBJECTS_VERSION

    @property
    def image_objects_offset(self) -> int:
        """Where the image objects section is (when ``has_image_objects``): after the identity."""
        return self.image_offset + IMAGE_SIZE

    @property
    def tables_offset(self) -> int:
        """Where the frame tables are; in version 3 only once ``image_count`` is set."""
        if self.has_image_objects:
            return (self.image_objects_offset + IMAGE_COUNT_SIZE
                    + self.image_count * IMAGE_OBJECT_SIZE)
        return self.image_offset + (IMAGE_SIZE if self.has_image else 0)

    @property
    def tables_size(self) -> int:
        return (self.manifest_frames + self.data_frames) * FRAME_ENTRY_SIZE


class Frame(Frozen):
    """One zstd frame: where it starts in the file and its two sizes."""

    __slots__ = ("offset", "compressed", "size")
    _fields = __slots__
    offset: int
    compressed: int
    size: int

    def __init__(self, offset: int, compressed: int, size: int) -> None:
        self._set_fields(offset, compressed, size)


def _check(condition: bool, message: str, offset: int) -> None:
    if not condition:
        raise PackError(f"{message} at offset {offset}", offset=offset)


def parse_header(data: bytes, file_size: int) -> Header:
    """Parse and check the header: length, magic, version, flags, then every size limit.

    ``file_size`` is the pack's length; the sections the header declares must
    at least fit in it (``check_layout`` later demands exact equality).
    """
    _check(len(data) >= HEADER_SIZE and file_size >= HEADER_SIZE,
           f"truncated header: need {HEADER_SIZE} bytes, got {min(len(data), file_size)}", 0)
    (magic, version, flags, inline_max, commit_id, commit_len, ref_len, entry_count,
     manifest_size, manifest_frames, data_size, data_frames) = _HEADER.unpack_from(data)
    _check(magic == MAGIC, f"bad magic: expected {MAGIC!r}, got {magic!r}", 0)
    _check(version in SUPPORTED_VERSIONS,
           f"unsupported pack version: expected one of {SUPPORTED_VERSIONS}, got {version}", 8)
    _check(flags == 0, f"unknown flags {flags:#x}", 10)
    _check(inline_max <= MAX_INLINE_MAX, f"inline_max {inline_max} exceeds {MAX_INLINE_MAX}", 12)
    _check(0 < commit_len <= MAX_COMMIT, f"commit length {commit_len} not in 1..{MAX_COMMIT}", 48)
    _check(0 < ref_len <= MAX_REF, f"ref length {ref_len} not in 1..{MAX_REF}", 52)
    _check(entry_count <= MAX_ENTRIES, f"entry count {entry_count} exceeds {MAX_ENTRIES}", 54)
    _check(manifest_size <= MAX_MANIFEST, f"manifest size {manifest_size} exceeds {MAX_MANIFEST}", 58)
    _check(manifest_frames == -(-manifest_size // FRAME_MAX),
           f"manifest of {manifest_size} bytes must have {-(-manifest_size // FRAME_MAX)} frames, "
           f"header says {manifest_frames}", 66)
    _check(data_size <= MAX_DATA, f"inline data size {data_size} exceeds {MAX_DATA}", 70)
    _check(data_frames <= data_size, f"{data_frames} data frames for {data_size} bytes", 78)
    header = Header(inline_max, RawId(commit_id), commit_len, ref_len, entry_count, manifest_size,
                    manifest_frames, data_size, data_frames, version)
    # Before anything is allocated from these counts, they must fit in the file.
    needed = header.tables_offset + header.tables_size
    _check(needed <= file_size, f"truncated: the header declares at least {needed} bytes, "
                                f"the pack has {file_size}", HEADER_SIZE)
    return header


def encode_frame_table(frames: Sequence[tuple[int, int]]) -> bytes:
    """The table for ``(compressed size, decompressed size)`` pairs."""
    return b"".join(_FRAME.pack(c, s) for c, s in frames)


def parse_frame_table(data: bytes, count: int, start: int, table_offset: int, what: str
                      ) -> tuple[list[Frame], int]:
    """Parse ``count`` frame entries; return the frames (placed from ``start``) and where they end.

    Each frame must decompress to 1..FRAME_MAX bytes and be no larger compressed
    than zstd's worst case.
    """
    frames = []
    position = start
    for i in range(count):
        at = table_offset + i * FRAME_ENTRY_SIZE
        compressed, size = _FRAME.unpack_from(data, i * FRAME_ENTRY_SIZE)
        _check(0 < size <= FRAME_MAX, f"{what} frame {i} decompresses to {size} bytes, "
                                      f"not 1..{FRAME_MAX}", at)
        _check(0 < compressed <= MAX_FRAME_COMPRESSED,
               f"{what} frame {i} is {compressed} bytes compressed, not 1..{MAX_FRAME_COMPRESSED}", at)
        frames.append(Frame(position, compressed, size))
        position += compressed
    return frames, position


def check_manifest_frames(frames: Sequence[Frame], header: Header, table_offset: int) -> None:
    """Manifest frames are cut every FRAME_MAX bytes: all full but the last, summing exactly."""
    for i, frame in enumerate(frames):
        expected = min(FRAME_MAX, header.manifest_size - i * FRAME_MAX)
        _check(frame.size == expected, f"manifest frame {i} holds {frame.size} bytes, "
                                       f"expected {expected}", table_offset + i * FRAME_ENTRY_SIZE)


def check_data_frames(frames: Sequence[Frame], header: Header, table_offset: int) -> None:
    total = sum(f.size for f in frames)
    _check(total == header.data_size, f"data frames hold {total} bytes, header says "
                                      f"{header.data_size}", table_offset)


def check_layout(end: int, file_size: int) -> None:
    """The sections end exactly where the file does: no truncation, no trailing bytes."""
    _check(end == file_size, f"pack is {file_size} bytes, its sections add up to {end}",
           min(end, file_size))


# -- zstd -------------------------------------------------------------------------

def compressor(level: int) -> zstandard.ZstdCompressor:
    """The one compressor configuration: deterministic for a given zstd and level.

    No checksum (fs-verity digests and the commit id cover the content), the
    content size always written (the reader checks it before allocating), no
    dictionary id, single-threaded (multi-threaded output differs).
    """
    import zstandard  # noqa: PLC0415 - about 10 ms cold; a deploy that mounts an image never needs it

    return zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True,
                                    write_dict_id=False, threads=0)


# The zstd frame header (RFC 8878, 3.1.1.1): a 4-byte magic, then the frame header
# descriptor, whose bit 2 says a 4-byte checksum of the content ends the frame.
_FRAME_DESCRIPTOR = 4
_CHECKSUM_FLAG = 0x04


def decompressor() -> zstandard.ZstdDecompressor:
    # A frame of at most FRAME_MAX bytes never needs a larger window; refusing
    # larger ones bounds the decoder's own memory.
    import zstandard  # noqa: PLC0415 - see compressor

    return zstandard.ZstdDecompressor(max_window_size=FRAME_MAX)


def decompress_frame(dctx: zstandard.ZstdDecompressor, data: bytes, frame: Frame, what: str) -> bytes:
    """Decompress one frame to exactly ``frame.size`` bytes, or raise PackError.

    The frame's declared content size is checked against the table before any
    allocation; the frame must be one zstd frame without a content checksum (the
    pack's SHA-256, which its signatures cover, and the digests the manifest holds
    check the content: a second checksum would be a second rule to get right) and
    fill ``data`` exactly.
    """
    import zstandard  # noqa: PLC0415 - see compressor

    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as err:
        raise PackError(f"{what}: not a zstd frame ({err}) at offset {frame.offset}",
                        offset=frame.offset) from err
    _check(declared == frame.size, f"{what}: zstd frame declares {declared} bytes, "
                                   f"the table says {frame.size}", frame.offset)
    _check(not data[_FRAME_DESCRIPTOR] & _CHECKSUM_FLAG,
           f"{what}: zstd frame carries a content checksum; pack frames carry none", frame.offset)
    try:
        out = dctx.decompress(data, max_output_size=frame.size, allow_extra_data=False)
    except zstandard.ZstdError as err:
        raise PackError(f"{what}: corrupt zstd frame ({err}) at offset {frame.offset}",
                        offset=frame.offset) from err
    _check(len(out) == frame.size, f"{what}: decompressed to {len(out)} bytes, "
                                   f"expected {frame.size}", frame.offset)
    return out
