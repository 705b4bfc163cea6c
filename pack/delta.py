"""Pack deltas: pack N+1 rebuilt byte for byte from pack N, which the device already has.

A pack's bytes are mostly zstd frames, and compressed bytes do not delta.  So a
delta works on a pack's *expanded form*: the pack with every frame replaced by
its decompressed content (header, commit, ref and frame tables kept as they
are).  The delta carries the new pack's expanded form as one zstd frame
compressed with the old pack's expanded form as a raw-content dictionary (the
idea of ``zstd --patch-from``).  The device expands its old pack, decodes the
new expanded form, and compresses every frame again with the pack compressor
(``pack.format.compressor``) at the level recorded in the delta: pack building
is deterministic, so that gives back the very frames of the new pack.  The
result must then have the SHA-256 and size the delta names, and is verified
with its signatures like any pack: a delta needs no trust of its own.

Layout (version 1; integers little-endian)::

    header      _HEADER below (120 bytes)
    payload     payload_size bytes: one zstd frame, content = the new pack's expanded form
                (expanded_size bytes), dictionary = the old pack's expanded form

Checks, in this order (any failure: ``DeltaError`` naming the delta file; the output
file appears only when everything passed):

1. length >= header, magic, version, flags, level, window log, sizes against their
   limits, payload size = what follows the header;
2. the source pack: its size and SHA-256 equal the header's (so a delta applied to the
   wrong pack says so before doing any work); its expanded form fits ``MAX_EXPANDED``;
3. the payload's zstd frame declares ``expanded_size`` bytes and a window of at most
   ``2**window_log``;
4. while streaming: the rebuilt header, frame tables and layout pass ``pack.format``'s
   checks against ``result_size``; each frame re-compresses to the size its table says;
   the payload holds exactly the expanded form (no more, no less, nothing after it);
5. the rebuilt pack's size and SHA-256 equal the header's.

Memory on the device: the old expanded form (at most ``MAX_EXPANDED``, 128 MiB; 4.8 MB
for Debian minbase), the zstd window (at most ``2**MAX_WINDOW_LOG``, 128 MiB; the
generator picks the smallest power of two covering both expanded forms: 16 MiB for
minbase) and a few frames (1 MiB each) being compressed: at most about 260 MiB, 25 MiB
for minbase.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import hmac
import os
import struct
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from store.atomic import atomic_file
from store.errors import DeltaError, Name, PackError

from . import format as fmt
from .manifest import Manifest, ManifestEntry

MAGIC = b"SEALPDLT"
VERSION = 1
SUPPORTED_VERSIONS = (1,)
MAX_EXPANDED = 128 << 20  # an expanded pack (source or result): the device holds the source's
MAX_WINDOW_LOG = 27  # zstd window of the payload, 128 MiB: the other half of the memory bound
MIN_WINDOW_LOG = 20
MAX_PACK = fmt.HEADER_SIZE + fmt.MAX_COMMIT + fmt.MAX_REF + MAX_EXPANDED * 2  # sanity bound
DEFAULT_DELTA_LEVEL = 19
READ_CHUNK = 1 << 20
_ZSTD_FRAME_HEADER_MAX = 18  # ZSTD_FRAMEHEADERSIZE_MAX
# Levels tried, in this order, to find the one the new pack was built with (its header does
# not record it): pack.build's default first.
_LEVEL_GUESSES = (19, *range(1, 19), 20, 21, 22)

# magic, format version, flags (reserved, zero), zstd level the result's frames are
# compressed at, zstd window log of the payload, reserved (2 bytes, zero),
# zstd library version that made the delta (ZSTD_VERSION_NUMBER: informative, a device
# with another one may compress differently; step 5 then fails), source pack size,
# source pack SHA-256, result pack size, result pack SHA-256, result's expanded size,
# payload size
_HEADER = struct.Struct("<8sHHBB2sIQ32sQ32sQQ")
HEADER_SIZE = _HEADER.size


@dataclass(frozen=True, slots=True)
class PackDeltaHeader:
    """What a delta turns into what, and how the result's frames are compressed."""

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
        return _HEADER.pack(MAGIC, VERSION, 0, self.level, self.window_log, bytes(2),
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
    check(1 <= level <= zstandard.MAX_COMPRESSION_LEVEL,
          f"level {level} not in 1..{zstandard.MAX_COMPRESSION_LEVEL}", 12)
    check(MIN_WINDOW_LOG <= window_log <= MAX_WINDOW_LOG,
          f"window log {window_log} not in {MIN_WINDOW_LOG}..{MAX_WINDOW_LOG}", 13)
    check(fmt.HEADER_SIZE <= source_size <= MAX_PACK, f"source size {source_size} out of range", 20)
    check(fmt.HEADER_SIZE <= result_size <= MAX_PACK, f"result size {result_size} out of range", 60)
    check(fmt.HEADER_SIZE <= expanded_size <= MAX_EXPANDED,
          f"expanded size {expanded_size} not in {fmt.HEADER_SIZE}..{MAX_EXPANDED}", 100)
    check(payload_size == file_size - HEADER_SIZE,
          f"pack delta is {file_size} bytes, its header and payload add up to "
          f"{HEADER_SIZE + payload_size}", 108)
    return PackDeltaHeader(level, window_log, zstd_version, source_size, source_sha, result_size,
                           result_sha, expanded_size, payload_size)


# -- expanded forms -------------------------------------------------------------------------

@dataclass(frozen=True)
class _Layout:
    """Where a pack's frames are: the bytes before them and each frame's sizes."""

    prefix_size: int
    frames: list[fmt.Frame]


def _layout(prefix_head: bytes, file_size: int) -> _Layout:
    """Parse a pack's header and frame tables (``prefix_head`` holds at least the header and,
    once known, the tables), checked as ``pack.reader`` checks them."""
    header = fmt.parse_header(prefix_head[:fmt.HEADER_SIZE], file_size)
    at = header.tables_offset
    tables = prefix_head[at:at + header.tables_size]
    split = header.manifest_frames * fmt.FRAME_ENTRY_SIZE
    manifest, end = fmt.parse_frame_table(tables[:split], header.manifest_frames,
                                          at + header.tables_size, at, "manifest")
    fmt.check_manifest_frames(manifest, header, at)
    data, end = fmt.parse_frame_table(tables[split:], header.data_frames, end, at + split, "data")
    fmt.check_data_frames(data, header, at + split)
    fmt.check_layout(end, file_size)
    return _Layout(at + header.tables_size, manifest + data)


def _prefix_size(head: bytes, file_size: int) -> int:
    header = fmt.parse_header(head, file_size)
    return header.tables_offset + header.tables_size


def expanded_size_of(layout: _Layout) -> int:
    return layout.prefix_size + sum(f.size for f in layout.frames)


def _read_exactly(handle: BinaryIO, n: int, what: str) -> bytes:
    data = handle.read(n)
    if len(data) != n:
        raise PackError(f"truncated {what}: need {n} bytes, got {len(data)}")
    return data


def expand_pack(path: str | os.PathLike[str]) -> tuple[bytes, bytes, int]:
    """The expanded form of the pack at ``path`` (every frame decompressed, in place), the
    pack's SHA-256 and its size, in one pass.  PackError if it is not a well-formed pack
    or its expanded form exceeds MAX_EXPANDED."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        sha = hashlib.sha256()
        head = _read_exactly(handle, min(fmt.HEADER_SIZE, size), "pack header")
        rest = _read_exactly(handle, _prefix_size(head, size) - len(head), "pack header")
        prefix = head + rest
        layout = _layout(prefix, size)
        total = expanded_size_of(layout)
        if total > MAX_EXPANDED:
            raise PackError(f"expands to {total} bytes, a delta allows {MAX_EXPANDED}",
                            path=os.fspath(path))
        sha.update(prefix)
        out = bytearray(prefix)
        dctx = fmt.decompressor()
        for i, frame in enumerate(layout.frames):
            raw = _read_exactly(handle, frame.compressed, f"frame {i}")
            sha.update(raw)
            out += fmt.decompress_frame(dctx, raw, frame, f"frame {i}")
        if handle.read(1):
            raise PackError("grew while it was read", path=os.fspath(path))
    return bytes(out), sha.digest(), size


def _frames_of(expanded: bytes, layout: _Layout) -> Iterator[bytes]:
    at = layout.prefix_size
    for frame in layout.frames:
        yield expanded[at:at + frame.size]
        at += frame.size


def _guess_level(pack: bytes, expanded: bytes, layout: _Layout) -> int | None:
    """The level whose compressor rebuilds the pack's first frame (the others are checked when
    the maker applies the delta)."""
    if not layout.frames:
        return DEFAULT_DELTA_LEVEL  # nothing to compress: any level rebuilds it
    first = layout.frames[0]
    compressed = pack[first.offset:first.offset + first.compressed]
    content = next(_frames_of(expanded, layout))
    for level in _LEVEL_GUESSES:
        if fmt.compressor(level).compress(content) == compressed:
            return int(level)
    return None


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
        old_expanded, _old_sha, _old_size = expand_pack(old_pack)
        new_expanded, new_sha, new_size = expand_pack(new_pack)
    except PackError as err:
        raise DeltaError(f"cannot make a delta: {err.detail()}", path=err.path or new_path,
                         offset=err.offset) from err
    with open(new_path, "rb") as handle:
        new_bytes = handle.read()
    layout = _layout(new_bytes, len(new_bytes))
    frame_level = _guess_level(new_bytes, new_expanded, layout)
    if frame_level is None:
        raise DeltaError("cannot make a delta: no zstd level of this library rebuilds the "
                         "pack's frames", path=new_path)
    window_log = _window_log(len(old_expanded), len(new_expanded))
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(new_expanded), window_log=window_log, write_content_size=1,
        write_checksum=0, write_dict_id=0, enable_ldm=window_log >= 27)
    dictionary = zstandard.ZstdCompressionDict(old_expanded,
                                               dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    payload = zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params
                                       ).compress(new_expanded)
    old_size = os.path.getsize(old_pack)
    header = PackDeltaHeader(frame_level, window_log, zstd_version_number(), old_size,
                             _old_sha, new_size, new_sha, len(new_expanded), len(payload))
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

    def __init__(self, level: int, workers: int) -> None:
        self.level = level
        self.local = threading.local()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.limit = 2 * workers
        self.pending: deque[concurrent.futures.Future[bytes]] = deque()

    def _compress(self, content: bytes) -> bytes:
        cctx = getattr(self.local, "cctx", None)
        if cctx is None:
            cctx = self.local.cctx = fmt.compressor(self.level)
        out: bytes = cctx.compress(content)
        return out

    def submit(self, content: bytes) -> Iterator[bytes]:
        """Queue one frame; yield the frames that are done, oldest first, beyond the limit."""
        self.pending.append(self.pool.submit(self._compress, content))
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
    """Step 2: the old pack's expanded form, once its size and SHA-256 are the header's."""
    size = os.path.getsize(old_pack)
    sha = hashlib.sha256()
    with open(old_pack, "rb") as handle:
        while chunk := handle.read(READ_CHUNK):
            sha.update(chunk)
    if size != header.source_size or not hmac.compare_digest(sha.digest(), header.source_sha256):
        raise DeltaError(f"made from another pack: it expects {header.source_sha256.hex()} "
                         f"({header.source_size} bytes), {old_pack} is {sha.hexdigest()} "
                         f"({size} bytes)", path=delta, offset=20)
    try:
        expanded, again, _size = expand_pack(old_pack)
    except PackError as err:
        raise DeltaError(f"its source pack cannot be expanded: {err}", path=delta) from err
    if again != header.source_sha256:
        raise DeltaError(f"{old_pack} changed while it was read", path=delta)
    return expanded


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
        recompressor = _Recompressor(header.level, workers or os.cpu_count() or 1)
        try:
            return _rebuild(stream, header, recompressor, delta_path, out_path)
        finally:
            recompressor.close()


def _rebuild(stream: _Stream, header: PackDeltaHeader, recompressor: _Recompressor,
             delta: str, out: str) -> DeltaResult:
    """Step 4 and 5: write the pack the expanded stream describes, checking as it goes."""
    head = stream.read(min(fmt.HEADER_SIZE, header.expanded_size), "the pack header")
    try:
        prefix_size = _prefix_size(head, header.result_size)
        if prefix_size > header.expanded_size:
            raise PackError(f"the rebuilt header declares {prefix_size} bytes before its frames, "
                            f"the expanded form has {header.expanded_size}")
        prefix = head + stream.read(prefix_size - len(head), "the pack header")
        layout = _layout(prefix, header.result_size)
    except DeltaError:
        raise
    except PackError as err:
        raise DeltaError(f"rebuilt pack header is bad: {err.detail()}", path=delta,
                         offset=HEADER_SIZE) from err
    if expanded_size_of(layout) != header.expanded_size:
        raise DeltaError(f"the rebuilt frame tables add up to {expanded_size_of(layout)} "
                         f"expanded bytes, the header says {header.expanded_size}", path=delta,
                         offset=100)
    sha = hashlib.sha256()
    written = 0
    frames = iter(enumerate(layout.frames))
    with atomic_file(out, 0o644) as sink:
        def emit(chunk: bytes, index: int | None = None) -> None:
            nonlocal written
            if index is not None:
                frame = layout.frames[index]
                if len(chunk) != frame.compressed:
                    raise DeltaError(
                        f"frame {index} compresses to {len(chunk)} bytes at level {header.level}, "
                        f"the table says {frame.compressed} (made with zstd "
                        f"{header.zstd_version}, this is {zstd_version_number()})", path=delta)
            sink.write(chunk)
            sha.update(chunk)
            written += len(chunk)

        emit(prefix)
        done = 0
        for index, frame in frames:
            for chunk in recompressor.submit(stream.read(frame.size, f"frame {index}")):
                emit(chunk, done)
                done += 1
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


def object_delta_pairs(old: Manifest, new: Manifest) -> tuple[list[ObjectPair], list[ManifestEntry]]:
    """The large objects ``new`` names that ``old`` lacks (by digest, each once, in manifest
    order), split into those whose path holds another large file in ``old`` (candidates for
    an object delta against it) and the rest (fetched whole)."""
    have = {row.entry.digest for row in old.entries if row.is_large}
    by_path = {row.path: row for row in old.entries if row.is_large}
    pairs: list[ObjectPair] = []
    whole: list[ManifestEntry] = []
    seen: set[bytes] = set()
    for row in new.entries:
        if not row.is_large or row.entry.digest in have or row.entry.digest in seen:
            continue
        seen.add(row.entry.digest)
        source = by_path.get(row.path)
        if source is not None:
            pairs.append(ObjectPair(source, row))
        else:
            whole.append(row)
    return pairs, whole
