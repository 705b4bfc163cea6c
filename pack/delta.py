"""Pack deltas: pack N+1 rebuilt byte for byte from pack N, which the device already has.

A pack's bytes are mostly zstd frames, and compressed bytes do not delta.  So a
delta works on contents (pack.expanded): the new pack's *carried form* (its
frames decompressed, its changed inline gzip files inflated, and a table of
those) travels as one zstd frame compressed against the old pack's
*reference* (its frames decompressed, then its inline gzip files' contents)
as a raw-content dictionary, the idea of ``zstd --patch-from``.  The device
builds the same reference from its old pack, decodes the carried form,
rebuilds the gzip files, and compresses every frame again with the pack
compressor (``pack.format.compressor``) at the level the delta records for that
frame (``pack.build`` writes frames where level 19 gains little at a fast level):
pack building is deterministic, so that gives back the very frames of the new
pack.  The result must have the SHA-256 and size the delta names, and is then
verified with its signatures like any pack: a delta needs no trust of its own.

Layout (version 2; integers little-endian)::

    header      _HEADER below (120 bytes)
    payload     payload_size bytes: one zstd frame, content = the carried form
                (expanded_size bytes: level table, gzip table, expanded pack),
                dictionary = the old pack's reference

Version 1 (still applied) has one level for every frame in the header, no level table,
and gzip entries without ``how`` (re-encoded in Python, store.deflate_blocks).

Checks, in this order (any failure: ``DeltaError`` naming the delta file; the output
file appears only when everything passed):

1. length >= header, magic, version, flags, level, window log, sizes against their
   limits, payload size = what follows the header;
2. the source pack: its size and SHA-256 equal the header's (so a delta applied to the
   wrong pack says so before doing any work); its reference fits ``MAX_EXPANDED``;
3. the payload's zstd frame declares ``expanded_size`` bytes and a window of at most
   ``2**window_log``;
4. while streaming: the level table (levels 1..22; as many as the rebuilt pack has
   frames); the gzip table (order, sizes, how); the rebuilt header, frame tables and
   layout pass ``pack.format``'s checks against ``result_size``; each gzip file rebuilds
   to its size within one frame; each frame re-compresses to the size its table says;
   the payload holds exactly the carried form (no more, no less, nothing after it);
5. the rebuilt pack's size and SHA-256 equal the header's.

Memory on the device: the old reference twice (ours and zstd's dictionary; at most
``MAX_EXPANDED``, 128 MiB; 7.3 MB for Debian minbase), the zstd window (at most
``2**MAX_WINDOW_LOG``, 128 MiB; the maker picks the smallest power of two covering
reference and carried form: 16 MiB for minbase), two frames per core (1 MiB each)
being compressed, and at most two compressors per core (one per frame level in use;
some 20 MiB each at level 19 for a 1 MiB frame): at most about 400 MiB + 40 MiB per
core; 76 MiB peak RSS for minbase (55 MiB above the interpreter, 2 cores).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import os
import re
import struct
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from store.atomic import atomic_file
from store.deflate_blocks import Block
from store.errors import DeltaError, FormatError, Name, PackError
from store.names import show
from store.object_delta import GzipRebuild, rebuild_gzip

from . import format as fmt
from .expanded import (
    GZ_BLOCK,
    GZ_COUNT,
    GZ_ENTRY,
    GZ_ENTRY_V1,
    LEVEL_COUNT,
    MAX_EXPANDED,
    MAX_GZ_BLOCKS,
    GzipEntry,
    Layout,
    carried,
    count_end,
    declared_prefix_size,
    expand_pack,
    expanded_size_of,
    gzip_entries,
    parse_layout,
    reference,
)
from .manifest import Manifest, ManifestEntry

MAGIC = b"SEALPDLT"
VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MAX_WINDOW_LOG = 27  # zstd window of the payload, 128 MiB: the other half of the memory bound
MIN_WINDOW_LOG = 20
MAX_PACK = fmt.HEADER_SIZE + fmt.MAX_COMMIT + fmt.MAX_REF + MAX_EXPANDED * 2  # sanity bound
DEFAULT_DELTA_LEVEL = 19
READ_CHUNK = 1 << 20
_ZSTD_FRAME_HEADER_MAX = 18  # ZSTD_FRAMEHEADERSIZE_MAX
# Levels tried, in this order, to find the one each frame of the new pack was built with (its
# header does not record it): after the previous frame's, pack.build's default and fast ones.
_LEVEL_GUESSES = (19, 9, *range(1, 9), *range(10, 19), 20, 21, 22)

# magic, format version, flags (reserved, zero), zstd level the result's frames are
# compressed at (version 1; version 2: zero, the levels are in the carried form's level
# table), zstd window log of the payload, reserved (2 bytes, zero),
# zstd library version that made the delta (ZSTD_VERSION_NUMBER: informative, a device
# with another one may compress differently; step 5 then fails), source pack size,
# source pack SHA-256, result pack size, result pack SHA-256, result's expanded size,
# payload size
_HEADER = struct.Struct("<8sHHBB2sIQ32sQ32sQQ")
HEADER_SIZE = _HEADER.size


@dataclass(frozen=True, slots=True)
class PackDeltaHeader:
    """What a delta turns into what, and how the result's frames are compressed."""

    version: int
    level: int
    window_log: int
    zstd_version: int
    source_size: int
    source_sha256: bytes
    result_size: int
    result_sha256: bytes
    expanded_size: int
    payload_size: int

    def encode(self) -> bytes:
        return _HEADER.pack(MAGIC, self.version, 0, self.level, self.window_log, bytes(2),
                            self.zstd_version, self.source_size, self.source_sha256,
                            self.result_size, self.result_sha256, self.expanded_size,
                            self.payload_size)


@dataclass(frozen=True)
class DeltaResult:
    """What a delta made or rebuilt: the file written, its size and SHA-256."""

    path: str
    size: int
    sha256: bytes


def zstd_version_number() -> int:
    """The zstd library's version as one number (1.5.6 -> 10506)."""
    major, minor, patch = zstandard.ZSTD_VERSION
    return major * 10000 + minor * 100 + patch


def parse_header(data: bytes, file_size: int, path: Name | None = None) -> PackDeltaHeader:
    """Check the header (step 1): length, magic, version, flags, level, window, sizes."""
    def check(ok: bool, message: str, offset: int) -> None:
        if not ok:
            raise DeltaError(message, path=path, offset=offset)

    check(len(data) >= HEADER_SIZE and file_size >= HEADER_SIZE,
          f"truncated pack delta: need {HEADER_SIZE} header bytes, got {min(len(data), file_size)}",
          0)
    (magic, version, flags, level, window_log, reserved, zstd_version, source_size, source_sha,
     result_size, result_sha, expanded_size, payload_size) = _HEADER.unpack_from(data)
    check(magic == MAGIC, f"not a pack delta: magic {magic!r}, expected {MAGIC!r}", 0)
    check(version in SUPPORTED_VERSIONS,
          f"unsupported pack delta version: expected one of {SUPPORTED_VERSIONS}, got {version}", 8)
    check(flags == 0 and reserved == bytes(2), f"unknown flags {flags:#x} or reserved bytes set", 10)
    if version == 1:
        check(1 <= level <= zstandard.MAX_COMPRESSION_LEVEL,
              f"level {level} not in 1..{zstandard.MAX_COMPRESSION_LEVEL}", 12)
    else:
        check(level == 0, f"level {level} in the header: version {version} has a level table", 12)
    check(MIN_WINDOW_LOG <= window_log <= MAX_WINDOW_LOG,
          f"window log {window_log} not in {MIN_WINDOW_LOG}..{MAX_WINDOW_LOG}", 13)
    check(fmt.HEADER_SIZE <= source_size <= MAX_PACK, f"source size {source_size} out of range", 20)
    check(fmt.HEADER_SIZE <= result_size <= MAX_PACK, f"result size {result_size} out of range", 60)
    check(fmt.HEADER_SIZE <= expanded_size <= MAX_EXPANDED,
          f"expanded size {expanded_size} not in {fmt.HEADER_SIZE}..{MAX_EXPANDED}", 100)
    check(payload_size == file_size - HEADER_SIZE,
          f"pack delta is {file_size} bytes, its header and payload add up to "
          f"{HEADER_SIZE + payload_size}", 108)
    return PackDeltaHeader(version, level, window_log, zstd_version, source_size, source_sha, result_size,
                           result_sha, expanded_size, payload_size)


def _frames_of(expanded: bytes, layout: Layout) -> Iterator[bytes]:
    at = layout.prefix_size
    for frame in layout.frames:
        yield expanded[at:at + frame.size]
        at += frame.size


def _frame_levels(pack: bytes, expanded: bytes, layout: Layout) -> list[int] | None:
    """For each frame, the level whose compressor rebuilds it (the previous frame's tried
    first); None when no level rebuilds one."""
    levels: list[int] = []
    compressors: dict[int, zstandard.ZstdCompressor] = {}
    for frame, content in zip(layout.frames, _frames_of(expanded, layout), strict=True):
        compressed = pack[frame.offset:frame.offset + frame.compressed]
        guesses = (levels[-1], *_LEVEL_GUESSES) if levels else _LEVEL_GUESSES
        for level in guesses:
            if level not in compressors:
                compressors[level] = fmt.compressor(level)
            if compressors[level].compress(content) == compressed:
                levels.append(int(level))
                break
        else:
            return None
    return levels


# -- making ---------------------------------------------------------------------------------

def _window_log(source_expanded: int, result_expanded: int) -> int:
    return max(MIN_WINDOW_LOG, min(MAX_WINDOW_LOG, (source_expanded + result_expanded).bit_length()))


def make_pack_delta(old_pack: str | os.PathLike[str], new_pack: str | os.PathLike[str],
                    out: str | os.PathLike[str], *, level: int = DEFAULT_DELTA_LEVEL
                    ) -> DeltaResult:
    """Write the delta from ``old_pack`` to ``new_pack`` at ``out`` (atomically), after
    checking that it rebuilds ``new_pack`` here.  ``level`` is the delta's own zstd level.
    DeltaError when no delta can be made (a pack too large to expand, or frames this zstd
    does not reproduce): ship the full pack then."""
    new_path = os.fspath(new_pack)
    try:
        old = expand_pack(old_pack)
        new = expand_pack(new_pack)
        old_reference = reference(old)
    except PackError as err:
        raise DeltaError(f"cannot make a delta: {err.detail()}", path=err.path or new_path,
                         offset=err.offset) from err
    with open(new_path, "rb") as handle:
        new_bytes = handle.read()
    levels = _frame_levels(new_bytes, new.data, new.layout)
    if levels is None:
        raise DeltaError("cannot make a delta: no zstd level of this library rebuilds the "
                         "pack's frames", path=new_path)
    try:
        new_expanded = carried(new, gzip_entries(old, new), levels)
    except PackError as err:
        raise DeltaError(f"cannot make a delta: {err.detail()}", path=err.path or new_path,
                         offset=err.offset) from err
    if len(new_expanded) > MAX_EXPANDED:
        raise DeltaError(f"cannot make a delta: the pack expands to {len(new_expanded)} bytes, "
                         f"a delta allows {MAX_EXPANDED}", path=new_path)
    window_log = _window_log(len(old_reference), len(new_expanded))
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(new_expanded), window_log=window_log, write_content_size=1,
        write_checksum=0, write_dict_id=0, enable_ldm=window_log >= 27)
    dictionary = zstandard.ZstdCompressionDict(old_reference,
                                               dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    payload = zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params
                                       ).compress(new_expanded)
    old_size = os.path.getsize(old_pack)
    header = PackDeltaHeader(VERSION, 0, window_log, zstd_version_number(), old_size,
                             old.sha256, new.size, new.sha256, len(new_expanded), len(payload))
    with atomic_file(out, 0o644) as handle:
        handle.write(header.encode())
        handle.write(payload)
    out = os.fspath(out)
    # A delta is only worth shipping if it rebuilds the pack: check it the device's way.
    check = f"{out}.check"
    try:
        apply_pack_delta(old_pack, out, check)
    except DeltaError:
        os.unlink(out)
        raise
    finally:
        if os.path.exists(check):
            os.unlink(check)
    return DeltaResult(out, HEADER_SIZE + len(payload), hashlib.sha256(
        header.encode() + payload).digest())


# -- applying -------------------------------------------------------------------------------

class _Recompressor:
    """Frames compressed on every core, in order, a bounded number in flight."""

    def __init__(self, workers: int) -> None:
        self.local = threading.local()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.limit = 2 * workers
        self.pending: deque[concurrent.futures.Future[bytes]] = deque()

    def _compress(self, content: bytes, level: int) -> bytes:
        compressors: dict[int, zstandard.ZstdCompressor] | None = getattr(self.local, "cctx", None)
        if compressors is None:
            compressors = self.local.cctx = {}
        cctx = compressors.get(level)
        if cctx is None:
            if len(compressors) >= 2:  # the memory bound: two compressors per worker
                compressors.clear()
            cctx = compressors[level] = fmt.compressor(level)
        out: bytes = cctx.compress(content)
        return out

    def submit(self, content: bytes, level: int) -> Iterator[bytes]:
        """Queue one frame; yield the frames that are done, oldest first, beyond the limit."""
        self.pending.append(self.pool.submit(self._compress, content, level))
        while len(self.pending) > self.limit:
            yield self.pending.popleft().result()

    def drain(self) -> Iterator[bytes]:
        while self.pending:
            yield self.pending.popleft().result()

    def close(self) -> None:
        for future in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True)


def _source_expanded(old_pack: str, header: PackDeltaHeader, delta: str) -> bytes:
    """Step 2: the old pack's reference (``reference``), once its size and SHA-256 are the
    header's."""
    size = os.path.getsize(old_pack)
    sha = hashlib.sha256()
    with open(old_pack, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            sha.update(chunk)
    if size != header.source_size or not hmac.compare_digest(sha.digest(), header.source_sha256):
        raise DeltaError(f"made from another pack: it expects {header.source_sha256.hex()} "
                         f"({header.source_size} bytes), {show(old_pack)} is {sha.hexdigest()} "
                         f"({size} bytes)", path=delta, offset=20)
    try:
        old = expand_pack(old_pack)
        data = reference(old)
    except PackError as err:
        raise DeltaError(f"its source pack cannot be expanded: {err}", path=delta) from err
    if old.sha256 != header.source_sha256:
        raise DeltaError(f"{show(old_pack)} changed while it was read", path=delta)
    return data


class _Stream:
    """The payload's decompressed bytes, read exactly, every fault a DeltaError."""

    def __init__(self, reader: zstandard.ZstdDecompressionReader, delta: str) -> None:
        self.reader = reader
        self.delta = delta
        self.position = 0

    def read(self, n: int, what: str) -> bytes:
        parts = []
        left = n
        try:
            while left:
                chunk = self.reader.read(left)
                if not chunk:
                    break
                parts.append(chunk)
                left -= len(chunk)
        except zstandard.ZstdError as err:
            raise DeltaError(f"corrupt payload at expanded offset {self.position} ({err})",
                             path=self.delta, offset=HEADER_SIZE) from err
        data = b"".join(parts)
        if len(data) != n:
            raise DeltaError(f"truncated payload: {what} needs {n} bytes at expanded offset "
                             f"{self.position}, got {len(data)}", path=self.delta,
                             offset=HEADER_SIZE)
        self.position += n
        return data

    def at_end(self) -> bool:
        try:
            return self.reader.read(1) == b""
        except zstandard.ZstdError:
            return False


def _check_payload_frame(handle: BinaryIO, header: PackDeltaHeader, delta: str) -> None:
    """Step 3: the payload is a zstd frame of the declared size within the window."""
    head = handle.read(_ZSTD_FRAME_HEADER_MAX)
    handle.seek(HEADER_SIZE)
    try:
        params = zstandard.get_frame_parameters(head)
    except zstandard.ZstdError as err:
        raise DeltaError(f"payload is not a zstd frame ({err})", path=delta,
                         offset=HEADER_SIZE) from err
    if params.content_size != header.expanded_size:
        raise DeltaError(f"payload declares {params.content_size} bytes, the header says "
                         f"{header.expanded_size}", path=delta, offset=HEADER_SIZE)
    if params.window_size > 1 << header.window_log:
        raise DeltaError(f"payload window {params.window_size} exceeds 2**{header.window_log}",
                         path=delta, offset=HEADER_SIZE)


def apply_pack_delta(old_pack: str | os.PathLike[str], delta: str | os.PathLike[str],
                     out: str | os.PathLike[str], *, workers: int | None = None) -> DeltaResult:
    """Rebuild the new pack from ``old_pack`` and ``delta`` into ``out`` (atomically: ``out``
    appears only when the result has the size and SHA-256 the delta names).  Verify its
    signatures afterwards as for any pack.  DeltaError naming ``delta`` for any fault."""
    old_path, delta_path, out_path = os.fspath(old_pack), os.fspath(delta), os.fspath(out)
    try:
        handle = open(delta_path, "rb")  # noqa: SIM115 - closed below, after the stream
    except OSError as err:
        raise DeltaError(err.strerror or "cannot open", path=delta_path) from err
    with handle:
        size = os.fstat(handle.fileno()).st_size
        header = parse_header(handle.read(HEADER_SIZE), size, delta_path)
        expanded = _source_expanded(old_path, header, delta_path)
        _check_payload_frame(handle, header, delta_path)
        dictionary = zstandard.ZstdCompressionDict(expanded,
                                                   dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        dctx = zstandard.ZstdDecompressor(dict_data=dictionary,
                                          max_window_size=1 << header.window_log)
        reader = dctx.stream_reader(handle, read_size=READ_CHUNK, read_across_frames=True)
        stream = _Stream(reader, delta_path)
        recompressor = _Recompressor(workers or os.cpu_count() or 1)
        try:
            return _rebuild(stream, header, recompressor, delta_path, out_path)
        finally:
            recompressor.close()


_LEVELS = range(1, zstandard.MAX_COMPRESSION_LEVEL + 1)


def _read_level_table(stream: _Stream, delta: str) -> tuple[bytes, int]:
    """Step 4a (version 2): the level of each frame, and the table's size.  The count must be
    the rebuilt pack's frame count (checked once its frame tables are read)."""
    (count,) = LEVEL_COUNT.unpack(stream.read(LEVEL_COUNT.size, "the level table"))
    if count > MAX_EXPANDED // fmt.FRAME_MAX + 2:
        raise DeltaError(f"level table of {count} frames", path=delta, offset=HEADER_SIZE)
    levels = stream.read(count, "the level table")
    if any(level not in _LEVELS for level in levels):
        raise DeltaError(f"level table holds a level outside 1..{_LEVELS[-1]}", path=delta,
                         offset=HEADER_SIZE)
    return levels, LEVEL_COUNT.size + count


def _read_gzip_table(stream: _Stream, delta: str, version: int) -> tuple[list[GzipEntry], int]:
    """Step 4b: the gzip table, and its size.  Entries are in increasing offset order and do
    not overlap; version 1's are re-encoded in Python, version 2 says how for each."""
    (count,) = GZ_COUNT.unpack(stream.read(GZ_COUNT.size, "the gzip table"))
    if count > fmt.MAX_ENTRIES:
        raise DeltaError(f"gzip table of {count} entries", path=delta, offset=HEADER_SIZE)
    entry_format = GZ_ENTRY_V1 if version == 1 else GZ_ENTRY
    entries: list[GzipEntry] = []
    size = GZ_COUNT.size
    end = 0
    for i in range(count):
        fields = entry_format.unpack(stream.read(entry_format.size, f"gzip entry {i}"))
        offset, gz_size, inner_size, gzip_header, block_count = fields[:5]
        how = fields[5] if version > 1 else GzipRebuild.REENCODE
        if offset < end or gz_size < 18 or gz_size > fmt.MAX_INLINE_MAX or \
                inner_size > MAX_EXPANDED or block_count > MAX_GZ_BLOCKS or \
                how not in GzipRebuild.__members__.values() or (how and not block_count):
            raise DeltaError(f"gzip entry {i} (offset {offset}, {gz_size} bytes, {inner_size} "
                             f"inflated, {block_count} blocks, how {how}) out of range or order",
                             path=delta, offset=HEADER_SIZE)
        raw = stream.read(block_count * GZ_BLOCK.size, f"gzip entry {i}'s blocks")
        blocks = tuple(Block(*GZ_BLOCK.unpack_from(raw, j * GZ_BLOCK.size))
                       for j in range(block_count))
        entries.append(GzipEntry(offset, gz_size, inner_size, gzip_header, blocks,
                                 GzipRebuild(how)))
        end = offset + gz_size
        size += entry_format.size + len(raw)
    return entries, size


class _DataSection:
    """Step 4c: the inline data, frame by frame, each gzip entry rebuilt from its contents."""

    def __init__(self, stream: _Stream, entries: list[GzipEntry], delta: str) -> None:
        self.stream = stream
        self.entries = entries
        self.next = 0
        self.at = 0  # offset in the inline data
        self.delta = delta

    def frame(self, size: int, index: int) -> bytes:
        end = self.at + size
        parts = []
        while self.next < len(self.entries) and self.entries[self.next].offset < end:
            entry = self.entries[self.next]
            if entry.offset + entry.size > end:
                raise DeltaError(f"gzip entry {self.next} straddles data frames", path=self.delta,
                                 offset=HEADER_SIZE)
            parts.append(self.stream.read(entry.offset - self.at, f"frame {index}"))
            inner = self.stream.read(entry.inner_size, f"gzip entry {self.next}")
            try:
                rebuilt = rebuild_gzip(entry.gzip_header, inner, entry.blocks, entry.how)
            except FormatError as err:
                raise DeltaError(f"gzip entry {self.next} cannot be rebuilt: {err}",
                                 path=self.delta, offset=HEADER_SIZE) from err
            if len(rebuilt) != entry.size:
                raise DeltaError(f"gzip entry {self.next} rebuilds {len(rebuilt)} bytes, the "
                                 f"table says {entry.size}", path=self.delta, offset=HEADER_SIZE)
            parts.append(rebuilt)
            self.at = entry.offset + entry.size
            self.next += 1
        parts.append(self.stream.read(end - self.at, f"frame {index}"))
        self.at = end
        return b"".join(parts)

    def check_done(self) -> None:
        if self.next != len(self.entries):
            raise DeltaError(f"{len(self.entries) - self.next} gzip entries lie past the inline "
                             f"data", path=self.delta, offset=HEADER_SIZE)


def _rebuild(stream: _Stream, header: PackDeltaHeader, recompressor: _Recompressor,
             delta: str, out: str) -> DeltaResult:
    """Step 4 and 5: write the pack the payload describes, checking as it goes."""
    levels: bytes | None = None
    table_size = 0
    if header.version > 1:
        levels, table_size = _read_level_table(stream, delta)
    entries, gzip_table_size = _read_gzip_table(stream, delta, header.version)
    table_size += gzip_table_size
    head = stream.read(min(fmt.HEADER_SIZE, max(0, header.expanded_size - table_size)),
                       "the pack header")
    try:
        head_size = count_end(head, header.result_size)
        if table_size + head_size > header.expanded_size:
            raise PackError(f"the rebuilt header declares {head_size} bytes before its image "
                            f"objects, the expanded form has {header.expanded_size - table_size}")
        head += stream.read(head_size - len(head), "the pack header")
        prefix_size = declared_prefix_size(head, header.result_size)
        if table_size + prefix_size > header.expanded_size:
            raise PackError(f"the rebuilt header declares {prefix_size} bytes before its frames, "
                            f"the expanded form has {header.expanded_size - table_size}")
        prefix = head + stream.read(prefix_size - len(head), "the pack header")
        layout = parse_layout(prefix, header.result_size)
    except DeltaError:
        raise
    except PackError as err:
        raise DeltaError(f"rebuilt pack header is bad: {err.detail()}", path=delta,
                         offset=HEADER_SIZE) from err
    if levels is None:
        levels = bytes([header.level]) * len(layout.frames)
    if len(levels) != len(layout.frames):
        raise DeltaError(f"the level table lists {len(levels)} frames, the rebuilt pack has "
                         f"{len(layout.frames)}", path=delta, offset=HEADER_SIZE)
    carried = table_size + expanded_size_of(layout) + sum(e.inner_size - e.size for e in entries)
    if carried != header.expanded_size:
        raise DeltaError(f"the gzip table and the rebuilt frame tables add up to {carried} "
                         f"expanded bytes, the header says {header.expanded_size}", path=delta,
                         offset=100)
    data = _DataSection(stream, entries, delta)
    sha = hashlib.sha256()
    written = 0
    with atomic_file(out, 0o644) as sink:
        def emit(chunk: bytes, index: int | None = None) -> None:
            nonlocal written
            if index is not None:
                frame = layout.frames[index]
                if len(chunk) != frame.compressed:
                    raise DeltaError(
                        f"frame {index} compresses to {len(chunk)} bytes at level {levels[index]}, "
                        f"the table says {frame.compressed} (made with zstd "
                        f"{header.zstd_version}, this is {zstd_version_number()})", path=delta)
            sink.write(chunk)
            sha.update(chunk)
            written += len(chunk)

        emit(prefix)
        done = 0
        manifest_frames = layout.header.manifest_frames
        for index, frame in enumerate(layout.frames):
            content = (stream.read(frame.size, f"frame {index}") if index < manifest_frames
                       else data.frame(frame.size, index))
            for chunk in recompressor.submit(content, levels[index]):
                emit(chunk, done)
                done += 1
        data.check_done()
        for chunk in recompressor.drain():
            emit(chunk, done)
            done += 1
        if not stream.at_end():
            raise DeltaError("payload holds more than the expanded pack", path=delta,
                             offset=HEADER_SIZE)
        digest = sha.digest()
        if written != header.result_size or not hmac.compare_digest(digest, header.result_sha256):
            raise DeltaError(f"rebuilt pack is {digest.hex()} ({written} bytes), the delta names "
                             f"{header.result_sha256.hex()} ({header.result_size} bytes)",
                             path=delta)
    return DeltaResult(out, written, digest)


# -- which objects get a delta ----------------------------------------------------------------

@dataclass(frozen=True)
class ObjectPair:
    """A large object of the new release and the old release's large file at the same path."""

    source: ManifestEntry
    result: ManifestEntry


_VERSION = re.compile(rb"[0-9]+(?:\.[0-9]+)*")


def _renamed_key(path: bytes) -> tuple[bytes, bytes]:
    """A path with the version numbers of its last name blurred: ``usr/lib/libz.so.1.2.13``
    and ``usr/lib/libz.so.1.3`` share it (a library renamed by its new version)."""
    parent, _, name = path.rpartition(b"/")
    return parent, _VERSION.sub(b"#", name)


def object_delta_pairs(old: Manifest, new: Manifest) -> tuple[list[ObjectPair], list[ManifestEntry]]:
    """The large objects ``new`` names that ``old`` lacks (by digest, each once, in manifest
    order), split into those that have a source in ``old`` (candidates for an object delta
    against it) and the rest (fetched whole).  The source is the old large file at the same
    path, else the one old large file whose path differs only in its last name's digits
    (a renamed versioned library), the largest if several."""
    have = {row.entry.digest for row in old.entries if row.is_large}
    by_path = {row.path: row for row in old.entries if row.is_large}
    by_key: dict[tuple[bytes, bytes], ManifestEntry] = {}
    for row in old.entries:
        if row.is_large:
            key = _renamed_key(row.path)
            if key not in by_key or row.entry.size > by_key[key].entry.size:
                by_key[key] = row
    pairs: list[ObjectPair] = []
    whole: list[ManifestEntry] = []
    seen: set[bytes] = set()
    for row in new.entries:
        if not row.is_large or row.entry.digest in have or row.entry.digest in seen:
            continue
        seen.add(row.entry.digest)
        source = by_path.get(row.path) or by_key.get(_renamed_key(row.path))
        if source is not None:
            pairs.append(ObjectPair(source, row))
        else:
            whole.append(row)
    return pairs, whole
